"""Stimulus features on a run's frame times: placed from each event's onset, delayed by
the haemodynamic response, z-scored with statistics of the training runs only."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bidstrain.errors import BidstrainError
from bidstrain.io.store import ZERO_STD, FeatureStore
from bidstrain.stimuli.audio import SILENCE
from bidstrain.stimuli.index import Event, RunStimuli

#: Seconds of the canonical haemodynamic response kept (nilearn's default).
HRF_LENGTH = 32.0
#: Samples per TR of the fine grid the response is computed on (nilearn's default).
OVERSAMPLING = 50
#: What a frame that no stimulus of the kind covers holds: no light, silence (the log-mel
#: floor; a 0 there would be full-scale sound in every band) and no word. Frames before,
#: between and after a run's stimuli and the first frames of a delayed copy take it.
ABSENT = {"video": 0.0, "audio": SILENCE, "text": 0.0}
#: How frames without stimulus are filled: 1, zeros (full-scale sound for audio); 2,
#: :data:`ABSENT`. The plan's alignment spec holds it, so that aligned stores of another
#: definition are made again, and every aligned store records it.
DEFINITION = 2


@dataclass(frozen=True)
class Presentation:
    """One event of a run that presented a stimulus: when, for how long, and the
    stimulus's features per bin (``bin_width`` seconds each, on the stimulus clock)."""

    onset: float
    duration: float
    features: np.ndarray
    bin_width: float


@dataclass(frozen=True)
class FrameGrid:
    """The frames of a BOLD store's time grid: every frame's onset (``times``), their
    repetition time (``width``) and which frames the store keeps (``kept``; a run
    resampled in time leaves out frames that needed a dropped volume)."""

    times: np.ndarray
    width: float
    kept: np.ndarray

    @classmethod
    def volumes(cls, n_volumes: int, tr: float) -> FrameGrid:
        """A run's own volumes: ``j * tr``, every one kept."""
        return cls(np.arange(n_volumes) * tr, tr, np.ones(n_volumes, dtype=bool))

    @classmethod
    def of_store(cls, time: np.ndarray, frame_time: np.ndarray | None, tr: float) -> FrameGrid:
        """The grid of a store: its ``frame_time`` (or, without one, frames ``k * tr`` up
        to its last ``time``), keeping the frames whose onset is a ``time`` of ``data``.

        Raises
        ------
        ValueError
            When a ``time`` of the store is no frame of the grid.
        """
        grid = frame_time if frame_time is not None else np.arange(round(time[-1] / tr) + 1) * tr
        grid = np.asarray(grid, dtype=np.float64)
        nearest = np.clip(np.searchsorted(grid, time - 1e-6 * tr), 0, grid.size - 1)
        if np.abs(grid[nearest] - time).max(initial=0.0) > 1e-6 * tr:
            raise ValueError("the store's time points are not frames of its time grid")
        kept = np.zeros(grid.size, dtype=bool)
        kept[nearest] = True
        return cls(grid, tr, kept)


def place(presentations: Sequence[Presentation], grid: FrameGrid) -> tuple[np.ndarray, np.ndarray]:
    """Features of the stimulus on screen (or playing) during each frame of ``grid``.

    Frame ``j`` covers ``[times[j], times[j] + width)`` of the run; it takes the mean of
    the stimulus over that interval: each bin of stimulus time ``[k b, (k + 1) b)`` (``b``
    the bin width) weighted by its overlap with the frame shifted by the event's onset,
    over the frame's width; outside every event zeros (overlapping events add). A frame
    of the bins' own width, aligned with them, takes exactly one bin: features at the
    native TR; a frame of a longer or shorter common TR (``time.tr``) takes the mean of
    the bins it covers. An event that outlasts its bins (a transcript's bins end at its
    last word) holds zeros after them: silence, still during the event.

    Returns
    -------
    placed : ndarray, shape (n_frames, n_features), float64
    covered : ndarray, shape (n_frames,)
        The fraction of each frame during some event (overlapping events add), whether
        or not its bins reach that far.
    """
    n_features = presentations[0].features.shape[1]
    placed = np.zeros((grid.times.size, n_features))
    covered = np.zeros(grid.times.size)
    for shown in presentations:
        low = np.clip(grid.times - shown.onset, 0.0, shown.duration)
        high = np.clip(grid.times - shown.onset + grid.width, 0.0, shown.duration)
        edges = np.arange(shown.features.shape[0] + 1) * shown.bin_width
        overlap = np.minimum(high[:, None], edges[None, 1:]) - np.maximum(
            low[:, None], edges[None, :-1]
        )
        placed += np.clip(overlap, 0.0, None) @ shown.features / grid.width
        covered += (high - low) / grid.width
    return placed, covered


