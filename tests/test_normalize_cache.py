"""A BOLD run decompressed once: pass 1 keeps the voxels the mask comes from in a temporary
file (:mod:`bidstrain.normalize.masked_cache`) that the later passes read.

The stores must be the ones written when every pass reads the image (same checksum), the
image must be read once where the kept voxels hold the mask and again where they do not,
and the temporary file must be closed (removed) on every way out of the job.
"""

from __future__ import annotations

from pathlib import Path

import bidstrain.normalize.bold as bold
import bidstrain.normalize.heldout as heldout_module
import bidstrain.normalize.masked_cache as masked_cache
import bidstrain.normalize.passes as passes
import nibabel as nib
import numpy as np
import pytest
from bidstrain.demo.generate import DemoSpec, make_demo, make_fmriprep_demo
from bidstrain.errors import BidstrainError
from bidstrain.io.store import StoreWriter, store_checksum
from bidstrain.normalize import ImageInfo, normalize_bold, normalize_with_stats
from bidstrain.normalize.confounds import load_run_confounds
from bidstrain.normalize.nifti_stream import iter_blocks, read_layout
from nibabel.testing import data_path
from nilearn.masking import compute_epi_mask
from normalize_support import fill_the_disk_after, image_options

SPACE = "space-MNI152NLin2009cAsym_res-2"
N_VOLUMES = 60


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, Path, Path]:
    """The fMRIPrep demo's run (int16 .nii.gz), its brain mask and confounds table."""
    func = make_fmriprep_demo(tmp_path_factory.mktemp("fmriprep")) / "sub-01" / "func"
    stem = f"sub-01_task-rest_run-1_{SPACE}"
    return (
        func / f"{stem}_desc-preproc_bold.nii.gz",
        func / f"{stem}_desc-brain_mask.nii.gz",
        func / "sub-01_task-rest_run-1_desc-confounds_timeseries.tsv",
    )


INFO = ImageInfo("bold", "01", entities={"sub": "01", "task": "rest"}, repetition_time=2.0)


class Reads:
    """Counts the image reads of the passes, and the temporary files opened."""

    def __init__(self, monkeypatch):
        self.images = 0
        self.files = []
        iter_blocks, temporary_file = passes.iter_blocks, masked_cache.tempfile.TemporaryFile

        def counted(*args):
            self.images += 1
            return iter_blocks(*args)

        def recorded(**kwargs):
            self.files.append(temporary_file(**kwargs))
            return self.files[-1]

        monkeypatch.setattr(passes, "iter_blocks", counted)
        monkeypatch.setattr(masked_cache.tempfile, "TemporaryFile", recorded)

    def all_closed(self) -> bool:
        return all(file.closed for file in self.files)


CONFIGS = {
    "epi": ({}, None),
    "mask file": ({"mask": "file"}, None),
    "mask file, scrubbing": ({"mask": "file"}, "scrubbing"),
    "epi, simple": ({}, "simple"),
    "epi, resampled": ({"target_tr": 0.8, "time_method": "linear"}, None),
    "epi, resampled with pchip": ({"target_tr": 0.8, "time_method": "pchip"}, None),
    "epi, resampled with fourier": ({"target_tr": 0.8, "time_method": "fourier"}, None),
    "epi, simple, resampled": ({"target_tr": 0.8, "time_method": "linear"}, "simple"),
}


