"""BOLD runs at one repetition time: resampling in time, streamed in time order.

A run acquired every ``source_tr`` seconds is resampled onto the frames ``k * target_tr``
(``k = 0, 1, ...`` up to its last volume's onset: nothing is extrapolated) by one of
:data:`METHODS`. Every method is local: a target frame depends on the source volumes of
its *support* (:class:`TimeGrid`), so frames come out in time order while volumes stream
in, and :class:`TimeResampler` holds only the source volumes of the supports still to come
(a few to a few dozen volumes of the masked voxels), whatever the length of the run.

``linear``
    Straight lines between neighbouring volumes (``numpy.interp``); support 2 volumes.
    Error for a signal ``f`` with a continuous second derivative: at most
    ``source_tr**2 / 8 * max|f''|`` (for a sinusoid of amplitude ``A`` and frequency
    ``f0``: ``A * (pi * f0 * source_tr)**2 / 2``). Attenuates high frequencies; no
    overshoot.
``pchip``
    ``scipy.interpolate.PchipInterpolator``'s interpolant of the whole run (monotone
    piecewise cubic Hermite, as the fMRI-FM evaluation suites resample), to float64
    rounding; support 4 volumes (3 at the run's ends). Computed here, streamed: each
    volume's slope by scipy's rule (:func:`pchip_slopes`) once, then each frame as four
    weighted rows (building scipy's interpolator for each batch of frames made a
    96x96x96x300 job take 3.5 times as long: BENCHMARKS.md). Error: third
    order in ``source_tr`` away from the signal's extrema; near an extremum its slope is
    limited and the error is of the linear method's order, so ``source_tr**2 / 8 *
    max|f''|`` bounds it in practice (measured on the tests' sums of slow sinusoids: up
    to 0.9 of that bound). No overshoot.
``fourier``
    Band-limited (windowed sinc): the low-pass filter of ``scipy.signal.resample_poly``
    (a Kaiser window, beta 5, half-width ``10 * max(source_tr, target_tr)`` seconds; the
    cut-off the lower of the two Nyquist frequencies) evaluated at the exact frame times,
    so any ratio of repetition times works without a rational approximation, and every
    row of weights sums to 1 (a constant stays exactly constant). Downsampling removes
    the frequencies above the target Nyquist instead of aliasing them. Within the
    half-width of a run's end, the filter's taps beyond the end are folded back by an odd
    reflection about the end volume (``x[-k] = 2 x[0] - x[k]``, as ``scipy.signal.
    filtfilt``'s default padding), so a local trend goes on through the end. Error, for
    a sinusoid at a fraction of the cut-off (2.0 s to 0.8 s, worst phase, in its
    amplitude): on frames at least the half-width away from the ends, at most ``2e-3``
    below 0.5 of the cut-off and ``4e-3`` at 0.8 (the Kaiser window's ripple); within the
    half-width of an end 0.1 % at 0.04, 0.4 % at 0.1, 1.6 % at 0.2, 6.9 % at 0.4, 12 % at
    0.5 and 48 % at 0.8 of the cut-off (``tests/test_resample_time.py``).
    Support ``2 * 10 * max(source_tr, target_tr) / source_tr`` volumes.

Volumes a run's sample mask drops (non-steady-state, scrubbed: see
:mod:`~bidstrain.normalize.confounds`) are never interpolated through: they enter the
computation as the voxel's mean (a deviation of 0), and every target frame whose support
holds one is *invalid* (:attr:`TimeGrid.valid`): it is left out of the store, which keeps
``frame_time`` and ``frame_valid`` of every frame and counts the invalid ones
(:mod:`bidstrain.io.store`). A target repetition time equal to the source's (within
:data:`SAME_TR`) is the identity for every method.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bidstrain.normalize.moments import VoxelMoments, voxel_tiles

#: Config ``time.method`` values.
METHODS = ("linear", "pchip", "fourier")
#: Repetition times closer than this (seconds) are the same: no resampling.
SAME_TR = 1e-6
#: The band-limited filter's half-width, in the longer of the two repetition times, and
#: its Kaiser window's beta (``scipy.signal.resample_poly``'s defaults).
FOURIER_HALF_WIDTH = 10
KAISER_BETA = 5.0
#: Target frames computed together (one matrix of weights; one output buffer).
BATCH_FRAMES = 4
#: The same for ``fourier``, each of whose batches reads its whole support (20 volumes
#: from 2.0 s to 0.8 s; 21 for 4 frames, 25 for 16): 16 frames took a 96x96x96x300 job
#: from 6.26 s to 5.16 s (BENCHMARKS.md).
FOURIER_BATCH_FRAMES = 16


@dataclass(frozen=True)
class TimeGrid:
    """The target frames of one run and the source volumes each one depends on.

    Attributes
    ----------
    source_tr, target_tr : float
        Repetition times in seconds.
    method : str
        One of :data:`METHODS`, or ``"none"`` (same repetition time: the identity).
    n_source : int
        Volumes of the run.
    times : ndarray, shape (n_frames,)
        Onset of each target frame in seconds.
    first, last : ndarray of int, shape (n_frames,)
        The support of each frame: source volumes ``first`` to ``last`` (inclusive).
    valid : ndarray of bool, shape (n_frames,)
        Frames whose support holds only kept volumes.
    """

    source_tr: float
    target_tr: float
    method: str
    n_source: int
    times: np.ndarray
    first: np.ndarray
    last: np.ndarray
    valid: np.ndarray

    @property
    def identity(self) -> bool:
        """Whether the frames are the source volumes themselves."""
        return self.method == "none"

    @property
    def n_invalid(self) -> int:
        """Frames left out because their support holds a dropped volume."""
        return int((~self.valid).sum())


def time_grid(
    n_source: int,
    source_tr: float,
    target_tr: float | None,
    method: str,
    kept: np.ndarray | None = None,
) -> TimeGrid:
    """The target frames of a run of ``n_source`` volumes.

    Parameters
    ----------
    n_source : int
        Volumes of the run.
    source_tr : float
        Its repetition time in seconds.
    target_tr : float or None
        The repetition time to resample to; None (config ``time.tr: native``) keeps the
        run's.
    method : str
        One of :data:`METHODS`.
    kept : ndarray of bool, shape (n_source,), optional
        The volumes of the sample mask; all by default.

    Returns
    -------
    TimeGrid
    """
    if method not in METHODS:
        raise ValueError(f"time method {method!r} is not one of {', '.join(METHODS)}")
    kept = np.ones(n_source, dtype=bool) if kept is None else np.asarray(kept, dtype=bool)
    if target_tr is None or abs(target_tr - source_tr) < SAME_TR:
        source = np.arange(n_source)
        times = source * float(source_tr)
        return TimeGrid(source_tr, source_tr, "none", n_source, times, source, source, kept)
    end = (n_source - 1) * source_tr
    times = np.arange(int(np.floor(end / target_tr + 1e-9)) + 1) * float(target_tr)
    position = times / source_tr  # in source volumes
    if method == "fourier":
        reach = FOURIER_HALF_WIDTH * max(source_tr, target_tr) / source_tr
        first = np.ceil(position - reach + 1e-9).astype(np.intp)
        last = np.floor(position + reach - 1e-9).astype(np.intp)
    else:
        left = left_nodes(position, n_source)
        exact = np.isclose(position, np.round(position), rtol=0, atol=1e-9)
        if method == "linear":
            first = np.where(exact, np.round(position).astype(np.intp), left)
            last = np.where(exact, first, left + 1)
        else:  # pchip: the interval's two nodes and one neighbour on each side
            first, last = left - 1, left + 2
    first = np.clip(first, 0, n_source - 1)
    last = np.clip(last, 0, n_source - 1)
    dropped = np.concatenate([[0], np.cumsum(~kept)])
    valid = dropped[last + 1] - dropped[first] == 0
    return TimeGrid(source_tr, target_tr, method, n_source, times, first, last, valid)


def left_nodes(position: np.ndarray, n_source: int) -> np.ndarray:
    """The source volume starting the interval each position (in source volumes) lies in;
    the last interval's for the last volume."""
    return np.minimum(np.floor(position + 1e-9).astype(np.intp), max(n_source - 2, 0))


