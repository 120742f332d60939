"""Stimulus features on a run's frame times: placed from each event's onset, delayed by
the haemodynamic response, z-scored with statistics of the training runs only."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bidstrain.errors import BidstrainError
from bidstrain.io.store import ZERO_STD, FeatureStore
from bidstrain.stimuli.index import RunStimuli

#: Seconds of the canonical haemodynamic response kept (nilearn's default).
HRF_LENGTH = 32.0
#: Samples per TR of the fine grid the response is computed on (nilearn's default).
OVERSAMPLING = 50


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


def tr_kernel(tr: float, oversampling: int = OVERSAMPLING) -> np.ndarray:
    """nilearn's canonical (Glover) haemodynamic response, as weights of whole TRs.

    A feature holds its value for a whole TR, so the response at volume ``j`` is
    ``sum_m K[m] x[j - m]`` with ``K[m]`` the sum of the fine-grid response
    (``glover_hrf`` at ``oversampling`` samples per TR, summing to 1) over the samples
    that fall ``m`` TRs back: exactly what convolving the upsampled features on the fine
    grid and reading it at the volumes gives, with no fine grid in memory.

    Returns
    -------
    ndarray, shape (n_lags,)
        Sums to 1: a sustained feature of 1 drives a response of 1.
    """
    from nilearn.glm.first_level.hemodynamic_models import glover_hrf

    fine = glover_hrf(tr, oversampling=oversampling, time_length=HRF_LENGTH)
    n_lags = -(-(fine.size - 1) // oversampling) + 1
    padded = np.zeros(1 + (n_lags - 1) * oversampling)
    padded[: fine.size] = fine
    return np.concatenate([padded[:1], padded[1:].reshape(-1, oversampling).sum(axis=1)])


def convolve_hrf(features: np.ndarray, tr: float) -> np.ndarray:
    """Each feature convolved (causally) with the response of :func:`tr_kernel`: one
    weighted, shifted copy of the whole array per lag (a film's thousands of pixels at
    once).

    Returns
    -------
    ndarray, shape (n_volumes, n_features), float64
    """
    features = np.asarray(features, dtype=np.float64)
    n = features.shape[0]
    convolved = np.zeros_like(features)
    for lag, weight in enumerate(tr_kernel(tr)[:n]):
        convolved[lag:] += weight * features[: n - lag]
    return convolved


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


def align_run(
    run: RunStimuli,
    stores: Mapping[Path, FeatureStore],
    kind: str,
    method: str,
    delays: Sequence[int] = (),
) -> np.ndarray:
    """The ``kind`` features (``video``, ``audio``, ``text``) of a run's stimuli on its
    volumes: placed from each event's onset (:func:`place`), then delayed (:func:`delay`).

    Parameters
    ----------
    run : RunStimuli
        The run, from :class:`~bidstrain.stimuli.index.StimulusIndex`.
    stores : mapping of Path to FeatureStore
        Feature stores by stimulus file (:func:`~bidstrain.io.store.read_feature_store`).
    kind : str
        Which features.
    method : {"delays", "hrf"}
        ``stimuli.delay_method``.
    delays : sequence of int
        ``stimuli.delays`` (method ``delays``).

    Returns
    -------
    ndarray, shape (n_volumes, n_features)
        Raw scale; z-score with :func:`fit_stats` of the training runs.

    Raises
    ------
    BidstrainError
        When no stimulus of the run has ``kind`` features, or a store's TR is not the
        run's (naming the events file and subject).
    """
    where = {"path": run.events_file, "subject": run.image.subject}
    shown = []
    for event in run.events:
        store = stores.get(event.stimulus)
        if store is None or kind not in store.features:
            continue
        if abs(store.meta.repetition_time - run.repetition_time) > 1e-6:
            raise BidstrainError(
                f"the features of {event.stimulus.name} are per {store.meta.repetition_time:g} "
                f"s but the run's TR is {run.repetition_time:g} s: recompute them",
                **where,
            )
        shown.append(Presentation(event.onset, event.duration, store.features[kind]))
    if not shown:
        raise BidstrainError(f"no stimulus of this run has {kind} features", **where)
    placed = place(shown, run.n_volumes, run.repetition_time)
    return delay(placed, run.repetition_time, method, delays)
