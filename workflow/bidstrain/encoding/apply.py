"""Apply the encoding model to a new run's stimulus: its aligned features (prepared as
the model's were) -> predicted BOLD, written as a store on the average's mask.

Features prepared differently are refused, naming each difference: the kinds (and their
order), the columns of each kind (decoder sizes), the delays and delay method, the
repetition time, and the z-score statistics (the digest of their means and standard
deviations: features must be z-scored with the training runs' statistics the model was
fitted on).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from bidstrain.encoding.data import FEATURE_KEYS
from bidstrain.encoding.outputs import read_model
from bidstrain.errors import BidstrainError
from bidstrain.io.store import create_store

#: Seconds within which two repetition times are the same.
TR_TOLERANCE = 1e-6


def feature_differences(model: Mapping[str, Any], run: Mapping[str, Any]) -> list[str]:
    """One phrase per way ``run``'s features were prepared differently from ``model``'s
    (the ``features`` of ``model.json`` and of the run's description); empty when alike."""
    found = []
    for key in FEATURE_KEYS:
        a, b = model.get(key), run.get(key)
        if key == "repetition_time" and a is not None and b is not None:
            if abs(float(a) - float(b)) > TR_TOLERANCE:
                found.append(f"repetition_time: model {a} s, run {b} s")
        elif key == "statistics":
            if (a or {}).get("digest") != (b or {}).get("digest"):
                found.append(
                    f"statistics: model z-scored with those of {(a or {}).get('training_runs')}"
                    f" (digest {(a or {}).get('digest')}), run with digest "
                    f"{(b or {}).get('digest')}"
                )
        elif _plain(a) != _plain(b):
            found.append(f"{key}: model {_plain(a)}, run {_plain(b)}")
    return found


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def predict_run(
    model_path: str | Path, features: np.ndarray, description: Mapping[str, Any]
) -> np.ndarray:
    """Predicted BOLD (time x targets, float32) of a run's aligned ``features``.

    Raises
    ------
    BidstrainError
        Naming the model file and every difference when the features were prepared
        differently, or their column count is not the model's.
    """
    fitted, model = read_model(model_path)
    differences = feature_differences(model["features"], description)
    if features.ndim != 2 or features.shape[1] != fitted.weight.shape[1]:
        differences.append(
            f"columns: model {fitted.weight.shape[1]}, run features of shape {features.shape}"
        )
    if differences:
        raise BidstrainError(
            "the run's stimulus features were prepared differently from the encoding "
            "model's: " + "; ".join(differences) + ". Recompute them with the model's "
            "settings (model.json, features)",
            path=model_path,
        )
    return fitted.predict(features).astype(np.float32)


def write_prediction(
    path: str | Path,
    predicted: np.ndarray,
    *,
    mask: np.ndarray,
    affine: np.ndarray,
    repetition_time: float,
    source: str,
) -> None:
    """Write predicted BOLD (time x masked voxels) as a store on ``mask`` (atomically)."""
    mask = np.asarray(mask, bool)
    if predicted.shape[1] != int(mask.sum()):
        raise BidstrainError(
            f"{predicted.shape[1]} predicted voxels but the mask has {int(mask.sum())}", path=path
        )
    time = np.arange(predicted.shape[0]) * repetition_time
    with create_store(path, mask=mask, affine=affine, time=time) as writer:
        writer.write(0, predicted)
        writer.add_variable("mean", ("voxel",), predicted.mean(axis=0))
        writer.add_variable("std", ("voxel",), predicted.std(axis=0))
        writer.attrs.update(
            modality="bold",
            subject="average",
            source_path=source,
            ddof=0,
            n_zero_variance=int((predicted.std(axis=0) == 0).sum()),
            stats_dim="time",
            stats_from=[],
            repetition_time=repetition_time,
        )