def pchip_slopes(values: np.ndarray, starts_run: bool, ends_run: bool) -> np.ndarray:
    """The derivative at each row (a node, one volume apart) of a window of volumes, by
    ``scipy.interpolate.PchipInterpolator``'s rule, per volume rather than per second.

    Inside: 0 where the neighbouring secants differ in sign or one is 0, else their
    harmonic mean. At the run's first and last volume (``starts_run``, ``ends_run``): the
    one-sided three-point estimate, set to 0 or to 3 times the end secant to keep the
    shape (Moler's ``pchiptx``, as scipy). The other end rows are left at 0: no frame's
    interval uses them (:func:`time_grid`'s supports). A run of two volumes (two rows,
    both ends): the secant at both; otherwise at least three rows.

    Parameters
    ----------
    values : ndarray, shape (n, n_voxel)
        Consecutive volumes.
    starts_run, ends_run : bool
        Whether the first (last) row is the run's first (last) volume.

    Returns
    -------
    ndarray, shape (n, n_voxel), float64
    """
    slopes = np.zeros(values.shape)
    both_ends = values.shape[0] == 2 and starts_run and ends_run
    for tile in voxel_tiles(values.shape[1], values.shape[0]):  # temporaries in the cache
        secants, out = np.diff(values[:, tile], axis=0), slopes[:, tile]
        if both_ends:
            out[:] = secants[0]
            continue
        before, after = secants[:-1], secants[1:]
        # 2 b a / (b + a) where b a > 0, else 0, without branches (a masked divide or
        # np.where on a mask with no pattern took 13x the time of a plain divide): b + a
        # is 0 only where b a <= 0, whose numerator max(b a, 0) is 0, so 1 is added there
        # (scipy's form, 1 / mean(1/b, 1/a), differs by rounding; b a underflows only for
        # secants below 1e-154)
        numerator = np.maximum(before * after, 0.0)
        denominator = before + after
        denominator += denominator == 0
        np.divide(numerator, denominator, out=out[1:-1])
        out[1:-1] *= 2
        if starts_run:
            out[0] = _pchip_end(secants[0], secants[1])
        if ends_run:
            out[-1] = _pchip_end(secants[-1], secants[-2])
    return slopes


