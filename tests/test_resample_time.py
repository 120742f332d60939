"""Resampling BOLD in time: each method against the analytic signal and against scipy,
streamed in blocks exactly as computed whole, dropped volumes never interpolated through."""

from __future__ import annotations

import numpy as np
import pytest
from bidstrain.normalize.resample_time import (
    FOURIER_HALF_WIDTH,
    METHODS,
    LinearFrameSums,
    ResampledFrameMoments,
    TimeResampler,
    frame_accumulator,
    resample,
    time_grid,
)
from scipy.interpolate import PchipInterpolator
from scipy.signal import resample_poly

SOURCE_TR, TARGET_TR, N_SOURCE = 2.0, 0.8, 150
#: A sum of sinusoids below 0.8 of the source Nyquist (0.25 Hz), so below the target's too.
AMPLITUDES = (1.0, 0.5, 0.3)
FREQUENCIES = (0.01, 0.037, 0.09)  # Hz


def signal(t: np.ndarray) -> np.ndarray:
    return sum(
        a * np.sin(2 * np.pi * f * t + 0.3 * i)
        for i, (a, f) in enumerate(zip(AMPLITUDES, FREQUENCIES, strict=True))
    )


def linear_bound(tr: float) -> float:
    """``tr**2 / 8 * max|f''|`` of :func:`signal` (the module's stated error)."""
    return (
        tr**2
        / 8
        * sum(a * (2 * np.pi * f) ** 2 for a, f in zip(AMPLITUDES, FREQUENCIES, strict=True))
    )


def _resampled(method: str) -> tuple[np.ndarray, np.ndarray]:
    grid = time_grid(N_SOURCE, SOURCE_TR, TARGET_TR, method)
    source = signal(np.arange(N_SOURCE) * SOURCE_TR)[:, None]
    return grid.times, resample(source, grid)[:, 0]


def test_frames_cover_the_run_at_the_target_tr_without_extrapolating():
    grid = time_grid(N_SOURCE, SOURCE_TR, TARGET_TR, "linear")
    assert grid.times[0] == 0 and np.allclose(np.diff(grid.times), TARGET_TR)
    assert grid.times[-1] <= (N_SOURCE - 1) * SOURCE_TR < grid.times[-1] + TARGET_TR
    assert grid.valid.all() and grid.n_invalid == 0


@pytest.mark.parametrize("method", ["linear", "pchip"])
def test_interpolation_is_within_the_linear_error_bound(method):
    times, values = _resampled(method)
    error = np.abs(values - signal(times)).max()
    assert error <= linear_bound(SOURCE_TR)
    assert error > 0.1 * linear_bound(SOURCE_TR)  # the bound is not vacuous here


def test_linear_and_pchip_equal_numpy_and_scipy():
    source_t = np.arange(N_SOURCE) * SOURCE_TR
    times, linear = _resampled("linear")
    np.testing.assert_allclose(linear, np.interp(times, source_t, signal(source_t)), atol=1e-12)
    _, pchip = _resampled("pchip")
    reference = PchipInterpolator(source_t, signal(source_t))(times)
    np.testing.assert_allclose(pchip, reference, atol=1e-12)