@pytest.mark.parametrize("config", CONFIGS)
def test_one_decompression_and_the_store_of_every_pass_reading_the_image(
    run, tmp_path, monkeypatch, config
):
    image, mask, table = run
    changes, strategy = CONFIGS[config]
    changes = dict(changes)
    changes["mask"] = str(mask) if changes.get("mask") == "file" else "epi"
    options = image_options(block_volumes=4, **changes)

    def normalize(out: Path) -> None:
        confounds = None
        if strategy is not None:
            confounds = load_run_confounds(image, table, strategy, {}, N_VOLUMES, ddof=1)
        normalize_bold(image, out, INFO, options, confounds)

    frame_passes = []
    frame_moments = bold.frame_moments
    monkeypatch.setattr(
        bold, "frame_moments", lambda *args: frame_passes.append(1) or frame_moments(*args)
    )
    resampled = "target_tr" in changes
    reads = Reads(monkeypatch)
    normalize(tmp_path / "once.zarr")
    assert reads.images == 1 and len(reads.files) == 1 and reads.all_closed()
    # a linear or pchip run without confounds has its frames' moments from pass 1: no pass
    # of their own
    from_pass_1 = changes.get("time_method") in ("linear", "pchip") and strategy is None
    assert len(frame_passes) == (resampled and not from_pass_1)

    monkeypatch.setattr(bold, "cache_plan", lambda *args: None)  # every pass reads the image
    frame_passes.clear()
    reads = Reads(monkeypatch)
    normalize(tmp_path / "read.zarr")
    assert reads.images == 2 and reads.all_closed()
    assert len(frame_passes) == resampled
    assert store_checksum(tmp_path / "once.zarr") == store_checksum(tmp_path / "read.zarr")


@pytest.fixture(scope="module")
def raw_run(tmp_path_factory) -> Path:
    """A raw demo run: a head in a noisy background."""
    spec = DemoSpec(n_subjects=1, bold_shape=(40, 44, 36), n_volumes=24, sessions_subject=False)
    root = make_demo(tmp_path_factory.mktemp("raw"), spec)
    return next((root / "sub-01" / "func").glob("*_run-1_bold.nii.gz"))


@pytest.mark.parametrize(
    "which", ["fmriprep", "raw", "raw, negative values", "raw, NaN voxels", "real EPI"]
)
def test_the_voxels_kept_for_epi_hold_the_runs_epi_mask(run, raw_run, tmp_path, which):
    """Chosen from the first block in numpy, they hold nilearn's mask of the whole run's
    mean, and stay below the fraction of the grid above which nothing is kept: on the
    demo runs, a run whose header's intercept makes every value negative, a float run
    with NaN in some voxels, and nibabel's real 128x96x24 EPI run (its mask 29 % of the
    grid, the voxels kept 43 %)."""
    image = {"fmriprep": run[0], "real EPI": Path(data_path) / "example4d.nii.gz"}.get(
        which, raw_run
    )
    if which == "raw, negative values":
        raw = nib.load(raw_run)
        shifted = nib.Nifti1Image(np.asarray(raw.dataobj), raw.affine, raw.header)
        shifted.header.set_slope_inter(1.0, -40_000.0)
        image = tmp_path / "negative_bold.nii.gz"
        nib.save(shifted, image)
        assert nib.load(image).get_fdata().max() < 0
    if which == "raw, NaN voxels":
        raw = nib.load(raw_run)
        values = np.asarray(raw.dataobj).astype(np.float32)
        values[::7, ::5, ::3] = np.nan  # inside the head and out, in every volume
        image = tmp_path / "nan_bold.nii.gz"
        nib.save(nib.Nifti1Image(values, raw.affine), image)
    layout = read_layout(image)
    blocks = iter_blocks(layout, 4)
    _, first = next(blocks)
    kept = masked_cache._epi_candidates(layout, first)
    blocks.close()
    volume = nib.as_closest_canonical(nib.load(image))
    expected = np.asarray(compute_epi_mask(volume).dataobj).astype(bool)
    assert expected.any()
    assert np.isin(layout.stored_index(expected), kept).all()
    assert kept.size <= masked_cache.MAX_FRACTION * layout.n_grid


@pytest.mark.parametrize("method", [None, "linear", "pchip"])
def test_a_mask_beyond_the_kept_voxels_reads_the_image_again(run, tmp_path, monkeypatch, method):
    """Also for a linear or pchip run, whose frames' moments pass 1 took over the kept
    voxels: they are not used for the final mask's voxels, which a pass of their own
    sums."""
    time = {} if method is None else {"target_tr": 0.8, "time_method": method}
    image = run[0]
    options = image_options(mask="epi", **time)
    normalize_bold(image, tmp_path / "once.zarr", INFO, options)
    candidates = masked_cache._epi_candidates
    monkeypatch.setattr(
        masked_cache, "_epi_candidates", lambda *args: candidates(*args)[::2]
    )  # half of the voxels: the final mask is not inside
    reads = Reads(monkeypatch)
    normalize_bold(image, tmp_path / "again.zarr", INFO, options)
    # a resampled run's frame pass keeps the mask's voxels for the last pass
    assert reads.images == 2 and len(reads.files) == 1 + bool(time) and reads.all_closed()
    assert store_checksum(tmp_path / "once.zarr") == store_checksum(tmp_path / "again.zarr")