def _pchip_end(end: np.ndarray, next_in: np.ndarray) -> np.ndarray:
    """scipy's ``PchipInterpolator._edge_case`` for unit spacing: the end secant ``end``
    and the one next to it."""
    slope = (3 * end - next_in) / 2
    wrong_sign = np.sign(slope) != np.sign(end)
    overshoot = (np.sign(end) != np.sign(next_in)) & (np.abs(slope) > 3 * np.abs(end))
    slope[overshoot & ~wrong_sign] = 3 * end[overshoot & ~wrong_sign]
    slope[wrong_sign] = 0.0
    return slope


def weights(grid: TimeGrid, frames: np.ndarray) -> tuple[int, np.ndarray]:
    """The linear map from source volumes to some target frames (``linear``, ``fourier``).

    Parameters
    ----------
    grid : TimeGrid
        The run's frames.
    frames : ndarray of int
        Target frames, in increasing order.

    Returns
    -------
    start : int
        The first source volume the frames depend on.
    matrix : ndarray, shape (len(frames), n), float64
        ``frames' values = matrix @ volumes[start : start + n]``.
    """
    start, stop = int(grid.first[frames].min()), int(grid.last[frames].max()) + 1
    if grid.method == "linear":
        offsets = grid.times[frames, None] - np.arange(start, stop)[None, :] * grid.source_tr
        matrix = np.maximum(1.0 - np.abs(offsets) / grid.source_tr, 0.0)
    else:
        matrix = _band_limited(grid, frames, start, stop)
    return start, matrix / matrix.sum(axis=1, keepdims=True)


