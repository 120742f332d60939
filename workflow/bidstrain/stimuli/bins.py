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
    timed : iterable of (times, values) or (times, values, weights)
        Blocks in time order: ``times`` shape ``(n,)`` in seconds, ``values`` shape
        ``(n, ...)``, one row per time, and optionally ``weights`` shape ``(n,)``: how
        much each row counts in its bin's mean (a video frame's display time); 1 each
        without.
    tr : float
        Bin width in seconds.

    Yields
    ------
    ndarray, shape (...)
        The (weighted) mean of bin 0, 1, 2, ... up to the last bin holding a value. A bin
        holding none (a frame rate below one frame per TR) repeats the previous bin's
        mean; empty bins before the first value are zeros.
    """
    total, count, current, previous = None, 0, 0, None
    for block in timed:
        bins = np.floor(np.asarray(block[0], dtype=np.float64) / tr + 1e-9).astype(np.int64)
        values = np.asarray(block[1], dtype=np.float64)
        weights = np.asarray(block[2], dtype=np.float64) if len(block) > 2 else None
        if total is None and len(values):
            total = np.zeros(values.shape[1:])
        for k in np.unique(bins) if bins.size > 1 else bins:
            while k > current:
                previous = total / count if count else _held(previous, total)
                yield previous
                total, count, current = np.zeros_like(total), 0, current + 1
            if bins.size == 1:  # one row (a video frame): no selection, no reduction
                weight = 1.0 if weights is None else weights[0]
                total += values[0] if weights is None else weight * values[0]
                count += weight
            elif weights is None:
                total += values[bins == k].sum(axis=0)
                count += int((bins == k).sum())
            else:
                total += np.tensordot(weights[bins == k], values[bins == k], axes=1)
                count += weights[bins == k].sum()
    if count:
        yield total / count


def _held(previous: np.ndarray | None, total: np.ndarray) -> np.ndarray:
    return np.zeros_like(total) if previous is None else previous
