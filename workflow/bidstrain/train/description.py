"""``model.json``: what a trained model expects of its input, and :func:`load_model`.

A model is only usable on data prepared as its training data was. ``model.json`` (beside
``model.pt``, and the same dict under ``"description"`` inside it) says how:

- ``modalities`` and, per modality, ``input``: the downsampling factor (``resample``,
  in-mask block means), then the grid the volumes are cropped or zero-padded to
  (centrally, zero outside the store's mask), the patch size, the voxel order (RAS+,
  :mod:`bidstrain.io.orientation`); for parcel windows (``train.bold_input: parcels``)
  the parcels, the frames of a window and the frames of a token; for each stimulus kind
  of ``train.stimuli``, its features and those of a token;
- ``normalization`` per modality, read from the training stores' attributes: what the
  statistics run over (``stats_dim``), ``ddof``, the mask, the confound strategy, the
  storage, and the training stores, each holding its own ``mean``/``std`` (held-out data
  is normalized with them: :func:`bidstrain.normalize.normalize_with_stats`);
- ``preparation`` (:class:`~bidstrain.train.expectation.Preparation`): how BOLD was
  prepared: the stores' repetition time and time method, the window, its stride, the
  frames per token, the BOLD input (voxels or parcels), and the parcellation's name, its
  checksum (:func:`bidstrain.dataset.atlas.atlas_checksum`) and number of parcels; with
  ``train.stimuli``, per stimulus kind, how its features were prepared as the aligned
  stores record it (:func:`~bidstrain.train.expectation.stimulus_record`: features,
  decoder settings and units, delays, normalization, and the z-score statistics of each
  group of training runs);
- ``scale``: the zero-prediction MSE of the training values per modality (what the scale
  guard of :mod:`bidstrain.embed` compares new data with);
- ``train``: the settings that determine the weights, the definition of the losses
  (``loss_definition``, :data:`bidstrain.train.losses.DEFINITION`), the hash of the run
  (``config_hash``, as in the checkpoints: settings, loss definition, world size, stores),
  the loss's dataset statistics when ``train.loss.stats: dataset``, the step, and the
  torch and bidstrain versions.

:func:`load_model` rebuilds the model for inference and refuses a model whose
description disagrees with the current configuration, naming each difference
(:mod:`.expectation`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zarr

from bidstrain import __version__
from bidstrain.config import Config, ModelExpectation, TrainConfig
from bidstrain.errors import BidstrainError
from bidstrain.io.atomic import write_text_atomic
from bidstrain.io.store import CONSOLIDATED, read_aligned_store, read_meta
from bidstrain.modalities import MODALITIES
from bidstrain.stats import value_stats
from bidstrain.train.expectation import (
    STIMULUS_SETTINGS,
    Preparation,
    differences,
    expectation,
    preparation_of,
    stimulus_record,
)
from bidstrain.train.losses import DEFINITION, UNRECORDED_DEFINITION
from bidstrain.train.model import MultiModalAutoencoder, build_module

FORMAT = "bidstrain-model/1"
#: Stores (first volumes) sampled per modality for ``scale``.
SCALE_STORES = 8
INPUT_FIT = "central crop or zero-pad to shape; zero outside the store's mask"
PARCEL_FIT = "consecutive rows (frames) of the parcel store, as stored"
STIMULUS_FIT = (
    "the rows of the BOLD window's frames of its aligned store, features cut into tokens of "
    "token_features consecutive features (the last one zero-padded)"
)
ORIENTATION = "RAS+ voxel order (closest canonical axes; permutations and flips only)"


def describe(
    module: MultiModalAutoencoder,
    config: TrainConfig,
    stores: Mapping[str, Sequence[str]],
    *,
    config_hash: str,
    step: int,
    parcellation: Mapping[str, str] | None = None,
    stimuli: Mapping[str, Sequence[str]] | None = None,
) -> dict[str, Any]:
    """The description of a trained model (the content of ``model.json``).

    Parameters
    ----------
    module : MultiModalAutoencoder
        The trained model.
    config : TrainConfig
        The ``train`` settings it was trained with.
    stores : mapping
        ``{modality: [training store, ...]}``.
    config_hash : str
        :func:`bidstrain.train.checkpoint.run_hash` of the run.
    step : int
        Optimizer steps done.
    parcellation : mapping, optional
        ``{"name", "checksum"}`` of the atlas of parcel windows.
    stimuli : mapping, optional
        ``{kind: [aligned store, ...]}`` of the training BOLD stores (``train.stimuli``).
    """
    settings = module.loss_settings
    return {
        "format": FORMAT,
        "modalities": list(module.modalities),
        "input": {m: input_record(module, config, m) for m in module.inputs},
        "normalization": {m: normalization(stores[m]) for m in module.modalities},
        "preparation": preparation(module, config, stores, parcellation, stimuli).to_json(),
        "scale": {m: {"mse_zero": training_scale(stores[m])} for m in module.modalities},
        "train": config.hashed(),
        "loss_definition": DEFINITION,
        "loss_target_stats": (
            {m: list(v) for m, v in settings.target_stats.items()}
            if settings.target_stats
            else None
        ),
        "config_hash": config_hash,
        "step": step,
        "torch_version": str(torch.__version__),
        "bidstrain_version": __version__,
    }


def loss_definition(description: Mapping[str, Any]) -> int:
    """The definition of the losses a model was trained and validated under
    (:data:`bidstrain.train.losses.DEFINITION`; a ``model.json`` that records none:
    :data:`~bidstrain.train.losses.UNRECORDED_DEFINITION`)."""
    return int(description.get("loss_definition", UNRECORDED_DEFINITION))


def input_record(module: MultiModalAutoencoder, config: TrainConfig, modality: str) -> dict:
    """What the model receives of ``modality`` (``model.json`` ``input``): the grid of its
    volumes, for parcel windows the parcels and frames of a window, for a stimulus kind
    its features and the features of a token."""
    model = config.model
    if modality in module.stimuli:
        embed = module.embed[modality]
        return {
            "features": embed.channels,
            "window": model.window,
            "patch_frames": model.patch_frames,
            "token_features": embed.group_size,
            "fit": STIMULUS_FIT,
        }
    if modality == "bold" and model.bold_input == "parcels":
        return {
            "parcels": module.embed["bold"].channels,
            "window": model.window,
            "patch_frames": model.patch_frames,
            "fit": PARCEL_FIT,
        }
    return {
        "resample": model.resample[modality],
        "shape": list(model.shapes[modality]),
        "patch_size": model.patch_size,
        "fit": INPUT_FIT,
        "orientation": ORIENTATION,
    }


def preparation(
    module: MultiModalAutoencoder,
    config: TrainConfig,
    stores: Mapping[str, Sequence[str]],
    parcellation: Mapping[str, str] | None,
    stimuli: Mapping[str, Sequence[str]] | None = None,
) -> Preparation:
    """How the BOLD training stores were prepared (their first store's repetition time
    and time method: the plan resamples every run to one TR or keeps each run's own),
    and their stimulus features (:func:`stimulus_preparation`)."""
    meta = read_meta(stores["bold"][0]) if stores.get("bold") else None
    model = config.model
    parcels = model.bold_input == "parcels" and "bold" in module.modalities
    return Preparation(
        repetition_time=meta.repetition_time if meta else None,
        time_method=meta.time_method if meta else "none",
        window=model.window,
        window_stride=config.loader.window_stride or model.window,
        patch_frames=model.patch_frames,
        bold_input=model.bold_input,
        parcellation=parcellation["name"] if parcellation else None,
        parcellation_checksum=parcellation["checksum"] if parcellation else None,
        n_parcels=module.embed["bold"].channels if parcels else None,
        stimuli=stimulus_preparation(stimuli) if module.stimuli else None,
    )


def stimulus_preparation(stimuli: Mapping[str, Sequence[str]]) -> dict[str, Any]:
    """``{kind: record}`` of the aligned stores ``stimuli`` (``{kind: [store, ...]}``):
    the settings they share and every distinct statistics among them
    (:func:`~bidstrain.train.expectation.stimulus_record`).

    Raises
    ------
    BidstrainError
        When two stores of a kind were prepared differently (naming both).
    """
    records = {}
    for kind, paths in stimuli.items():
        for path in dict.fromkeys(paths):
            store = read_aligned_store(path)
            record = stimulus_record(store.attrs, store.arrays, store.features.shape[1])
            first = records.setdefault(kind, {**record, "statistics": [], "store": path})
            changed = [k for k in STIMULUS_SETTINGS if first[k] != record[k]]
            if changed:
                raise BidstrainError(
                    f"{kind} features prepared differently from those of {first['store']} "
                    f"({', '.join(changed)}): rerun the stimuli stage",
                    path=path,
                )
            if record["statistics"][0] not in first["statistics"]:
                first["statistics"].append(record["statistics"][0])
    return {
        kind: {k: v for k, v in record.items() if k != "store"} for kind, record in records.items()
    }


def normalization(stores: Sequence[str]) -> dict[str, Any]:
    """How a modality's training stores were normalized (from their attributes)."""
    metas = [read_meta(path) for path in stores]
    first = metas[0]
    return {
        "stats_dim": first.stats_dim,
        "ddof": first.ddof,
        "mask": sorted({meta.mask_source or meta.mask_mode or "" for meta in metas}),
        "confounds_strategy": first.confounds_strategy,
        "storage": first.storage,
        "average": first.is_average,
        "stores": [
            {"store": str(path), "stats": "mean/std of the store", "stats_from": list(m.stats_from)}
            for path, m in zip(stores, metas, strict=True)
        ],
    }


def training_scale(stores: Sequence[str]) -> float:
    """Zero-prediction MSE of the first volume of up to :data:`SCALE_STORES` stores (the
    statistic of :func:`bidstrain.stats.value_stats`)."""
    step = max(1, len(stores) // SCALE_STORES)
    values = [first_volume(path) for path in list(stores)[::step][:SCALE_STORES]]
    return value_stats(np.concatenate(values))["mse_zero"]


def first_volume(path: str | Path) -> np.ndarray:
    """The masked voxels (or the parcels, of a parcel store) of a store's first volume."""
    group = zarr.open_group(path, mode="r", zarr_format=3, use_consolidated=CONSOLIDATED)
    return np.asarray(group["data"][0], dtype=np.float64)


def write(description: Mapping[str, Any], path: str | Path) -> None:
    """Write ``model.json`` atomically."""
    write_text_atomic(path, json.dumps(description, indent=1, sort_keys=True) + "\n")


def load_model(
    path: str | Path,
    config: Config | ModelExpectation | Mapping[str, Any] | None = None,
    *,
    device: str | torch.device = "cpu",
) -> tuple[MultiModalAutoencoder, dict[str, Any]]:
    """A trained model ready for inference, and its description (``model.json``).

    Parameters
    ----------
    path : str or Path
        ``model.pt`` (its description is read from inside it).
    config : Config, ModelExpectation or mapping, optional
        The current configuration, or its :func:`expectation` (typed, or as the plan
        writes it into the embed job's file): a model that disagrees with it is refused.
    device : str or torch.device
        Where the model goes.

    Returns
    -------
    model : MultiModalAutoencoder
        In eval mode, on ``device``.
    description : dict
        See the module docstring.

    Raises
    ------
    BidstrainError
        An unreadable file, a model without description, or one that disagrees with
        ``config`` (each difference named).
    """

    try:
        saved = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # any unreadable file is reported as such
        raise BidstrainError(f"cannot read the model: {error}", path=path) from None
    description = saved.get("description") if isinstance(saved, Mapping) else None
    if not description or description.get("format") != FORMAT:
        raise BidstrainError(
            f"not a {FORMAT} model (no description inside; retrain it with this bidstrain)",
            path=path,
        )
    if config is not None:
        diff = differences(description, _expected(config))
        if diff:
            raise BidstrainError(
                "the model disagrees with the current configuration (retrain it, or use the "
                "configuration it was trained with):\n  " + "\n  ".join(diff),
                path=path,
            )
    stats = description.get("loss_target_stats")
    prepared = preparation_of(description)
    # a model.json without patch_features cut its stimulus kinds one feature a token
    settings = {"patch_features": 1, **description["train"]}
    module = build_module(
        TrainConfig.with_defaults(settings),
        [m for m in MODALITIES if m in description["modalities"]],
        target_stats={m: tuple(v) for m, v in stats.items()} if stats else None,
        n_parcels=prepared.n_parcels,
        stimuli={k: v["features"] for k, v in (prepared.stimuli or {}).items()},
    )
    module.load_state_dict(saved["model"])
    return module.to(device).eval(), description


def _expected(config: Config | ModelExpectation | Mapping[str, Any]) -> ModelExpectation:
    if isinstance(config, Config):
        return expectation(config)
    if isinstance(config, ModelExpectation):
        return config
    return ModelExpectation.from_dict(config)