@pytest.mark.parametrize("n", [2, 3, 4, 5, 61])
@pytest.mark.parametrize(("source_tr", "target_tr"), [(2.0, 0.8), (0.72, 2.0), (1.0, 0.5)])
def test_pchip_equals_scipy_on_the_whole_run(n, source_tr, target_tr):
    """The streamed cubic Hermite frames against ``PchipInterpolator`` of the whole run,
    on data that takes every branch of its slope rule: sign changes, flat steps (zero
    secants), monotone stretches, ends that overshoot or turn."""
    rng = np.random.default_rng(n)
    values = np.round(rng.standard_normal((n, 400)) * 3)  # integers: many ties and zeros
    values[:, :100] = np.cumsum(np.abs(values[:, :100]), axis=0)  # monotone
    values[:, 100:110] = 5.0  # constant
    grid = time_grid(n, source_tr, target_tr, "pchip")
    expected = PchipInterpolator(np.arange(n) * source_tr, values, axis=0)(grid.times)
    scale = np.abs(values).max()
    np.testing.assert_allclose(resample(values, grid), expected, rtol=0, atol=1e-12 * scale)
    for block in (1, 4):  # streamed: each volume's slope computed once, when first needed
        resampler = TimeResampler(grid, values.shape[1])
        out = []
        for start in range(0, n, block):
            rows = np.arange(start, min(start + block, n))
            out += [frames.copy() for frames in resampler.push(rows, values[rows])]
        out += [frames.copy() for frames in resampler.finish()]
        np.testing.assert_allclose(np.concatenate(out), expected, rtol=0, atol=1e-12 * scale)


@pytest.mark.parametrize("n", [1, 6, 40])
def test_pchip_with_dropped_volumes_equals_scipy_on_its_valid_frames(n):
    """Dropped volumes hold anything and are skipped by the pushes: the valid frames are
    still scipy's interpolant of the whole run (their supports hold no dropped volume)."""
    rng = np.random.default_rng(n)
    values = np.round(rng.standard_normal((n, 50)) * 3)
    kept = rng.random(n) > 0.25
    values[~kept] = 1e6  # never used by a valid frame
    grid = time_grid(n, 2.0, 0.8, "pchip", kept)
    if n == 1:  # scipy needs two points: a run of one volume is that volume
        expected = values[: int(grid.valid.sum())]
    else:
        expected = PchipInterpolator(np.arange(n) * 2.0, values, axis=0)(grid.times)
        expected = expected[grid.valid]
    for block in (1, 3):
        resampler = TimeResampler(grid, values.shape[1])
        out = []
        for start in range(0, n, block):
            rows = start + np.flatnonzero(kept[start : start + block])
            out += [frames.copy() for frames in resampler.push(rows, values[rows])]
        out += [frames.copy() for frames in resampler.finish()]
        got = np.concatenate(out) if out else np.zeros((0, values.shape[1]))
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12 * np.abs(values).max())


def test_fourier_is_within_its_stated_error_away_from_the_ends():
    times, values = _resampled("fourier")
    half_width = FOURIER_HALF_WIDTH * SOURCE_TR
    inner = (times >= half_width) & (times <= times[-1] - half_width)
    error = np.abs(values - signal(times))
    assert error[inner].max() <= 2e-3 * sum(AMPLITUDES)
    assert error.max() <= 0.05 * sum(AMPLITUDES)  # the ends, where the filter is folded
    # scipy's polyphase resampling with the same filter, in the interior (it zero-pads)
    reference = resample_poly(signal(np.arange(N_SOURCE) * SOURCE_TR), 5, 2)[: times.size]
    assert np.abs(reference - values)[inner].max() <= 2e-3 * sum(AMPLITUDES)


@pytest.mark.parametrize(("fraction", "bound"), [(0.1, 0.005), (0.2, 0.02), (0.4, 0.08)])
def test_fourier_ends_fold_the_filter_by_an_odd_reflection(fraction, bound):
    """2.0 s to 0.8 s, unit sinusoids at a fraction of the 0.25 Hz cut-off, every phase:
    within the filter's half-width of an end the error stays under ``bound`` (docs:
    0.4 %, 1.6 %, 6.9 %); a filter cut short and renormalized there gave 4.7 %, 9 %,
    17 %. A straight line is no further off at the ends than in the interior."""
    n, source, target = 150, 2.0, 0.8
    grid = time_grid(n, source, target, "fourier")
    t = np.arange(n) * source
    worst = 0.0
    for phase in np.linspace(0, 2 * np.pi, 16, endpoint=False):
        wave = np.sin(2 * np.pi * fraction * 0.25 * t + phase)
        out = resample(wave[:, None], grid)[:, 0]
        want = np.sin(2 * np.pi * fraction * 0.25 * grid.times + phase)
        worst = max(worst, np.abs(out - want).max())
    assert worst <= bound
    line_error = np.abs(resample((3.0 + 0.1 * t)[:, None], grid)[:, 0] - 3.0 - 0.1 * grid.times)
    half_width = FOURIER_HALF_WIDTH * source
    inner = (grid.times >= half_width) & (grid.times <= grid.times[-1] - half_width)
    assert line_error.max() <= line_error[inner].max() + 1e-12


