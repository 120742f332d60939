"""Cross-subject averaging: values through xarray, sessions, grids, lengths, masks, memory."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import zarr
from bidstrain.average.__main__ import main
from bidstrain.average.cohort import BYTES_PER_VALUE, average_stores
from bidstrain.demo.generate import DemoSpec, bold_run
from bidstrain.errors import BidstrainError, run_cli
from bidstrain.io.store import create_store, open_store, to_grid
from conftest import run_bench

GRID = (5, 6, 4)


def ellipsoid(shape=GRID, shift=0) -> np.ndarray:
    """A small boolean "brain" mask, optionally shifted along x."""
    grids = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    return (grids[0] - 0.3 * shift) ** 2 + grids[1] ** 2 + grids[2] ** 2 <= 0.9


def write_bold_store(
    path: Path,
    raw: np.ndarray,
    mask: np.ndarray,
    *,
    subject: str,
    session: str = "",
    run: str = "1",
    tr: float = 2.0,
    affine: np.ndarray | None = None,
    ddof: int = 1,
    normalize: bool = True,
    source_path: str = "raw.nii.gz",
    storage: str = "float32",
    valid: np.ndarray | None = None,
    start: float = 0.0,
) -> Path:
    """Write a subject BOLD store from a raw ``(x, y, z, t)`` array, z-scored per voxel.

    With ``normalize=False`` the raw values are stored with mean 0 and std 1 (normalization
    switched off), as a misconfigured pipeline would. With ``valid`` (one entry per frame
    of ``raw``) the store keeps only the valid frames, z-scored over them, and records
    ``frame_time`` (from ``start`` seconds) and ``frame_valid`` as the normalize job does.
    """
    frame_time = start + np.arange(raw.shape[-1]) * tr
    kept = np.ones(raw.shape[-1], dtype=bool) if valid is None else np.asarray(valid, bool)
    series = raw[mask].T.astype(np.float64)[kept]  # (valid frames, voxel)
    if normalize:
        mean, std = series.mean(axis=0), series.std(axis=0, ddof=ddof)
        safe = np.where(std > 0, std, 1.0)
        data = np.where(std > 0, (series - mean) / safe, 0.0)
    else:
        mean, std, data = np.zeros(series.shape[1]), np.ones(series.shape[1]), series
    with create_store(
        path,
        mask=mask,
        affine=np.eye(4) if affine is None else affine,
        time=frame_time[kept],
        storage=storage,
    ) as writer:
        writer.write(0, data)
        writer.add_variable("mean", ("voxel",), mean.astype(np.float32))
        writer.add_variable("std", ("voxel",), std.astype(np.float32))
        if valid is not None:
            writer.add_variable("frame_time", ("frame",), frame_time)
            writer.add_variable("frame_valid", ("frame",), kept)
        writer.attrs.update(
            modality="bold",
            subject=subject,
            session=session,
            entities={"sub": subject, "task": "rest", "run": run},
            source_path=source_path,
            source_size=1000,
            repetition_time=tr,
            ddof=ddof,
            n_zero_variance=int((std == 0).sum()),
            n_nonfinite=0,
            stats_dim="voxel",
            stats_from=[source_path],
        )
    return path


def random_raw(rng, n_time=12, shape=GRID) -> np.ndarray:
    """Scanner-scale BOLD-like values: a voxel baseline plus noise."""
    baseline = rng.uniform(500, 1500, shape)
    return baseline[..., None] * (1 + 0.05 * rng.standard_normal((*shape, n_time)))


@pytest.fixture
def three_subjects(tmp_path):
    rng = np.random.default_rng(0)
    mask = ellipsoid()
    return [
        write_bold_store(tmp_path / f"sub-{s}.zarr", random_raw(rng), mask, subject=s)
        for s in ("01", "02", "03")
    ]


def test_average_equals_mean_of_subject_stores_through_xarray(tmp_path, three_subjects):
    out = average_stores(three_subjects, tmp_path / "avg.zarr")
    average = open_store(out)
    with warnings.catch_warnings():  # as users open it: consolidated, no warning
        warnings.simplefilter("error")
        xr.testing.assert_identical(
            xr.open_zarr(out).load(), xr.open_zarr(out, consolidated=False).load()
        )
    subjects = xr.concat([open_store(p).data for p in three_subjects], dim="subject")
    np.testing.assert_allclose(average.data.values, subjects.mean("subject").values, atol=1e-6)
    np.testing.assert_array_equal(average.n_subjects.values, 3)
    assert average.attrs["subjects"] == ["01", "02", "03"]
    assert average.data.dims == ("time", "voxel") and average.data.dtype == np.float32
    np.testing.assert_allclose(average.time.values, open_store(three_subjects[0]).time.values)
    # mean/std are the group means of the subjects' raw statistics
    for name in ("mean", "std"):
        expected = xr.concat([open_store(p)[name] for p in three_subjects], "s").mean("s")
        np.testing.assert_allclose(average[name].values, expected.values, rtol=1e-6)
    # the average of z-scores has mean 0 and std at most 1 at every voxel
    np.testing.assert_allclose(average.data.mean("time").values, 0, atol=1e-6)
    assert float(average.data.std("time", ddof=1).max()) <= 1 + 1e-6


def test_a_subject_with_two_sessions_counts_once(tmp_path):
    rng = np.random.default_rng(1)
    mask = ellipsoid()
    one = write_bold_store(tmp_path / "a.zarr", random_raw(rng), mask, subject="01")
    ses1 = write_bold_store(tmp_path / "b1.zarr", random_raw(rng), mask, subject="02", session="1")
    ses2 = write_bold_store(tmp_path / "b2.zarr", random_raw(rng), mask, subject="02", session="2")
    average = open_store(average_stores([one, ses1, ses2], tmp_path / "avg.zarr"))
    second = (open_store(ses1).data + open_store(ses2).data) / 2
    expected = (open_store(one).data + second) / 2
    np.testing.assert_allclose(average.data.values, expected.values, atol=1e-6)
    np.testing.assert_array_equal(average.n_subjects.values, 2)
    assert average.attrs["subjects"] == ["01", "02"]
    assert average.attrs["sessions"] == {"01": [""], "02": ["1", "2"]}


@pytest.mark.parametrize("mode", ["intersection", "union"])
def test_masks_combine_and_n_subjects_counts_coverage(tmp_path, mode):
    rng = np.random.default_rng(2)
    masks = [ellipsoid(shift=s) for s in (0, 1, 2)]
    stores = [
        write_bold_store(tmp_path / f"s{n}.zarr", random_raw(rng), m, subject=f"0{n}")
        for n, m in enumerate(masks)
    ]
    average = open_store(average_stores(stores, tmp_path / "avg.zarr", mask=mode))
    combined = (
        np.logical_and.reduce(masks) if mode == "intersection" else np.logical_or.reduce(masks)
    )
    np.testing.assert_array_equal(average.mask.values, combined)
    grids = np.stack([to_grid(open_store(p), open_store(p).data.values, np.nan) for p in stores])
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # voxels no subject covers
        expected = np.nanmean(grids, axis=0)[:, combined]
    np.testing.assert_allclose(average.data.values, expected, atol=1e-6)
    coverage = np.sum(masks, axis=0)[combined]
    np.testing.assert_array_equal(average.n_subjects.values, coverage)
    assert (coverage < 3).any() == (mode == "union")


def test_a_subject_on_another_grid_is_an_error_naming_it(tmp_path, three_subjects):
    rng = np.random.default_rng(3)
    shifted = np.eye(4)
    shifted[0, 3] = 1.5
    other = write_bold_store(
        tmp_path / "sub-04.zarr", random_raw(rng), ellipsoid(), subject="04", affine=shifted
    )
    with pytest.raises(
        BidstrainError, match=r"sub-04.*another affine.*difference 1\.5.*average\.affine_tolerance"
    ):
        average_stores([*three_subjects, other], tmp_path / "avg.zarr")
    bigger = write_bold_store(
        tmp_path / "sub-05.zarr",
        random_raw(rng, shape=(6, 6, 4)),
        ellipsoid((6, 6, 4)),
        subject="05",
    )
    with pytest.raises(BidstrainError, match=r"sub-05.*shape \(6, 6, 4\) against grid \(5, 6, 4\)"):
        average_stores([*three_subjects, bigger], tmp_path / "avg.zarr")
    assert not (tmp_path / "avg.zarr").exists()


def test_a_different_repetition_time_is_an_error(tmp_path, three_subjects):
    rng = np.random.default_rng(4)
    other = write_bold_store(
        tmp_path / "tr.zarr", random_raw(rng), ellipsoid(), subject="04", tr=2.5
    )
    with pytest.raises(BidstrainError, match=r"sub-04.*repetition time 2\.5 s differs"):
        average_stores([*three_subjects, other], tmp_path / "avg.zarr")


def test_different_lengths_fail_unless_truncate_then_cut_with_a_warning(
    tmp_path, three_subjects, caplog
):
    rng = np.random.default_rng(5)
    short = write_bold_store(tmp_path / "short.zarr", random_raw(rng, 9), ellipsoid(), subject="04")
    stores = [*three_subjects, short]
    with pytest.raises(
        BidstrainError, match=r"runs differ in length.*sub-04: 9.*average\.truncate"
    ):
        average_stores(stores, tmp_path / "avg.zarr")
    with caplog.at_level(logging.WARNING):
        average = open_store(average_stores(stores, tmp_path / "avg.zarr", truncate=True))
    assert average.sizes["time"] == 9
    assert "sub-01 (12 -> 9)" in caplog.text and "sub-04" not in caplog.text.split("frames:")[1]
    assert average.attrs["truncated"] == {"sub-01": 12, "sub-02": 12, "sub-03": 12}
    expected = xr.concat([open_store(p).data[:9] for p in stores], "s").mean("s")
    np.testing.assert_allclose(average.data.values, expected.values, atol=1e-6)


def test_empty_mask_intersection_suggests_union(tmp_path):
    rng = np.random.default_rng(6)
    left = np.zeros(GRID, dtype=bool)
    left[:2] = True
    stores = [
        write_bold_store(tmp_path / "l.zarr", random_raw(rng), left, subject="01"),
        write_bold_store(tmp_path / "r.zarr", random_raw(rng), ~left, subject="02"),
    ]
    with pytest.raises(BidstrainError, match=r"intersection .* is empty.*average\.mask: union"):
        average_stores(stores, tmp_path / "avg.zarr")


@pytest.mark.parametrize("block_volumes", [1, 5])
def test_blocks_of_a_few_volumes_give_the_same_average(tmp_path, block_volumes):
    rng = np.random.default_rng(8)
    masks = [ellipsoid(shift=s) for s in (0, 1, 1)]
    stores = [
        write_bold_store(tmp_path / f"s{n}.zarr", random_raw(rng), m, subject=s, session=ses)
        for n, (m, s, ses) in enumerate(zip(masks, ("01", "02", "02"), ("", "1", "2"), strict=True))
    ]
    whole = open_store(average_stores(stores, tmp_path / "whole.zarr", mask="union"))
    n_voxel = int(whole.sizes["voxel"])
    blocks = open_store(
        average_stores(
            stores,
            tmp_path / "blocks.zarr",
            mask="union",
            block_bytes=BYTES_PER_VALUE * n_voxel * block_volumes,
        )
    )
    for name in ("data", "mean", "std", "n_subjects"):
        np.testing.assert_array_equal(blocks[name].values, whole[name].values)
    assert blocks.attrs["n_zero_variance"] == whole.attrs["n_zero_variance"]


def test_each_store_is_opened_once_per_pass_and_block(tmp_path, three_subjects, monkeypatch):
    import bidstrain.average.cohort as average

    opened = []
    open_existing = average.open_existing
    monkeypatch.setattr(
        average, "open_existing", lambda path: opened.append(path) or open_existing(path)
    )
    average_stores(three_subjects, tmp_path / "one.zarr")
    assert sorted(opened) == sorted(map(str, three_subjects * 2))  # headers, then data
    opened.clear()
    n_voxel = int(ellipsoid().sum())
    average_stores(
        three_subjects, tmp_path / "three.zarr", block_bytes=BYTES_PER_VALUE * n_voxel * 5
    )
    assert sorted(opened) == sorted(map(str, three_subjects * 4))  # headers, 3 blocks of 12


def copy_store(source: Path, path: Path, subject: str) -> Path:
    """``source`` as another subject's store: its arrays hard-linked, its attributes new."""
    shutil.copytree(source, path, copy_function=os.link)
    (path / "zarr.json").unlink()
    shutil.copyfile(source / "zarr.json", path / "zarr.json")
    zarr.open_group(path, mode="r+").attrs.update(
        subject=subject, entities={"sub": subject, "task": "rest", "run": "1"}
    )
    return path


