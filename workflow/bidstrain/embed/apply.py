"""Apply a trained model to normalized images: per volume (or, for a model of BOLD
windows, per non-overlapping window of a run) the encoder's pooled embedding and the
reconstruction loss, in one Zarr store per image.

::

    python -m bidstrain.embed --model results/train/demo/model.pt \\
        --spec results/plan/demo/embed.json --out-table results/embed/demo/embeddings.tsv

``--spec`` (written by the plan) lists the images and the job's settings: ``{"expect": ...,
"images": [{"modality", "store", "out"}, ...], "settings": {"embed": {...},
"max_scale_ratio": ..., "seed": ...}}`` (:class:`bidstrain.config.EmbedJobConfig`: the
``embed`` section, ``checks.max_scale_ratio`` and ``train.seed``); the stores are the
normalize stage's, so held-out runs come normalized with their training runs' statistics
and other images with their own. The model (:func:`bidstrain.train.load_model`) is
refused when its ``model.json`` disagrees with ``expect`` (the configuration). Each store
is read ``embed.batch_size`` samples at a time through the training's own reader (same
resampling, crop or pad), never whole.

Before a store is embedded, its values go through the scale guard of the checks
(:func:`bidstrain.stats.value_stats`): the zero-prediction MSE of its first volume
against the model's training data (``model.json`` ``scale``); more than
``checks.max_scale_ratio`` apart in either direction stops the job
(an image at raw scale, or normalized with the wrong statistics). A BOLD store prepared
differently from the training data (another repetition time or time method: ``model.json``
``preparation``) is refused, naming the difference; so is one whose aligned stimulus
features (an image's ``stimuli``: ``{kind: aligned store}``, for a model of
``train.stimuli``) were prepared differently from the model's (decoder settings, sizes,
delays, normalization or statistics). Those features join each BOLD window's tokens, as
in training (:func:`stimulus_features`).

An embedding store (Zarr v3 with consolidated metadata, read with
``xarray.open_zarr(path)``) holds
``embedding (time, feature)`` float32, ``loss (time)`` (the masked-token reconstruction
loss of the training loss, the same tokens masked for every image: a generator seeded by
``train.seed`` per batch position) and ``baseline (time)`` (the loss of predicting the mean),
each sample's share of its batch's, so that their means compare with training's validation,
the time of each sample's first frame (the source store's ``time`` coordinate), and
attributes naming the source store, the model and its configuration hash, the definition
of the losses this job counted (``loss_definition``) and the model's
(``model_loss_definition``: a model trained under another validated otherwise, and the
job warns), with the store's ``checksum`` (:func:`bidstrain.io.store.write_small_store`).
``--out-table`` lists the stores written.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from bidstrain.config import EmbedJobConfig, TrainConfig
from bidstrain.embed.samples import samples
from bidstrain.errors import BidstrainError
from bidstrain.io.atomic import write_text_atomic
from bidstrain.io.store import (
    read_aligned_store,
    read_dims,
    read_meta,
    read_parcel_attrs,
    write_small_store,
)
from bidstrain.stats import value_stats
from bidstrain.train.description import first_volume, load_model, loss_definition
from bidstrain.train.expectation import preparation_of, stimulus_differences, stimulus_record
from bidstrain.train.losses import DEFINITION, sample_losses
from bidstrain.train.model import MultiModalAutoencoder
from bidstrain.train.out_of_memory import out_of_memory_explained

LOG = logging.getLogger("bidstrain.embed")


def check_scale(
    store: str | Path, modality: str, description: Mapping[str, Any], max_ratio: float
) -> float:
    """The scale guard: the zero-prediction MSE of the store's first volume against the
    model's training data.

    Returns
    -------
    float
        The store's zero-prediction MSE.

    Raises
    ------
    BidstrainError
        When the two are more than ``max_ratio`` apart (either way), naming the store,
        its subject and both values.
    """
    mse = value_stats(first_volume(store))["mse_zero"]
    reference = description["scale"][modality]["mse_zero"]
    ratio = max(mse / reference, reference / mse) if mse > 0 and reference > 0 else np.inf
    if not ratio <= max_ratio:
        meta = read_meta(store)
        raise BidstrainError(
            f"{modality} values at another scale than the model's training data: "
            f"zero-prediction MSE {mse:.4g} against {reference:.4g} ({ratio:.3g}x, above "
            f"checks.max_scale_ratio {max_ratio:g}). Was the image normalized with the wrong "
            "statistics, or not at all?",
            path=store,
            subject=meta.subject,
        )
    return mse


def check_preparation(store: str | Path, description: Mapping[str, Any]) -> None:
    """Refuse a BOLD store prepared differently from the model's training data (another
    TR or time method; voxels for a model of parcel windows or the reverse; another atlas,
    by name, or number of parcels), naming the difference.

    Raises
    ------
    BidstrainError
        Naming the store, its subject and each difference.
    """
    trained = preparation_of(description)
    meta = read_meta(store)
    parcels = meta.stats_dim == "parcel"
    atlas = read_parcel_attrs(store) if parcels else {}
    data = dataclasses.replace(
        trained,
        repetition_time=meta.repetition_time,
        time_method=meta.time_method,
        bold_input="parcels" if parcels else "voxels",
        n_parcels=len(atlas["parcel_names"]) if parcels else None,
        # a parcel store names its atlas and records its checksum (one without them
        # is taken as the model's)
        parcellation=atlas.get("atlas", trained.parcellation),
        parcellation_checksum=atlas.get("atlas_checksum", trained.parcellation_checksum),
    )
    lines = trained.differences(data)
    if lines:
        raise BidstrainError(
            "these stores were prepared differently from the model's training data: "
            + "; ".join(lines),
            path=store,
            subject=meta.subject,
        )


def check_stimuli(
    store: str | Path, stimuli: Mapping[str, str], description: Mapping[str, Any]
) -> None:
    """Refuse a BOLD store whose aligned stimulus features (``stimuli``: ``{kind:
    aligned store}``) of the model's ``train.stimuli`` were prepared differently from
    the model's (:func:`~bidstrain.train.expectation.stimulus_differences`), or do not
    have one row per frame of the store.

    Raises
    ------
    BidstrainError
        Naming the aligned store, the BOLD store's subject and each difference.
    """
    trained = preparation_of(description).stimuli or {}
    n_frames = read_dims(store)[0]
    for kind, path in stimuli.items():
        if kind not in trained:
            continue
        aligned = read_aligned_store(path)
        record = stimulus_record(aligned.attrs, aligned.arrays, aligned.features.shape[1])
        lines = stimulus_differences(trained[kind], record, kind)
        if aligned.features.shape[0] != n_frames:
            lines.append(
                f"{aligned.features.shape[0]} rows of features for the {n_frames} frames of "
                "the BOLD store (rerun the align_stimuli job)"
            )
        if lines:
            raise BidstrainError(
                f"the {kind} features of {store} were prepared differently from the model's "
                "training data: " + "; ".join(lines),
                path=path,
                subject=read_meta(store).subject,
            )


def stimulus_features(
    model: MultiModalAutoencoder, store: str | Path, stimuli: Mapping[str, str]
) -> dict[str, np.ndarray]:
    """The aligned features ``(frames, features)`` float32 of the model's stimulus kinds
    (``train.stimuli``) among ``stimuli`` (``{kind: aligned store}``) of a BOLD store;
    a kind the run has no store of is left out, with a warning (its windows are embedded
    without it)."""
    missing = [kind for kind in model.stimuli if kind not in stimuli]
    if missing:
        LOG.warning(
            "%s: no aligned %s stimulus store (its events.tsv names no such stimulus): its "
            "BOLD windows are embedded without those tokens",
            store,
            " or ".join(missing),
        )
    return {
        kind: np.ascontiguousarray(read_aligned_store(stimuli[kind]).features, dtype=np.float32)
        for kind in model.stimuli
        if kind in stimuli
    }


@torch.no_grad()
def embed_store(
    model: MultiModalAutoencoder,
    description: Mapping[str, Any],
    store: str | Path,
    modality: str,
    *,
    batch_size: int,
    seed: int,
    device: torch.device,
    stimuli: Mapping[str, np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """Embeddings, reconstruction losses and baselines of every sample of ``store``: its
    volumes, or for a model of BOLD windows the run's non-overlapping windows
    (:func:`bidstrain.embed.samples.samples`).

    ``stimuli`` (``{kind: (frames, features)}``, :func:`stimulus_features`) gives each
    BOLD window the features of its frames, as in training: they join its tokens in the
    encoder's sequence, and share its draw of masked tokens. The loss is BOLD's.

    Samples are read ``batch_size`` at a time. Batch ``b`` masks the tokens drawn by a
    generator seeded with ``(seed, b)``, so two identical stores get identical results.
    Each sample's loss and baseline are its share of the batch's, divided by the batch's
    statistic as training divides it (:func:`bidstrain.train.losses.sample_losses`): their
    mean is the batch's loss, comparable with the training's validation loss.

    Returns
    -------
    dict
        ``embedding`` (time, feature), ``loss`` and ``baseline`` (time), float32, and
        ``time``: the time of each sample's first frame.
    """
    model_config = TrainConfig.with_defaults(description["train"]).model
    settings = model.loss_settings
    stats = (settings.target_stats or {}).get(modality)
    # a run shorter than a window gives a store of no sample (samples() warns)
    out: dict[str, list[np.ndarray]] = {
        "embedding": [np.zeros((0, model_config.embed_dim))],
        "loss": [np.zeros(0)],
        "baseline": [np.zeros(0)],
        "time": [np.zeros(0)],
    }
    batches = samples(store, modality, model_config, batch_size)
    for number, (firsts, times, read) in enumerate(batches):
        read = {name: values.to(device) for name, values in read.items()}
        volume = read[modality]
        context = {
            kind: torch.from_numpy(
                np.stack([values[first : first + model_config.window] for first in firsts])
            ).to(device)
            for kind, values in (stimuli or {}).items()
        }
        out["time"].append(times)
        out["embedding"].append(model.encode(modality, volume, context).float().cpu().numpy())
        batch = {**read, **context}
        generator = torch.Generator().manual_seed(seed * 1_000_003 + number)
        output = model(batch, masks=model.token_masks(batch, generator))
        loss, baseline = sample_losses(
            output.reconstructions[modality],
            volume,
            normalize=settings.normalize,
            eps=settings.eps,
            target_stats=stats,
            where=output.voxel_masks.get(modality),
        )
        out["loss"].append(loss.cpu().numpy())
        out["baseline"].append(baseline.cpu().numpy())
    values = {key: np.concatenate(parts).astype(np.float32) for key, parts in out.items()}
    values["time"] = np.concatenate(out["time"]).astype(np.float64)
    return values


def write_embedding(
    out: str | Path,
    values: Mapping[str, np.ndarray],
    store: str | Path,
    modality: str,
    *,
    model_path: str | Path,
    description: Mapping[str, Any],
    stimuli: Sequence[str] = (),
) -> None:
    """Write one embedding store atomically (see the module docstring for its layout);
    ``stimuli``: the stimulus kinds whose tokens joined the BOLD windows'."""
    meta = read_meta(store)
    embedding = np.asarray(values["embedding"])
    arrays = [
        ("time", ("time",), np.asarray(values["time"], dtype=np.float64), None),
        ("feature", ("feature",), np.arange(embedding.shape[1], dtype=np.int64), None),
        ("embedding", ("time", "feature"), embedding, None),
        ("loss", ("time",), np.asarray(values["loss"]), None),
        ("baseline", ("time",), np.asarray(values["baseline"]), None),
    ]
    attrs = {
        "modality": modality,
        "subject": meta.subject,
        "session": meta.session,
        "entities": dict(meta.entities),
        "source_store": str(store),
        "model": str(model_path),
        "model_config_hash": description["config_hash"],
        "model_step": description["step"],
        "loss_normalize": description["train"]["loss"]["normalize"],
        "loss_definition": DEFINITION,
        "model_loss_definition": loss_definition(description),
        "stimuli": list(stimuli),
    }
    write_small_store(out, arrays, attrs)


