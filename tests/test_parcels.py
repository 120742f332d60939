"""Parcel time series: the mean of a run's voxels in each parcel and its mask, after the
confound regression (and the resampling in time), z-scored per parcel.

Judged against a float64 reference written out here in numpy (within 1e-5); nilearn's
``NiftiLabelsMasker`` with the same confounds and sample mask is compared too, and its
own distance to the reference is logged beside ours. Measured on the demo's int16 runs:
ours 1.9e-7 (the float32 store's rounding), nilearn's 3e-15 without confounds and 4e-11
with the scrubbing strategy (its region means are float64 here, unlike its voxel maskers).
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import logging
import re
import shutil
import subprocess
import sys
import tracemalloc
import warnings
from pathlib import Path

import bidstrain.normalize.bold as bold
import nibabel as nib
import numpy as np
import pytest
import xarray as xr
import zarr
from bidstrain import paths
from bidstrain.config import ParcellationConfig
from bidstrain.dataset.atlas import (
    NATIVE,
    AtlasFiles,
    check_space,
    distinct_names,
    find_atlas,
    load_atlas,
    read_label_table,
)
from bidstrain.demo.generate import ATLAS_NAME, make_atlas_demo, make_fmriprep_demo
from bidstrain.errors import BidstrainError
from bidstrain.io.store import (
    open_store,
    read_dims,
    read_meta,
    read_parcel_stats,
    read_segments,
)
from bidstrain.normalize import ImageInfo, normalize_bold, normalize_with_stats
from bidstrain.normalize.confounds import load_run_confounds
from bidstrain.normalize.nifti_stream import read_layout
from bidstrain.normalize.parcels import ParcelMeans, ParcelOutputs
from bidstrain.normalize.passes import ParcelJob
from bidstrain.normalize.resample_time import resample, time_grid
from bidstrain.plan import write_if_changed
from nilearn.interfaces.fmriprep import load_confounds_strategy
from nilearn.maskers import NiftiLabelsMasker
from normalize_support import fill_the_disk_after, image_options
from scipy import ndimage
from test_plan import plan_of

SPACE = "MNI152NLin2009cAsym"
SPACE_ENTITIES = f"space-{SPACE}_res-2"
N_VOLUMES = 60
#: Largest |ours - float64 reference| allowed; the float32 store alone rounds by 2.4e-7.
TOLERANCE = 1e-5
#: The demo atlas: octants 1-8 in the brain, 9 outside every mask, 10 drawn nowhere.
EMPTY = ("outside", "unused")

log = logging.getLogger(__name__)


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> tuple[Path, AtlasFiles]:
    root = tmp_path_factory.mktemp("parcels")
    make_fmriprep_demo(root / "fmriprep", runs=("1", "2", "3"))
    make_atlas_demo(root / "atlas")
    config = ParcellationConfig(ATLAS_NAME, str(root / "atlas"), None, None, None)
    return root / "fmriprep", find_atlas(config)


def _run(root: Path, run: str = "1") -> tuple[Path, Path, Path]:
    func = root / "sub-01" / "func"
    stem = f"sub-01_task-rest_run-{run}"
    return (
        func / f"{stem}_{SPACE_ENTITIES}_desc-preproc_bold.nii.gz",
        func / f"{stem}_{SPACE_ENTITIES}_desc-brain_mask.nii.gz",
        func / f"{stem}_desc-confounds_timeseries.tsv",
    )


def _info(run: str = "1") -> ImageInfo:
    entities = {"sub": "01", "task": "rest", "run": run, "space": SPACE, "res": "2"}
    return ImageInfo("bold", "01", entities=entities, repetition_time=2.0)


def _job(atlas: AtlasFiles, image: Path, out: Path, stats_from=()) -> ParcelJob:
    layout = read_layout(image)  # the store's grid: RAS+ voxel order
    on_grid = load_atlas(atlas, layout.shape, layout.affine, image=image)
    outputs = ParcelOutputs(
        out / "parcels.zarr", out / "mean_timeseries.tsv", out / "coverage_bold.tsv", stats_from
    )
    return ParcelJob(on_grid, outputs)


def _reference_series(image: Path, mask: Path, atlas: AtlasFiles, strategy: str | None):
    """Float64 parcel means of the run, after the confound regression (numpy, written out),
    and the kept volumes."""
    data = np.asarray(nib.load(image).dataobj, dtype=np.float64)
    inside = np.asarray(nib.load(mask).dataobj) > 0
    labels = np.asarray(nib.load(atlas.image).dataobj).astype(int)
    names = [row["name"] for row in csv.DictReader(atlas.labels.open(), delimiter="\t")]
    series = np.zeros((data.shape[3], len(names)))
    for p in range(len(names)):
        voxels = inside & (labels == p + 1)
        if voxels.any():
            series[:, p] = data[voxels].mean(axis=0)
    return *_regressed(series, image, strategy), names


def _regressed(series: np.ndarray, image: Path, strategy: str | None):
    """``(n_volumes, n)`` float64 time series minus the confounds of ``strategy`` fitted on
    the kept volumes (the dropped ones hold the kept ones' mean), and the kept volumes."""
    kept = np.ones(series.shape[0], dtype=bool)
    if strategy is None:
        return series, kept
    frame, sample_mask = load_confounds_strategy(str(image), denoise_strategy=strategy)
    if sample_mask is not None:
        kept[:] = False
        kept[sample_mask] = True
    confounds = frame.to_numpy(dtype=np.float64)[kept]
    confounds = (confounds - confounds.mean(axis=0)) / confounds.std(axis=0)
    kept_series = series[kept]
    beta, *_ = np.linalg.lstsq(confounds, kept_series - kept_series.mean(axis=0), rcond=None)
    series = series.copy()
    series[kept] = kept_series - confounds @ beta
    series[~kept] = kept_series.mean(axis=0)  # dropped: the mean (never used as data)
    return series, kept


def _zscore(series: np.ndarray) -> np.ndarray:
    std = series.std(axis=0, ddof=1)
    return np.divide(series - series.mean(axis=0), std, out=np.zeros_like(series), where=std > 0)


def _nilearn(image: Path, mask: Path, atlas: AtlasFiles, strategy: str | None):
    """nilearn's parcel time series (float32 inside, as nilearn computes int16 runs) and
    the label of each column."""
    confounds = sample_mask = None
    if strategy is not None:
        confounds, sample_mask = load_confounds_strategy(str(image), denoise_strategy=strategy)
    masker = NiftiLabelsMasker(
        str(atlas.image), mask_img=str(mask), strategy="mean", standardize="zscore_sample"
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        values = masker.fit_transform(str(image), confounds=confounds, sample_mask=sample_mask)
    labels = np.asarray(nib.load(atlas.image).dataobj)[np.asarray(nib.load(mask).dataobj) > 0]
    present = [int(i) for i in np.unique(labels) if i != 0]  # nilearn drops masked-out labels
    assert values.shape[1] == len(present)
    return values, present


@pytest.mark.parametrize("strategy", [None, "scrubbing"])
def test_parcels_equal_a_float64_reference_and_nilearn(demo, tmp_path, strategy):
    root, atlas = demo
    image, mask, table = _run(root)
    confounds = None
    if strategy is not None:
        confounds = load_run_confounds(image, table, strategy, {}, N_VOLUMES, ddof=1)
    job = _job(atlas, image, tmp_path)
    normalize_bold(
        image, tmp_path / "bold.zarr", _info(), image_options(mask=str(mask)), confounds, job
    )

    series, kept, names = _reference_series(image, mask, atlas, strategy)
    expected = _zscore(series[kept])
    group = zarr.open_group(tmp_path / "parcels.zarr", mode="r")
    ours = group["data"][...]
    assert ours.shape == expected.shape == (kept.sum(), len(names))
    ours_error = float(np.abs(ours - expected).max())
    assert ours_error <= TOLERANCE

    values, ids = _nilearn(image, mask, atlas, strategy)
    columns = [i - 1 for i in ids]
    nilearn_error = float(np.abs(values - expected[:, columns]).max())
    log.warning(
        "parcels (%s): ours %.2g, nilearn %.2g from the float64 reference",
        strategy,
        ours_error,
        nilearn_error,
    )
    assert np.abs(values - ours[:, columns]).max() <= TOLERANCE
    # the saved statistics give the parcel means back; the TSV holds them
    mean, std = group["mean"][...], group["std"][...]
    np.testing.assert_allclose(ours * std + mean, series[kept], rtol=1e-5, atol=1e-3)
    rows = list(csv.reader((tmp_path / "mean_timeseries.tsv").open(), delimiter="\t"))
    assert rows[0] == names and len(rows) == kept.sum() + 1
    tsv = np.array([[np.nan if c == "n/a" else float(c) for c in row] for row in rows[1:]])
    empty = [names.index(name) for name in EMPTY]
    assert np.isnan(tsv[:, empty]).all()
    full = [p for p in range(len(names)) if p not in empty]
    np.testing.assert_allclose(tsv[:, full], series[kept][:, full], rtol=1e-12)


def test_coverage_and_empty_parcels_are_reported_never_nan(demo, tmp_path, caplog):
    root, atlas = demo
    image, mask, _ = _run(root)
    job = _job(atlas, image, tmp_path)
    with caplog.at_level(logging.WARNING):
        normalize_bold(
            image, tmp_path / "bold.zarr", _info(), image_options(mask=str(mask)), None, job
        )
    assert "2 parcels of atlas demo have no voxel in the mask" in caplog.text
    assert "outside, unused" in caplog.text
    group = zarr.open_group(tmp_path / "parcels.zarr", mode="r")
    for name in ("data", "mean", "std", "coverage"):
        assert np.isfinite(group[name][...]).all()
    labels = np.asarray(nib.load(atlas.image).dataobj)
    inside = np.asarray(nib.load(mask).dataobj) > 0
    expected = [(inside & (labels == i)).sum() / max((labels == i).sum(), 1) for i in range(1, 11)]
    rows = list(csv.reader((tmp_path / "coverage_bold.tsv").open(), delimiter="\t"))
    assert len(rows) == 2 and rows[0][-2:] == list(EMPTY)
    np.testing.assert_allclose([float(c) for c in rows[1]], expected, rtol=1e-12)
    np.testing.assert_allclose(group["coverage"][...], expected, rtol=1e-12)
    assert float(rows[1][-1]) == float(rows[1][-2]) == 0.0
    assert read_meta(tmp_path / "parcels.zarr").stats_dim == "parcel"
    assert group.attrs["n_empty_parcels"] == 2


def test_a_name_given_to_several_labels_gets_each_label_value(demo, tmp_path, caplog):
    """A valid table may repeat a name: the TSVs' columns and the store's parcel_names get
    ``<name>_<index>`` for it, one warning says so, and the parcels are unchanged."""
    root, atlas = demo
    image, mask, _ = _run(root)
    table = tmp_path / "repeated_dseg.tsv"
    table.write_text(atlas.labels.read_text().replace("3\toctant3", "3\toctant2"))
    repeated = dataclasses.replace(atlas, labels=table)
    with caplog.at_level(logging.WARNING):
        for _ in range(2):  # a job's runs: one warning
            job = _job(repeated, image, tmp_path)
    assert caplog.text.count("names given to several labels") == 1
    assert "octant2 -> octant2_2, octant2 -> octant2_3" in caplog.text
    normalize_bold(image, tmp_path / "bold.zarr", _info(), image_options(mask=str(mask)), None, job)
    columns = ["octant1", "octant2_2", "octant2_3", *(f"octant{i}" for i in range(4, 9)), *EMPTY]
    for tsv in ("mean_timeseries.tsv", "coverage_bold.tsv"):
        assert (tmp_path / tsv).read_text().split("\n")[0].split("\t") == columns
    group = zarr.open_group(tmp_path / "parcels.zarr", mode="r")
    assert group.attrs["parcel_names"] == columns
    assert list(group["parcel"][...]) == list(range(1, 11))


def test_distinct_names_rename_until_no_two_are_equal():
    names = distinct_names(["a", "b", "a", "a_3", "b_2"], np.array([1, 2, 3, 4, 9]))
    # the a_3 made for label 3 meets the table's own a_3: both get their label; b, given
    # to one label, keeps its name
    assert names == ("a_1", "b", "a_3_3", "a_3_4", "b_2")


def test_the_parcel_checksum_follows_the_content_not_the_time_of_writing(demo, tmp_path):
    """A parcel store rewritten from the same run keeps its ``checksum`` (so a forced
    renormalization does not retrain a model on parcels); another run changes it."""
    root, atlas = demo

    def checksum(name: str, run: str = "1") -> str:
        image, mask, _ = _run(root, run)
        out = tmp_path / name
        options = image_options(mask=str(mask))
        normalize_bold(image, out / "bold.zarr", _info(run), options, None, _job(atlas, image, out))
        return read_meta(out / "parcels.zarr").checksum

    first = checksum("a")
    assert first.startswith("xxh3-128:") and checksum("b") == first
    assert checksum("a") == first  # rewritten in place
    assert checksum("c", run="2") != first


def test_heldout_parcels_use_the_pooled_training_statistics(demo, tmp_path):
    root, atlas = demo
    stores, parcels, series = [], [], []
    for run in ("1", "2"):
        image, mask, _ = _run(root, run)
        out = tmp_path / f"run-{run}"
        normalize_bold(
            image,
            out / "bold.zarr",
            _info(run),
            image_options(mask=str(mask)),
            None,
            _job(atlas, image, out),
        )
        stores.append(out / "bold.zarr")
        parcels.append(out / "parcels.zarr")
        series.append(_reference_series(image, mask, atlas, None)[0])
    image, mask, _ = _run(root, "3")
    out = tmp_path / "run-3"
    job = _job(atlas, image, out, tuple(parcels))
    normalize_with_stats(
        image, stores, out / "bold.zarr", _info("3"), image_options("epi"), None, job
    )
    pooled = np.concatenate(series)
    mean, std = pooled.mean(axis=0), pooled.std(axis=0, ddof=1)
    # run 3's parcels use the voxels of the intersection of runs 1 and 2's masks (as the
    # voxel store does); the demo's runs share one mask
    own = _reference_series(image, mask, atlas, None)[0]
    full = std > 0
    expected = (own[:, full] - mean[full]) / std[full]
    count, saved_mean, saved_std, meta = read_parcel_stats(out / "parcels.zarr")
    assert meta.heldout and count == N_VOLUMES
    np.testing.assert_allclose(saved_mean[full], mean[full], rtol=1e-6)
    data = zarr.open_group(out / "parcels.zarr", mode="r")["data"][...]
    assert np.abs(data[:, full] - expected).max() <= TOLERANCE
    assert np.abs(data.mean(axis=0)[full]).max() > 1e-3  # not its own statistics


def test_heldout_parcels_pool_the_training_runs_over_the_heldout_voxels(demo, tmp_path):
    """Run 1's mask lacks the outer voxels of one parcel (fMRIPrep's masks differ at the
    edges): run 3's mask, the intersection, lacks them too, so that parcel's training
    statistics are those of runs 1 and 2 over run 3's voxels, not of run 2's parcel
    store (over more voxels), and run 3's values equal a float64 reference."""
    root, atlas = demo
    labels = np.asarray(nib.load(atlas.image).dataobj).astype(int)
    first, *_ = _run(root, "1")
    mask_img = nib.load(_run(root, "1")[1])
    inside = np.asarray(mask_img.dataobj) > 0
    parcel = inside & (labels == 2)
    rim = parcel & ~ndimage.binary_erosion(parcel)
    assert 0 < rim.sum() < parcel.sum()
    small = tmp_path / "run-1_mask.nii.gz"
    nib.save(nib.Nifti1Image((inside & ~rim).astype(np.uint8), mask_img.affine), small)
    stores, parcel_stores, masks = [], [], {"1": small, "2": _run(root, "2")[1]}
    for run in ("1", "2"):
        image = _run(root, run)[0]
        out = tmp_path / f"run-{run}"
        job = _job(atlas, image, out)
        normalize_bold(image, out / "bold.zarr", _info(run), image_options(mask=str(masks[run])),
                       None, job)  # fmt: skip
        stores.append(out / "bold.zarr")
        parcel_stores.append(out / "parcels.zarr")
    image = _run(root, "3")[0]
    out = tmp_path / "run-3"
    normalize_with_stats(image, stores, out / "bold.zarr", _info("3"), image_options("epi"),
                         None, _job(atlas, image, out, tuple(parcel_stores)))  # fmt: skip
    # the reference: every run's parcel means over the intersection mask, in float64
    heldout_mask = tmp_path / "intersection.nii.gz"
    both = inside & ~rim & (np.asarray(nib.load(masks["2"]).dataobj) > 0)
    nib.save(nib.Nifti1Image(both.astype(np.uint8), mask_img.affine), heldout_mask)
    series = [_reference_series(_run(root, r)[0], heldout_mask, atlas, None)[0] for r in "123"]
    pooled = np.concatenate(series[:2])
    mean, std = pooled.mean(axis=0), pooled.std(axis=0, ddof=1)
    full = std > 0
    expected = (series[2][:, full] - mean[full]) / std[full]
    data = zarr.open_group(out / "parcels.zarr", mode="r")["data"][...]
    error = np.abs(data[:, full] - expected).max()
    log.warning("held-out parcels over the intersection mask: max error %.2g", error)
    assert error <= TOLERANCE
    _, saved_mean, saved_std, _ = read_parcel_stats(out / "parcels.zarr")
    np.testing.assert_allclose(saved_std[full], std[full], rtol=1e-5)
    # voxel stores listed in another order than their parcel stores: named, not mixed up
    with pytest.raises(BidstrainError, match="voxel store is of .*run-1.*parcel store of .*run-2"):
        normalize_with_stats(image, stores[::-1], tmp_path / "x.zarr", _info("3"),
                             image_options("epi"), None,
                             _job(atlas, image, tmp_path / "x", tuple(parcel_stores)))  # fmt: skip


def _count_pass_2_sums(monkeypatch) -> list:
    """Record each pass that sums the parcels as it writes the voxels (pass 2)."""
    calls, volumes = [], ParcelMeans.volumes
    monkeypatch.setattr(
        ParcelMeans, "volumes", lambda self, source: calls.append(1) or volumes(self, source)
    )
    return calls


@pytest.mark.parametrize("strategy", [None, "scrubbing"])
@pytest.mark.parametrize("method", ["linear", "pchip", "fourier"])
def test_resampled_parcels_are_the_means_of_the_resampled_voxels(
    demo, tmp_path, monkeypatch, method, strategy
):
    """Each method's parcels against the float64 means of its resampled voxels (those of
    ``linear`` and ``fourier`` are summed on the volumes, by pass 1 when the run is not
    regressed, those of ``pchip`` on the frames: :mod:`bidstrain.normalize.parcels`)."""
    root, atlas = demo
    image, mask, table = _run(root)
    confounds = None
    if strategy is not None:
        confounds = load_run_confounds(image, table, strategy, {}, N_VOLUMES, ddof=1)
    options = image_options(mask=str(mask), target_tr=0.8, time_method=method)
    pass_2_sums = _count_pass_2_sums(monkeypatch)
    normalize_bold(image, tmp_path / "bold.zarr", _info(), options, confounds,
                   _job(atlas, image, tmp_path))  # fmt: skip
    assert len(pass_2_sums) == int(strategy is not None or method == "pchip")
    inside = np.asarray(nib.load(mask).dataobj) > 0
    labels = np.asarray(nib.load(atlas.image).dataobj).astype(int)[inside]
    voxels = np.asarray(nib.load(image).dataobj, dtype=np.float64)[inside].T
    voxels, kept = _regressed(voxels, image, strategy)
    deviations = voxels - voxels[kept].mean(axis=0)
    deviations[~kept] = 0.0
    grid = time_grid(N_VOLUMES, 2.0, 0.8, method, kept)
    resampled = resample(deviations, grid)
    names = [row["name"] for row in csv.DictReader(atlas.labels.open(), delimiter="\t")]
    present = [p + 1 for p in range(len(names)) if (labels == p + 1).any()]
    expected = np.zeros((resampled.shape[0], len(names)))
    for p in present:
        expected[:, p - 1] = resampled[:, labels == p].mean(axis=1)
    expected = _zscore(expected)
    ours = zarr.open_group(tmp_path / "parcels.zarr", mode="r")["data"][...]
    assert ours.shape == expected.shape == (grid.valid.sum(), len(names))
    assert np.abs(ours - expected).max() <= TOLERANCE
    ds = open_store(tmp_path / "bold.zarr", use_dask=False)
    assert np.array_equal(ds.time.values, grid.times[grid.valid])
    # the parcel store keeps the run's time grid: read alone, its windows see the gaps
    assert grid.valid.all() == (strategy is None)
    parcels = xr.open_zarr(tmp_path / "parcels.zarr").load()
    np.testing.assert_array_equal(parcels["frame_time"].values, grid.times)
    np.testing.assert_array_equal(parcels["frame_valid"].values, grid.valid)
    np.testing.assert_array_equal(parcels["time"].values, grid.times[grid.valid])
    segments = read_segments(tmp_path / "bold.zarr")
    assert read_segments(tmp_path / "parcels.zarr") == segments
    assert (len(segments) > 1) == (strategy is not None)


def test_a_non_finite_voxel_left_out_of_the_mask_file_is_left_out_of_its_parcel(
    demo, tmp_path, monkeypatch
):
    """Pass 1 sums the parcels over the mask file's voxels; when a voxel holding NaN is
    left out of the mask (``normalize.nonfinite: mask``), pass 2 sums them over the
    voxels left."""
    root, atlas = demo
    image, mask, _ = _run(root)
    source = nib.load(image)
    data = np.asarray(source.dataobj, dtype=np.float32)
    inside = np.asarray(nib.load(mask).dataobj) > 0
    bad = tuple(np.argwhere(inside)[len(np.argwhere(inside)) // 2])
    data[bad + (7,)] = np.nan
    nan_image = tmp_path / "nan_bold.nii.gz"
    header = source.header.copy()
    header.set_data_dtype(np.float32)
    nib.save(nib.Nifti1Image(data, source.affine, header), nan_image)
    pass_2_sums = _count_pass_2_sums(monkeypatch)
    options = image_options(mask=str(mask), nonfinite="mask")
    attrs = normalize_bold(
        nan_image, tmp_path / "bold.zarr", _info(), options, None, _job(atlas, nan_image, tmp_path)
    )
    assert attrs["n_nonfinite"] == 1 and len(pass_2_sums) == 1
    labels = np.asarray(nib.load(atlas.image).dataobj).astype(int)
    left = inside.copy()
    left[bad] = False
    parcel = labels[bad]
    assert parcel > 0
    expected = _zscore(data[left & (labels == parcel)].astype(np.float64).mean(axis=0))
    ours = zarr.open_group(tmp_path / "parcels.zarr", mode="r")["data"][:, parcel - 1]
    assert np.abs(ours - expected).max() <= TOLERANCE


def test_a_cache_that_fails_in_pass_1_leaves_its_parcel_sums_unused(demo, tmp_path, monkeypatch):
    """The kept voxels' file fills the disk after two blocks: pass 1's parcel sums cover
    those blocks only, so pass 2 sums the parcels, and the store is the one of a run read
    by every pass."""
    root, atlas = demo
    image, mask, _ = _run(root)
    options = image_options(mask=str(mask), block_volumes=4)
    monkeypatch.setattr(bold, "cache_plan", lambda *args: None)  # every pass reads the image
    normalize_bold(image, tmp_path / "read.zarr", _info(), options, None,
                   _job(atlas, image, tmp_path / "read"))  # fmt: skip
    monkeypatch.undo()
    fill_the_disk_after(monkeypatch, writes=2)
    pass_2_sums = _count_pass_2_sums(monkeypatch)
    normalize_bold(image, tmp_path / "full.zarr", _info(), options, None,
                   _job(atlas, image, tmp_path / "full"))  # fmt: skip
    assert len(pass_2_sums) == 1
    read = zarr.open_group(tmp_path / "read" / "parcels.zarr", mode="r")["data"][...]
    full = zarr.open_group(tmp_path / "full" / "parcels.zarr", mode="r")["data"][...]
    assert np.abs(read - full).max() <= TOLERANCE and np.isfinite(full).all()


def _scaled_copy(image: Path, out: Path, slope: float, intercept: float) -> Path:
    """``image``'s stored values in an uncompressed copy whose header scales them."""
    source = nib.load(image)
    stored = np.asarray(source.dataobj.get_unscaled())
    header = source.header.copy()
    header.set_data_dtype(stored.dtype)
    nib.save(nib.Nifti1Image(stored, source.affine, header), out)
    with out.open("r+b") as file:  # scl_slope and scl_inter (float32 at bytes 112 and 116)
        file.seek(112)
        file.write(np.array([slope, intercept], dtype="<f4").tobytes())
    assert nib.load(out).dataobj.inter == np.float32(intercept)
    return out


@pytest.mark.parametrize("kept_voxels", [True, False])
def test_parcel_means_are_in_the_images_units(demo, tmp_path, monkeypatch, kept_voxels):
    """A run whose header scales its stored values (``scl_slope``, ``scl_inter``): its
    mean time series TSV holds the float64 parcel means of the scaled values, and its
    parcel store their z-scores, whether pass 1 sums the parcels over the voxels it keeps
    (a mask file) or pass 2 does (pass 1 keeps no voxel: a mask file over half the grid
    does that)."""
    root, atlas = demo
    bold_image, mask, _ = _run(root)
    image = _scaled_copy(bold_image, tmp_path / "scaled_bold.nii", 0.0674, 3443.25)
    if not kept_voxels:
        monkeypatch.setattr(bold, "cache_plan", lambda *args: None)
    pass_2_sums = _count_pass_2_sums(monkeypatch)
    normalize_bold(image, tmp_path / "bold.zarr", _info(), image_options(mask=str(mask)),
                   None, _job(atlas, image, tmp_path))  # fmt: skip
    assert len(pass_2_sums) == int(not kept_voxels)
    series, _, names = _reference_series(image, mask, atlas, None)
    full = [p for p in range(len(names)) if names[p] not in EMPTY]
    rows = list(csv.reader((tmp_path / "mean_timeseries.tsv").open(), delimiter="\t"))
    tsv = np.array([[float(rows[1 + t][p]) for p in full] for t in range(N_VOLUMES)])
    np.testing.assert_allclose(tsv, series[:, full], rtol=1e-12)
    ours = zarr.open_group(tmp_path / "parcels.zarr", mode="r")["data"][...]
    assert np.abs(ours - _zscore(series)).max() <= TOLERANCE


def test_an_atlas_in_another_space_is_an_error_naming_both(demo):
    _, atlas = demo
    with pytest.raises(BidstrainError, match="space T1w but the atlas demo .* space MNI152"):
        check_space(atlas, "T1w", image="run.nii.gz", subject="01")
    with pytest.raises(BidstrainError, match="its native space"):
        check_space(atlas, None, image="run.nii.gz", subject="01")
    # a label image on the runs' own grid is for runs without a space- entity only
    native = AtlasFiles(atlas.name, atlas.image, atlas.labels, NATIVE)
    check_space(native, None, image="run.nii.gz", subject="01")
    with pytest.raises(BidstrainError, match="space MNI152NLin2009cAsym but the atlas .* native"):
        check_space(native, "MNI152NLin2009cAsym", image="run.nii.gz", subject="01")


def test_an_atlas_on_another_grid_is_resampled_by_nearest_neighbour(demo, tmp_path, caplog):
    _, atlas = demo
    img = nib.load(atlas.image)
    labels = np.asarray(img.dataobj)
    # the same space at twice the resolution, one voxel shifted: each voxel's centre
    fine = np.repeat(np.repeat(np.repeat(labels, 2, 0), 2, 1), 2, 2)
    affine = img.affine.copy()
    affine[:3, :3] /= 2
    affine[:3, 3] -= 0.5  # the centres of the fine voxels around each coarse centre
    path = tmp_path / "fine_dseg.nii.gz"
    nib.save(nib.Nifti1Image(fine, affine), path)
    fine_atlas = AtlasFiles("fine", path, atlas.labels, atlas.space)
    with caplog.at_level(logging.WARNING):
        on_grid = load_atlas(fine_atlas, labels.shape, img.affine, image="run.nii.gz")
    assert "resampled by nearest neighbour" in caplog.text
    expected = np.where(labels > 0, labels - 1, -1)
    np.testing.assert_array_equal(on_grid.parcel, expected)


def test_an_atlas_that_misses_the_run_is_an_error_not_a_store_of_zeros(demo, tmp_path):
    root, atlas = demo
    img = nib.load(atlas.image)
    away = img.affine.copy()
    away[:3, 3] += 10000.0  # the same labels 10 m away: another space in all but name
    path = tmp_path / "away_dseg.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj), away), path)
    far = AtlasFiles("away", path, atlas.labels, atlas.space)
    with pytest.raises(BidstrainError, match=r"sub-01: .*away_dseg.nii.gz: no parcel of atlas "
                       r"away .* falls on the grid of run.nii.gz"):  # fmt: skip
        load_atlas(far, img.shape, img.affine, image="run.nii.gz", subject="01")
    # on the grid but outside the brain mask: no parcel store is written
    image, mask, _ = _run(root)
    outside = np.where(np.asarray(nib.load(mask).dataobj) > 0, 0, 1).astype(np.int16)
    nib.save(nib.Nifti1Image(outside, img.affine), path)
    job = _job(AtlasFiles("outside", path, atlas.labels, atlas.space), image, tmp_path)
    with pytest.raises(BidstrainError, match="no parcel of atlas outside has a voxel in the brain"):
        normalize_bold(
            image, tmp_path / "bold.zarr", _info(), image_options(mask=str(mask)), None, job
        )
    assert not (tmp_path / "parcels.zarr").exists()


def test_a_missing_atlas_or_a_label_image_without_space_is_an_error(tmp_path):
    with pytest.raises(BidstrainError, match="0 atlas images match .*holds no atlas image"):
        find_atlas(ParcellationConfig("x", str(tmp_path), None, None, None))
    image = tmp_path / "atlas_dseg.nii.gz"
    with pytest.raises(BidstrainError, match="parcellation.space is needed"):
        find_atlas(ParcellationConfig("x", str(image), None, None, None))
    with pytest.raises(BidstrainError, match="label image is missing") as absolute:
        find_atlas(ParcellationConfig("x", str(image), None, SPACE, None))
    assert "relative path" not in str(absolute.value)


def test_a_missing_relative_atlas_says_where_it_was_looked_for(tmp_path, monkeypatch):
    """A settings file's relative path is the study folder's, not the file's folder."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(BidstrainError) as error:
        find_atlas(ParcellationConfig("x", "atlases/a_dseg.nii.gz", None, SPACE, None))
    assert str(error.value) == (
        "atlases/a_dseg.nii.gz: config parcellation: the atlas label image is missing (a "
        f"relative path in the configuration is read from the study folder, {tmp_path}: "
        "write it absolute, or relative to that folder)"
    )


def test_an_atlas_that_matches_no_image_lists_the_images_there(demo):
    """Entities compare as written (BIDS labels are strings): resolution 02 does not pick
    res-2, and the error shows the image there with the values that would pick it."""
    _, atlas = demo
    config = ParcellationConfig(ATLAS_NAME, str(atlas.image.parents[2]), None, None, "02")
    there = f"{atlas.image.name} (space '{SPACE}', name '{ATLAS_NAME}', resolution '2')"
    with pytest.raises(BidstrainError, match=re.escape(f"found: none; the dataset holds {there}")):
        find_atlas(config)
    # no image of that name: every atlas image of the dataset
    with pytest.raises(BidstrainError, match=re.escape(f"the dataset holds {there}")):
        find_atlas(dataclasses.replace(config, name="Demo", resolution=None))


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ("index\tname\n", "lists no label besides the background 0"),
        ("index\tname\n0\tbackground\n", "lists no label besides the background 0"),
        ("index\tname\n1\ta\n3\tb\n1\tagain\n", "lists index 1 more than once"),
        ("index\tname\n10\tten\n-1\tneg\n", "label index -1 is negative"),
        ("label\tname\n1\ta\n", "needs the columns index and name"),
        ("name\tindex\na\t1\nb\n", "line 3: 1 tab-separated fields where the header has 2"),
        ("index\tname\n1\ta\nx\tb\n", "line 3: label index 'x' is not an integer"),
        ("index\tname\n1\tcaf\xe9\n", "line 2: byte 0xe9 is not UTF-8 text"),
    ],
)
def test_a_bad_label_table_is_named(tmp_path, table, message):
    path = tmp_path / "atlas_dseg.tsv"
    path.write_bytes(table.encode("latin-1"))
    with pytest.raises(BidstrainError, match=f"atlas_dseg.tsv: .*{message}"):
        read_label_table(path)


def test_labels_must_be_integers_and_unlisted_ones_are_named(tmp_path, caplog):
    labels = np.zeros((4, 4, 4), np.float32)
    labels[:2], labels[2:, :2], labels[2:, 2:] = 1, 2, 1000.004
    image = tmp_path / "atlas_dseg.nii.gz"
    nib.save(nib.Nifti1Image(labels, np.eye(4)), image)
    table = tmp_path / "atlas_dseg.tsv"
    table.write_text("index\tname\n1\tone\n1000\tthousand\n")
    atlas = AtlasFiles("x", image, table, SPACE)
    with pytest.raises(BidstrainError, match="sub-07.*must be 3D with integer labels"):
        load_atlas(atlas, (4, 4, 4), np.eye(4), image="run.nii.gz", subject="07")
    labels[2:, 2:] = 1000
    nib.save(nib.Nifti1Image(labels, np.eye(4)), image)
    with caplog.at_level(logging.WARNING):
        for run in ("run-1.nii.gz", "run-2.nii.gz"):  # a job's runs: one warning
            on_grid = load_atlas(atlas, (4, 4, 4), np.eye(4), image=run)
    assert "labels 2 of" in caplog.text and "(16 voxels) are not in its table" in caplog.text
    assert caplog.text.count("are not in its table") == 1
    assert (on_grid.parcel[2:, :2] == -1).all() and (on_grid.parcel[2:, 2:] == 1).all()


def _atlas_of(labels: np.ndarray, folder: Path, extension: str = ".nii.gz") -> AtlasFiles:
    """A label image of ``labels`` (identity affine) and a table naming each label."""
    image = folder / f"atlas_dseg{extension}"
    nib.save(nib.Nifti1Image(labels, np.eye(4)), image)
    table = folder / "atlas_dseg.tsv"
    rows = "".join(f"{label}\tp{label}\n" for label in np.unique(labels) if label > 0)
    table.write_text("index\tname\n" + rows)
    return AtlasFiles("atlas", image, table, SPACE)


@pytest.mark.parametrize(
    ("damage", "extension"),
    [("cut", ".nii.gz"), ("flip", ".nii.gz"), ("cut", ".nii")],
)
@pytest.mark.parametrize("subject", ["01", None])  # a normalize job's call, the report's
def test_a_truncated_or_corrupt_label_image_is_an_error_naming_it(
    tmp_path, damage, extension, subject
):
    labels = (np.arange(12 * 14 * 12).reshape(12, 14, 12) % 8 + 1).astype(np.int16)
    atlas = _atlas_of(labels, tmp_path, extension)
    data = bytearray(atlas.image.read_bytes())
    if damage == "cut":
        data = data[: int(len(data) * 0.6)]
    else:  # a flipped byte in the deflate data
        data[len(data) // 2] ^= 0xFF
    atlas.image.write_bytes(bytes(data))
    who = "sub-01: " if subject else ""
    with pytest.raises(
        BidstrainError, match=f"^{who}{atlas.image}: .*truncated or corrupt.*re-copy"
    ):
        load_atlas(atlas, labels.shape, np.eye(4), image="run.nii.gz", subject=subject)


def test_negative_labels_are_an_error_naming_them(tmp_path):
    """Labels over 32767 saved as int16 wrap to negative values: their parcels would be
    lost without a word."""
    labels = np.ones((4, 4, 4), np.int16)
    labels[:2] = np.array(40000).astype(np.int16)  # -25536
    labels[0, 0, :2] = -1
    atlas = _atlas_of(labels, tmp_path)
    with pytest.raises(
        BidstrainError,
        match=rf"^sub-07: {atlas.image}: negative labels -25536, -1 \(32 voxels\): .*uint16",
    ):
        load_atlas(atlas, labels.shape, np.eye(4), image="run.nii.gz", subject="07")


#: A label value of the Allen mouse brain atlas, whose structure ids reach 614454277.
ALLEN_LABEL = 614454277


def test_large_label_values_take_no_more_memory_than_small_ones(tmp_path):
    """A lookup table indexed by label value would take 4.9 GB for this 2,016-voxel atlas;
    its parcels are those of the same atlas with labels 1 and 2."""
    labels = np.zeros((12, 14, 12), np.uint32)
    labels[:6], labels[6:] = 1, ALLEN_LABEL
    atlases = {}
    for big in (2, ALLEN_LABEL):
        folder = tmp_path / str(big)
        folder.mkdir()
        atlases[big] = _atlas_of(np.where(labels == 1, 1, big).astype(np.uint32), folder)
        atlases[big].labels.write_text(f"index\tname\n{big}\tbig\n1\tone\n")
    small = load_atlas(atlases[2], labels.shape, np.eye(4), image="run.nii.gz")
    tracemalloc.start()
    try:
        large = load_atlas(atlases[ALLEN_LABEL], labels.shape, np.eye(4), image="run.nii.gz")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2**20, f"{peak} bytes"
    assert large.names == small.names == ("big", "one")
    assert (large.parcel[:6] == 1).all() and (large.parcel[6:] == 0).all()
    np.testing.assert_array_equal(large.parcel, small.parcel)


def test_label_images_per_run_lie_in_their_runs_space(tmp_path):
    table = tmp_path / "aseg_dseg.tsv"
    table.write_text("index\tname\n1\tone\n")
    pattern = str(tmp_path / "sub-{subject}_space-T1w_desc-aseg_dseg.nii.gz")
    for space in (None, NATIVE):
        atlas = find_atlas(ParcellationConfig("aseg", pattern, str(table), space, None))
        assert atlas.per_run and atlas.space == NATIVE
        for bold_space in ("T1w", None):
            check_space(atlas, bold_space, image="run.nii.gz", subject="01")
    named = find_atlas(ParcellationConfig("aseg", pattern, str(table), "T1w", None))
    check_space(named, "T1w", image="run.nii.gz", subject="01")
    with pytest.raises(BidstrainError, match="space MNI152NLin2009cAsym but the atlas"):
        check_space(named, SPACE, image="run.nii.gz", subject="01")


#: A real atlas shipped by Debian's mricron-data (make install puts it there): AICHA, 192
#: parcels, 2 mm, 91x109x91, stored LAS. Its table lists "index name value" per line.
AICHA = Path("/usr/share/mricron/templates/AICHAmc.nii.gz")


def test_a_real_atlas_equals_nilearn_on_a_run_on_its_grid(tmp_path):
    assert AICHA.is_file(), f"{AICHA} is missing: apt-get install mricron-data (make install)"
    labels_table = tmp_path / "aicha_dseg.tsv"
    rows = [line.split()[:2] for line in AICHA.with_suffix("").with_suffix(".nii.txt").open()]
    labels_table.write_text("index\tname\n" + "".join(f"{i}\t{n}\n" for i, n in rows))
    atlas = AtlasFiles("AICHA", AICHA, labels_table, SPACE)
    img = nib.load(AICHA)
    labels = np.asarray(img.dataobj)
    rng = np.random.default_rng(0)
    n_volumes = 12
    # a run on the atlas's grid (its LAS affine): one sinusoid per parcel, noise, int16
    phase = rng.uniform(0, 2 * np.pi, int(labels.max()) + 1)[labels]
    t = np.arange(n_volumes) * 2.0
    data = 1000 + 50 * np.sin(2 * np.pi * 0.05 * t + phase[..., None])
    data = np.rint(data + rng.normal(0, 5, data.shape)).astype(np.int16)
    image = tmp_path / "sub-01_task-rest_space-MNI_bold.nii.gz"
    nib.save(nib.Nifti1Image(data, img.affine), image)
    brain = np.zeros(labels.shape, dtype=np.uint8)
    brain[10:80, 15:95, 10:70] = 1  # cuts some parcels, leaves others out
    mask = tmp_path / "mask.nii.gz"
    nib.save(nib.Nifti1Image(brain, img.affine), mask)

    job = _job(atlas, image, tmp_path)
    normalize_bold(image, tmp_path / "bold.zarr", _info(), image_options(mask=str(mask)), None, job)
    ours = zarr.open_group(tmp_path / "parcels.zarr", mode="r")["data"][...]

    names = [name for _, name in rows]
    series = np.zeros((n_volumes, len(names)))
    values = data.astype(np.float64)
    for p, (index, _) in enumerate(rows):
        voxels = (brain > 0) & (labels == int(index))
        if voxels.any():
            series[:, p] = values[voxels].mean(axis=0)
    expected = _zscore(series)
    ours_error = float(np.abs(ours - expected).max())
    assert ours_error <= TOLERANCE
    theirs, present = _nilearn(image, mask, atlas, None)
    columns = [int(i) - 1 for i in present]
    nilearn_error = float(np.abs(theirs - expected[:, columns]).max())
    log.warning(
        "AICHA: ours %.2g, nilearn %.2g from the float64 reference", ours_error, nilearn_error
    )
    assert np.abs(theirs - ours[:, columns]).max() <= TOLERANCE
    assert 0 < len(present) < len(names)  # parcels the mask leaves out are reported


def test_the_plan_and_the_job_write_parcels_at_one_tr_for_runs_in_the_atlas_space(demo, tmp_path):
    """Parse time: the plan checks the space and names the outputs; then one normalize
    job, run as the workflow runs it, writes them (held-out run 2 included)."""
    root, atlas = demo
    overrides = {
        "space": "MNI152NLin2009cAsym:res-2",
        "modalities": ["bold"],
        "participant_label": ["01"],
        "normalize": {"heldout": {"run": ["2"]}, "mask": "auto"},
        "time": {"tr": 1.0, "method": "linear"},
        "parcellation": {"name": ATLAS_NAME, "path": str(atlas.image.parents[2])},
    }
    plan = plan_of(root, **overrides)
    assert plan.atlas == atlas
    assert plan.atlas_files == [str(atlas.image), str(atlas.labels)]  # the jobs' inputs
    # model.json records the parcellation through the trainer's store lists
    recorded = json.loads(plan.files()[paths.plan_stores(plan.experiment)])["parcellation"]
    digest = hashlib.sha256(atlas.image.read_bytes() + atlas.labels.read_bytes()).hexdigest()
    assert recorded == {"name": ATLAS_NAME, "checksum": digest}
    job = plan.job("01")
    specs = json.loads(job.spec())
    heldout = next(spec for spec in specs if spec["stats_from"])
    assert heldout["parcels"]["stats_from"] == [
        s["parcels"]["store"] for s in specs if not s["stats_from"]
    ]
    assert all("_seg-demo_" in s["parcels"]["timeseries"] for s in specs)
    write_if_changed({str(tmp_path / path): text for path, text in plan.files().items()})
    command = [
        sys.executable, "-m", "bidstrain.normalize", "--settings", paths.PLAN_NORMALIZE_SETTINGS,
        "--subject", "01", "--ingest", paths.ingest_record("01"), "--spec", job.spec_file,
        "--out-table", job.table,
    ]  # fmt: skip
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    for spec in specs:
        count, _, _, meta = read_parcel_stats(tmp_path / spec["parcels"]["store"])
        assert meta.repetition_time == 1.0 and meta.source_repetition_time == 2.0
        assert meta.heldout == bool(spec["stats_from"])
        assert count == read_dims(tmp_path / spec["store"])[0] == 119  # 0 to 118 s
        assert (tmp_path / spec["parcels"]["coverage"]).is_file()
    with pytest.raises(BidstrainError, match="space T1w but the atlas demo"):
        plan_of(root, **{**overrides, "space": "T1w"})


def _slab_labels(run: Path, out: Path, merge: bool) -> None:
    """A label image on ``run``'s grid: three slabs along its first axis, labels 1-3
    (with ``merge``, slab 2 labelled 1: that run's parcel 2 is empty)."""
    img = nib.load(run)
    edges = np.linspace(0, img.shape[0], 4).astype(int)
    labels = np.zeros(img.shape[:3], dtype=np.int16)
    for label, (low, high) in enumerate(zip(edges[:-1], edges[1:], strict=True), start=1):
        labels[low:high] = 1 if merge and label == 2 else label
    out.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(labels, img.affine), out)


def test_a_label_image_per_run_from_a_pattern(demo_bids, tmp_path):
    """Raw runs in their native space, each with its own label image (a path pattern):
    the plan fills it per run, each job reads its run's image (sub-02's merges two
    parcels), and a missing image stops that subject's job naming it."""
    # a copy: the label images go into its derivatives, which other tests' plans would see
    demo_bids = shutil.copytree(demo_bids, tmp_path / "bids")
    pattern = (
        "{bids_dir}/derivatives/slabs/sub-{subject}/func/"
        "sub-{subject}_task-{task}_run-{run}_atlas-slabs_dseg.nii.gz"
    )
    table = tmp_path / "slabs_dseg.tsv"
    table.write_text("index\tname\n1\tleft\n2\tmiddle\n3\tright\n")
    parcellation = {"name": "slabs", "path": pattern, "space": NATIVE, "labels": str(table)}
    overrides = {"modalities": ["bold"], "participant_label": ["01", "02"]}
    with pytest.raises(BidstrainError, match="parcellation.labels to the label table"):
        plan_of(demo_bids, **overrides, parcellation={**parcellation, "labels": None})
    with pytest.raises(BidstrainError, match="has no 'acq' entity"):
        plan_of(demo_bids, **overrides, parcellation={**parcellation, "path": pattern + "{acq}"})
    plan = plan_of(demo_bids, **overrides, parcellation=parcellation)
    recorded = json.loads(plan.files()[paths.plan_stores(plan.experiment)])["parcellation"]
    digest = hashlib.sha256(pattern.encode() + table.read_bytes()).hexdigest()
    assert recorded == {"name": "slabs", "checksum": digest}
    write_if_changed({str(tmp_path / path): text for path, text in plan.files().items()})
    # the label images and the table are inputs of the jobs: editing one reruns them
    assert plan.atlas_files == [str(table)]
    own_images = [s["parcels"]["atlas_image"] for s in json.loads(plan.job("01").spec())]
    assert plan.job("01").inputs()["label_images"] == own_images and len(own_images) == 2
    for subject in ("01", "02"):
        for spec in json.loads(plan.job(subject).spec()):
            own = Path(spec["parcels"]["atlas_image"])
            assert own.name.startswith(f"sub-{subject}_task-rest_run-")
            _slab_labels(Path(spec["image"]), own, merge=subject == "02")

    def normalize(subject: str) -> subprocess.CompletedProcess:
        job = plan.job(subject)
        command = [
            sys.executable, "-m", "bidstrain.normalize", "--settings",
            paths.PLAN_NORMALIZE_SETTINGS, "--subject", subject, "--ingest",
            paths.ingest_record(subject), "--spec", job.spec_file, "--out-table", job.table,
        ]  # fmt: skip
        return subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, check=False)

    for subject in ("01", "02"):
        result = normalize(subject)
        assert result.returncode == 0, result.stderr
        for spec in json.loads(plan.job(subject).spec()):
            group = zarr.open_group(tmp_path / spec["parcels"]["store"], mode="r")
            assert group.attrs["atlas_checksum"] == digest  # what embed compares
            n_voxels = group["n_voxels"][...]
            if subject == "01":
                assert (n_voxels > 0).all()
            else:  # its own image: slab 2 is labelled 1
                assert n_voxels[1] == 0 and n_voxels[0] > n_voxels[2] > 0
    own_images = [Path(s["parcels"]["atlas_image"]) for s in json.loads(plan.job("02").spec())]
    truncated = own_images[1]
    truncated.write_bytes(truncated.read_bytes()[:-100])
    result = normalize("02")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"sub-02: {truncated}: " in result.stderr and "truncated or corrupt" in result.stderr
    missing = own_images[0]
    missing.unlink()
    result = normalize("02")
    assert result.returncode == 1
    assert "sub-02" in result.stderr and str(missing) in result.stderr
    assert "parcellation.path" in result.stderr and "Traceback" not in result.stderr


def test_a_templateflow_folder_is_read_as_it_is(tmp_path):
    """TemplateFlow's layout: the files in tpl-<space>/ (no anat/), several resolutions
    and desc variants of one atlas, one label table per desc without the res- entity."""
    folder = tmp_path / f"tpl-{SPACE}"
    folder.mkdir()
    for desc in ("100Parcels7Networks", "400Parcels7Networks"):
        for res in ("01", "02"):
            name = f"tpl-{SPACE}_res-{res}_atlas-Schaefer2018_desc-{desc}_dseg.nii.gz"
            nib.save(nib.Nifti1Image(np.ones((2, 2, 2), np.int16), np.eye(4)), folder / name)
        table = folder / f"tpl-{SPACE}_atlas-Schaefer2018_desc-{desc}_dseg.tsv"
        table.write_text("index\tname\n1\tparcel\n")
    config = ParcellationConfig("Schaefer2018", str(tmp_path), None, None, "02")
    with pytest.raises(BidstrainError, match="2 atlas images match .* parcellation.desc"):
        find_atlas(config)
    atlas = find_atlas(dataclasses.replace(config, desc="400Parcels7Networks"))
    assert (
        atlas.image.name
        == f"tpl-{SPACE}_res-02_atlas-Schaefer2018_desc-400Parcels7Networks_dseg.nii.gz"
    )
    assert (
        atlas.labels == folder / f"tpl-{SPACE}_atlas-Schaefer2018_desc-400Parcels7Networks_dseg.tsv"
    )
    assert atlas.space == SPACE
