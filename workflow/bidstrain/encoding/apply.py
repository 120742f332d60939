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
from bidstrain.encoding.stores import describe
from bidstrain.errors import BidstrainError, run_cli
from bidstrain.io.store import create_store, open_store, read_aligned_store, read_meta

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


def apply_to_stores(
    model_path: str | Path, bold: str | Path, features: Mapping[str, str], out: str | Path
) -> None:
    """Predict the BOLD of a run from its aligned stimulus stores and write it on the
    mask and affine of its BOLD (or average) store ``bold``.

    Parameters
    ----------
    features : mapping
        ``{kind: aligned store}``; the model's kinds are taken in its order.
    """
    _, model = read_model(model_path)
    kinds = list(model["features"]["kinds"])
    missing = [kind for kind in kinds if kind not in features]
    if missing:
        raise BidstrainError(f"the run has no aligned {missing} features", path=bold)
    aligned = [read_aligned_store(features[kind]) for kind in kinds]
    x = np.concatenate([store.features for store in aligned], axis=1)
    predicted = predict_run(model_path, x, describe(kinds, aligned))
    store = open_store(bold, use_dask=False)
    write_prediction(
        out,
        predicted,
        mask=np.asarray(store["mask"].values, bool),
        affine=read_meta(bold).affine,
        repetition_time=float(aligned[0].repetition_time),
        source=str(model_path),
    )


def main(argv=None) -> None:
    """``python -m bidstrain.encoding.apply --model M --bold STORE --features KIND=STORE
    ... --out STORE``."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m bidstrain.encoding.apply")
    parser.add_argument("--model", required=True, help="the encoding model.pt")
    parser.add_argument("--bold", required=True, help="the run's BOLD or average store (mask)")
    parser.add_argument("--features", nargs="+", required=True, help="KIND=aligned store")
    parser.add_argument("--out", required=True, help="the predicted BOLD store")
    args = parser.parse_args(argv)
    pairs = dict(item.split("=", 1) for item in args.features if "=" in item)
    apply_to_stores(args.model, args.bold, pairs, args.out)


if __name__ == "__main__":
    run_cli(main)
