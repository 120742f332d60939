"""Unit tests of the normalization stage: streaming reader, moments, masks, stores, errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import bidstrain.normalize.moments as moments_module
import nibabel as nib
import numpy as np
import pytest
import xarray as xr
from bidstrain.dataset.masks import resolve_pattern
from bidstrain.demo.generate import DemoSpec, bold_run, dwi_series, t1w_image
from bidstrain.errors import BidstrainError
from bidstrain.io.store import CHUNK_BYTES, CONSOLIDATED, open_store, read_meta
from bidstrain.normalize import (
    ImageInfo,
    normalize_bold,
    normalize_volumes,
    normalize_with_stats,
)
from bidstrain.normalize.masking import epi_mask, head_mask
from bidstrain.normalize.moments import VoxelMoments, pool_moments
from bidstrain.normalize.nifti_stream import iter_blocks, read_layout
from nibabel.testing import data_path
from nilearn.maskers import NiftiMasker
from nilearn.masking import compute_epi_mask
from nilearn.signal import clean
from normalize_support import image_options

#: The options of the default config for a BOLD run (its mask: nilearn's EPI mask).
EPI = image_options(mask="epi")

FUNCTIONAL = Path(data_path) / "functional.nii"  # real BOLD, int16 with scl_slope/scl_inter
ANATOMICAL = Path(data_path) / "anatomical.nii"  # real T1, big-endian int16
REPO = Path(__file__).resolve().parents[1]
BOLD = ImageInfo("bold", "01", entities={"sub": "01", "task": "rest"}, repetition_time=2.0)


def _save(data: np.ndarray, path: Path, affine: np.ndarray | None = None) -> Path:
    img = nib.Nifti1Image(data, np.eye(4) if affine is None else affine)
    nib.save(img, path)
    return path


def _demo_run(path: Path, seed: int = 0, n_volumes: int = 30, shape=(12, 14, 12)) -> Path:
    spec = DemoSpec(bold_shape=shape, n_volumes=n_volumes)
    rng = np.random.default_rng(seed)
    signal_ = np.sin(np.arange(n_volumes) / 3.0).astype(np.float32)
    return _save(bold_run(spec, rng, signal_), path, np.diag([3.0, 3.0, 3.0, 1.0]))


def _open(path: Path) -> xr.Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return xr.open_zarr(path, consolidated=CONSOLIDATED).load()


def _mask_file(mask: np.ndarray, like: Path, path: Path) -> Path:
    return _save(mask.astype(np.uint8), path, nib.load(like).affine)


# ---- streaming reader --------------------------------------------------------------


@pytest.mark.parametrize("block", [1, 3, 7, 100])
def test_blocks_equal_nibabel_on_nii_and_gz(tmp_path, block):
    data = np.random.default_rng(0).integers(-500, 500, (5, 6, 4, 9)).astype(np.int16)
    for name in ("run.nii", "run.nii.gz"):
        path = _save(data, tmp_path / name)
        layout = read_layout(path)
        rows = np.concatenate([b.copy() for _, b in iter_blocks(layout, block)])
        assert rows.shape == (9, 5 * 6 * 4)
        volumes = np.stack([layout.to_grid(row) for row in rows], axis=-1)
        np.testing.assert_array_equal(volumes, data)


def test_big_endian_and_scaling_follow_the_header(tmp_path):
    layout = read_layout(ANATOMICAL)
    assert layout.dtype.byteorder == ">"
    (_, block), *_ = list(iter_blocks(layout, 1))
    assert block.dtype.isnative
    canonical = nib.as_closest_canonical(nib.load(ANATOMICAL))  # the file is LAS
    np.testing.assert_array_equal(layout.to_grid(block[0]), np.asarray(canonical.dataobj))
    np.testing.assert_array_equal(layout.affine, canonical.affine)
    assert layout.source_orientation == "LAS" and layout.shape == canonical.shape
    func = read_layout(FUNCTIONAL)
    assert func.slope != 1 and func.inter != 0


def test_truncated_stream_is_an_error(tmp_path):
    path = _save(np.ones((4, 4, 4, 6), dtype=np.int16), tmp_path / "run.nii")
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(BidstrainError, match="truncated voxel data.*6 volumes") as error:
        list(iter_blocks(read_layout(path), 2))
    assert str(path) in str(error.value)


# ---- moments -----------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.int16, np.float32])
def test_moments_are_exact_for_scanner_scale_data(dtype):
    rng = np.random.default_rng(1)
    data = (10_000 + rng.normal(0, 30, (50, 200))).astype(dtype)
    moments = VoxelMoments(200, dtype=dtype)
    for start in range(0, 50, 7):
        moments.update(data[start : start + 7])
    exact = data.astype(np.float64)
    np.testing.assert_allclose(moments.mean(), exact.mean(axis=0), rtol=1e-14)
    np.testing.assert_allclose(moments.variance(1), exact.var(axis=0, ddof=1), rtol=1e-10)
    # integers cannot be non-finite: only float input is checked
    assert moments.nonfinite is None if dtype is np.int16 else not moments.nonfinite.any()


@pytest.mark.parametrize(
    ("dtype", "centered"), [(np.int16, False), (np.float32, False), (np.float64, True)]
)
def test_moments_do_not_depend_on_the_tile_width(monkeypatch, dtype, centered):
    """Every digit of the moments is the same whatever the tiles (blocks of 1 to 16 rows),
    so the tile size can follow the cache without changing a store."""
    rng = np.random.default_rng(3)
    data = (1_000 + rng.normal(0, 30, (33, 20_001))).astype(dtype)
    results = []
    for tile_bytes in (2**13, 2**16, 2**21, 2**26):
        monkeypatch.setattr(moments_module, "TILE_BYTES", tile_bytes)
        moments = VoxelMoments(data.shape[1], dtype=dtype, centered=centered)
        for start, rows in zip((0, 1, 4, 20), (1, 3, 16, 13), strict=True):
            moments.update(data[start : start + rows])
        results.append(np.concatenate([moments.mean(), moments.variance(1)]))
    for result in results[1:]:
        np.testing.assert_array_equal(result, results[0])


def test_pooled_moments_equal_the_moments_of_the_concatenation():
    rng = np.random.default_rng(2)
    runs = [rng.normal(100 * i, 1 + i, (n, 30)) for i, n in enumerate((20, 35, 7))]
    mean, variance = pool_moments(
        [len(r) for r in runs],
        [r.mean(axis=0) for r in runs],
        [r.var(axis=0, ddof=d) for r, d in zip(runs, (1, 0, 1), strict=True)],
        [1, 0, 1],
        ddof=1,
    )
    everything = np.concatenate(runs)
    np.testing.assert_allclose(mean, everything.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(variance, everything.var(axis=0, ddof=1), rtol=1e-10)


# ---- BOLD: equality with nilearn, store layout -------------------------------------


def test_bold_equals_nilearn_zscore_sample_on_real_functional(tmp_path):
    mean = nib.load(FUNCTIONAL).get_fdata().mean(axis=-1)
    mask_path = _mask_file(mean > np.percentile(mean, 40), FUNCTIONAL, tmp_path / "mask.nii")
    attrs = normalize_bold(
        FUNCTIONAL, tmp_path / "f.zarr", BOLD, image_options(mask=str(mask_path), block_volumes=3)
    )
    ds = _open(tmp_path / "f.zarr")
    # the file is LAS and stores are RAS: nilearn is given the RAS image and mask
    canonical = nib.as_closest_canonical(nib.load(FUNCTIONAL))
    ras_path, ras_mask = tmp_path / "ras.nii", tmp_path / "ras_mask.nii"
    nib.save(canonical, ras_path)
    nib.save(nib.as_closest_canonical(nib.load(mask_path)), ras_mask)
    masker = NiftiMasker(
        mask_img=str(ras_mask),
        standardize="zscore_sample",
        detrend=False,
        memory_level=0,
        reports=False,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "given mask will be used"
        expected = masker.fit_transform(str(ras_path))
    varying = ds["std"].values > 0
    assert varying.sum() > 100
    np.testing.assert_allclose(ds.data.values[:, varying], expected[:, varying], atol=1e-5)
    # nilearn.signal on the raw masked series gives the same (its zero-variance voxels
    # keep a tiny float residue where ours are exactly 0)
    series = canonical.get_fdata()[ds.mask.values].T
    cleaned = clean(series, detrend=False, standardize="zscore_sample")
    np.testing.assert_allclose(ds.data.values[:, varying], cleaned[:, varying], atol=1e-5)
    np.testing.assert_array_equal(ds.data.values[:, ~varying], 0.0)
    assert attrs["n_zero_variance"] == int((~varying).sum())
    # raw values come back from data * std + mean
    np.testing.assert_allclose(
        ds.data.values * ds["std"].values + ds["mean"].values, series, rtol=1e-6
    )
    assert ds.data.dtype == np.float32 and ds.data.dims == ("time", "voxel")
    np.testing.assert_allclose(ds.time.values, np.arange(20) * 2.0)
    for key in ("affine", "repetition_time", "source_path", "source_size", "ddof"):
        assert key in ds.attrs
    assert ds.attrs["stats_dim"] == "voxel" and ds.attrs["heldout"] is False


def test_bold_nii_gz_float_big_endian_equals_int16_nii(tmp_path):
    img = nib.load(FUNCTIONAL)
    scaled = img.get_fdata().astype(">f4")
    converted = nib.Nifti1Image(scaled, img.affine)
    converted.set_data_dtype(">f4")
    nib.save(converted, tmp_path / "f.nii.gz")
    options = image_options(mask="none", block_volumes=4)
    normalize_bold(FUNCTIONAL, tmp_path / "a.zarr", BOLD, options)
    normalize_bold(tmp_path / "f.nii.gz", tmp_path / "b.zarr", BOLD, options)
    a, b = _open(tmp_path / "a.zarr"), _open(tmp_path / "b.zarr")
    # float32 holds values near 3,000 to 2e-4: the inputs themselves differ that much
    np.testing.assert_allclose(a.data.values, b.data.values, atol=5e-5)
    ras = nib.as_closest_canonical(converted).get_fdata()  # stores are in RAS voxel order
    series = ras.reshape(-1, ras.shape[-1]).T
    expected = (series - series.mean(axis=0)) / series.std(axis=0, ddof=1)
    np.testing.assert_allclose(b.data.values, expected, atol=1e-5)


def test_epi_mask_of_the_streamed_mean_equals_nilearn_on_the_4d_run(tmp_path):
    path = _demo_run(tmp_path / "run.nii.gz")
    normalize_bold(path, tmp_path / "r.zarr", BOLD, image_options(mask="epi"))
    expected = compute_epi_mask(str(path)).get_fdata().astype(bool)
    np.testing.assert_array_equal(_open(tmp_path / "r.zarr").mask.values, expected)


def test_zero_variance_voxels_become_zero_and_are_counted(tmp_path):
    data = np.random.default_rng(3).normal(1000, 10, (4, 4, 4, 12)).astype(np.float32)
    data[0, 0, 0] = 7.0
    data[1, 2, 3] = 0.0
    path = _save(data, tmp_path / "run.nii")
    attrs = normalize_bold(path, tmp_path / "r.zarr", BOLD, image_options(mask="none", ddof=0))
    ds = _open(tmp_path / "r.zarr")
    assert attrs["n_zero_variance"] == 2
    constant = ds["std"].values == 0
    np.testing.assert_array_equal(ds.data.values[:, constant], 0.0)
    values = ds.data.values[:, ~constant]
    np.testing.assert_allclose(values.mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(values.std(axis=0, ddof=0), 1, atol=1e-5)


def test_store_is_readable_by_open_store_and_chunked_by_volumes(tmp_path):
    path = _demo_run(tmp_path / "run.nii.gz", n_volumes=40)
    normalize_bold(path, tmp_path / "r.zarr", BOLD, image_options(mask="none", block_volumes=3))
    ds = open_store(tmp_path / "r.zarr")
    assert ds.data.encoding["chunks"][1] == ds.sizes["voxel"]


# ---- bad input ---------------------------------------------------------------------


def test_one_volume_is_an_error(tmp_path):
    path = _save(np.ones((4, 4, 4, 1), dtype=np.int16), tmp_path / "sub-01_bold.nii")
    with pytest.raises(BidstrainError, match=r"1 volume.*ddof=1.*normalize.ddof") as error:
        normalize_bold(path, tmp_path / "r.zarr", BOLD, image_options(mask="epi"))
    assert str(path) in str(error.value) and "sub-01" in str(error.value)
    assert not (tmp_path / "r.zarr").exists()


def test_all_zero_image_is_an_error(tmp_path):
    path = _save(np.zeros((4, 4, 4, 5), dtype=np.int16), tmp_path / "run.nii.gz")
    with pytest.raises(BidstrainError, match="every value of every volume is zero") as error:
        normalize_bold(path, tmp_path / "r.zarr", BOLD, image_options(mask="none"))
    assert str(path) in str(error.value)


def test_empty_epi_mask_is_an_error_naming_the_config_key(tmp_path):
    # nilearn's compute_epi_mask finds nothing in this real 3-slice run
    with pytest.raises(BidstrainError, match=r"mask is empty.*normalize.mask") as error:
        normalize_bold(FUNCTIONAL, tmp_path / "r.zarr", BOLD, image_options(mask="epi"))
    assert str(FUNCTIONAL) in str(error.value)
    assert "config normalize.mask: none, or a mask file" in str(error.value)  # not epi again


def test_empty_mask_file_and_mask_on_another_grid_are_errors(tmp_path):
    shape = nib.load(FUNCTIONAL).shape[:3]
    empty = _mask_file(np.zeros(shape, bool), FUNCTIONAL, tmp_path / "empty.nii")
    with pytest.raises(BidstrainError, match="mask is empty"):
        normalize_bold(FUNCTIONAL, tmp_path / "r.zarr", BOLD, image_options(mask=str(empty)))
    other = _save(np.ones((5, 5, 5), np.uint8), tmp_path / "other.nii")
    with pytest.raises(BidstrainError, match=r"shape \(5, 5, 5\).*grid \(17, 21, 3\)") as error:
        normalize_bold(FUNCTIONAL, tmp_path / "r.zarr", BOLD, image_options(mask=str(other)))
    assert str(other) in str(error.value) and "normalize.mask" in str(error.value)
    moved = _save(np.ones(shape, np.uint8), tmp_path / "moved.nii", np.diag([2, 2, 2, 1]))
    with pytest.raises(BidstrainError, match="another affine"):
        normalize_bold(FUNCTIONAL, tmp_path / "r.zarr", BOLD, image_options(mask=str(moved)))


def test_nonfinite_values_are_an_error_or_masked_and_counted(tmp_path):
    data = np.random.default_rng(4).normal(500, 5, (4, 4, 4, 8)).astype(np.float32)
    data[1, 1, 1, 3] = np.nan
    data[2, 2, 2, 0] = np.inf
    path = _save(data, tmp_path / "run.nii.gz")
    with pytest.raises(BidstrainError, match=r"2 voxels .*NaN or Inf.*normalize.nonfinite") as e:
        normalize_bold(path, tmp_path / "r.zarr", BOLD, image_options(mask="none"))
    assert str(path) in str(e.value)
    attrs = normalize_bold(
        path, tmp_path / "r.zarr", BOLD, image_options(mask="none", nonfinite="mask")
    )
    ds = _open(tmp_path / "r.zarr")
    assert attrs["n_nonfinite"] == 2 and ds.sizes["voxel"] == 62
    assert not ds.mask.values[1, 1, 1] and np.isfinite(ds.data.values).all()


def test_mask_pattern_placeholders(tmp_path):
    entities = {"sub": "01", "ses": "2", "task": "rest", "run": "1"}
    pattern = (
        "{bids_dir}/derivatives/sub-{subject}/ses-{session}/sub-{subject}_task-{task}_mask.nii"
    )
    assert resolve_pattern(pattern, entities, "/data", "normalize.mask") == (
        "/data/derivatives/sub-01/ses-2/sub-01_task-rest_mask.nii"
    )
    with pytest.raises(BidstrainError, match=r"normalize.mask.*\{acq\}.*'acq'"):
        resolve_pattern("m_{acq}.nii", entities, "/data", "normalize.mask")


# ---- held-out runs -----------------------------------------------------------------


def test_heldout_run_is_normalized_with_the_pooled_statistics_of_the_other_runs(tmp_path):
    runs = [
        _demo_run(tmp_path / f"sub-01_task-rest_run-{r}_bold.nii.gz", seed=r) for r in (1, 2, 3)
    ]
    stores = []
    for run in runs[:2]:
        store = tmp_path / f"{run.name}.zarr"
        normalize_bold(run, store, BOLD, image_options(mask="epi"))
        stores.append(store)
    attrs = normalize_with_stats(runs[2], stores, tmp_path / "heldout.zarr", None, EPI)
    held = _open(tmp_path / "heldout.zarr")
    fitted = [_open(s) for s in stores]
    mask = fitted[0].mask.values & fitted[1].mask.values
    np.testing.assert_array_equal(held.mask.values, mask)
    raw = [nib.load(r).get_fdata()[mask].T for r in runs]
    pooled = np.concatenate(raw[:2])
    np.testing.assert_allclose(held["mean"].values, pooled.mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(held["std"].values, pooled.std(axis=0, ddof=1), rtol=1e-5)
    expected = (raw[2] - pooled.mean(axis=0)) / pooled.std(axis=0, ddof=1)
    np.testing.assert_allclose(held.data.values, expected, atol=1e-4)
    # its own statistics were not used: its per-voxel mean is far from 0
    assert np.abs(held.data.values.mean(axis=0)).mean() > 0.5
    assert attrs["heldout"] is True and held.attrs["stats_from"] == [
        str(r.resolve()) for r in runs[:2]
    ]
    assert held.attrs["subject"] == "01" and held.attrs["repetition_time"] == 2.0


def test_heldout_stats_on_another_grid_are_an_error(tmp_path):
    store = tmp_path / "a.zarr"
    normalize_bold(_demo_run(tmp_path / "a.nii.gz"), store, BOLD, image_options(mask="none"))
    other = _demo_run(tmp_path / "sub-01_task-rest_run-2_bold.nii.gz", shape=(10, 10, 10))
    with pytest.raises(BidstrainError, match="statistics only apply on the same grid"):
        normalize_with_stats(other, [store], tmp_path / "b.zarr", None, EPI)


# ---- T1w and DWI -------------------------------------------------------------------


def test_t1w_is_zscored_within_a_head_mask(tmp_path):
    spec = DemoSpec()
    volume = t1w_image(spec, np.random.default_rng(5))
    path = _save(volume, tmp_path / "t1.nii.gz")
    info = ImageInfo("T1w", "01")
    attrs = normalize_volumes(path, tmp_path / "t.zarr", info, image_options(mask="head"))
    ds = _open(tmp_path / "t.zarr")
    assert ds.data.shape[0] == 1 and attrs["stats_dim"] == "time"
    assert ds["mean"].dims == ("time",)
    np.testing.assert_allclose(ds.data.values.mean(), 0, atol=1e-5)
    np.testing.assert_allclose(ds.data.values.std(ddof=1), 1, atol=1e-5)
    grids = np.meshgrid(*[np.linspace(-1, 1, n) for n in spec.t1w_shape], indexing="ij")
    head = sum(g**2 for g in grids) <= 0.9**2
    assert (ds.mask.values == head).mean() > 0.97
    np.testing.assert_array_equal(head_mask(volume), ds.mask.values)
    # a real T1 (big-endian): head mask covers the bright part
    normalize_volumes(ANATOMICAL, tmp_path / "a.zarr", info, image_options(mask="head"))
    assert 0.2 < _open(tmp_path / "a.zarr").mask.values.mean() < 0.9


def test_dwi_volumes_are_zscored_with_gradients_as_coordinates(tmp_path):
    spec = DemoSpec()
    data, bvals, bvecs = dwi_series(spec, np.random.default_rng(6))
    path = _save(data, tmp_path / "dwi.nii.gz")
    info = ImageInfo("dwi", "01", bval=bvals.tolist(), bvec=bvecs.tolist())
    normalize_volumes(path, tmp_path / "d.zarr", info, image_options(mask="epi", block_volumes=3))
    ds = _open(tmp_path / "d.zarr")
    np.testing.assert_array_equal(ds.bval.values, bvals)
    # .bvec is FSL's convention: x negated for this RAS image (positive determinant); the
    # store holds plain voxel-axis directions
    np.testing.assert_allclose(ds.bvec.values, (bvecs * [[-1.0], [1.0], [1.0]]).T)
    assert ds.bvec.dims == ("time", "direction")
    np.testing.assert_allclose(ds.data.values.mean(axis=1), 0, atol=1e-5)
    np.testing.assert_allclose(ds.data.values.std(axis=1, ddof=1), 1, atol=1e-5)
    b0_mean = data[..., bvals == 0].mean(axis=-1)
    np.testing.assert_array_equal(ds.mask.values, epi_mask(b0_mean))
    raw = data[ds.mask.values].T
    np.testing.assert_allclose(
        ds.data.values * ds["std"].values[:, None] + ds["mean"].values[:, None], raw, rtol=1e-5
    )


# ---- atomic outputs ----------------------------------------------------------------


def _ingest_record(image: Path) -> dict:
    return {"subject": "01", "images": [{
        "path": str(image), "modality": "bold", "subject": "01", "session": "",
        "entities": {"sub": "01", "task": "rest"}, "repetition_time": 2.0,
    }]}  # fmt: skip


def _bids_run(root: Path, name: str = "sub-01_task-rest_bold.nii.gz") -> Path:
    """Where sub-01's BOLD run goes in a new BIDS dataset at ``root`` (the sidecar's
    repetition time agrees with the 1 s of a header that nibabel writes by default)."""
    func = root / "sub-01" / "func"
    func.mkdir(parents=True)
    (root / "dataset_description.json").write_text('{"Name": "t", "BIDSVersion": "1.10.0"}')
    (root / "task-rest_bold.json").write_text('{"RepetitionTime": 1.0}')
    return func / name


def _cli(image: Path, out: Path, **normalize) -> subprocess.Popen:
    """The normalize job of sub-01 (one BOLD run, in a dataset of :func:`_bids_run`) into
    ``out``, with config ``normalize`` settings; its ingest record ``t.json`` and table
    ``t.tsv`` next to ``out``, its settings and spec files in ``plan/`` beside that
    folder."""
    plan = out.parent.parent / "plan"
    plan.mkdir(parents=True, exist_ok=True)
    spec = [{"modality": "bold", "image": str(image), "store": str(out), "mask": "none",
             "stats_from": []}]  # fmt: skip
    settings = {
        "bids_dir": str(image.parents[2]),
        "ingest": {},
        "normalize": normalize,
        "time": {},
        "atlas": None,
    }
    (plan / "settings.json").write_text(json.dumps(settings))
    (plan / "spec.json").write_text(json.dumps(spec))
    command = [sys.executable, "-m", "bidstrain.normalize", "--subject", "01"]
    command += ["--settings", str(plan / "settings.json"), "--spec", str(plan / "spec.json")]
    command += ["--ingest", str(out.parent / "t.json"), "--out-table", str(out.parent / "t.tsv")]
    env = {**os.environ, "PYTHONPATH": str(REPO / "workflow")}
    return subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)


def test_killed_job_leaves_no_store_and_keeps_the_previous_one(tmp_path):
    out = tmp_path / "out" / "r.zarr"
    small = _demo_run(_bids_run(tmp_path / "small"))
    process = _cli(small, out)
    assert process.wait() == 0, process.stderr.read()
    before = _open(out)
    big_data = np.random.default_rng(7).integers(0, 1000, (64, 64, 64, 120), dtype=np.int16)
    big = _save(big_data, _bids_run(tmp_path / "big", "sub-01_task-rest_bold.nii"))
    del big_data
    process = _cli(big, out, block_volumes=4)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        shard = list(out.parent.glob(".r.zarr.tmp-*/data/c/0/0"))  # streamed, chunk by chunk
        if shard and shard[0].stat().st_size >= 2 * CHUNK_BYTES:
            break
        time.sleep(0.02)
    assert process.poll() is None, "the job finished before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    after = _open(out)  # still the complete previous store
    xr.testing.assert_identical(before, after)
    leftovers = [
        p.name for p in out.parent.iterdir() if p.name not in ("r.zarr", "t.json", "t.tsv")
    ]
    assert leftovers and all(name.startswith(".r.zarr.tmp-") for name in leftovers)
    # the next write of the store removes what the killed job left
    process = _cli(small, out)
    assert process.wait() == 0, process.stderr.read()
    assert not list(out.parent.glob(".r.zarr.*"))


def test_failed_job_prints_a_clean_error_and_keeps_the_previous_store(tmp_path):
    out = tmp_path / "r.zarr"
    good = _demo_run(tmp_path / "good.nii.gz")
    normalize_bold(good, out, BOLD, image_options(mask="none"))
    bad = _save(np.zeros((4, 4, 4, 5), dtype=np.int16), _bids_run(tmp_path / "bids"))
    process = _cli(bad, out)
    assert process.wait() == 1
    message = process.stderr.read()
    assert f"bidstrain: error: sub-01: {bad}: every value" in message
    assert "Traceback" not in message
    assert open_store(out).sizes["time"] == 30
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    assert not (tmp_path / "t.tsv").exists()  # the job's output: absent after a failure


def test_an_invalid_header_stops_the_job_before_any_store_or_record(tmp_path):
    out = tmp_path / "r.zarr"
    bad = _save(np.zeros((4, 4, 4, 2), dtype=np.int16), _bids_run(tmp_path / "bids"))
    process = _cli(bad, out)
    assert process.wait() == 1
    message = process.stderr.read()
    assert "bidstrain: error: sub-01: 1 invalid image(s):" in message
    assert f"{bad}: BOLD must be 4D with at least 3 volumes, got shape (4, 4, 4, 2)" in message
    assert "Traceback" not in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bids"]  # no store, record, table


def test_ingest_record_supplies_tr_and_gradients(tmp_path):
    image = _demo_run(tmp_path / "sub-01_task-rest_bold.nii.gz")
    info = ImageInfo.from_ingest(_ingest_record(image), image)
    assert info.repetition_time == 2.0 and info.subject == "01" and info.modality == "bold"
    assert info.bval is None and info.bvec is None
    with pytest.raises(BidstrainError, match="no entry of this image"):
        ImageInfo.from_ingest(_ingest_record(image), tmp_path / "other.nii.gz")
    dwi = tmp_path / "sub-01_dwi.nii.gz"
    bval, bvec = [0.0, 1000.0], [[0.0, 1.0], [0.0, 0.0], [0.0, 0.0]]
    record = {"subject": "01", "images": [{
        "path": str(dwi), "modality": "dwi", "subject": "01", "session": "",
        "entities": {"sub": "01"}, "repetition_time": None, "bval": bval, "bvec": bvec,
    }]}  # fmt: skip
    info = ImageInfo.from_ingest(record, dwi)
    assert info.modality == "dwi" and info.repetition_time is None
    assert info.bval == bval and info.bvec == bvec


# ---- stores as users open them -----------------------------------------------------


def _open_as_users_do(path: Path) -> xr.Dataset:
    """``xarray.open_zarr(path)`` with its defaults, any warning an error."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return xr.open_zarr(path).load()


