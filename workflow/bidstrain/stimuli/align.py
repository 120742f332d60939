"""Stimulus features on a run's frame times: placed from each event's onset, delayed by
the haemodynamic response, z-scored with statistics of the training runs only."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from bidstrain.errors import BidstrainError
from bidstrain.io.store import ZERO_STD

#: Seconds of the canonical haemodynamic response kept (nilearn's default).
HRF_LENGTH = 32.0


@dataclass(frozen=True)
class Presentation:
    """One event of a run that presented a stimulus: when, for how long, and the
    stimulus's features per TR (bins of the run's TR on the stimulus clock)."""

    onset: float
    duration: float
    features: np.ndarray


def place(presentations: Sequence[Presentation], n_volumes: int, tr: float) -> np.ndarray:
    """Features of the stimulus on screen (or playing) at each volume's acquisition time.

    Volume ``j`` is acquired at ``j * tr`` seconds; during an event it takes the bin of
    stimulus time ``j * tr - onset``, outside every event zeros (overlapping events add).

    Returns
    -------
    ndarray, shape (n_volumes, n_features), float64
    """
    n_features = presentations[0].features.shape[1]
    placed = np.zeros((n_volumes, n_features))
    times = np.arange(n_volumes) * tr
    for shown in presentations:
        since = times - shown.onset
        bins = np.floor(since / tr + 1e-9).astype(np.int64)
        inside = (since >= -1e-9) & (since < shown.duration - 1e-9)
        inside &= bins < shown.features.shape[0]
        placed[inside] += shown.features[bins[inside]]
    return placed


def stack_delays(features: np.ndarray, delays: Sequence[int]) -> np.ndarray:
    """Copies of ``features`` delayed by each of ``delays`` volumes, side by side (zeros
    before the first volume).

    Returns
    -------
    ndarray, shape (n_volumes, n_features * len(delays))
    """
    copies = []
    for delay in delays:
        shifted = np.zeros_like(features)
        shifted[delay:] = features[: features.shape[0] - delay] if delay else features
        copies.append(shifted)
    return np.concatenate(copies, axis=1)


def glover_kernel(tr: float) -> np.ndarray:
    """nilearn's canonical (Glover) haemodynamic response sampled once per TR."""
    from nilearn.glm.first_level.hemodynamic_models import glover_hrf

    return glover_hrf(tr, oversampling=1, time_length=HRF_LENGTH)


def convolve_hrf(features: np.ndarray, tr: float) -> np.ndarray:
    """Each feature convolved (causally) with :func:`glover_kernel`, cut to the run's length."""
    kernel = glover_kernel(tr)
    n = features.shape[0]
    return np.stack([np.convolve(column, kernel)[:n] for column in features.T], axis=1).reshape(
        n, -1
    )


def delay(features: np.ndarray, tr: float, method: str, delays: Sequence[int]) -> np.ndarray:
    """The haemodynamic delay of ``stimuli.delay_method``: ``delays`` or ``hrf``."""
    if method == "delays":
        return stack_delays(features, delays)
    if method == "hrf":
        return convolve_hrf(features, tr)
    raise ValueError(f"unknown delay method {method!r}")


@dataclass(frozen=True)
class FeatureStats:
    """Per-feature mean and standard deviation of the training runs (ddof 0); features
    that never vary there keep a standard deviation of 1."""

    mean: np.ndarray
    std: np.ndarray
    training_runs: tuple[str, ...]

    def apply(self, features: np.ndarray) -> np.ndarray:
        """``features`` z-scored with these statistics (training and held-out runs alike)."""
        return (features - self.mean) / self.std


def fit_stats(runs: Mapping[str, np.ndarray], training: Iterable[str]) -> FeatureStats:
    """Z-score statistics of aligned features, from the training runs alone.

    Parameters
    ----------
    runs : mapping of str to ndarray, shape (n_volumes, n_features)
        Aligned features of every run, by run name (e.g. its BIDS prefix).
    training : iterable of str
        The runs whose volumes give the statistics; the others (held out) only use them.

    Raises
    ------
    BidstrainError
        When no training run is given, or one is not among ``runs``.
    """
    training = tuple(training)
    unknown = sorted(set(training) - set(runs))
    if not training or unknown:
        raise BidstrainError(
            f"z-score statistics need training runs among the aligned ones; unknown: "
            f"{unknown or 'none given'}"
        )
    stacked = np.concatenate([runs[name] for name in training], axis=0)
    mean, std = stacked.mean(axis=0), stacked.std(axis=0)
    return FeatureStats(mean, np.where(std < ZERO_STD, 1.0, std), training)