def embed(
    model_path: str | Path,
    images: Sequence[Mapping[str, str]],
    *,
    expect: Mapping[str, Any] | None,
    batch_size: int,
    max_scale_ratio: float,
    seed: int,
    out_table: str | Path,
) -> pd.DataFrame:
    """Embed every image of ``images`` (``{"modality", "store", "out"}``) with the model.

    Every store passes the scale guard before any is written. Returns the table written
    to ``out_table`` (store, output, volumes, mean loss and baseline per image).
    """
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, description = load_model(model_path, expect, device=device)
    trained_under = loss_definition(description)
    if trained_under != DEFINITION:
        LOG.warning(
            "%s was trained under loss definition %d, this job counts its losses under "
            "definition %d (bidstrain.train.losses.DEFINITION): they do not compare with "
            "the training's validation losses; retrain the model to compare them",
            model_path,
            trained_under,
            DEFINITION,
        )
    for image in images:
        if image["modality"] not in description["modalities"]:
            raise BidstrainError(
                f"the model was not trained on {image['modality']} "
                f"(it knows {description['modalities']})",
                path=image["store"],
            )
        if image["modality"] == "bold":
            check_preparation(image["store"], description)
            check_stimuli(image["store"], image.get("stimuli", {}), description)
        check_scale(image["store"], image["modality"], description, max_scale_ratio)
    rows = []
    for image in images:
        stimuli = {}
        if image["modality"] == "bold":
            stimuli = stimulus_features(model, image["store"], image.get("stimuli", {}))
        with out_of_memory_explained(model, batch_size, "embed.batch_size", "embed_images"):
            values = embed_store(
                model,
                description,
                image["store"],
                image["modality"],
                batch_size=batch_size,
                seed=seed,
                device=device,
                stimuli=stimuli,
            )
        write_embedding(
            image["out"],
            values,
            image["store"],
            image["modality"],
            model_path=model_path,
            description=description,
            stimuli=list(stimuli),
        )
        rows.append(
            {
                "modality": image["modality"],
                "store": image["store"],
                "embedding": image["out"],
                "stimuli": ",".join(stimuli),
                "volumes": len(values["loss"]),
                "loss": float(values["loss"].mean()),
                "baseline": float(values["baseline"].mean()),
            }
        )
        LOG.info("wrote %s (%d volumes)", image["out"], len(values["loss"]))
    table = pd.DataFrame(
        rows,
        columns=["modality", "store", "embedding", "stimuli", "volumes", "loss", "baseline"],
    )
    write_text_atomic(out_table, table.to_csv(sep="\t", index=False))
    return table


def main(argv: Sequence[str] | None = None) -> None:
    """Parse the arguments and embed."""
    parser = argparse.ArgumentParser(prog="python -m bidstrain.embed", description=__doc__)
    parser.add_argument("--model", required=True, help="model.pt")
    parser.add_argument("--spec", required=True, help="the plan's embed.json")
    parser.add_argument("--out-table", required=True)
    args = parser.parse_args(argv)
    try:
        spec = json.loads(Path(args.spec).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise BidstrainError(f"cannot read the embed spec: {error}", path=args.spec) from None
    try:
        settings = EmbedJobConfig.from_dict(spec.get("settings"))
    except BidstrainError as error:
        raise BidstrainError(str(error), path=args.spec) from None
    embed(
        args.model,
        spec["images"],
        expect=spec.get("expect"),
        batch_size=settings.embed.batch_size,
        max_scale_ratio=settings.max_scale_ratio,
        seed=settings.seed,
        out_table=args.out_table,
    )
