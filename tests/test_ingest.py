"""Ingestion through the real snakemake: the demo dataset passes, every kind of bad input
stops the run with a message naming the file or subject and leaves no misleading output.

Each subject's normalize job validates the subject's headers first and writes its ingest
record, so target ``ingest`` (the manifest of every record) normalizes every subject too,
and a bad image stops its subject's job before any store is written."""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from bidstrain.demo.generate import DemoSpec, make_demo
from bidstrain.errors import BidstrainError
from bidstrain.ingest.records import write_manifest
from bidstrain.io.scans_table import COLUMNS, read_tables
from bidstrain.io.store import read_meta
from conftest import run_snakemake

pytestmark = pytest.mark.integration

SMALL = DemoSpec(n_subjects=2, bold_shape=(8, 8, 8), n_volumes=5, t1w_shape=(8, 8, 8))


@pytest.fixture(scope="module")
def small_template(tmp_path_factory) -> Path:
    return make_demo(tmp_path_factory.mktemp("small") / "bids", SMALL)


@pytest.fixture
def small(tmp_path, small_template) -> Path:
    """A fresh copy of a tiny demo dataset that a test may break."""
    return Path(shutil.copytree(small_template, tmp_path / "bids"))


def ingest_fails(workdir: Path, bids: Path, *expected: str, **config) -> str:
    """Run target ``ingest``; it must fail with every ``expected`` text in its output or
    logs, and leave no manifest. Returns that output."""
    result = run_snakemake(workdir, "ingest", config={"bids_dir": bids, **config}, check=False)
    output = (
        result.stdout
        + result.stderr
        + "".join(p.read_text() for p in (workdir / "logs").rglob("*.log"))
    )
    assert result.returncode != 0, output
    for text in expected:
        assert text in output, f"{text!r} not in:\n{output}"
    assert not (workdir / "results/ingest/manifest.tsv").exists()
    return output


def no_store_of(workdir: Path, subject: str) -> bool:
    """Whether the subject's normalize job left no store (it stopped before the first)."""
    return not list((workdir / "results/normalized" / f"sub-{subject}").rglob("*.zarr*"))


def test_demo_dataset_ingests_into_a_manifest(tmp_path, demo_bids):
    run_snakemake(tmp_path, "ingest", config={"bids_dir": demo_bids})
    with (tmp_path / "results/ingest/manifest.tsv").open() as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    assert {
        "subject",
        "session",
        "task",
        "run",
        "modality",
        "path",
        "n_volumes",
        "repetition_time",
        "shape",
        "store",
        "checksum",
    } <= set(rows[0])
    assert len(rows) == 16  # 4 subject-sessions x (T1w + 2 BOLD + DWI)
    # each image's store, as its subject's table lists it, and the store's own checksum
    for row in rows:
        table = tmp_path / f"results/normalized/sub-{row['subject']}/sub-{row['subject']}_scans.tsv"
        listed = {r.source: r for r in read_tables([table])}[row["path"]]
        assert listed.store == str(tmp_path / row["store"]) and listed.checksum == row["checksum"]
        assert row["checksum"] == read_meta(tmp_path / row["store"]).checksum
        assert (tmp_path / row["store"]).is_dir()
    bold = [r for r in rows if r["modality"] == "bold"]
    assert {r["repetition_time"] for r in bold} == {"2.0"}  # inherited from task-rest_bold.json
    assert {r["n_volumes"] for r in bold} == {"40"} and {r["shape"] for r in bold} == {
        "20x24x20x40"
    }
    assert {r["session"] for r in rows if r["subject"] == "03"} == {"1", "2"}
    record = json.loads((tmp_path / "results/ingest/sub-01.json").read_text())
    dwi = next(r for r in record["images"] if r["modality"] == "dwi")
    assert dwi["bval"] == [0, 0, 1000, 1000, 1000, 1000, 1000, 1000] and len(dwi["bvec"][0]) == 8
    # one job and one log per subject: ingestion, then normalization
    log = (tmp_path / "logs/normalize/sub-01.log").read_text()
    assert log.index("sub-01: 4 images valid") < log.index("desc-zscore_T1w.zarr")
    assert (tmp_path / "results/normalized/sub-01/sub-01_scans.tsv").exists()
    assert sorted(p.name for p in (tmp_path / "logs/ingest").iterdir()) == ["manifest.log"]


def test_manifest_of_a_record_whose_image_its_table_lacks_is_refused(tmp_path):
    record = tmp_path / "sub-01.json"
    image = {"subject": "01", "path": "/data/sub-01/anat/sub-01_T1w.nii.gz", "shape": [2, 2, 2]}
    record.write_text(json.dumps({"subject": "01", "images": [image]}))
    table = tmp_path / "sub-01_scans.tsv"
    table.write_text("\t".join(COLUMNS) + "\n")  # no store
    out = tmp_path / "manifest.tsv"
    with pytest.raises(BidstrainError, match=r"sub-01: .*sub-01_scans.tsv: lists no store of"):
        write_manifest([record], [table], out)
    assert not out.exists()


def test_dry_run_of_all_lists_ingestion_and_normalization_in_one_job_per_subject(
    tmp_path, demo_bids
):
    result = run_snakemake(tmp_path, "-n", "all", config={"bids_dir": demo_bids})
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", result.stdout, re.MULTILINE))
    # 3 subjects; their labels hash to 3 of the 64 figure groups
    assert counts["normalize_subject"] == counts["report_normalize"] == "3"
    assert counts["ingest"] == counts["all"] == "1" and "ingest_subject" not in counts


