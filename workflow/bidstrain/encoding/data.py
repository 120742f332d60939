"""The encoding model's arrays: features and BOLD of the training and held-out runs,
with the descriptions ``model.json`` records (how the features were prepared, what the
target is).

A dataset file is one ``.npz``: ``train_x``, ``train_y``, ``heldout_x``, ``heldout_y``
(time x features and time x targets, the runs of each part concatenated in time) and
``description`` (JSON text: ``features`` and ``target``, see :class:`EncodingData`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bidstrain.errors import BidstrainError
from bidstrain.io.atomic import atomic_path

#: What ``features`` must say: the preparation a new run's features must share.
FEATURE_KEYS = ("kinds", "sizes", "delays", "method", "repetition_time", "statistics")
ARRAYS = ("train_x", "train_y", "heldout_x", "heldout_y")


@dataclass(frozen=True)
class EncodingData:
    """Features (time x features, z-scored) and BOLD (time x targets) of the training
    and held-out runs.

    Attributes
    ----------
    train_x, train_y, heldout_x, heldout_y : ndarray
        The runs of each part concatenated in time, float32.
    features : mapping
        How the features were prepared: ``kinds`` (in column order), ``sizes`` (columns
        of each kind before delays), ``delays`` (TRs; empty for ``method`` ``hrf``),
        ``method``, ``repetition_time``, ``statistics`` (``{"digest", "training_runs"}``:
        a hash of the z-score means and standard deviations and the runs they come
        from), plus any decoder settings (recorded, not compared).
    target : mapping
        ``averages`` (their stores), ``kind`` (``voxels`` or ``parcels``), ``mask`` (the
        average's mask; voxels) or ``atlas``, ``parcels`` (label values, in target order)
        and ``parcel_names`` (parcels), ``n_targets``, ``training_runs``,
        ``heldout_runs``.
    """

    train_x: np.ndarray
    train_y: np.ndarray
    heldout_x: np.ndarray
    heldout_y: np.ndarray
    features: Mapping[str, Any]
    target: Mapping[str, Any]

    def __post_init__(self) -> None:
        check_arrays(self, "the encoding data")

    @property
    def n_features(self) -> int:
        """Columns of the feature arrays (kinds and delays together)."""
        return int(self.train_x.shape[1])

    @property
    def n_targets(self) -> int:
        """Columns of the BOLD arrays (voxels or parcels)."""
        return int(self.train_y.shape[1])


def check_arrays(data: EncodingData, where: str | Path) -> None:
    """Raise a :class:`BidstrainError` naming ``where`` when the arrays disagree."""
    problems = []
    for part in ("train", "heldout"):
        x, y = getattr(data, f"{part}_x"), getattr(data, f"{part}_y")
        if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0]:
            problems.append(
                f"{part}: features {x.shape} and BOLD {y.shape} must be (time x columns) "
                "with the same time points"
            )
        elif not (np.isfinite(x).all() and np.isfinite(y).all()):
            problems.append(f"{part}: non-finite values")
    if not problems and data.train_x.shape[0] < 2:
        problems.append(f"{data.train_x.shape[0]} training time point(s): need at least 2")
    if not problems and data.heldout_x.shape[0] < 2:
        problems.append(
            f"{data.heldout_x.shape[0]} held-out time point(s): hold out runs "
            "(normalize.heldout) to validate the model"
        )
    if not problems and data.train_x.shape[1] != data.heldout_x.shape[1]:
        problems.append(
            f"features: {data.train_x.shape[1]} training vs "
            f"{data.heldout_x.shape[1]} held-out columns"
        )
    if not problems and data.train_y.shape[1] != data.heldout_y.shape[1]:
        problems.append(
            f"BOLD: {data.train_y.shape[1]} training vs {data.heldout_y.shape[1]} held-out columns"
        )
    missing = [key for key in FEATURE_KEYS if key not in data.features]
    if missing:
        problems.append(f"the feature description lacks {missing}")
    if problems:
        raise BidstrainError("; ".join(problems), path=str(where))


def statistics_digest(mean: np.ndarray, std: np.ndarray) -> str:
    """A 16-hex-digit hash of z-score statistics (float64 bytes), compared on apply."""
    packed = np.concatenate(
        [np.asarray(mean, np.float64).ravel(), np.asarray(std, np.float64).ravel()]
    )
    return hashlib.sha256(packed.tobytes()).hexdigest()[:16]


def save_data(data: EncodingData, path: str | Path) -> None:
    """Write ``data`` to the ``.npz`` file ``path`` atomically."""
    description = json.dumps({"features": dict(data.features), "target": dict(data.target)})
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.savez(
                handle,
                **{name: getattr(data, name) for name in ARRAYS},
                description=np.array(description),
            )


def load_data(path: str | Path) -> EncodingData:
    """Read a dataset file written by :func:`save_data`.

    Raises
    ------
    BidstrainError
        Naming the file when it is missing, unreadable, lacks an array, or its arrays
        disagree (:func:`check_arrays`).
    """
    try:
        with np.load(path, allow_pickle=False) as content:
            arrays = {name: content[name].astype(np.float32) for name in ARRAYS}
            description = json.loads(str(content["description"]))
    except (OSError, KeyError, ValueError) as error:
        raise BidstrainError(f"cannot read the encoding data: {error}", path=path) from None
    try:
        return EncodingData(
            **arrays, features=description["features"], target=description["target"]
        )
    except BidstrainError as error:
        raise BidstrainError(error.message, path=path) from None