def test_every_kind_of_store_opens_with_xarray_defaults_without_a_warning(tmp_path):
    """BOLD, held-out BOLD, T1w and DWI stores carry consolidated metadata: plain
    ``xr.open_zarr(path)`` reads them silently, the same values as a per-array read."""
    runs = [_demo_run(tmp_path / f"sub-01_task-rest_run-{r}_bold.nii.gz", seed=r) for r in (1, 2)]
    normalize_bold(runs[0], tmp_path / "bold.zarr", BOLD, image_options(mask="epi"))
    heldout = tmp_path / "heldout.zarr"
    normalize_with_stats(runs[1], [tmp_path / "bold.zarr"], heldout, BOLD, image_options("epi"))
    spec, rng = DemoSpec(), np.random.default_rng(5)
    t1w = _save(t1w_image(spec, rng), tmp_path / "t1.nii.gz")
    normalize_volumes(
        t1w, tmp_path / "t1w.zarr", ImageInfo("T1w", "01"), image_options(mask="head")
    )
    data, bvals, bvecs = dwi_series(spec, rng)
    dwi = _save(data, tmp_path / "dwi.nii.gz")
    info = ImageInfo("dwi", "01", bval=bvals.tolist(), bvec=bvecs.tolist())
    normalize_volumes(dwi, tmp_path / "dwi.zarr", info, image_options(mask="epi"))
    for name in ("bold", "heldout", "t1w", "dwi"):
        store = tmp_path / f"{name}.zarr"
        xr.testing.assert_identical(_open_as_users_do(store), _open(store))


