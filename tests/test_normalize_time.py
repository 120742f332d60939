"""BOLD stores at one repetition time: the normalize job's resampling against a float64
reference written out in numpy and scipy, the stored time grid, runs of several TRs on
one grid, and stores written before the time attributes existed."""

from __future__ import annotations

import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from bidstrain.average.cohort import check_compatible, read_header
from bidstrain.errors import BidstrainError
from bidstrain.io.store import StoreMeta, open_store, store_meta
from bidstrain.normalize import ImageInfo, normalize_bold, normalize_with_stats
from bidstrain.normalize.resample_time import resample, time_grid
from normalize_support import image_options
from scipy.interpolate import PchipInterpolator
from test_store import count_files

#: Largest |ours - float64 reference| allowed; the float32 store alone rounds by 2.4e-7.
TOLERANCE = 1e-5
SHAPE = (6, 7, 5)


def _run(path: Path, tr: float, n_volumes: int, seed: int = 0) -> Path:
    """A float32 run of slow sinusoids (different per voxel) plus noise at scanner scale."""
    rng = np.random.default_rng(seed)
    t = np.arange(n_volumes) * tr
    frequency = rng.uniform(0.005, 0.08, SHAPE)[..., None]
    phase = rng.uniform(0, 2 * np.pi, SHAPE)[..., None]
    data = 1000 + 20 * np.sin(2 * np.pi * frequency * t + phase)
    data += rng.normal(0, 2, data.shape)
    nib.save(nib.Nifti1Image(data.astype(np.float32), np.diag([3.0, 3.0, 3.0, 1.0])), path)
    return path


def _info(tr: float, run: str = "1") -> ImageInfo:
    entities = {"sub": "01", "task": "rest", "run": run}
    return ImageInfo("bold", "01", entities=entities, repetition_time=tr)


def _reference(path: Path, tr: float, target: float, method: str) -> tuple[np.ndarray, np.ndarray]:
    """Float64 voxel series resampled by numpy or scipy and z-scored (ddof 1), C order."""
    data = np.asarray(nib.load(path).dataobj, dtype=np.float64).reshape(-1, nib.load(path).shape[3])
    t = np.arange(data.shape[1]) * tr
    times = np.arange(0, t[-1] + 1e-9, target)
    if method == "linear":
        values = np.stack([np.interp(times, t, row) for row in data], axis=1)
    else:
        values = PchipInterpolator(t, data.T, axis=0)(times)
    return (values - values.mean(axis=0)) / values.std(axis=0, ddof=1), times


@pytest.mark.parametrize("method", ["linear", "pchip"])
@pytest.mark.parametrize("target", [0.8, 3.0])
@pytest.mark.parametrize("masked", [False, True])
def test_a_resampled_store_equals_a_float64_reference(tmp_path, method, target, masked):
    """Also with a mask file, whose voxels pass 1 keeps: a ``linear`` run's frame
    statistics then come from pass 1's sums of the image's own values."""
    image = _run(tmp_path / "run.nii", 2.0, 50)
    out = tmp_path / "bold.zarr"
    inside = np.ones(SHAPE, dtype=bool)
    mask = "none"
    if masked:
        inside[2:] = False  # a third of the grid
        mask = str(tmp_path / "mask.nii")
        nib.save(nib.Nifti1Image(inside.astype(np.uint8), nib.load(image).affine), mask)
    options = image_options(mask=mask, target_tr=target, time_method=method, block_volumes=3)
    normalize_bold(image, out, _info(2.0), options)
    expected, times = _reference(image, 2.0, target, method)
    expected = expected[:, inside.ravel()]
    ds = open_store(out, use_dask=False)
    assert ds.data.shape == expected.shape
    assert np.abs(ds.data.values - expected).max() <= TOLERANCE
    np.testing.assert_allclose(ds.time.values, times, atol=1e-9)
    meta = store_meta(ds)
    assert (meta.repetition_time, meta.source_repetition_time) == (target, 2.0)
    assert meta.time_method == method and meta.resampled and meta.n_invalid_frames == 0
    assert ds.frame_valid.values.all() and np.allclose(ds.frame_time.values, times)
    assert count_files(out) == 16  # 12, and frame_time and frame_valid
    # data * std + mean gives the resampled signal back
    data = np.asarray(nib.load(image).dataobj, dtype=np.float64).reshape(-1, 50)
    t = np.arange(50) * 2.0
    raw = (
        np.interp(times, t, data[0]) if method == "linear" else PchipInterpolator(t, data[0])(times)
    )
    rebuilt = ds.data.values[:, 0] * float(ds["std"][0]) + float(ds["mean"][0])
    np.testing.assert_allclose(rebuilt, raw, rtol=1e-6)


def test_the_last_pass_reads_the_masked_voxels_kept_by_the_frame_pass(tmp_path, monkeypatch):
    """A resampled run is decompressed twice, not three times: the z-score pass reads the
    masked voxels the frame-statistics pass kept; the store equals the one written when
    that temporary file cannot be written (the image then read a third time)."""
    import bidstrain.normalize.masked_cache as masked_cache
    import bidstrain.normalize.passes as passes

    image = _run(tmp_path / "run.nii", 2.0, 40)
    options = image_options(mask="none", target_tr=0.8, time_method="linear", block_volumes=3)
    reads = []
    iter_blocks = passes.iter_blocks
    monkeypatch.setattr(passes, "iter_blocks", lambda *a: reads.append(1) or iter_blocks(*a))
    normalize_bold(image, tmp_path / "kept.zarr", _info(2.0), options)
    assert len(reads) == 2

    class FullDisk:
        def write(self, data):
            raise OSError(28, "No space left on device")

        def close(self):
            pass

    monkeypatch.setattr(masked_cache.tempfile, "TemporaryFile", lambda **kw: FullDisk())
    reads.clear()
    normalize_bold(image, tmp_path / "read.zarr", _info(2.0), options)
    assert len(reads) == 3
    kept, read = open_store(tmp_path / "kept.zarr"), open_store(tmp_path / "read.zarr")
    np.testing.assert_array_equal(kept.data.values, read.data.values)
    reference, _ = _reference(image, 2.0, 0.8, "linear")
    assert np.abs(kept.data.values - reference).max() < TOLERANCE


