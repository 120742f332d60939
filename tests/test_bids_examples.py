"""Datasets of bids-examples (``tests/data/bids_examples``, see its README): each plans, or
stops with its one-line error naming what to set.

Chosen for their differences: sessions, multi-echo BOLD, fieldmaps, MEG's
``sub-emptyroom``, several acquisitions and reconstructions, sidecars inherited from the
dataset root or missing, DWI gradients at the root, fMRIPrep outputs in several spaces
(one of them nested in a raw dataset, with ``label-brain`` masks), an uncompressed DWI
next to its maps, a template dataset. Their images are empty files: the plan opens none
(the index reads names and sidecars only). ``bench/dry_run_bids_examples.py`` runs the
same over every MRI dataset of bids-examples.
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from bidstrain.dataset.bids import BidsIndex
from bidstrain.dataset.derivatives import dataset_kind, nested_derivatives_warning
from bidstrain.errors import BidstrainError
from bidstrain.plan import Plan
from conftest import run_snakemake
from test_plan import typed_config

DATA = Path(__file__).parent / "data" / "bids_examples"
MNI = "MNI152NLin2009cAsym"


def plan(name: str, **overrides) -> Plan:
    """The plan of a dataset of the sample (or at an absolute path) with the repository's
    config and ``overrides``."""
    config = typed_config(DATA / name, **overrides)
    index = BidsIndex.build(
        config.bids_dir, config.participant_label, config.exclude_participant_label
    )
    return Plan.build(config, index)


def counts(p: Plan) -> dict[str, int]:
    """Images planned per modality."""
    return {m: len(images) for m, images in p.images.items() if images}


def error_of(name: str, **overrides) -> str:
    """The one-line error a dataset stops with."""
    with pytest.raises(BidstrainError) as error:
        plan(name, **overrides)
    message = str(error.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize(
    ("name", "overrides", "subjects", "images"),
    [
        # root sidecars (task-*_bold.json), T1w without any sidecar, run-01..03
        ("ds001", {}, 2, {"T1w": 2, "bold": 6}),
        # sessions ses-mri/ses-meg, fieldmaps, multi-echo FLASH (not T1w), sub-emptyroom
        ("ds000117", {}, 1, {"T1w": 1, "bold": 9, "dwi": 1}),
        ("ds210", {"echo": 1}, 2, {"bold": 10}),  # multi-echo BOLD, one echo chosen
        # acq-MPRAGE T1w, BOLD and DWI whose sidecars and dwi.bval/.bvec sit at the root
        ("genetics_ukbb", {}, 2, {"T1w": 2, "bold": 4, "dwi": 2}),
        # six acquisitions of one task; a raw dataset naming its tool in GeneratedBy
        ("volume_timing", {}, 1, {"bold": 6}),
        ("dwi_deriv", {}, 1, {"dwi": 1}),  # .nii DWI next to FA/ADC/trace maps
        ("ds004332", {}, 2, {"T1w": 32}),  # T1w with task, acq and rec entities
        ("synthetic", {}, 2, {"T1w": 4, "bold": 12}),  # sessions; header-only .nii images
        ("synthetic/derivatives/fmriprep", {"space": MNI}, 2, {"bold": 12}),
        ("ds000001-fmriprep", {"space": MNI}, 2, {"T1w": 2, "bold": 6}),
    ],
)
def test_the_dataset_plans(name, overrides, subjects, images):
    p = plan(name, **overrides)
    assert (len(p.subjects), counts(p)) == (subjects, images)
    stores = p.normalized_stores
    assert len(set(stores)) == len(stores)  # no two images share a store
    assert p.files()  # every file the plan writes at parse time can be made


@pytest.mark.parametrize(
    ("name", "overrides", "expected"),
    [
        ("atlas-Schaefer", {}, r"no subject folder .*a template or atlas dataset"),
        (
            "ds210",
            {},
            r"^multi-echo images: several echoes and config echo is not set for "
            r"sub-01/func/sub-01_task-cuedSGT_run-01_echo-\*_bold.nii.gz and 9 more "
            r"acquisition\(s\); echoes found: 1, 2, 3; set config echo",
        ),
        (
            "ds000001-fmriprep",
            {},
            rf"several spaces and config space is not set; spaces found: T1w: {MNI}:res-2, "
            rf"T1w; bold: {MNI}:res-2; bold desc-smoothAROMAnonaggr: MNI152NLin6Asym; set "
            "config space to one of them",
        ),
        (  # the AROMA outputs are in another space than the T1w
            "ds000001-fmriprep",
            {"space": "MNI152NLin6Asym", "normalize": {"confounds": {"strategy": "ica_aroma"}}},
            r"^config space MNI152NLin6Asym: no T1w image in that space for "
            rf"sub-10/anat/sub-10_desc-preproc_T1w.nii.gz \(has {MNI}:res-2, T1w\) and 1 more "
            rf"run\(s\); spaces found: T1w: {MNI}:res-2, T1w; bold: {MNI}:res-2; "
            r"bold desc-smoothAROMAnonaggr: MNI152NLin6Asym; set it to a space every run has$",
        ),
        (
            "synthetic/derivatives/fmriprep",
            {},
            rf"spaces found: bold: {MNI}, T1w; set config space",
        ),
    ],
)
def test_the_dataset_stops_with_one_line_naming_what_to_set(name, overrides, expected):
    assert re.search(expected, error_of(name, **overrides))


def test_sub_emptyroom_is_left_out_and_sessions_keep_their_own_files(caplog):
    with caplog.at_level(logging.WARNING):
        p = plan("ds000117")
    assert p.subjects == ("01",)
    assert "sub-emptyroom (meg): no anat, func or dwi folder; left out" in caplog.text
    index = BidsIndex.build(DATA / "ds000117")
    assert not [f for f in index.images if f.datatype == "fmap"]
    (dwi,) = p.images["dwi"]
    assert index.companion(dwi, ".bval").name == "sub-01_ses-mri_dwi.bval"
    assert all("/ses-mri/" in store for store in p.normalized_stores)


def test_sidecars_and_gradients_inherited_from_the_root():
    index = BidsIndex.build(DATA / "genetics_ukbb")
    p = plan("genetics_ukbb")
    dwi = p.images["dwi"][0]
    assert index.companion(dwi, ".bval") == DATA / "genetics_ukbb" / "dwi.bval"
    t1w = p.images["T1w"][0]
    assert t1w.entities["acq"] == "MPRAGE" and index.metadata(t1w)  # acq-MPRAGE_T1w.json
    ds001 = BidsIndex.build(DATA / "ds001")
    bold = ds001.select("bold")[0]
    assert ds001.metadata(bold)["RepetitionTime"] == 2.0  # task-..._bold.json at the root
    assert ds001.metadata(ds001.select("T1w")[0]) == {}  # no sidecar at all: allowed


def test_held_out_runs_and_averages_keep_runs_echoes_and_acquisitions_apart():
    # ds001 numbers its runs 01..03: holding out run 02 fits on runs 01 and 03
    p = plan("ds001", normalize={"heldout": {"run": ["02"]}})
    held = [i for job in p.jobs.values() for i in job.images if i.heldout]
    assert len(held) == 2 and all("_run-02_" in i.store for i in held)
    assert all(len(i.stats_from) == 2 and "_run-02_" not in "".join(i.stats_from) for i in held)
    # multi-echo: the chosen echo names the stores and the averages
    echo = plan("ds210", echo=1)
    assert all("_echo-1_" in store for store in echo.normalized_stores)
    assert [g.name for g in echo.averages][:2] == [
        "task-cuedSGT_run-01_echo-1",
        "task-cuedSGT_run-02_echo-1",
    ]
    # six acquisitions of task rest: six averages, never one of mixed acquisitions
    timing = plan("volume_timing")
    assert dataset_kind(DATA / "volume_timing").kind == "raw"
    assert len({g.name for g in timing.averages}) == 6
    assert all(g.name.startswith("task-rest_acq-") for g in timing.averages)


def test_fmriprep_outputs_use_their_own_masks_and_confounds():
    p = plan("ds000001-fmriprep", space=MNI, normalize={"confounds": {"strategy": "simple"}})
    for image in (i for job in p.jobs.values() for i in job.images):
        assert image.mask.endswith(f"_space-{MNI}_res-2_desc-brain_mask.nii.gz")
        if image.image.suffix == "bold":
            assert image.confounds.endswith("_desc-confounds_timeseries.tsv")
    synthetic = plan("synthetic/derivatives/fmriprep", space=MNI)  # label-brain masks
    assert all(
        i.mask.endswith(f"_space-{MNI}_label-brain_mask.nii")
        for job in synthetic.jobs.values()
        for i in job.images
    )
    warning = nested_derivatives_warning(DATA / "synthetic")
    assert "synthetic/derivatives/fmriprep (fmriprep)" in warning and "set bids_dir" in warning


def test_a_nested_dataset_with_an_empty_description(tmp_path):
    """bids-examples' ieeg_epilepsy ships derivatives/brainvisa with a zero-byte
    dataset_description.json (its parse ended in a traceback): rebuilt here on ds001."""
    root = tmp_path / "ds001"
    shutil.copytree(DATA / "ds001", root)
    nested = root / "derivatives" / "brainvisa"
    nested.mkdir(parents=True)
    (nested / "dataset_description.json").touch()
    assert nested_derivatives_warning(root) is None
    assert plan(str(root)).subjects == ("01", "02")
    with pytest.raises(BidstrainError, match="dataset_description.json: the dataset description"):
        plan(str(nested))


# ---- the real command: a few dry runs, as a user types them ------------------------------


@pytest.mark.integration  # three Snakemake starts, about 15 s
def test_snakemake_dry_runs(tmp_path):
    """``snakemake -n`` as a user types it: a dataset that plans (and says whom it left
    out), the nested dataset that ended in a traceback, and a refusal in one
    ``bidstrain:`` line with no traceback."""
    ds000117 = dry_run(tmp_path / "a", DATA / "ds000117")
    assert ds000117.returncode == 0 and "sub-emptyroom (meg): no anat" in ds000117.stdout
    ieeg = tmp_path / "ieeg_epilepsy"
    shutil.copytree(DATA / "ds001", ieeg)
    (ieeg / "derivatives" / "brainvisa").mkdir(parents=True)
    (ieeg / "derivatives" / "brainvisa" / "dataset_description.json").touch()
    assert dry_run(tmp_path / "b", ieeg).returncode == 0
    refused = dry_run(tmp_path / "c", DATA / "ds210")
    lines = refused.stdout.splitlines()
    (at,) = [i for i, line in enumerate(lines) if line.startswith("bidstrain: ")]
    assert refused.returncode != 0 and "config echo is not set" in lines[at]
    assert lines[at + 1].lstrip().startswith('File "')  # Snakemake's location line follows


def dry_run(workdir: Path, bids_dir: Path) -> subprocess.CompletedProcess:
    """``snakemake -n``; the returned ``stdout`` holds both streams, checked for tracebacks."""
    result = run_snakemake(workdir, "-n", config={"bids_dir": bids_dir}, check=False)
    result.stdout += result.stderr
    assert "Traceback" not in result.stdout
    return result