def test_fourier_downsampling_removes_what_would_alias():
    """0.8 s to 2.0 s: a 0.4 Hz component (above the 0.25 Hz target Nyquist) is filtered
    out by the band-limited method and aliased by linear interpolation."""
    n = 400
    t = np.arange(n) * 0.8
    slow = np.sin(2 * np.pi * 0.02 * t)
    fast = 0.5 * np.sin(2 * np.pi * 0.4 * t)
    grid = {m: time_grid(n, 0.8, 2.0, m) for m in ("fourier", "linear")}
    targets = np.sin(2 * np.pi * 0.02 * grid["linear"].times)
    inner = slice(10, -10)
    fourier = resample((slow + fast)[:, None], grid["fourier"])[:, 0]
    linear = resample((slow + fast)[:, None], grid["linear"])[:, 0]
    assert np.abs(fourier - targets)[inner].max() < 0.01
    assert np.abs(linear - targets)[inner].max() > 0.3


@pytest.mark.parametrize("method", METHODS)
def test_the_same_tr_is_the_identity(method):
    rng = np.random.default_rng(0)
    values = rng.standard_normal((40, 5))
    grid = time_grid(40, 2.0, 2.0, method)
    assert grid.identity
    np.testing.assert_array_equal(resample(values, grid), values)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("block", [1, 3, 16])
def test_streaming_in_blocks_equals_the_whole_run(method, block):
    rng = np.random.default_rng(1)
    values = rng.standard_normal((90, 7))
    grid = time_grid(90, 1.5, 0.7, method)
    resampler = TimeResampler(grid, 7)
    out = []
    for start in range(0, 90, block):
        rows = np.arange(start, min(start + block, 90))
        out += [frames.copy() for frames in resampler.push(rows, values[rows])]
    out += [frames.copy() for frames in resampler.finish()]
    np.testing.assert_allclose(np.concatenate(out), resample(values, grid), atol=1e-12)
    max_support = int((grid.last - grid.first).max(initial=0)) + 1  # the widest support
    assert resampler._buffer.shape[0] <= max_support + block


@pytest.mark.parametrize("method", METHODS)
def test_frames_whose_support_holds_a_dropped_volume_are_invalid(method):
    n, dropped = 60, [0, 1, 30]
    kept = np.ones(n, dtype=bool)
    kept[dropped] = False
    grid = time_grid(n, 2.0, 0.8, method, kept)
    for frame in range(grid.times.size):
        support = range(grid.first[frame], grid.last[frame] + 1)
        assert grid.valid[frame] == (not set(support) & set(dropped))
    assert 0 < grid.n_invalid < grid.times.size
    # the valid frames do not depend on what the dropped volumes hold
    rng = np.random.default_rng(2)
    values = rng.standard_normal((n, 3))
    zeroed = values.copy()
    zeroed[dropped] = 0.0
    noisy = values.copy()
    noisy[dropped] = 1e6
    np.testing.assert_allclose(resample(zeroed, grid), resample(noisy, grid), atol=1e-9)
    # streaming only the kept volumes (the regression's output) gives the same frames
    resampler = TimeResampler(grid, 3)
    positions = np.flatnonzero(kept)
    out = [frames.copy() for frames in resampler.push(positions, values[positions])]
    out += [frames.copy() for frames in resampler.finish()]
    np.testing.assert_allclose(np.concatenate(out), resample(zeroed, grid), atol=1e-12)