def test_fourier_in_the_store_equals_the_module_on_the_whole_run(tmp_path):
    image = _run(tmp_path / "run.nii", 0.8, 120)
    out = tmp_path / "bold.zarr"
    options = image_options(mask="none", target_tr=2.0, time_method="fourier", block_volumes=5)
    normalize_bold(image, out, _info(0.8), options)
    data = np.asarray(nib.load(image).dataobj, dtype=np.float64).reshape(-1, 120).T
    values = resample(data - data.mean(axis=0), time_grid(120, 0.8, 2.0, "fourier"))
    expected = (values - values.mean(axis=0)) / values.std(axis=0, ddof=1)
    assert np.abs(open_store(out, use_dask=False).data.values - expected).max() <= TOLERANCE


def test_the_same_tr_stores_what_native_stores(tmp_path):
    image = _run(tmp_path / "run.nii", 2.0, 30)
    normalize_bold(image, tmp_path / "native.zarr", _info(2.0), image_options(mask="none"))
    same = image_options(mask="none", target_tr=2.0, time_method="pchip")
    normalize_bold(image, tmp_path / "same.zarr", _info(2.0), same)
    native = open_store(tmp_path / "native.zarr", use_dask=False)
    resampled = open_store(tmp_path / "same.zarr", use_dask=False)
    np.testing.assert_array_equal(native.data.values, resampled.data.values)
    assert store_meta(resampled).time_method == "none"


def test_runs_of_several_trs_end_on_one_grid_that_the_average_accepts(tmp_path):
    stores = {}
    for name, tr, n in (("a", 2.0, 40), ("b", 1.5, 52)):
        image = _run(tmp_path / f"{name}.nii", tr, n, seed=len(name))
        for target in (None, 1.0):
            out = tmp_path / f"{name}-{target}.zarr"
            options = image_options(mask="none", target_tr=target, time_method="pchip")
            normalize_bold(image, out, _info(tr), options)
            stores[name, target] = out
    a, b = (read_header(stores[name, 1.0]) for name in "ab")
    assert a.meta.repetition_time == b.meta.repetition_time == 1.0
    check_compatible(b, a, affine_tolerance=1e-3, tr_tolerance=1e-3)
    native = [read_header(stores[name, None]) for name in "ab"]
    with pytest.raises(BidstrainError, match="repetition time 1.5 s differs"):
        check_compatible(native[1], native[0], affine_tolerance=1e-3, tr_tolerance=1e-3)


def test_a_heldout_run_is_resampled_and_zscored_with_the_pooled_frame_statistics(tmp_path):
    stores = []
    for run in ("1", "2"):
        image = _run(tmp_path / f"run-{run}.nii", 2.0, 40, seed=0)  # one voxel pattern
        out = tmp_path / f"run-{run}.zarr"
        normalize_bold(image, out, _info(2.0, run), image_options(mask="none", target_tr=1.0))
        stores.append(out)
    image = _run(tmp_path / "run-3.nii", 2.0, 40, seed=0)
    out = tmp_path / "run-3.zarr"
    options = image_options("epi", target_tr=1.0)
    normalize_with_stats(image, stores, out, _info(2.0, "3"), options)
    own = open_store(stores[0], use_dask=False)
    held = open_store(out, use_dask=False)
    assert store_meta(held).heldout and store_meta(held).repetition_time == 1.0
    # the same data as run 1: pooled over two equal runs of n frames, the mean is run 1's
    # and the variance (ddof 1) is 2 (n - 1) / (2 n - 1) of its own
    n = own.sizes["time"]
    factor = np.sqrt((2 * n - 1) / (2 * (n - 1)))
    assert np.abs(held.data.values - own.data.values * factor).max() <= TOLERANCE


def test_a_target_tr_needs_the_run_to_have_one(tmp_path):
    image = _run(tmp_path / "run.nii", 2.0, 10)
    info = ImageInfo("bold", "01", entities={"sub": "01"}, repetition_time=None)
    with pytest.raises(BidstrainError, match="config time.tr is 0.8 s but the run has no"):
        normalize_bold(
            image, tmp_path / "bold.zarr", info, image_options(mask="none", target_tr=0.8)
        )


def test_stores_without_time_attributes_read_as_not_resampled():
    attrs = {
        "modality": "bold",
        "subject": "01",
        "source_path": "x.nii.gz",
        "affine": np.eye(4).tolist(),
        "ddof": 1,
        "n_zero_variance": 0,
        "stats_dim": "voxel",
        "stats_from": ["x.nii.gz"],
        "repetition_time": 2.0,
    }
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        meta = StoreMeta.from_attrs(attrs)
    assert not meta.resampled and meta.source_repetition_time == 2.0
    assert meta.n_invalid_frames == 0