def _band_limited(grid: TimeGrid, frames: np.ndarray, start: int, stop: int) -> np.ndarray:
    """The ``fourier`` weights of ``frames`` on volumes ``start .. stop - 1``: the whole
    windowed sinc, its taps beyond a run's end folded back onto the run by an odd
    reflection about the end volume (``x[-k] = 2 x[0] - x[k]``), which keeps a straight
    line straight; a tap whose mirror lies beyond the other end (a run shorter than the
    filter) is dropped."""
    cutoff = 0.5 / max(grid.source_tr, grid.target_tr)  # Hz
    half_width = FOURIER_HALF_WIDTH * max(grid.source_tr, grid.target_tr)
    position = grid.times[frames] / grid.source_tr
    reach = half_width / grid.source_tr
    taps = np.arange(
        int(np.ceil(position.min() - reach + 1e-9)),
        int(np.floor(position.max() + reach - 1e-9)) + 1,
    )
    offsets = grid.times[frames, None] - taps[None, :] * grid.source_tr  # seconds
    window = np.i0(KAISER_BETA * np.sqrt(np.clip(1 - (offsets / half_width) ** 2, 0, 1)))
    kernel = np.where(
        np.abs(offsets) < half_width,
        np.sinc(2 * cutoff * offsets) * window / np.i0(KAISER_BETA),
        0.0,
    )
    last = grid.n_source - 1
    matrix = np.zeros((frames.size, stop - start))
    inside = (taps >= 0) & (taps <= last)
    np.add.at(matrix.T, taps[inside] - start, kernel[:, inside].T)
    for end, beyond, mirror in ((0, taps < 0, -taps), (last, taps > last, 2 * last - taps)):
        folded = beyond & (mirror >= 0) & (mirror <= last)
        if folded.any():
            matrix[:, end - start] += 2 * kernel[:, folded].sum(axis=1)
            np.add.at(matrix.T, mirror[folded] - start, -kernel[:, folded].T)
    return matrix


