"""Reruns with the real ``snakemake`` (locally): a forced rerun on unchanged data reruns
nothing downstream, changed data does, and a failed rerun of a subject leaves no record
or table (so it is retried) and keeps its stores (docs/reruns.md)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from bidstrain.io.store import read_meta
from conftest import run_snakemake

pytestmark = pytest.mark.integration

RULE = re.compile(r"^\s*(?:local)?rule (\w+):$", re.MULTILINE)
TARGETS = ("ingest", "average")


@pytest.fixture(scope="module")
def rerun(tmp_path_factory, demo_bids) -> tuple[Path, Path]:
    """``(workdir, bids)``: the targets of :data:`TARGETS` run on a copy of the demo data
    that the tests change."""
    root = tmp_path_factory.mktemp("reruns")
    bids = shutil.copytree(demo_bids, root / "bids")
    run_snakemake(root / "run", *TARGETS, config={"bids_dir": bids})
    return root / "run", bids


def snapshot(workdir: Path) -> dict[str, bytes]:
    """The bytes of sub-01's record and table and of every store's root metadata."""
    results = workdir / "results"
    files = [results / "ingest/sub-01.json", results / "normalized/sub-01/sub-01_scans.tsv"]
    files += sorted(results.glob("normalized/sub-01/*/*.zarr/zarr.json"))
    return {str(path.relative_to(workdir)): path.read_bytes() for path in files if path.exists()}


def planned(workdir: Path, bids: Path) -> set[str]:
    """The rules a dry run of :data:`TARGETS` would run."""
    result = run_snakemake(workdir, "--dry-run", *TARGETS, config={"bids_dir": bids})
    return set(RULE.findall(result.stdout + result.stderr))


def test_a_forced_rerun_on_unchanged_data_leaves_nothing_to_redo(rerun):
    workdir, bids = rerun
    before = snapshot(workdir)
    stores = sorted((workdir / "results/normalized").glob("*/*/*.zarr"))
    checksums = [read_meta(store).checksum for store in stores]
    mtimes = [(store / "zarr.json").stat().st_mtime_ns for store in stores]
    run_snakemake(
        workdir,
        "--forcerun",
        "normalize_subject",
        "--until",
        "normalize_subject",
        config={"bids_dir": bids},
    )
    # every store rewritten, with the same content: the same tables and record
    assert all(
        (store / "zarr.json").stat().st_mtime_ns != mtime
        for store, mtime in zip(stores, mtimes, strict=True)
    )
    assert [read_meta(store).checksum for store in stores] == checksums
    assert snapshot(workdir) == before
    assert planned(workdir, bids) == set()


@pytest.mark.slow  # four snakemake runs and two dry runs: about 30 s
def test_a_failed_rerun_leaves_no_table_keeps_the_stores_and_is_retried(rerun):
    workdir, bids = rerun
    before = snapshot(workdir)
    t1w = bids / "sub-01/anat/sub-01_T1w.nii.gz"
    good = t1w.read_bytes()
    t1w.write_bytes(good[: len(good) // 2])  # a copy cut short
    failed = run_snakemake(workdir, *TARGETS, config={"bids_dir": bids}, check=False)
    log = (workdir / "logs/normalize/sub-01.log").read_text()
    assert failed.returncode != 0 and "sub-01_T1w.nii.gz: truncated .nii.gz" in log
    # the record and table are gone, the stores are as they were
    left = snapshot(workdir)
    assert {name: before[name] for name in left} == left
    assert sorted(set(before) - set(left)) == [
        "results/ingest/sub-01.json",
        "results/normalized/sub-01/sub-01_scans.tsv",
    ]
    # the next run retries the subject (and what waits for its table), not the others
    assert planned(workdir, bids) == {"normalize_subject", "ingest", "average_bold", "average"}
    retried = run_snakemake(workdir, *TARGETS, config={"bids_dir": bids}, check=False)
    assert retried.returncode != 0 and set(RULE.findall(retried.stderr)) == {"normalize_subject"}

    # the image copied back: the same table and record; what was planned behind the
    # subject's job reruns (with the same content), and then nothing is left to do
    t1w.write_bytes(good)
    fixed = run_snakemake(workdir, *TARGETS, config={"bids_dir": bids})
    assert set(RULE.findall(fixed.stderr)) == {
        "normalize_subject",
        "ingest",
        "average_bold",
        "average",
    }
    assert snapshot(workdir) == before
    assert planned(workdir, bids) == set()

    # the same image with one voxel changed: its store, and what reads the tables, rerun
    t1w.write_bytes(good)
    image = nib.load(t1w)
    data = np.asarray(image.dataobj).copy()
    data[10, 12, 10] += 100
    nib.save(nib.Nifti1Image(data, image.affine, image.header), t1w)
    manifest = (workdir / "results/ingest/manifest.tsv").read_text()
    result = run_snakemake(workdir, *TARGETS, config={"bids_dir": bids})
    # the averages take the manifest (one edge for every store), which changed
    ran = set(RULE.findall(result.stderr))
    assert ran == {"normalize_subject", "ingest", "average_bold", "average"}
    after = snapshot(workdir)
    changed = sorted(name for name in after if after[name] != before[name])
    assert changed == [
        "results/ingest/sub-01.json",  # the image's size and checksum
        "results/normalized/sub-01/anat/sub-01_desc-zscore_T1w.zarr/zarr.json",
        "results/normalized/sub-01/sub-01_scans.tsv",
    ]
    assert (workdir / "results/ingest/manifest.tsv").read_text() != manifest


def test_a_failed_average_job_loses_its_previous_store_as_documented(rerun):
    """docs/reruns.md: an average store is a directory() output, which Snakemake removes
    before the job runs; a failing average job leaves none (the other run's stays)."""
    workdir, bids = rerun
    chunk = next((workdir / "results/normalized/sub-02").glob("func/*run-1*.zarr/data/c/0/0"))
    good = chunk.read_bytes()
    chunk.write_bytes(good[:1000])  # a subject store cut short
    averages = workdir / "results/average"
    assert len(list(averages.glob("*.zarr"))) == 2
    try:
        failed = run_snakemake(
            workdir,
            "--forcerun",
            "average_bold",
            "--until",
            "average_bold",
            config={"bids_dir": bids},
            check=False,
        )
    finally:
        chunk.write_bytes(good)
    assert failed.returncode != 0
    assert [p.name for p in averages.glob("*.zarr")] == ["task-rest_run-2_desc-average_bold.zarr"]
