"""Held-out validation: per target (voxel or parcel) correlation, R^2 and MSE of a
prediction, for the model and its two baselines computed in the same job.

- ``mean``: the training mean of each target, a constant prediction. Its correlation is
  undefined (a constant has no variance): it is reported as ``null`` in the JSON and
  ``n/a`` in the table; its R^2 (at most 0: ``-(held-out mean - training mean)^2 /
  held-out variance``) and MSE are reported.
- ``ridge``: scikit-learn's ``RidgeCV`` on the same features (alphas ``encoding.
  ridge_alphas``, efficient leave-one-out on the training time points, one alpha for all
  targets), the standard tool of encoding-model research.

Every statistic is computed in float64.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

#: Standard deviations below this make a correlation undefined (NaN).
FLAT = 1e-12


@dataclass(frozen=True)
class Scores:
    """Per-target held-out scores of one prediction (float64 arrays, NaN: undefined)."""

    correlation: np.ndarray
    r2: np.ndarray
    mse: np.ndarray

    def summary(self) -> dict[str, float | None]:
        """Mean and median over targets (``None`` when undefined everywhere)."""
        out: dict[str, float | None] = {}
        for name in ("correlation", "r2", "mse"):
            values = getattr(self, name)
            finite = values[np.isfinite(values)]
            out[f"mean_{name}"] = float(finite.mean()) if finite.size else None
            out[f"median_{name}"] = float(np.median(finite)) if finite.size else None
        return out


def score(predicted: np.ndarray, measured: np.ndarray) -> Scores:
    """Pearson correlation over time, R^2 and MSE of each column.

    Parameters
    ----------
    predicted, measured : ndarray, shape (time, targets)
        A constant ``predicted`` column has an undefined (NaN) correlation.
    """
    p = np.asarray(predicted, np.float64)
    m = np.asarray(measured, np.float64)
    pc, mc = p - p.mean(axis=0), m - m.mean(axis=0)
    ps, ms = np.sqrt((pc**2).sum(axis=0)), np.sqrt((mc**2).sum(axis=0))
    defined = (ps > FLAT * np.sqrt(len(p))) & (ms > FLAT * np.sqrt(len(m)))
    correlation = np.full(p.shape[1], np.nan)
    correlation[defined] = (pc * mc).sum(axis=0)[defined] / (ps * ms)[defined]
    mse = ((p - m) ** 2).mean(axis=0)
    variance = m.var(axis=0)
    r2 = np.where(variance > 0, 1.0 - mse / np.where(variance > 0, variance, 1.0), np.nan)
    return Scores(correlation, r2, mse)


def mean_prediction(train_y: np.ndarray, n_time: int) -> np.ndarray:
    """The ``mean`` baseline: each target's training mean at every held-out time point."""
    return np.broadcast_to(np.asarray(train_y, np.float64).mean(axis=0), (n_time, train_y.shape[1]))


@dataclass(frozen=True)
class RidgeBaseline:
    """RidgeCV fitted on the training runs: its chosen alpha and held-out prediction."""

    alpha: float
    predicted: np.ndarray


def ridge_baseline(
    train_x: np.ndarray, train_y: np.ndarray, heldout_x: np.ndarray, alphas: Sequence[float]
) -> RidgeBaseline:
    """Fit scikit-learn's ``RidgeCV`` (leave-one-out over ``alphas``) in float64."""
    from sklearn.linear_model import RidgeCV

    model = RidgeCV(alphas=np.asarray(alphas, np.float64))
    model.fit(np.asarray(train_x, np.float64), np.asarray(train_y, np.float64))
    return RidgeBaseline(float(model.alpha_), model.predict(np.asarray(heldout_x, np.float64)))


def chance_bound(n_time: int, z: float = 4.0) -> float:
    """``z / sqrt(n_time)``: the bound on |r| of an unrelated prediction at ``z`` standard
    errors (the null distribution of r over ``n_time`` independent points has standard
    deviation ``~1 / sqrt(n_time)``)."""
    return z / np.sqrt(n_time)