@pytest.mark.parametrize("method", ["linear", "pchip"])
def test_a_cache_that_fails_in_pass_1_leaves_its_frame_sums_unused(
    run, tmp_path, monkeypatch, method
):
    """The kept voxels' file fills the disk after two blocks: pass 1's frame moments of a
    linear or pchip run cover those blocks only, so its frames' statistics come from a
    pass of their own, and the store is the one written when every pass reads the
    image."""
    image, mask, _ = run
    options = image_options(mask=str(mask), target_tr=0.8, time_method=method, block_volumes=4)
    monkeypatch.setattr(bold, "cache_plan", lambda *args: None)
    normalize_bold(image, tmp_path / "read.zarr", INFO, options)
    monkeypatch.undo()
    fill_the_disk_after(monkeypatch, writes=2)
    normalize_bold(image, tmp_path / "full.zarr", INFO, options)
    assert store_checksum(tmp_path / "full.zarr") == store_checksum(tmp_path / "read.zarr")


def test_the_temporary_file_is_closed_when_the_store_cannot_be_written(run, tmp_path, monkeypatch):
    """A write fails in the background thread: its error reaches the job (named as a
    full disk), no store is left, and the kept voxels' file is removed."""

    def full_disk(self, start, block):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(StoreWriter, "write", full_disk)
    reads = Reads(monkeypatch)
    with pytest.raises(BidstrainError, match="no space left on the device"):
        normalize_bold(run[0], tmp_path / "bold.zarr", INFO, image_options(mask="epi"))
    assert len(reads.files) == 1 and reads.all_closed()
    assert not (tmp_path / "bold.zarr").exists()


def test_the_temporary_file_is_closed_when_the_mask_is_empty(run, tmp_path, monkeypatch):
    import nibabel as nib

    mask = nib.load(run[1])
    empty = tmp_path / "empty_mask.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros(mask.shape, np.uint8), mask.affine), empty)
    reads = Reads(monkeypatch)
    with pytest.raises(BidstrainError, match="the mask is empty"):
        normalize_bold(run[0], tmp_path / "bold.zarr", INFO, image_options(mask=str(empty)))
    assert len(reads.files) == 1 and reads.all_closed()


def test_the_temporary_file_is_closed_when_the_image_is_truncated(run, tmp_path, monkeypatch):
    """The gzip stream ends in the middle of the run, after pass 1 began keeping voxels."""
    compressed = run[0].read_bytes()
    truncated = tmp_path / "truncated_bold.nii.gz"
    truncated.write_bytes(compressed[: len(compressed) * 2 // 3])
    reads = Reads(monkeypatch)
    with pytest.raises(BidstrainError, match="corrupt or truncated"):
        normalize_bold(truncated, tmp_path / "bold.zarr", INFO, image_options(mask="epi"))
    assert len(reads.files) == 1 and reads.all_closed()


def test_a_heldout_run_with_confounds_is_decompressed_once(run, tmp_path, monkeypatch):
    image, mask, table = run
    options = image_options(mask=str(mask))
    normalize_bold(image, tmp_path / "train.zarr", INFO, options)

    def heldout(out: Path) -> None:
        confounds = load_run_confounds(image, table, "scrubbing", {}, N_VOLUMES, ddof=1)
        normalize_with_stats(image, [tmp_path / "train.zarr"], out, INFO, options, confounds)

    reads = Reads(monkeypatch)
    heldout(tmp_path / "once.zarr")
    assert reads.images == 1 and len(reads.files) == 1 and reads.all_closed()
    monkeypatch.setattr(heldout_module, "known_mask_plan", lambda *args: lambda first: None)
    reads = Reads(monkeypatch)
    heldout(tmp_path / "read.zarr")
    assert reads.images == 2 and not reads.files
    assert store_checksum(tmp_path / "once.zarr") == store_checksum(tmp_path / "read.zarr")
