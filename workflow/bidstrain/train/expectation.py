"""What a configuration expects of a trained model, and how a model's description
(``model.json``, :mod:`.description`) differs from it.

Light (no torch): the plan writes the expectation into the embed job's file at parse time.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from bidstrain.config import Config, ModelExpectation
from bidstrain.dataset.masks import is_pattern
from bidstrain.modalities import MODALITIES


@dataclass(frozen=True)
class Preparation:
    """How BOLD was prepared for a model: the ``preparation`` of ``model.json``, read and
    compared through this record only (:func:`preparation_of`).

    Attributes
    ----------
    repetition_time : float or None
        Seconds between the frames of the stores (after resampling in time).
    time_method : str
        How the runs were resampled in time (``none``: at their own TR).
    window, window_stride, patch_frames : int
        Frames per sample, frames between windows, frames per token.
    bold_input : str
        ``voxels`` or ``parcels``.
    parcellation : str or None
        The atlas's name (None without parcels).
    parcellation_checksum : str or None
        :func:`bidstrain.dataset.atlas.atlas_checksum` of the atlas.
    n_parcels : int or None
        Parcels of a parcel window.
    stimuli : dict or None
        ``{kind: record}`` of the stimulus features of ``train.stimuli``
        (:func:`stimulus_record`): their decoder settings, sizes, delays and statistics.
    """

    repetition_time: float | None
    time_method: str
    window: int
    window_stride: int
    patch_frames: int
    bold_input: str
    parcellation: str | None = None
    parcellation_checksum: str | None = None
    n_parcels: int | None = None
    stimuli: Mapping[str, Mapping[str, Any]] | None = None

    def to_json(self) -> dict[str, Any]:
        """The plain form ``model.json`` holds."""
        return asdict(self)

    def differences(self, data: Preparation) -> list[str]:
        """How ``data`` (new stores) was prepared differently from this (the model's):
        one line per difference, naming both, e.g. ``model trained on TR 0.8 s windows
        of 20 frames; these stores are at TR 2.0 s``."""
        lines = []
        trained = f"model trained on TR {self.repetition_time} s windows of {self.window} frames"
        known = None not in (data.repetition_time, self.repetition_time)
        if known and abs(data.repetition_time - self.repetition_time) > 1e-6:
            lines.append(f"{trained}; these stores are at TR {data.repetition_time} s")
        if data.time_method != self.time_method:
            lines.append(
                f"model trained on runs resampled in time by {self.time_method!r}; these "
                f"stores by {data.time_method!r}"
            )
        if data.bold_input != self.bold_input:
            lines.append(f"model trained on {self.bold_input}; these stores hold {data.bold_input}")
        if (data.parcellation, data.parcellation_checksum) != (
            self.parcellation,
            self.parcellation_checksum,
        ):
            lines.append(
                f"model trained on parcellation {self.parcellation!r} (sha256 "
                f"{self.parcellation_checksum}); these stores on {data.parcellation!r} "
                f"(sha256 {data.parcellation_checksum})"
            )
        if data.n_parcels is not None and data.n_parcels != self.n_parcels:
            lines.append(
                f"model trained on {self.n_parcels} parcels; these stores hold {data.n_parcels}"
            )
        return lines


#: What two stores' features of one kind must share (besides the statistics).
STIMULUS_SETTINGS = (
    "features",
    "decoder",
    "delay_method",
    "delays",
    "normalized",
    "repetition_time",
    "source_repetition_time",
)


def stimulus_record(attrs: Mapping[str, Any], arrays: Mapping[str, Any], n_features: int):
    """How one aligned store's features were prepared (``model.json``'s
    ``preparation.stimuli[kind]`` gathers them): :data:`STIMULUS_SETTINGS` and
    ``statistics``, the z-score statistics and the runs they come from.

    Parameters
    ----------
    attrs, arrays : mapping
        The aligned store's attributes and per-feature arrays
        (:class:`bidstrain.io.store.AlignedStore`).
    n_features : int
        Its columns.
    """
    return {
        "features": int(n_features),
        "decoder": dict(attrs["decoder"]),
        "delay_method": attrs["delay_method"],
        "delays": list(attrs["delays"]),
        "normalized": bool(attrs["normalized"]),
        "repetition_time": attrs.get("repetition_time"),
        "source_repetition_time": attrs.get("source_repetition_time"),
        "statistics": [
            {
                "training_runs": list(attrs["training_runs"]),
                "mean": [float(v) for v in arrays["mean"]],
                "std": [float(v) for v in arrays["std"]],
            }
        ],
    }


def stimulus_differences(trained: Mapping[str, Any], data: Mapping[str, Any], kind: str):
    """How the ``kind`` features of new stores (``data``, a :func:`stimulus_record`)
    were prepared differently from a model's (``trained``, with every statistics the
    model's training stores had): one line per difference, naming both."""
    lines = [
        f"{kind} {key}: {trained[key]!r} in the model, {data[key]!r} in these stores"
        for key in STIMULUS_SETTINGS
        if trained.get(key) != data.get(key)
    ]
    (stats,) = data["statistics"]
    same = [
        s
        for s in trained["statistics"]
        if len(s["mean"]) == len(stats["mean"])
        and _close(s["mean"], stats["mean"])
        and _close(s["std"], stats["std"])
    ]
    if trained["normalized"] and not same:
        runs = sorted({r for s in trained["statistics"] for r in s["training_runs"]})
        lines.append(
            f"{kind} features z-scored with the statistics of {stats['training_runs']}, the "
            f"model's with those of {runs}"
        )
    return lines