def test_nonexistent_bids_dir(tmp_path):
    ingest_fails(tmp_path, tmp_path / "nowhere", "nowhere: bids_dir does not exist")


def test_directory_that_is_not_bids(tmp_path):
    (tmp_path / "data" / "sub-01").mkdir(parents=True)
    ingest_fails(
        tmp_path, tmp_path / "data", "not a BIDS dataset: dataset_description.json is missing"
    )


def test_empty_image(tmp_path, small):
    (small / "sub-01/anat/sub-01_T1w.nii.gz").write_bytes(b"")
    ingest_fails(tmp_path, small, "sub-01", "sub-01_T1w.nii.gz: empty image file (0 bytes)")
    assert not (tmp_path / "results/ingest/sub-01.json").exists()
    assert no_store_of(tmp_path, "01")


def test_truncated_nii_gz(tmp_path, small):
    path = small / "sub-02/ses-1/func/sub-02_ses-1_task-rest_run-1_bold.nii.gz"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    ingest_fails(
        tmp_path,
        small,
        "sub-02",
        "sub-02_ses-1_task-rest_run-1_bold.nii.gz: truncated .nii.gz: the gzip stream is cut short",
    )
    assert not (tmp_path / "results/ingest/sub-02.json").exists()
    assert no_store_of(tmp_path, "02")


def test_3d_bold(tmp_path, small):
    path = small / "sub-01/func/sub-01_task-rest_run-2_bold.nii.gz"
    img = nib.load(path)
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj)[..., 0], img.affine, img.header), path)
    ingest_fails(
        tmp_path,
        small,
        "sub-01_task-rest_run-2_bold.nii.gz: BOLD must be 4D with at least 3 volumes",
    )


def test_missing_repetition_time(tmp_path, small):
    (small / "task-rest_bold.json").unlink()
    path = small / "sub-01/func/sub-01_task-rest_run-1_bold.nii.gz"
    img = nib.load(path)
    img.header.set_zooms(img.header.get_zooms()[:3] + (0.0,))
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj), img.affine, img.header), path)
    ingest_fails(tmp_path, small, "sub-01_task-rest_run-1_bold.nii.gz: RepetitionTime is missing")


@pytest.mark.slow
def test_repetition_time_disagreement_is_an_error_or_a_warning(tmp_path, small):
    (small / "task-rest_bold.json").write_text(json.dumps({"RepetitionTime": 1.0}))
    ingest_fails(
        tmp_path, small, "disagrees with 2 s in the header", "ingest.repetition_time_mismatch"
    )
    run_snakemake(
        tmp_path, "ingest", config={"bids_dir": small, "ingest": "{repetition_time_mismatch: warn}"}
    )
    record = json.loads((tmp_path / "results/ingest/sub-01.json").read_text())
    assert {r["repetition_time"] for r in record["images"] if r["modality"] == "bold"} == {1.0}


@pytest.mark.parametrize(
    ("ext", "text", "problem"),
    [
        (".bval", "0 0 nan 1000 1000 1000 1000 1000\n", "not a finite number"),
        (".bvec", None, "not a finite number"),
        (".bvec", "1 0 x0.3\n", "cannot parse gradient table"),
    ],
)
def test_a_bad_gradient_value_names_its_own_file(small, ext, text, problem):
    from bidstrain.dataset.bids import BidsIndex
    from bidstrain.ingest.records import inspect_image

    table = small / f"sub-02/ses-1/dwi/sub-02_ses-1_dwi{ext}"
    rows = table.read_text().splitlines()
    table.write_text(text or "\n".join([rows[0].replace(rows[0].split()[2], "nan", 1), *rows[1:]]))
    index = BidsIndex.build(small)
    image = next(i for i in index.select("dwi") if i.subject == "02")
    with pytest.raises(BidstrainError, match=rf"dwi\{ext}: .*{problem}"):
        inspect_image(image, index)


def test_bval_length_does_not_match_dwi(tmp_path, small):
    (small / "sub-02/ses-1/dwi/sub-02_ses-1_dwi.bval").write_text("0 1000 1000\n")
    ingest_fails(tmp_path, small, "sub-02_ses-1_dwi.bval has 3 entries but the DWI has 8 volumes")


def test_participant_label_naming_an_absent_subject(tmp_path, small):
    ingest_fails(
        tmp_path,
        small,
        "participant_label names subjects with no folder: 42",
        participant_label="[42]",
    )


def test_subject_folder_with_no_images(tmp_path, small):
    (small / "sub-07" / "anat").mkdir(parents=True)
    ingest_fails(
        tmp_path, small, "sub-07", "have no T1w or bold or dwi image", "exclude_participant_label"
    )


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        (
            {"normalize": "{ddof: one}"},
            "config key 'normalize.ddof': 'one' is not of type 'integer'",
        ),
        ({"modalities": "[T1w, pet]"}, "config key 'modalities.1': 'pet' is not one of"),
        ({"bogus_key": "1"}, "config key 'bogus_key': Additional properties are not allowed"),
    ],
)
def test_invalid_config_stops_before_any_job_naming_the_key(tmp_path, small, override, expected):
    output = ingest_fails(tmp_path, small, expected, **override)
    assert "normalize_subject" not in output
