"""Held-out validation: per target (voxel or parcel) correlation, R^2 and MSE of a
prediction, for the model and its two baselines computed in the same job.

- ``mean``: the training mean of each target, a constant prediction. Its correlation is
  undefined (a constant has no variance): it is reported as ``null`` in the JSON and
  ``n/a`` in the table; its R^2 (at most 0: ``-(held-out mean - training mean)^2 /
  held-out variance``) and MSE are reported.
- ``ridge``: scikit-learn's ``RidgeCV`` on the same features (alphas ``encoding.
  ridge_alphas``, efficient leave-one-out on the training time points, one alpha for all
  targets), the standard tool of encoding-model research.

Chance is measured per target by a circular-shift null (:func:`shift_null`): the
prediction's correlation with the measured series rotated in time keeps both series'
autocorrelation, which an unrelated prediction of slow BOLD shares, and which a bound
on independent frames (``1 / sqrt(time points)`` per standard deviation) ignores.

Every statistic is computed in float64.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

#: Standard deviations below this make a correlation undefined (NaN).
FLAT = 1e-12

#: False discovery rate at which targets count as predicted above chance
#: (Benjamini-Hochberg over the targets' circular-shift p-values).
FDR = 0.05

#: Targets whose rotated correlations are computed together (bounds the memory).
SHIFT_BLOCK = 4096


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


@dataclass(frozen=True)
class ShiftNull:
    """Per-target circular-shift test of one prediction's held-out correlation
    (:func:`shift_null`).

    Attributes
    ----------
    p : ndarray
        One-sided p-value of each target's correlation: ``(1 + rotations whose
        correlation is at least the observed one) / time points``; NaN where the
        correlation is undefined.
    r95 : ndarray
        The 95th percentile of each target's rotated correlations: how high an unrelated
        prediction's r gets for that target (NaN as for ``p``).
    """

    p: np.ndarray
    r95: np.ndarray

    def summary(self) -> dict[str, float | int | None]:
        """Targets with a p-value, those significant at :data:`FDR` (Benjamini-Hochberg)
        and the median of ``r95`` over the targets (``None`` without a p-value)."""
        defined = np.isfinite(self.p)
        if not defined.any():
            return {"tested_targets": 0, "significant_targets": None, "median_null_r95": None}
        return {
            "tested_targets": int(defined.sum()),
            "significant_targets": int(above_chance(self.p).sum()),
            "median_null_r95": float(np.median(self.r95[defined])),
        }


def above_chance(p: np.ndarray) -> np.ndarray:
    """Which targets beat chance: Benjamini-Hochberg over the targets with a p-value
    (scipy's ``false_discovery_control``) at :data:`FDR`; False where ``p`` is NaN."""
    p = np.asarray(p, np.float64)
    defined = np.isfinite(p)
    above = np.zeros(p.shape, bool)
    if defined.any():
        from scipy.stats import false_discovery_control

        above[defined] = false_discovery_control(p[defined], method="bh") <= FDR
    return above


def shift_null(predicted: np.ndarray, measured: np.ndarray) -> ShiftNull:
    """Test each target's held-out correlation against the same prediction's
    correlations with the measured series rotated by each of its ``time - 1`` nonzero
    circular shifts.

    A rotation keeps both series' autocorrelation, so the null holds for an unrelated
    prediction of slow BOLD, whose correlations spread far wider than over independent
    frames. Every rotation is used: the rotations form a group, so for a series whose
    statistics a rotation does not change (a stationary one, but for the seam where its
    end meets its start) the observed correlation's rank among them is uniform and the
    test exact; unrelated AR(1) series pass it at the nominal rate. Leaving out the small
    shifts, as a guard against a related prediction's autocorrelation, breaks that: it
    lets through 7 to 10 % of unrelated AR(1) series at 0.05, while a prediction that
    fits peaks at shift 0 and loses little power to its neighbours. The held-out runs
    are rotated as one series, in the order they are concatenated; the smallest p-value
    is ``1 / time points``.

    Parameters
    ----------
    predicted, measured : ndarray, shape (time, targets)

    Returns
    -------
    ShiftNull
        Computed through the FFT (circular cross-correlation of the centred columns),
        :data:`SHIFT_BLOCK` targets at a time, in float64: memory beyond the inputs
        grows with the block, not with the targets.
    """
    n, n_targets = measured.shape
    p_value, r95 = np.full(n_targets, np.nan), np.full(n_targets, np.nan)
    for start in range(0, n_targets, SHIFT_BLOCK):
        block = slice(start, start + SHIFT_BLOCK)
        pc, mc = (np.asarray(a[:, block], np.float64) for a in (predicted, measured))
        pc, mc = pc - pc.mean(axis=0), mc - mc.mean(axis=0)
        ps, ms = np.sqrt((pc**2).sum(axis=0)), np.sqrt((mc**2).sum(axis=0))
        defined = (ps > FLAT * np.sqrt(n)) & (ms > FLAT * np.sqrt(n)) & (n > 1)
        spectrum = np.conj(np.fft.rfft(pc, axis=0)) * np.fft.rfft(mc, axis=0)
        cross = np.fft.irfft(spectrum, n=n, axis=0)  # cross[k] = sum_t pc[t] mc[t + k]
        r = cross / np.where(defined, ps * ms, 1.0)
        exceed = (r[1:] >= r[0] - 1e-12).sum(axis=0)  # ties at rounding count as exceeding
        p_value[block] = np.where(defined, (1 + exceed) / n, np.nan)
        if n > 1:
            r95[block] = np.where(defined, np.quantile(r[1:], 0.95, axis=0), np.nan)
    return ShiftNull(p_value, r95)