class TimeResampler:
    """Turn source volumes, pushed in time order, into the valid target frames.

    Parameters
    ----------
    grid : TimeGrid
        The run's frames (:func:`time_grid`).
    n_voxel : int
        Values per volume.

    Notes
    -----
    Memory: ``8 * n_voxel`` bytes per buffered source volume, at most the widest support
    plus one pushed block (a store of twice that, so that volumes are rarely moved), and
    :data:`BATCH_FRAMES` (:data:`FOURIER_BATCH_FRAMES`) frames of output, a reused buffer:
    a yielded block is valid until the next one is requested.
    """

    def __init__(self, grid: TimeGrid, n_voxel: int):
        self.grid = grid
        self.n_voxel = n_voxel
        self._frames = np.flatnonzero(grid.valid)
        self._next = 0  # index into _frames of the next frame to emit
        # the buffered volumes are rows _start to _start + _count of _store, from volume _lo
        self._store = np.zeros((0, n_voxel), dtype=np.float64)
        self._start = self._count = 0
        self._lo = 0
        self._received = 0  # source volumes pushed (dropped ones included)
        self._out = np.zeros((0, n_voxel), dtype=np.float64)  # the output buffer
        self._batch_frames = FOURIER_BATCH_FRAMES if grid.method == "fourier" else BATCH_FRAMES
        self._scratch = np.zeros(n_voxel, dtype=np.float64)
        self._slopes: dict[int, np.ndarray] = {}  # pchip: the slopes of volumes still used

    @property
    def _buffer(self) -> np.ndarray:
        """The buffered source volumes, from volume ``_lo`` to the last one received."""
        return self._store[self._start : self._start + self._count]

    def push(self, positions: np.ndarray, values: np.ndarray):
        """Add source volumes; yield blocks of the target frames they complete.

        Parameters
        ----------
        positions : ndarray of int
            The source volume of each row of ``values``, increasing; volumes skipped
            since the last push (dropped by the sample mask) count as 0.
        values : ndarray, shape (len(positions), n_voxel)
            Deviations from the voxels' mean.

        Yields
        ------
        ndarray, shape (m, n_voxel), float64
            The next valid frames, in order; valid until the next block is requested.
        """
        positions = np.asarray(positions, dtype=np.intp)
        stop = int(positions[-1]) + 1 if positions.size else self._received
        rows = self._append(stop - self._received)
        rows[positions - (stop - rows.shape[0])] = values
        yield from self._emit()

    def finish(self):
        """Yield the frames left once every source volume was pushed (volumes never
        pushed, at the run's end, count as 0)."""
        self._append(self.grid.n_source - self._received)
        yield from self._emit()

    def _append(self, n: int) -> np.ndarray:
        """Forget the volumes no frame to come needs, and make room for the next ``n``
        (zeros): the rows returned. Rows move to the front of the store only when its end
        is reached (the store holds twice the rows needed), so each volume is copied
        about once."""
        keep_from = self._needed_from()
        self._start += keep_from - self._lo
        self._count -= keep_from - self._lo
        self._lo = keep_from
        if self._start + self._count + n > self._store.shape[0]:
            kept = self._buffer.copy()
            if self._count + n > self._store.shape[0] // 2:
                self._store = np.empty((2 * (self._count + n), self.n_voxel), np.float64)
            self._store[: self._count] = kept
            self._start = 0
        rows = self._store[self._start + self._count : self._start + self._count + n]
        rows[:] = 0.0
        self._count += n
        self._received += n
        return rows

    def _needed_from(self) -> int:
        if self._next >= self._frames.size:
            return self._received
        return min(int(self.grid.first[self._frames[self._next]]), self._received)

    def _emit(self):
        frames, grid = self._frames, self.grid
        while self._next < frames.size:
            ready = np.searchsorted(grid.last[frames], self._received - 1, side="right")
            stop = min(ready, self._next + self._batch_frames)
            if stop <= self._next:
                return
            batch = frames[self._next : stop]
            yield self._evaluate(batch)
            self._next = stop

    def _evaluate(self, batch: np.ndarray) -> np.ndarray:
        grid = self.grid
        if grid.identity:
            return self._buffer[batch - self._lo]
        if grid.method == "pchip":
            return self._pchip(batch)
        start, matrix = weights(grid, batch)
        window = self._buffer[start - self._lo : start - self._lo + matrix.shape[1]]
        if grid.method == "linear":
            return self._sparse_product(matrix, window)
        return np.matmul(matrix, window, out=self._output(matrix.shape[0]))

    def _output(self, n: int) -> np.ndarray:
        """``n`` rows of the reused output buffer."""
        if self._out.shape[0] < n:
            self._out = np.empty((n, self.n_voxel), dtype=np.float64)
        return self._out[:n]

    def _pchip(self, batch: np.ndarray) -> np.ndarray:
        """The cubic Hermite frames of ``batch``: four weighted rows per frame, the two
        volumes of its interval and their :func:`pchip_slopes`, each volume's slope
        computed once and kept while frames to come use it."""
        grid = self.grid
        if grid.n_source < 2:
            return np.repeat(self._buffer[:1], batch.size, axis=0)
        position = grid.times[batch] / grid.source_tr
        left = left_nodes(position, grid.n_source)
        nodes = range(int(left.min()), int(left.max()) + 2)
        self._slopes = {k: row for k, row in self._slopes.items() if k >= nodes.start}
        missing = [k for k in nodes if k not in self._slopes]
        if missing:  # the latest nodes, and those after them whose neighbours came
            ready = self._received - (1 if self._received == grid.n_source else 2)
            missing = range(missing[0], max(missing[-1], ready) + 1)
            start, stop = max(missing[0] - 1, 0), min(missing[-1] + 2, grid.n_source)
            if stop - start < 3:  # an end's slope takes two secants
                start = max(0, min(start, grid.n_source - 3))
                stop = min(grid.n_source, start + 3)
            rows = self._buffer[start - self._lo : stop - self._lo]
            slopes = pchip_slopes(rows, start == 0, stop == grid.n_source)
            self._slopes.update((k, slopes[k - start]) for k in missing)
        u, left = position - left, left - nodes.start  # where in the interval; its node
        n = len(nodes)
        matrix = np.zeros((batch.size, 2 * n))
        rows = np.arange(batch.size)
        matrix[rows, left] = (1 + 2 * u) * (1 - u) ** 2
        matrix[rows, left + 1] = u**2 * (3 - 2 * u)
        matrix[rows, n + left] = u * (1 - u) ** 2
        matrix[rows, n + left + 1] = u**2 * (u - 1)
        volumes = self._buffer[nodes.start - self._lo : nodes.stop - self._lo]
        return self._sparse_product(matrix, [*volumes, *(self._slopes[k] for k in nodes)])

    def _sparse_product(self, matrix: np.ndarray, window) -> np.ndarray:
        """``matrix @ window`` row by row over each row's non-zero weights (two for
        ``linear``, four for ``pchip``; ``window`` a sequence of rows), into the reused
        output buffer: the dense product multiplies by zeros
        and allocates its output for every batch (measured 3.4x slower, 230,000 voxels)."""
        out = self._output(matrix.shape[0])
        for row, row_weights in zip(out, matrix, strict=True):
            first, *others = np.flatnonzero(row_weights)
            np.multiply(window[first], row_weights[first], out=row)
            for column in others:
                np.multiply(window[column], row_weights[column], out=self._scratch)
                row += self._scratch
        return out