def seconds_without_stimulus(covered: np.ndarray, width: float) -> float:
    """Seconds of a run outside every event: ``covered`` (:func:`place`) of frames of
    ``width`` seconds, rounded to the microsecond (frames of 0.7 s would otherwise leave
    1e-14 s of rounding uncovered)."""
    return round(float(np.clip(1.0 - covered, 0.0, 1.0).sum() * width), 6)


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
    that never vary there (``constant``) keep a standard deviation of 1."""

    mean: np.ndarray
    std: np.ndarray
    training_runs: tuple[str, ...]
    constant: np.ndarray

    def apply(self, features: np.ndarray) -> np.ndarray:
        """``features`` z-scored with these statistics (training and held-out runs alike)."""
        return (features - self.mean) / self.std


class StatsAccumulator:
    """Mean and variance of the rows of many runs, one run at a time (Chan et al.'s
    pairwise update, in float64): memory of one run, whatever the number of runs."""

    def __init__(self) -> None:
        self.count = 0
        self.mean: np.ndarray | None = None
        self.m2: np.ndarray | None = None
        self.runs: list[str] = []

    def add(self, name: str, features: np.ndarray) -> None:
        """Add the rows of run ``name``."""
        features = np.asarray(features, dtype=np.float64)
        n, mean = features.shape[0], features.mean(axis=0)
        m2 = ((features - mean) ** 2).sum(axis=0)
        self.runs.append(name)
        if self.mean is None:
            self.count, self.mean, self.m2 = n, mean, m2
            return
        total = self.count + n
        shift = mean - self.mean
        self.mean = self.mean + shift * n / total
        self.m2 = self.m2 + m2 + shift**2 * self.count * n / total
        self.count = total

    def stats(self) -> FeatureStats:
        """The statistics of the runs added.

        Raises
        ------
        BidstrainError
            When no run was added.
        """
        if self.mean is None:
            raise BidstrainError("z-score statistics need at least one training run")
        std = np.sqrt(self.m2 / self.count)
        constant = std < ZERO_STD * np.maximum(1.0, np.abs(self.mean))
        return FeatureStats(self.mean, np.where(constant, 1.0, std), tuple(self.runs), constant)


def align_run(
    events: Sequence[Event],
    stores: Mapping[Path, FeatureStore],
    kind: str,
    grid: FrameGrid,
    method: str,
    delays: Sequence[int] = (),
    *,
    source_tr: float,
    where: Mapping[str, object] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The ``kind`` features (``video``, ``audio``, ``text``) of a run's stimuli on the
    frames its BOLD store keeps: placed from each event's onset on the whole frame grid
    (:func:`place`), delayed there (:func:`delay`, in frames of the grid), then the kept
    frames taken, so that row ``i`` is the store's ``time[i]``. Where no stimulus was
    shown, the features are the kind's :data:`ABSENT` value (a frame partly covered, the
    mean of both): placement and delays run on the features minus that value, whose
    zeros then stand for it.

    Parameters
    ----------
    events : sequence of Event
        The run's stimuli (:class:`~bidstrain.stimuli.index.RunStimuli` ``events``).
    stores : mapping of Path to FeatureStore
        Feature stores by stimulus file (:func:`~bidstrain.io.store.read_feature_store`).
    kind : str
        Which features.
    grid : FrameGrid
        The BOLD store's frames (:meth:`FrameGrid.volumes` for the run's own volumes).
    method : {"delays", "hrf"}
        ``stimuli.delay_method``.
    delays : sequence of int
        ``stimuli.delays`` (method ``delays``).
    source_tr : float
        The run's own TR, which its stimuli's features are binned at.
    where : mapping, optional
        ``path`` and ``subject`` of the error messages.

    Returns
    -------
    features : ndarray, shape (n_kept_frames, n_features)
        Raw scale; the alignment job z-scores them with the statistics of the training
        runs (:func:`bidstrain.stimuli.alignment.fit_group_stats`).
    covered : ndarray, shape (n_kept_frames,)
        The fraction of each frame during a stimulus of the kind.

    Raises
    ------
    BidstrainError
        When no stimulus of the run has ``kind`` features, or a store's TR is not the
        run's.
    """
    where = dict(where or {})
    shown = []
    for event in events:
        store = stores.get(event.stimulus)
        if store is None or kind not in store.features:
            continue
        if abs(store.meta.repetition_time - source_tr) > 1e-6:
            raise BidstrainError(
                f"the features of {event.stimulus} are per {store.meta.repetition_time:g} "
                f"s but the run's TR is {source_tr:g} s: recompute them",
                **where,
            )
        features = np.asarray(store.features[kind], dtype=np.float64) - ABSENT[kind]
        shown.append(Presentation(event.onset, event.duration, features, source_tr))
    if not shown:
        raise BidstrainError(f"no stimulus of this run has {kind} features", **where)
    placed, covered = place(shown, grid)
    delayed = delay(placed, grid.width, method, delays) + ABSENT[kind]
    return delayed[grid.kept], covered[grid.kept]