def _close(a, b, rtol: float = 1e-6) -> bool:
    return all(abs(x - y) <= rtol * max(abs(x), abs(y), 1e-12) for x, y in zip(a, b, strict=True))


def preparation_of(description: Mapping[str, Any]) -> Preparation:
    """The :class:`Preparation` of a model's description (``model.json``); a
    description without ``preparation`` is read as single frames of runs at their own
    TR."""
    saved = description.get("preparation")
    if saved is None:
        return Preparation(None, "none", 1, 1, 1, "voxels")
    return Preparation(**saved)


def expectation(config: Config) -> ModelExpectation:
    """What ``config`` expects of a model (see :func:`differences`): the ``train`` keys
    that determine the weights, the modalities, and the normalization."""
    normalize = config.normalize
    return ModelExpectation(
        train=config.train.hashed(),
        modalities=tuple(config.modalities),
        ddof=normalize.ddof,
        mask={m: normalize.mask_option(m) for m in MODALITIES},
        confounds_strategy=normalize.confounds.strategy,
        tr=config.time.tr,
        # as the stores record it: runs at their own TR are not resampled
        time_method=config.time.method if config.time.target_tr else "none",
    )


def differences(description: Mapping[str, Any], expected: ModelExpectation) -> list[str]:
    """How a model's description disagrees with a configuration's :func:`expectation`:
    one line per difference.

    Compared: every ``train`` key that determines the weights (the window, its stride,
    the frames per token and the BOLD input among them), the trained modalities, per
    modality the normalization's ``ddof``, mask keyword (a path pattern is not compared)
    and, for BOLD, the confound strategy, and the TR and the time method the
    configuration resamples to (``time``; the method only where the model's runs were
    resampled: runs already at the target TR are not).
    """
    lines = []
    prepared = preparation_of(description)
    if "bold" in description["modalities"]:
        target, method = expected.tr, expected.time_method
        if target != "native" and float(target) != prepared.repetition_time:
            lines.append(
                f"time.tr: the model was trained on TR {prepared.repetition_time} s, the "
                f"config resamples to {float(target)} s"
            )
        # a model of runs already at the target TR saw no resampling (method "none"),
        # whatever the config's method
        resampled = prepared.time_method != "none"
        if target != "native" and resampled and method != prepared.time_method:
            lines.append(
                f"time.method: {prepared.time_method!r} in the model, {method!r} in the config"
            )
    current = expected.train
    for key, value in description["train"].items():
        if key in current and current[key] != value:
            lines.append(f"train.{key}: {value!r} in the model, {current[key]!r} in the config")
    missing = sorted(set(description["modalities"]) - set(expected.modalities))
    if missing:
        lines.append(f"modalities: the model was trained on {missing}, the config has not")
    for modality, norm in description["normalization"].items():
        if norm["ddof"] != expected.ddof:
            lines.append(
                f"normalize.ddof: {norm['ddof']} for the model's {modality}, "
                f"{expected.ddof} in the config"
            )
        option = expected.mask[modality]
        if not is_pattern(option) and not norm["average"] and norm["mask"] != [option]:
            lines.append(
                f"mask of {modality}: {norm['mask']} in the model, {option!r} in the config"
            )
        strategy = expected.confounds_strategy
        if modality == "bold" and norm["confounds_strategy"] != strategy:
            lines.append(
                f"normalize.confounds.strategy: {norm['confounds_strategy']!r} in the model, "
                f"{strategy!r} in the config"
            )
    return lines
