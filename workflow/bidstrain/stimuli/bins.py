"""Average a stream of timed values over bins of one repetition time, one bin at a time."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np


def tr_bin(time: float, tr: float) -> int:
    """The bin ``k`` with ``k * tr <= time < (k + 1) * tr`` (times on a bin edge, up to
    rounding, fall in the later bin)."""
    return int(np.floor(time / tr + 1e-9))


def bin_means(timed: Iterable[tuple[np.ndarray, ...]], tr: float) -> Iterator[np.ndarray]:
    """Mean of the values in each TR bin, yielded as soon as the bin is complete.

    Holds one bin's running sum (float64), never the stream: memory does not grow with
    the stimulus's length.

    Parameters
    ----------
    timed : iterable of (times, values[, weights[, durations]])
        Blocks in time order: ``times`` shape ``(n,)`` in seconds, ``values`` shape
        ``(n, ...)``, one row per time; optionally ``weights`` shape ``(n,)``: how much
        each row counts in its bin's mean (1 each without), and ``durations`` shape
        ``(n,)``: the seconds each row lasts from its time (a video frame's display
        time). A row with a duration counts in every bin it overlaps, its weight split in
        proportion to the overlap; a row without one counts in the bin of its time.
    tr : float
        Bin width in seconds.

    Yields
    ------
    ndarray, shape (...)
        The (weighted) mean of bin 0, 1, 2, ... up to the last bin holding a value. A bin
        holding none repeats the previous bin's mean; empty bins before the first value
        are zeros.
    """
    running = _Running()
    for block in timed:
        values = np.asarray(block[1], dtype=np.float64)
        if running.total is None and len(values):
            running.total = np.zeros(values.shape[1:])
        for k, total, count in _contributions(block, values, tr):
            yield from running.complete_before(k)
            running.total += total
            running.count += count
    if running.count:
        yield running.total / running.count


class _Running:
    """The sum and the weight of the bin being filled (``current``), and the mean of the
    last bin completed."""

    def __init__(self):
        self.total: np.ndarray | None = None
        self.count = 0.0
        self.current = 0
        self.previous: np.ndarray | None = None

    def complete_before(self, k: int) -> Iterator[np.ndarray]:
        """Yield the means of the bins before bin ``k`` not yet yielded."""
        while k > self.current:
            if self.count:
                self.previous = self.total / self.count
            elif self.previous is None:
                self.previous = np.zeros_like(self.total)
            yield self.previous
            self.total, self.count, self.current = np.zeros_like(self.total), 0.0, self.current + 1


def _contributions(
    block: tuple[np.ndarray, ...], values: np.ndarray, tr: float
) -> Iterator[tuple[int, np.ndarray, float]]:
    """``(bin, weighted sum, weight)`` of a block's rows, bin after bin."""
    times = np.asarray(block[0], dtype=np.float64)
    weights = np.asarray(block[2], dtype=np.float64) if len(block) > 2 else None
    if len(block) > 3:
        for row, (time, duration) in enumerate(zip(times, block[3], strict=True)):
            weight = 1.0 if weights is None else weights[row]
            for k, share in _overlaps(time, float(duration), tr):
                yield k, share * weight * values[row], share * weight
        return
    bins = np.floor(times / tr + 1e-9).astype(np.int64)
    if bins.size == 1:  # one row: no selection, no reduction
        weight = 1.0 if weights is None else weights[0]
        yield int(bins[0]), values[0] if weights is None else weight * values[0], weight
        return
    for k in np.unique(bins):
        rows = bins == k
        if weights is None:
            yield int(k), values[rows].sum(axis=0), int(rows.sum())
        else:
            yield int(k), np.tensordot(weights[rows], values[rows], axes=1), weights[rows].sum()


def _overlaps(start: float, duration: float, tr: float) -> list[tuple[int, float]]:
    """The bins ``[start, start + duration)`` overlaps, each with the fraction of the
    duration in it (exactly 1 for one bin: a row within a bin keeps its weight's digits)."""
    first = tr_bin(start, tr)
    end = start + duration
    last = max(first, int(np.ceil(end / tr - 1e-9)) - 1)
    if last == first or duration <= 0:
        return [(first, 1.0)]
    return [
        (k, (min(end, (k + 1) * tr) - max(start, k * tr)) / duration)
        for k in range(first, last + 1)
    ]