def _presented(event: Event) -> str:
    """How an error names a presented stimulus."""
    if event.words_digest:
        return f"the words of its events file (hash {event.words_digest})"
    return str(event.stimulus)


def same_presentations(runs: Mapping[str, RunStimuli | None], tolerance: float, name: str) -> None:
    """Check that the members of an average presented the same stimulus files at the
    same onsets (within ``tolerance`` seconds: one frame).

    Parameters
    ----------
    runs : mapping of str to RunStimuli or None
        Each member's stimuli (None: it presented none), by subject (label without
        ``sub-``).
    tolerance : float
        Seconds.
    name : str
        The average, for the message.

    Raises
    ------
    BidstrainError
        Naming the subjects whose stimuli differ from the first member's, how, and their
        events files.
    """
    subjects = list(runs)
    if not subjects:
        return

    def key(run: RunStimuli | None) -> list[tuple[str, float, str]]:
        events = run.events if run else ()
        return sorted((e.identity, e.onset, _presented(e)) for e in events)

    def shown(subject: str) -> str:
        run = runs[subject]
        events = ", ".join(f"{e[2]} at {e[1]:g} s" for e in key(run)) or "nothing"
        return f"sub-{subject} presented {events}" + (f" ({run.events_file})" if run else "")

    reference = key(runs[subjects[0]])
    differ = []
    for subject in subjects[1:]:
        own = key(runs[subject])
        if [e[0] for e in own] != [e[0] for e in reference] or any(
            abs(a[1] - b[1]) > tolerance for a, b in zip(own, reference, strict=True)
        ):
            differ.append(shown(subject))
    if differ:
        raise BidstrainError(
            f"the average {name} needs one stimulus for all its subjects, but "
            f"{shown(subjects[0])} and " + "; ".join(differ) + " "
            f"(tolerance {tolerance:g} s, one frame): average runs that presented the same "
            "stimulus (normalize.heldout or the task/run entities), or leave the others out"
        )
