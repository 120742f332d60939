"""What the encoding job writes: the model (``model.pt``), ``model.json`` (the stimulus
features it takes and the target it predicts), the metrics (JSON summary and a TSV per
voxel or parcel) and the held-out time courses the figures draw. Every file is written
atomically."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bidstrain.encoding.evaluate import Scores, ShiftNull
from bidstrain.encoding.fit import Fitted
from bidstrain.errors import BidstrainError
from bidstrain.io.atomic import atomic_path, write_text_atomic

METHOD = "linear, ridge-penalised, full-batch AdamW over time points"


def model_description(
    fitted: Fitted, features: Mapping[str, Any], target: Mapping[str, Any], settings: Mapping
) -> dict[str, Any]:
    """The content of ``model.json``."""
    return {
        "model": "encoding",
        "method": METHOD,
        "alpha": fitted.alpha,
        "steps": fitted.steps,
        "final_objective": fitted.loss,
        "n_features": int(fitted.weight.shape[1]),
        "n_targets": int(fitted.weight.shape[0]),
        "settings": dict(settings),
        "features": dict(features),
        "target": dict(target),
    }


def write_model(path: str | Path, fitted: Fitted, description: Mapping[str, Any]) -> None:
    """``model.pt``: weights (targets x features, float32), intercept and description."""
    state = {"weight": torch.as_tensor(fitted.weight), "bias": torch.as_tensor(fitted.bias)}
    with atomic_path(path) as tmp:
        torch.save({"state": state, "description": dict(description)}, tmp)


def read_model(path: str | Path) -> tuple[Fitted, dict[str, Any]]:
    """The fitted model and description of a ``model.pt`` (:func:`write_model`).

    Raises
    ------
    BidstrainError
        Naming the file when it is missing or not an encoding model.
    """
    try:
        content = torch.load(path, map_location="cpu", weights_only=False)
        state, description = content["state"], content["description"]
    except (OSError, KeyError, TypeError, RuntimeError) as error:
        raise BidstrainError(f"not an encoding model: {error}", path=path) from None
    fitted = Fitted(
        weight=state["weight"].numpy(),
        bias=state["bias"].numpy(),
        alpha=description["alpha"],
        steps=description["steps"],
        loss=description["final_objective"],
    )
    return fitted, description


def write_metrics(
    json_path: str | Path,
    table_path: str | Path,
    scores: Mapping[str, Scores],
    nulls: Mapping[str, ShiftNull],
    extra: Mapping[str, Any],
    target: Mapping[str, Any],
) -> None:
    """The summary of each prediction's scores (JSON) and the per-target table (TSV).

    The table has one row per target and ``<prediction>_<statistic>`` columns, then
    ``<prediction>_p`` for the predictions ``nulls`` tests (their circular-shift
    p-values); undefined values are ``n/a``. The JSON adds, for those predictions, the
    targets significant at the false discovery rate and the median null r95
    (:meth:`~bidstrain.encoding.evaluate.ShiftNull.summary`). A target is a voxel
    (column ``voxel``: its index in the average's mask order) or, when ``target`` lists
    ``parcels``, a parcel (column ``parcel``: its label value, then ``name``).
    """
    predictions = {
        name: {**s.summary(), **(nulls[name].summary() if name in nulls else {})}
        for name, s in scores.items()
    }
    summary = {"predictions": predictions, **extra}
    write_text_atomic(json_path, json.dumps(summary, indent=2, allow_nan=False) + "\n")
    columns = {
        f"{name}_{stat}": getattr(s, stat)
        for name, s in scores.items()
        for stat in ("correlation", "r2", "mse")
    }
    columns |= {f"{name}_p": null.p for name, null in nulls.items()}
    values = np.stack(list(columns.values()), axis=1)
    n = values.shape[0]
    if "parcels" in target:
        header = ["parcel", "name"]
        labels = zip(target["parcels"], target["parcel_names"], strict=True)
        keys = [[str(label), name] for label, name in labels]
    else:
        header, keys = ["voxel"], [[str(index)] for index in range(n)]
    lines = ["\t".join([*header, *columns])]
    for index in range(n):
        cells = ["n/a" if not np.isfinite(v) else f"{v:.6g}" for v in values[index]]
        lines.append("\t".join([*keys[index], *cells]))
    write_text_atomic(table_path, "\n".join(lines) + "\n")


def write_predictions(path: str | Path, measured: np.ndarray, **predicted: np.ndarray) -> None:
    """The held-out time courses (``measured`` and each prediction) as one ``.npz``."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.savez(handle, measured=measured, **predicted)
