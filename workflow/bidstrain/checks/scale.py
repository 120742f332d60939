"""Scale table: what the values of each modality look like, raw and as the model sees them.

The zero-prediction MSE (the mean of the squared values) is the loss an untrained model
starts from under a plain MSE: when one modality's is orders of magnitude above the
others (data left at scanner scale), that modality dominates every gradient.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from bidstrain.checks import Check, verdict
from bidstrain.stats import value_stats

NAME = "scale_table"


def check_scale(
    normalized: Mapping[str, np.ndarray], raw: Mapping[str, np.ndarray], *, max_ratio: float
) -> Check:
    """Compare the modalities' zero-prediction MSE on the values training reads.

    Parameters
    ----------
    normalized : mapping
        ``{modality: sampled values of the stores training reads}``.
    raw : mapping
        ``{modality: sampled values of the raw images behind them}``.
    max_ratio : float
        ``checks.max_scale_ratio``.
    """
    table = {
        "raw": {m: value_stats(v) for m, v in raw.items()},
        "normalized": {m: value_stats(v) for m, v in normalized.items()},
        "max_scale_ratio": max_ratio,
    }
    mse = {m: stats["mse_zero"] for m, stats in table["normalized"].items()}
    fails = []
    if len(mse) > 1:
        high, low = max(mse, key=mse.get), min(mse, key=mse.get)
        ratio = mse[high] / mse[low] if mse[low] > 0 else float("inf")
        table["ratio"] = ratio
        if not ratio <= max_ratio:
            fails.append(
                f"the zero-prediction MSE of normalized {high} ({mse[high]:.4g}) is "
                f"{ratio:.3g}x that of {low} ({mse[low]:.4g}), above checks.max_scale_ratio "
                f"{max_ratio}: {high} would dominate the loss (is its normalization switched "
                f"off or its store stale? {high} values span {table['normalized'][high]['p1']:.4g}"
                f" to {table['normalized'][high]['p99']:.4g})"
            )
    listing = ", ".join(f"{m} {v:.3g}" for m, v in mse.items())
    return verdict(NAME, fails, [], f"zero-prediction MSE per modality: {listing}", table)