class LinearFrameSums:
    """Per-voxel sum and sum of squares of a ``linear`` run's valid frames, from its
    volumes, without resampling them.

    The frames are ``W @ volumes`` (:func:`weights`), so their sum is ``(1 W) @
    volumes`` and their sum of squares ``sum_ij (W'W)_ij v_i v_j``, where ``W'W`` joins
    neighbouring volumes only (a linear frame depends on two): per volume, its weight,
    its squared weight and its product weight with the next volume, summed over the
    frames (memory: three numbers per volume). A volume never added (dropped by the
    sample mask) has no weight: no valid frame depends on it. Equal to the sums over the
    resampled frames up to rounding (float64), at the cost of a pass over the run's
    volumes instead of its frames (``target_tr`` 0.8 s from 2.0 s: 2.5 times as many).

    Parameters
    ----------
    grid : TimeGrid
        A ``linear`` grid.
    n_voxel : int
        Values per volume.
    shifted : bool
        The values are the image's own (any real type): the first volume added is
        subtracted from every volume (shifted data, as
        :class:`~bidstrain.normalize.moments.VoxelMoments` does), so that the sum of
        squares does not cancel. Otherwise they are float64 deviations from an estimate
        of each voxel's mean, summed as they are.
    """

    def __init__(self, grid: TimeGrid, n_voxel: int, *, shifted: bool = False):
        if grid.method != "linear":
            raise ValueError(f"LinearFrameSums needs a linear grid, not {grid.method!r}")
        self.grid = grid
        self.total, self.squares = np.zeros(n_voxel), np.zeros(n_voxel)
        self.shift = None
        self._shifted = shifted
        frames = np.flatnonzero(grid.valid)
        left, right = grid.first[frames], grid.last[frames]  # equal where a frame is a volume
        to_right = np.where(right > left, grid.times[frames] / grid.source_tr - left, 0.0)
        to_left = 1.0 - to_right
        self._volume, self._square, self._next = np.zeros((3, grid.n_source))
        for volume, weight in ((left, to_left), (right, to_right)):
            np.add.at(self._volume, volume, weight)
            np.add.at(self._square, volume, weight**2)
        np.add.at(self._next, left, to_left * to_right)
        self._last_position, self._last_row = -2, np.zeros(n_voxel)  # the last volume added

    def add(self, positions: np.ndarray, values: np.ndarray) -> None:
        """Add volumes: ``values`` (``(len(positions), n_voxel)``, a reused buffer is
        fine) are the volumes ``positions`` (increasing, after those already added)."""
        positions = np.asarray(positions, dtype=np.intp)
        if not positions.size:
            return
        if self._shifted and self.shift is None:
            self.shift = values[0].astype(np.float64)
        follows = np.flatnonzero(np.diff(positions) == 1)
        weight, square, product = (
            self._volume[positions],
            self._square[positions],
            2 * self._next[positions[follows]],
        )
        joined = positions[0] == self._last_position + 1
        for tile in voxel_tiles(self.total.size, positions.size):  # temporaries in the cache
            rows = values[:, tile]
            with np.errstate(invalid="ignore", over="ignore"):  # non-finite: not in the mask
                if self.shift is not None:
                    rows = rows - self.shift[tile]  # float64
                self.total[tile] += weight @ rows
                self.squares[tile] += square @ (rows * rows)
                if follows.size:
                    self.squares[tile] += product @ (rows[follows] * rows[follows + 1])
                if joined:
                    self.squares[tile] += (
                        2 * self._next[self._last_position] * (self._last_row[tile] * rows[0])
                    )
            self._last_row[tile] = rows[-1]
        self._last_position = int(positions[-1])

    def moments(self) -> VoxelMoments:
        """The frames' per-voxel moments (of the shifted values when ``shifted``: their
        mean adds the shift back)."""
        count = int(self.grid.valid.sum())
        return VoxelMoments.from_sums(count, self.total, self.squares, self.shift)