def test_the_checksum_follows_the_content_not_the_time_of_writing(tmp_path):
    """Rewriting a store from the same image gives the same ``checksum`` attribute (and
    the same bytes); a changed image or another setting gives another."""
    run = _demo_run(tmp_path / "run.nii.gz", seed=1)

    def checksum(name: str, image: Path = run, **options) -> str:
        normalize_bold(image, tmp_path / name, BOLD, image_options(mask="epi", **options))
        return read_meta(tmp_path / name).checksum

    first = checksum("a.zarr")
    time.sleep(0.01)
    assert first.startswith("xxh3-128:") and checksum("b.zarr") == first
    assert (tmp_path / "a.zarr/data/c/0/0").read_bytes() == (
        tmp_path / "b.zarr/data/c/0/0"
    ).read_bytes()
    assert checksum("a.zarr") == first  # rewritten in place
    changed = nib.load(run)
    values = np.asarray(changed.dataobj).copy()
    values[6, 7, 6, 3] += 50
    other = _save(values, tmp_path / "changed.nii.gz", changed.affine)
    assert checksum("c.zarr", other) != first
    assert checksum("d.zarr", storage="float16") != first


def test_a_mask_file_that_cannot_be_read_is_named_with_where_it_was_looked_for(
    tmp_path, monkeypatch
):
    from bidstrain.normalize.masking import load_mask

    monkeypatch.chdir(tmp_path)
    grid = dict(shape=(4, 4, 4), affine=np.eye(4), image="bold.nii.gz")
    with pytest.raises(BidstrainError) as missing:
        load_mask("masks/sub-01_mask.nii.gz", **grid, config_key="normalize.mask", subject="01")
    message = str(missing.value)
    assert message.startswith("sub-01: masks/sub-01_mask.nii.gz: mask (config normalize.mask)")
    assert f"read from the study folder, {tmp_path}:" in message
    (tmp_path / "broken.nii.gz").write_bytes(b"not a NIfTI file")
    with pytest.raises(BidstrainError, match="is not a readable image") as unreadable:
        load_mask("broken.nii.gz", **grid, config_key="normalize.mask")
    assert "study folder" not in str(unreadable.value)  # it is there: the path is right
