"""`snakemake validate`: every problem of a dataset in one run, before any compute."""

from __future__ import annotations

import csv
import gzip
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from bidstrain.demo.generate import (
    ATLAS_NAME,
    DemoSpec,
    make_atlas_demo,
    make_demo,
    make_fmriprep_demo,
)
from bidstrain.errors import BidstrainError
from bidstrain.ingest.__main__ import main
from bidstrain.ingest.validate import COLUMNS, validate
from conftest import run_bench, run_snakemake
from test_plan import plan_of

#: The broken file of each subject, relative to the dataset, and what the report says.
BROKEN = {
    "01": ("sub-01/func/sub-01_task-rest_run-1_bold.nii.gz", "truncated"),
    "02": ("sub-02/func/sub-02_task-rest_run-2_bold.json", "sidecar is not valid JSON"),
    "03": ("sub-03/ses-1/dwi/sub-03_ses-1_dwi.bval", "entries but the DWI has"),
}


@pytest.fixture(scope="module")
def broken_bids(tmp_path_factory):
    """The demo dataset with one problem in each of its three subjects: a truncated BOLD
    image, a sidecar that is not JSON, a gradient table one entry short."""
    root = make_demo(tmp_path_factory.mktemp("broken") / "bids", DemoSpec())
    bold = root / BROKEN["01"][0]
    data = gzip.decompress(bold.read_bytes())
    bold.write_bytes(gzip.compress(data[: len(data) // 2]))
    (root / BROKEN["02"][0]).write_text('{"RepetitionTime": 2.0,')
    bval = root / BROKEN["03"][0]
    bval.write_text(" ".join(bval.read_text().split()[:-1]) + "\n")
    return root


def _images(root):
    return sorted(str(p) for p in root.rglob("*.nii.gz"))


def test_every_problem_is_reported_at_once(broken_bids, tmp_path):
    tsv, text = tmp_path / "problems.tsv", tmp_path / "problems.txt"
    with pytest.raises(BidstrainError, match="3 error.s. in 3 subject"):
        validate(broken_bids, _images(broken_bids), tsv=tsv, text=text)
    with open(tsv, newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    assert tuple(rows[0]) == COLUMNS
    by_subject = {row["subject"]: row for row in rows}
    assert sorted(by_subject) == sorted(BROKEN) and len(rows) == 3
    for subject, (name, problem) in BROKEN.items():
        row = by_subject[subject]
        assert row["severity"] == "error" and row["file"] == str(broken_bids / name), row
        assert problem in row["problem"], row
        assert f'exclude_participant_label: ["{subject}"]' in row["fix"]
    readable = text.read_text()
    assert readable.startswith("16 image(s) checked: 3 error(s), 0 warning(s) in 3 subject(s)")
    assert all(f"sub-{subject}:" in readable for subject in BROKEN)


def test_a_broken_inherited_sidecar_is_listed_once_and_a_dwi_sidecar_is_read(tmp_path):
    root = make_demo(tmp_path / "bids", DemoSpec())
    shared = root / "task-rest_bold.json"
    shared.write_text('{"RepetitionTime": 2.0,')
    dwi_sidecar = next(root.glob("sub-01/**/dwi/*_dwi.nii.gz")).with_suffix("").with_suffix(".json")
    dwi_sidecar.write_text("{not json")
    tsv, text = tmp_path / "problems.tsv", tmp_path / "problems.txt"
    with pytest.raises(BidstrainError, match="in 1 subject.s. and the dataset's shared files"):
        validate(root, _images(root), tsv=tsv, text=text)
    with open(tsv, newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    inherited = [row for row in rows if row["file"] == str(shared)]
    assert len(inherited) == 1 and inherited[0]["subject"] == ""
    assert "sidecar is not valid JSON" in inherited[0]["problem"]
    assert "inherited by" in inherited[0]["problem"] and "exclude" not in inherited[0]["fix"]
    assert [row["subject"] for row in rows if row["file"] == str(dwi_sidecar)] == ["01"]
    assert "dataset (shared files):" in text.read_text()


def test_a_valid_dataset_passes_and_says_so(demo_bids, tmp_path):
    tsv, text = tmp_path / "problems.tsv", tmp_path / "problems.txt"
    assert validate(demo_bids, _images(demo_bids), tsv=tsv, text=text) == []
    assert tsv.read_text().splitlines() == ["\t".join(COLUMNS)]
    assert text.read_text().startswith("16 image(s) checked: 0 error(s)")


@pytest.mark.integration
def test_snakemake_validate_lists_the_three_subjects_in_one_run(broken_bids, tmp_path):
    result = run_snakemake(tmp_path, "validate", config={"bids_dir": broken_bids}, check=False)
    assert result.returncode != 0
    readable = (tmp_path / "results/validate/problems.txt").read_text()
    for subject, (name, problem) in BROKEN.items():
        assert f"sub-{subject}:" in readable and name in readable and problem in readable
    log = (tmp_path / "logs/validate/validate.log").read_text()
    assert "bidstrain: error: 3 error(s) in 3 subject(s)" in log and "Traceback" not in log
    # no compute: nothing was normalized
    assert not (tmp_path / "results/normalized").exists()


def test_the_job_reads_its_ingest_section(demo_bids, tmp_path):
    """``python -m bidstrain.ingest validate --settings``: the config's ingest section
    as JSON, keys left out at their schema defaults (a TR off by 0.05 s is an error
    under the default tolerance of 0.01 s)."""
    root = shutil.copytree(demo_bids, tmp_path / "bids")
    # one run's own sidecar, over the dataset's task-rest_bold.json (TR 2 s)
    sidecar = root / "sub-01/func/sub-01_task-rest_run-1_bold.json"
    sidecar.write_text(json.dumps({"RepetitionTime": 2.05, "TaskName": "rest"}))
    tsv, text = tmp_path / "problems.tsv", tmp_path / "problems.txt"

    def run(settings: dict) -> None:
        main(
            [
                *("validate", "--images", *_images(root), "--bids-dir", str(root)),
                *("--settings", json.dumps(settings), "--out-tsv", str(tsv)),
                *("--out-text", str(text)),
            ]
        )

    with pytest.raises(BidstrainError, match="1 error.s. in 1 subject"):
        run({})
    run({"repetition_time_tolerance": 0.1})
    assert text.read_text().startswith("16 image(s) checked: 0 error(s), 0 warning(s)")
    run({"repetition_time_mismatch": "warn"})
    assert text.read_text().startswith("16 image(s) checked: 0 error(s), 1 warning(s)")
    with pytest.raises(BidstrainError, match="ingest.repetition_time_mismatch"):
        run({"repetition_time_mismatch": "ignore"})


def test_the_validation_benchmark_runs_snakemake_the_job_and_the_floor(tmp_path):
    """``bench/bench_validate.py`` runs ``snakemake validate``, the job alone and the floor
    on a small tree, and reports every image checked."""
    done = run_bench("bench_validate.py", "--subjects", "3", "--repeats", "1", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "3 subjects, 12 images (12 image(s) checked: 0 error(s)" in done.stdout


def test_an_image_not_fetched_by_datalad_is_a_problem_of_its_own(tmp_path):
    """A DataLad dataset links its images into .git/annex; one not fetched links to
    nothing: a problem row naming it and `datalad get`, the other images still read."""
    root = make_demo(tmp_path / "bids", DemoSpec())
    images = _images(root)
    link = Path(next(p for p in images if p.endswith("_T1w.nii.gz")))
    link.unlink()
    link.symlink_to(root / ".git/annex/objects/XX/never-fetched")
    tsv, text = tmp_path / "problems.tsv", tmp_path / "problems.txt"
    with pytest.raises(BidstrainError, match="1 error"):
        validate(root, images, tsv=tsv, text=text)
    with open(tsv, newline="") as handle:
        (row,) = list(csv.DictReader(handle, delimiter="\t"))
    assert row["file"] == str(link) and "`datalad get` it" in row["problem"], row


def test_files_the_index_leaves_out_are_listed_as_warnings(tmp_path):
    """An image in capitals or with a name that is not BIDS is not read: validate says so,
    with the file and the reason, instead of dropping the run without a word."""
    root = make_demo(tmp_path / "bids", DemoSpec())
    planned = _images(root)  # what the plan's index lists
    func = next(root.glob("sub-01/**/func"))
    run = next(func.glob("*_bold.nii.gz"))
    shutil.copy(run, func / run.name.replace("task-rest", "task-movie").replace("_bold", "_BOLD"))
    shutil.copy(run, func / run.name.replace("task-rest", "task-two").replace(".nii.gz", ".NII.GZ"))
    shutil.copy(run, func / run.name.replace("task-rest", "task-two-back"))
    tsv, text = tmp_path / "problems.tsv", tmp_path / "problems.txt"
    validate(root, planned, tsv=tsv, text=text)  # warnings only: no error
    with open(tsv, newline="") as handle:
        rows = {Path(row["file"]).name: row for row in csv.DictReader(handle, delimiter="\t")}
    assert {row["severity"] for row in rows.values()} == {"warning"} and len(rows) == 3
    reasons = sorted(row["problem"] for row in rows.values())
    assert reasons == [
        "not a BIDS file name; ignored",
        "the extension '.NII.GZ' must be written '.nii.gz'; ignored",
        "the suffix 'BOLD' must be written 'bold'; ignored",
    ]
    assert all(row["subject"] == "01" for row in rows.values())


@pytest.fixture(scope="module")
def fmriprep_with_atlas(tmp_path_factory):
    """The fMRIPrep demo (two subjects, three runs each, in MNI at 2 mm) and the demo
    atlas on that grid, as a plan with ``parcellation`` lists them for the job."""
    root = tmp_path_factory.mktemp("atlas-validate")
    make_fmriprep_demo(root / "fmriprep", runs=("1", "2", "3"))
    make_atlas_demo(root / "atlas")
    return root / "fmriprep", root / "atlas"


def _validate_with_atlas(bids: Path, atlas_dir: Path, tmp_path: Path) -> list[dict]:
    """``python -m bidstrain.ingest validate @<the plan's argument file>``, as the rule
    runs it; the rows of its TSV report."""
    plan = plan_of(
        bids,
        space="MNI152NLin2009cAsym:res-2",
        modalities=["bold"],
        parcellation={"name": ATLAS_NAME, "path": str(atlas_dir)},
    )
    (content,) = plan.validate_files().values()
    arguments = tmp_path / "validate.args"
    arguments.write_text(content)
    tsv, text = tmp_path / "problems.tsv", tmp_path / "problems.txt"
    command = [f"@{arguments}", "--bids-dir", str(bids), "--settings", "{}"]
    main(["validate", *command, "--out-tsv", str(tsv), "--out-text", str(text)])
    return _rows(tsv)


def _rows(tsv: Path) -> list[dict]:
    with open(tsv, newline="") as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


def test_a_valid_atlas_passes_on_every_run_in_any_voxel_order(fmriprep_with_atlas, tmp_path):
    """A run stored LAS lies on the atlas's grid once in RAS+ order, as its store will:
    no resampling, no warning."""
    bids, atlas_dir = fmriprep_with_atlas
    bids = shutil.copytree(bids, tmp_path / "fmriprep")
    run = next(bids.glob("sub-01/func/*_run-1_*desc-preproc_bold.nii.gz"))
    img = nib.load(run)
    flip = np.diag([-1.0, 1.0, 1.0, 1.0])
    flip[0, 3] = img.shape[0] - 1  # voxel i of the flipped array is voxel n - 1 - i
    las = nib.Nifti1Image(np.asarray(img.dataobj)[::-1], img.affine @ flip, img.header)
    las.set_sform(img.affine @ flip, code=1)
    las.set_qform(img.affine @ flip, code=1)
    nib.save(las, run)
    assert nib.aff2axcodes(nib.load(run).affine)[0] == "L"
    assert _validate_with_atlas(bids, atlas_dir, tmp_path) == []


def test_a_damaged_atlas_is_an_error_before_any_job(fmriprep_with_atlas, tmp_path):
    bids, atlas_dir = fmriprep_with_atlas
    bids = shutil.copytree(bids, tmp_path / "fmriprep")
    run = next(bids.glob("sub-01/func/*_run-1_*desc-preproc_bold.nii.gz"))
    img = nib.load(run)
    moved = img.affine.copy()
    moved[:3, 3] += 2.0  # a second grid: the atlas is read onto each grid once
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj), moved, img.header), run)
    atlas_dir = shutil.copytree(atlas_dir, tmp_path / "atlas")
    (image,) = atlas_dir.rglob("*_dseg.nii.gz")
    data = image.read_bytes()
    image.write_bytes(data[: int(len(data) * 0.6)])
    with pytest.raises(BidstrainError, match=r"1 error.s. in the dataset's shared files; every"):
        _validate_with_atlas(bids, atlas_dir, tmp_path)
    (row,) = _rows(tmp_path / "problems.tsv")  # once, whatever the grids
    assert row["file"] == str(image) and "truncated" in row["problem"], row
    assert row["subject"] == "" and "config parcellation" in row["fix"]  # the dataset's
    assert "dataset (shared files):" in (tmp_path / "problems.txt").read_text()


def test_an_atlas_on_another_grid_or_with_unlisted_labels_is_a_warning_once(
    fmriprep_with_atlas, tmp_path
):
    bids, atlas_dir = fmriprep_with_atlas
    atlas_dir = shutil.copytree(atlas_dir, tmp_path / "atlas")
    (image,) = atlas_dir.rglob("*_dseg.nii.gz")
    img = nib.load(image)
    labels = np.asarray(img.dataobj).copy()
    labels[0, 0, 0] = 42  # a label the table does not list
    fine = np.repeat(np.repeat(np.repeat(labels, 2, 0), 2, 1), 2, 2)  # twice the resolution
    affine = img.affine.copy()
    affine[:3, :3] /= 2
    affine[:3, 3] -= 0.5
    nib.save(nib.Nifti1Image(fine, affine), image)
    rows = _validate_with_atlas(bids, atlas_dir, tmp_path)
    assert [row["severity"] for row in rows] == ["warning", "warning"], rows
    assert all(row["file"] == str(image) for row in rows)
    problems = sorted(row["problem"] for row in rows)
    assert "labels 42 of" in problems[0] and "not in its table" in problems[0]
    assert "resampled by nearest neighbour" in problems[1]