class ResampledFrameMoments:
    """Per-voxel moments of a run's valid frames, resampled from its volumes as they come
    (any method).

    Parameters
    ----------
    grid : TimeGrid
        The run's frames.
    n_voxel : int
        Values per volume.
    shifted : bool
        The values are the image's own (any real type): the first volume added is
        subtracted from every volume, so that the sum of squares does not cancel (the
        frames of ``v - s`` are those of ``v`` minus ``s``: every method carries a
        constant through). Otherwise they are float64 deviations from an estimate of each
        voxel's mean, resampled as they are.

    Notes
    -----
    Memory: the resampler's (:class:`TimeResampler`), the frames' two sums (float64), and
    when ``shifted`` the shift and one block of shifted volumes: for ``pchip`` and blocks
    of ``b`` volumes, about ``8 * (3 * b + 2 * 4 + 12)`` bytes per voxel.
    """

    def __init__(self, grid: TimeGrid, n_voxel: int, *, shifted: bool = False):
        self._resampler = TimeResampler(grid, n_voxel)
        self._sums = VoxelMoments(n_voxel, dtype=np.float64, centered=True)
        self._shifted = np.zeros((0, n_voxel)) if shifted else None
        self.shift: np.ndarray | None = None

    def add(self, positions: np.ndarray, values: np.ndarray) -> None:
        """Add volumes: ``values`` (``(len(positions), n_voxel)``, a reused buffer is
        fine) are the volumes ``positions`` (increasing, after those already added)."""
        if not len(positions):
            return
        with np.errstate(invalid="ignore", over="ignore", divide="ignore"):  # not in the mask
            if self._shifted is not None:
                if self.shift is None:
                    self.shift = values[0].astype(np.float64)
                if self._shifted.shape[0] < values.shape[0]:
                    self._shifted = np.empty(values.shape, dtype=np.float64)
                values = np.subtract(values, self.shift, out=self._shifted[: values.shape[0]])
            for frames in self._resampler.push(positions, values):
                self._sums.update(frames)

    def moments(self) -> VoxelMoments:
        """The frames' per-voxel moments (their mean adds the shift back); call it once,
        after the last volume."""
        with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
            for frames in self._resampler.finish():
                self._sums.update(frames)
        sums = self._sums
        return VoxelMoments.from_sums(sums.count, sums.sum, sums.sum_squares, self.shift)


def frame_accumulator(
    grid: TimeGrid, n_voxel: int, *, shifted: bool
) -> LinearFrameSums | ResampledFrameMoments:
    """The moments of a resampled run's frames, taken from its volumes (``shifted``: see
    either class): :class:`LinearFrameSums` for ``linear``, which needs no frame, else
    :class:`ResampledFrameMoments`."""
    if grid.method == "linear":
        return LinearFrameSums(grid, n_voxel, shifted=shifted)
    return ResampledFrameMoments(grid, n_voxel, shifted=shifted)


def resample(values: np.ndarray, grid: TimeGrid) -> np.ndarray:
    """Resample a whole ``(n_source, n)`` array at once (small data: a run's parcel sums,
    the tests).

    Returns the valid frames, as :class:`TimeResampler` streams them.
    """
    resampler = TimeResampler(grid, values.shape[1])
    blocks = [block.copy() for block in resampler.push(np.arange(values.shape[0]), values)]
    blocks += [block.copy() for block in resampler.finish()]
    if not blocks:
        return np.zeros((0, values.shape[1]))
    return np.concatenate(blocks)