_PEAK_RSS = """
import resource, sys
from bidstrain.average.__main__ import main
main(sys.argv[1:])
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def _peak_rss_kb(stores: list[Path], out: Path) -> int:
    """Peak RSS (kB) of an average job over ``stores`` in a fresh process."""
    members = out.with_suffix(".txt")
    members.write_text("".join(f"{path}\n" for path in stores))
    command = [sys.executable, "-c", _PEAK_RSS, f"@{members}", "--out", str(out)]
    command += ["--settings", '{"mask": "intersection"}']
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return int(result.stdout.split()[-1])


@pytest.mark.slow  # 1,100 subject stores written and averaged twice
def test_memory_stays_flat_from_100_to_1000_subjects_of_the_demo_grid(tmp_path):
    spec = DemoSpec()
    rng = np.random.default_rng(7)
    shared = np.zeros(spec.n_volumes, dtype=np.float32)
    distinct = []
    for n in range(4):
        raw = bold_run(spec, rng, shared).astype(np.float64)
        path = tmp_path / f"sub-{n:04d}.zarr"
        distinct.append(write_bold_store(path, raw, raw.mean(axis=-1) > 1000, subject=f"{n:04d}"))
    stores = distinct + [
        copy_store(distinct[n % 4], tmp_path / f"sub-{n:04d}.zarr", f"{n:04d}")
        for n in range(4, 1000)
    ]
    few = _peak_rss_kb(stores[:100], tmp_path / "few.zarr")
    many = _peak_rss_kb(stores, tmp_path / "many.zarr")
    # One subject's series is 40 volumes x ~2,200 voxels x 4 bytes = 350 kB: holding the 900
    # extra subjects would add 300 MB. What grows is the bookkeeping of a store (path,
    # labels, the output's attributes that list it), about 1 kB each.
    assert many - few < 6 * 1024, (few, many)
    average = open_store(tmp_path / "many.zarr")
    assert average.attrs["subjects"] == [f"{n:04d}" for n in range(1000)]
    expected = xr.concat([open_store(p).data for p in distinct], "s").mean("s")
    np.testing.assert_allclose(average.data.values, expected.values, atol=1e-6)


def test_command_line_reads_the_stores_from_a_file_and_reports_bad_input(
    tmp_path, three_subjects, capsys
):
    flags = ["--settings", '{"mask": "union"}']
    members = tmp_path / "members.txt"
    members.write_text(f"{three_subjects[0]}\n{tmp_path / 'missing.zarr'}\n")
    with pytest.raises(SystemExit) as exit_info:
        run_cli(main, [f"@{members}", "--out", str(tmp_path / "a.zarr"), *flags])
    assert exit_info.value.code == 1
    assert "missing.zarr: store not found" in capsys.readouterr().err
    assert not (tmp_path / "a.zarr").exists()
    members.write_text("".join(f"{path}\n" for path in three_subjects))
    run_cli(main, [f"@{members}", "--out", str(tmp_path / "a.zarr"), *flags])
    average = open_store(tmp_path / "a.zarr")
    assert average.attrs["mask_mode"] == "union"
    assert average.attrs["source_path"] == [str(path) for path in three_subjects]


def test_the_averaging_benchmark_runs_both_methods(tmp_path):
    """``bench/bench_average.py`` runs the job and its xarray peer end to end on a few
    small stores and prints a row for each."""
    args = ["--subjects", "3", "--distinct", "2", "--repeats", "1", "--volumes", "8"]
    done = run_bench("bench_average.py", *args, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    rows = [line.split("|")[1:3] for line in done.stdout.splitlines() if line.startswith("| 3 ")]
    assert [method.strip() for _, method in rows] == ["ours", "xarray"]
