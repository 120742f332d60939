"""Apply the encoding model to a new run's stimulus: its aligned features (prepared as
the model's were) -> predicted BOLD, written as a store on the average's mask, or as a
parcel store of the average's parcels for a model of parcels (``encoding.target``), one
row per frame of the aligned features (the average's valid frames).

Features prepared differently are refused, naming each difference: the kinds (and their
order), the columns of each kind (decoder sizes), the delays and delay method, the
repetition time, and the z-score statistics (the digest of their means and standard
deviations). Features z-scored with other training runs' statistics (a run of another
dataset, whose aligned stores took that dataset's) are first brought back to their raw
scale and z-scored with the model's own (``model.json`` records them), as a held-out run
is (:func:`to_model_statistics`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from bidstrain.encoding.data import FEATURE_KEYS
from bidstrain.encoding.outputs import read_model
from bidstrain.encoding.stores import describe
from bidstrain.errors import BidstrainError, run_cli
from bidstrain.io.store import (
    CONSOLIDATED,
    create_store,
    open_store,
    read_aligned_store,
    read_meta,
    read_parcel_attrs,
    write_parcel_store,
)

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


def to_model_statistics(
    features: np.ndarray, trained: Mapping[str, Any], run: Mapping[str, Any]
) -> tuple[np.ndarray, Mapping[str, Any]]:
    """``features`` (z-scored with the statistics of ``run``'s description) z-scored with
    the model's (``trained``: the ``features`` of ``model.json``) instead, and the run's
    description with the model's statistics; unchanged when the statistics are the same,
    when either description lacks their values (then the digests differ and the features
    are refused), or the column counts differ."""
    ours, theirs = trained.get("statistics") or {}, run.get("statistics") or {}
    if ours.get("digest") == theirs.get("digest") or not run.get("normalized", True):
        return features, run
    if not all(key in stats for key in ("mean", "std") for stats in (ours, theirs)):
        return features, run
    columns = {len(ours["mean"]), len(theirs["mean"]), features.shape[-1]}
    if len(columns) != 1:
        return features, run
    raw = features * np.asarray(theirs["std"]) + np.asarray(theirs["mean"])
    rescaled = (raw - np.asarray(ours["mean"])) / np.asarray(ours["std"])
    return rescaled.astype(np.float32), {**run, "statistics": ours}


def predict_run(
    model_path: str | Path, features: np.ndarray, description: Mapping[str, Any]
) -> np.ndarray:
    """Predicted BOLD (time x targets, float32) of a run's aligned ``features``
    (z-scored with other statistics than the model's: re-z-scored with the model's first,
    :func:`to_model_statistics`).

    Raises
    ------
    BidstrainError
        Naming the model file and every difference when the features were prepared
        differently, or their column count is not the model's.
    """
    fitted, model = read_model(model_path)
    features, description = to_model_statistics(features, model["features"], description)
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
    time: np.ndarray | None = None,
) -> None:
    """Write predicted BOLD (time x masked voxels) as a store on ``mask`` (atomically),
    at the frame onsets ``time`` (by default every ``repetition_time``)."""
    mask = np.asarray(mask, bool)
    if predicted.shape[1] != int(mask.sum()):
        raise BidstrainError(
            f"{predicted.shape[1]} predicted voxels but the mask has {int(mask.sum())}", path=path
        )
    if time is None:
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


def write_parcel_prediction(
    path: str | Path, predicted: np.ndarray, *, parcels: str | Path, time: np.ndarray, source: str
) -> None:
    """Write predicted parcel series (time x parcels) as a parcel store of the parcels,
    atlas and coverage of the parcel average ``parcels`` (atomically), with the
    prediction's own mean and std."""
    group = zarr.open_group(parcels, mode="r", zarr_format=3, use_consolidated=CONSOLIDATED)
    labels = np.asarray(group["parcel"][...])
    if predicted.shape[1] != labels.size:
        raise BidstrainError(
            f"{predicted.shape[1]} predicted parcels but {parcels} has {labels.size}", path=path
        )
    meta = read_meta(parcels)
    std = predicted.std(axis=0)
    write_parcel_store(
        path,
        data=predicted,
        mean=predicted.mean(axis=0),
        std=std,
        parcels=labels,
        n_voxels=group["n_voxels"][...],
        coverage=group["coverage"][...],
        time=time,
        attrs={
            **read_parcel_attrs(parcels),
            "modality": "bold",
            "subject": "average",
            "entities": dict(meta.entities),
            "affine": np.asarray(meta.affine).tolist(),
            "source_path": source,
            "ddof": 0,
            "n_zero_variance": int((std == 0).sum()),
            "stats_dim": "parcel",
            "stats_from": [],
            "repetition_time": meta.repetition_time,
        },
    )


def apply_to_stores(
    model_path: str | Path, bold: str | Path, features: Mapping[str, str], out: str | Path
) -> None:
    """Predict the BOLD of a run from its aligned stimulus stores and write it on the
    mask and affine of its BOLD (or average) store ``bold``, or as a parcel store of the
    parcel average ``bold`` (a model of parcels).

    Parameters
    ----------
    model_path : str or Path
        The encoding model (``model.pt``).
    bold : str or Path
        The run's BOLD store, or the average store, whose mask and affine the prediction
        takes (for a model of parcels: the parcel average).
    features : mapping
        ``{kind: aligned store}``; the model's kinds are taken in its order.
    out : str or Path
        The predicted BOLD store, written atomically.

    Raises
    ------
    BidstrainError
        When a kind of the model has no store here, a store is of another kind, or the
        features were prepared differently from the model's.
    """
    _, model = read_model(model_path)
    kinds = list(model["features"]["kinds"])
    missing = [kind for kind in kinds if kind not in features]
    if missing:
        raise BidstrainError(f"the run has no aligned {missing} features", path=bold)
    aligned = [read_aligned_store(features[kind]) for kind in kinds]
    for kind, store in zip(kinds, aligned, strict=True):
        if store.kind != kind:
            raise BidstrainError(
                f"given as the run's {kind} features, but the store holds {store.kind} features",
                path=features[kind],
            )
    x = np.concatenate([store.features for store in aligned], axis=1)
    predicted = predict_run(model_path, x, describe(kinds, aligned))
    wanted = model["target"].get("kind", "voxels")
    have = "parcels" if read_meta(bold).stats_dim == "parcel" else "voxels"
    if have != wanted:
        raise BidstrainError(
            f"the encoding model predicts {wanted} but the store is of {have}", path=bold
        )
    time = np.asarray(aligned[0].time, np.float64)
    if have == "parcels":
        write_parcel_prediction(out, predicted, parcels=bold, time=time, source=str(model_path))
        return
    store = open_store(bold, use_dask=False)
    write_prediction(
        out,
        predicted,
        mask=np.asarray(store["mask"].values, bool),
        affine=read_meta(bold).affine,
        repetition_time=float(aligned[0].repetition_time),
        source=str(model_path),
        time=time,
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
    malformed = [item for item in args.features if "=" not in item]
    if malformed:
        raise BidstrainError(f"--features takes KIND=STORE pairs, got {malformed}")
    apply_to_stores(args.model, args.bold, dict(i.split("=", 1) for i in args.features), args.out)


if __name__ == "__main__":
    run_cli(main)
