"""Summary statistics of a modality's values, as the scale table, ``model.json`` and the
embedding stage report them."""

from __future__ import annotations

import numpy as np


def value_stats(values: np.ndarray) -> dict[str, float]:
    """min, max, mean, std, 1st and 99th percentile, and the MSE of a zero prediction."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if not values.size:
        return dict.fromkeys(("min", "max", "mean", "std", "p1", "p99", "mse_zero"), float("nan"))
    p1, p99 = np.percentile(values, [1, 99])
    return {
        "min": float(values.min()),
        "max": float(values.max()),
        "mean": float(values.mean()),
        "std": float(values.std()),
        "p1": float(p1),
        "p99": float(p99),
        "mse_zero": float(np.mean(np.square(values))),
    }