@pytest.mark.parametrize(
    ("n", "source_tr", "target_tr"), [(90, 2.0, 0.8), (61, 0.72, 2.0), (40, 1.0, 0.5)]
)
@pytest.mark.parametrize("block", [1, 4, 7])
def test_linear_frame_sums_from_the_volumes_equal_those_of_the_frames(
    n, source_tr, target_tr, block
):
    """The statistics pass of a linear run sums its volumes, not its resampled frames:
    the same sums (float64 rounding), with volumes dropped in the middle and at the
    ends, streamed in blocks of any size."""
    rng = np.random.default_rng(3)
    kept = rng.random(n) > 0.2
    kept[[0, -1]] = False
    grid = time_grid(n, source_tr, target_tr, "linear", kept)
    values = rng.standard_normal((n, 5)) * 100
    values[~kept] = 0.0
    frames = resample(values, grid)
    assert frames.shape[0] == grid.valid.sum() > 0
    blocks = []
    for start in range(0, n, block):
        rows = start + np.flatnonzero(kept[start : start + block])
        blocks.append((rows, values[rows]))
    sums = LinearFrameSums(grid, 5)
    for rows, values_of_rows in blocks:
        sums.add(rows, values_of_rows)
    np.testing.assert_allclose(sums.total, frames.sum(axis=0), rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(sums.squares, (frames**2).sum(axis=0), rtol=1e-12)
    # the image's own values, shifted by the first volume added: the same moments
    offset = rng.integers(-30000, 30000, 5)
    shifted = LinearFrameSums(grid, 5, shifted=True)
    for rows, values_of_rows in blocks:
        shifted.add(rows, values_of_rows + offset)
    moments = shifted.moments()
    np.testing.assert_allclose(moments.mean(), frames.mean(axis=0) + offset, rtol=1e-13)
    np.testing.assert_allclose(moments.variance(1), frames.var(axis=0, ddof=1), rtol=1e-11)
    with pytest.raises(ValueError, match="needs a linear grid"):
        LinearFrameSums(time_grid(n, source_tr, target_tr, "pchip"), 5)


@pytest.mark.parametrize(
    ("n", "source_tr", "target_tr"), [(90, 2.0, 0.8), (61, 0.72, 2.0), (40, 1.0, 0.5)]
)
@pytest.mark.parametrize("method", ["pchip", "fourier"])
@pytest.mark.parametrize("block", [1, 4, 7])
def test_frame_moments_from_the_images_own_values_equal_those_of_the_frames(
    n, source_tr, target_tr, method, block
):
    """Pass 1 resamples the image's own values, shifted by the first volume, as they
    come: the moments of the frames of the deviations from the mean, to float64
    rounding, whatever the blocks, and with an offset that would cancel the sum of
    squares of unshifted values."""
    rng = np.random.default_rng(4)
    grid = time_grid(n, source_tr, target_tr, method)
    own = rng.standard_normal((n, 5)) + rng.integers(-(10**9), 10**9, 5)  # cancellation
    mean = own.mean(axis=0)
    frames = resample(own - mean, grid)  # float64 deviations
    accumulator = frame_accumulator(grid, 5, shifted=True)
    assert isinstance(accumulator, ResampledFrameMoments)
    for start in range(0, n, block):
        rows = np.arange(start, min(start + block, n))
        accumulator.add(rows, own[rows])
    moments = accumulator.moments()
    assert moments.count == frames.shape[0] == grid.valid.sum()
    np.testing.assert_allclose(moments.mean(), frames.mean(axis=0) + mean, rtol=1e-12)
    np.testing.assert_allclose(moments.variance(1), frames.var(axis=0, ddof=1), rtol=1e-9)
