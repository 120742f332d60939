"""The BIDS index: entities, sidecar inheritance, filters, skipped folders, path builder."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from bidstrain.dataset.bids import (
    ENTITY_ORDER,
    BidsFile,
    BidsIgnore,
    BidsIndex,
    bids_path,
    parse_name,
    select_echo,
    select_part,
)
from bidstrain.errors import BidstrainError


def touch(root: Path, relative: str, text: str = "") -> Path:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def dataset(tmp_path) -> Path:
    """A small hand-made dataset exercising entities, inheritance and skipped folders."""
    root = tmp_path / "ds"
    touch(root, "dataset_description.json", '{"Name": "t", "BIDSVersion": "1.9.0"}')
    touch(root, "participants.tsv", "participant_id\nsub-01\nsub-02\nsub-09\n")
    touch(root, "task-rest_bold.json", json.dumps({"RepetitionTime": 2.0, "TaskName": "rest"}))
    touch(root, "sub-01/sub-01_task-rest_bold.json", json.dumps({"EchoTime": 0.03}))
    touch(root, "sub-01/func/sub-01_task-rest_acq-mb_dir-AP_run-1_echo-2_bold.nii.gz")
    touch(
        root,
        "sub-01/func/sub-01_task-rest_acq-mb_dir-AP_run-1_echo-2_bold.json",
        json.dumps({"RepetitionTime": 1.5}),
    )
    touch(root, "sub-01/func/sub-01_task-motor_run-1_bold.nii")
    touch(root, "sub-01/anat/sub-01_ce-gad_rec-norm_T1w.nii.gz")
    touch(root, "dwi.bval", "0 1000\n")
    touch(root, "sub-02/ses-1/dwi/sub-02_ses-1_dwi.nii.gz")
    touch(root, "sub-02/ses-1/dwi/sub-02_ses-1_dwi.bval", "0 0 1000\n")
    touch(root, "sub-02/ses-1/anat/sub-02_ses-1_T1w.nii.gz")
    touch(root, "sub-02/ses-1/anat/not a bids name.nii.gz")
    touch(root, "derivatives/fmriprep/sub-01/func/sub-01_task-rest_desc-preproc_bold.nii.gz")
    touch(root, "sourcedata/sub-01/raw_bold.nii.gz")
    touch(root, "code/sub-01_script_bold.nii.gz")
    touch(root, ".heudiconv/sub-01/sub-01_T1w.nii.gz")
    touch(root, "sub-01/func/.sub-01_task-rest_run-9_bold.nii.gz")
    return root


def test_parse_name_splits_entities_suffix_and_extension():
    entities, suffix, extension = parse_name(
        "sub-01_ses-pre_task-rest_acq-mb_ce-x_dir-PA_rec-a_run-3_echo-1_bold.nii.gz"
    )
    assert entities == {
        "sub": "01",
        "ses": "pre",
        "task": "rest",
        "acq": "mb",
        "ce": "x",
        "dir": "PA",
        "rec": "a",
        "run": "3",
        "echo": "1",
    }
    assert (suffix, extension) == ("bold", ".nii.gz")
    assert parse_name("task-rest_bold.json") == ({"task": "rest"}, "bold", ".json")
    assert parse_name("not a bids name.nii.gz") is None


def test_index_finds_images_with_datatype_and_extensions(dataset):
    index = BidsIndex.build(dataset)
    found = {
        (f.path.relative_to(dataset).as_posix(), f.datatype, f.suffix, f.extension)
        for f in index.images
    }
    assert found == {
        (
            "sub-01/func/sub-01_task-rest_acq-mb_dir-AP_run-1_echo-2_bold.nii.gz",
            "func",
            "bold",
            ".nii.gz",
        ),
        ("sub-01/func/sub-01_task-motor_run-1_bold.nii", "func", "bold", ".nii"),
        ("sub-01/anat/sub-01_ce-gad_rec-norm_T1w.nii.gz", "anat", "T1w", ".nii.gz"),
        ("sub-02/ses-1/dwi/sub-02_ses-1_dwi.nii.gz", "dwi", "dwi", ".nii.gz"),
        ("sub-02/ses-1/anat/sub-02_ses-1_T1w.nii.gz", "anat", "T1w", ".nii.gz"),
    }
    t1w = index.select("T1w", subject="01")[0]
    assert dict(t1w.entities) == {"sub": "01", "ce": "gad", "rec": "norm"}
    assert index.select("T1w", subject="02")[0].session == "1"


def test_sidecars_merge_from_least_to_most_specific(dataset):
    index = BidsIndex.build(dataset)
    rest = index.select("bold", task=["rest"])[0]
    assert index.metadata(rest) == {"RepetitionTime": 1.5, "TaskName": "rest", "EchoTime": 0.03}
    motor = index.select("bold", task=["motor"])[0]
    assert index.metadata(motor) == {}


def test_bval_is_inherited_and_the_most_specific_wins(dataset):
    index = BidsIndex.build(dataset)
    dwi = index.select("dwi")[0]
    assert index.companion(dwi, ".bval") == dataset / "sub-02/ses-1/dwi/sub-02_ses-1_dwi.bval"
    (dataset / "sub-02/ses-1/dwi/sub-02_ses-1_dwi.bval").unlink()
    index = BidsIndex.build(dataset)
    assert index.companion(index.select("dwi")[0], ".bval") == dataset / "dwi.bval"
    assert index.companion(index.select("dwi")[0], ".bvec") is None


def test_participant_filters(dataset):
    assert BidsIndex.build(dataset).subjects == ["01", "02"]
    only = BidsIndex.build(dataset, participant_label=["02"])
    assert only.subjects == ["02"] and {f.subject for f in only.images} == {"02"}
    without = BidsIndex.build(dataset, exclude_participant_label=["01"])
    assert {f.subject for f in without.images} == {"02"}
    with pytest.raises(BidstrainError, match="participant_label names subjects with no folder: 07"):
        BidsIndex.build(dataset, participant_label=["07"])
    # a typo in the exclusions would drop nobody without a word
    with pytest.raises(
        BidstrainError, match=r"^.*: exclude_participant_label names subjects with no folder: 1 "
    ):
        BidsIndex.build(dataset, exclude_participant_label=["1"])


def test_skips_derivatives_sourcedata_code_and_dot_files(dataset):
    paths = [f.path.relative_to(dataset).as_posix() for f in BidsIndex.build(dataset).images]
    assert not any(
        p.startswith(("derivatives", "sourcedata", "code", ".")) or "/." in p for p in paths
    )


def test_warns_about_unparsable_files_and_subjects_without_data(dataset, caplog):
    with caplog.at_level(logging.WARNING):
        BidsIndex.build(dataset)
    assert "not a bids name.nii.gz: not a BIDS file name" in caplog.text
    assert "participants.tsv lists sub-09 but the dataset has no folder" in caplog.text


def test_task_and_entity_filters(dataset):
    index = BidsIndex.build(dataset)
    assert [f.entities["task"] for f in index.select("bold", task=["motor"])] == ["motor"]
    assert len(index.select("bold", run=["1"], echo=["2"])) == 1


def test_prefix_round_trips_through_bids_path(dataset):
    index = BidsIndex.build(dataset)
    for image in index.images:
        rebuilt = bids_path(
            dataset,
            datatype=image.datatype,
            suffix=image.suffix,
            extension=image.extension,
            **image.entities,
        )
        assert rebuilt == str(image.path)
        assert index.by_prefix(image.prefix, image.suffix) == image


def test_bids_path_orders_entities_and_skips_empty_ones():
    path = bids_path(
        "out",
        datatype="func",
        desc="zscore",
        run="2",
        task="rest",
        sub="01",
        ses=None,
        suffix="bold",
        extension=".zarr",
    )
    assert path == "out/sub-01/func/sub-01_task-rest_run-2_desc-zscore_bold.zarr"
    assert (
        bids_path(sub="01", ses="a", suffix="T1w", datatype="anat")
        == "sub-01/ses-a/anat/sub-01_ses-a_T1w"
    )


def test_not_a_dataset_and_missing_root(tmp_path):
    with pytest.raises(BidstrainError, match="does not exist"):
        BidsIndex.build(tmp_path / "absent")
    with pytest.raises(BidstrainError, match="dataset_description.json is missing"):
        BidsIndex.build(tmp_path)


# ---- files of real datasets ----------------------------------------------------------


def test_entities_of_real_datasets_parse_and_keep_the_specification_order():
    name = (
        "sub-01_ses-2_task-rest_acq-mb4_ce-gad_rec-norm_dir-PA_run-1_echo-2_part-mag_"
        "space-MNI152NLin2009cAsym_res-2_den-91k_desc-preproc_bold.nii.gz"
    )
    entities, suffix, extension = parse_name(name)
    assert list(entities) == [
        "sub", "ses", "task", "acq", "ce", "rec", "dir", "run", "echo", "part", "space",
        "res", "den", "desc",
    ]  # fmt: skip
    assert (entities["space"], entities["den"], suffix, extension) == (
        "MNI152NLin2009cAsym", "91k", "bold", ".nii.gz",
    )  # fmt: skip
    shuffled = dict(reversed(list(entities.items())))
    assert bids_path(suffix=suffix, extension=extension, **shuffled).endswith("/" + name)
    assert [key for key in ENTITY_ORDER if key in entities] == list(entities)


def _real_dataset(root: Path) -> Path:
    """Raw and derivative-style files that are not images to normalize."""
    touch(root, "dataset_description.json", "{}")
    touch(root, "participants.tsv", "participant_id\nsub-01\n")
    touch(root, "sub-01.html")  # fMRIPrep's report
    touch(root, "CITATION.cff")
    touch(root, "desc-aseg_dseg.tsv")
    base = "sub-01/ses-1"
    touch(root, f"{base}/sub-01_ses-1_scans.tsv")
    touch(root, "sub-01/sub-01_sessions.tsv")
    for name in [
        "anat/sub-01_ses-1_T1w.nii.gz",
        "anat/sub-01_ses-1_desc-brain_mask.nii.gz",
        "anat/sub-01_ses-1_desc-aseg_dseg.nii.gz",
        "anat/sub-01_ses-1_label-GM_probseg.nii.gz",
        "anat/sub-01_ses-1_from-T1w_to-MNI152NLin2009cAsym_mode-image_xfm.h5",
        "anat/sub-01_ses-1_hemi-L_pial.surf.gii",
        "func/sub-01_ses-1_task-rest_run-1_bold.nii.gz",
        "func/sub-01_ses-1_task-rest_run-1_sbref.nii.gz",
        "func/sub-01_ses-1_task-rest_run-1_events.tsv",
        "func/sub-01_ses-1_task-rest_run-1_physio.tsv.gz",
        "func/sub-01_ses-1_task-rest_run-1_physio.json",
        "func/sub-01_ses-1_task-rest_run-1_boldref.nii.gz",
        "func/sub-01_ses-1_task-rest_run-1_desc-confounds_timeseries.tsv",
        "func/sub-01_ses-1_task-rest_run-1_space-fsLR_den-91k_bold.dtseries.nii",
        "fmap/sub-01_ses-1_dir-AP_epi.nii.gz",
        "fmap/sub-01_ses-1_phasediff.nii.gz",
        "fmap/sub-01_ses-1_phasediff.json",
        "dwi/sub-01_ses-1_dwi.nii.gz",
        "dwi/sub-01_ses-1_space-T1w_desc-brain_mask.nii.gz",
    ]:
        touch(root, f"{base}/{name}")
    touch(root, "sub-01/figures/sub-01_ses-1_desc-summary_T1w.html")
    touch(root, "sub-01/figures/carpet plot.svg")  # not a BIDS name, in a report folder
    touch(root, "sub-01/log/20240101-120000_uuid/fmriprep.toml")
    return root


def test_auxiliary_and_derivative_files_are_neither_images_nor_warnings(tmp_path, caplog):
    root = _real_dataset(tmp_path / "ds")
    with caplog.at_level(logging.WARNING):
        index = BidsIndex.build(root)
    assert index.problems == [] and caplog.text == ""
    selected = {f.path.name for suffix in ("T1w", "bold", "dwi") for f in index.select(suffix)}
    assert selected == {
        "sub-01_ses-1_T1w.nii.gz",
        "sub-01_ses-1_task-rest_run-1_bold.nii.gz",
        "sub-01_ses-1_dwi.nii.gz",
    }
    assert not any(f.datatype == "fmap" for f in index.images)


def test_bidsignore_patterns_leave_files_and_folders_out(tmp_path, caplog):
    root = _real_dataset(tmp_path / "ds")
    touch(root, "sub-01/ses-1/anat/sub-01_ses-1_acq-lowres_T1w.nii.gz")
    touch(root, "sub-01/ses-1/func/sub-01_ses-1_task-rest_run-2_bold.nii.gz")
    touch(root, "sub-01/ses-1/extra_data/raw dump.dat")
    touch(root, "notes about the scan.docx")
    touch(root, "sub-02/anat/sub-02_T1w.nii.gz")
    touch(
        root,
        ".bidsignore",
        "# comment\n*_acq-lowres_*\nextra_data/\n/sub-02/\n*.docx\n"
        "sub-01/**/func/*_bold.nii.gz\n!sub-01/ses-1/func/*_run-1_bold.nii.gz\n",
    )
    with caplog.at_level(logging.WARNING):
        index = BidsIndex.build(root)
    assert caplog.text == "" and index.subjects == ["01"]
    assert {f.path.name for f in index.select("T1w") + index.select("bold")} == {
        "sub-01_ses-1_T1w.nii.gz",
        "sub-01_ses-1_task-rest_run-1_bold.nii.gz",
    }
    assert BidsIgnore.read(root).ignores("sub-01/ses-1/extra_data", is_dir=True)
    assert not BidsIgnore.read(root).ignores("sub-01/ses-1/extra_data", is_dir=False)


def test_session_level_sidecars_take_part_in_inheritance(tmp_path):
    root = tmp_path / "ds"
    touch(root, "dataset_description.json", "{}")
    touch(root, "task-rest_bold.json", json.dumps({"RepetitionTime": 3.0, "A": "root"}))
    touch(root, "sub-01/sub-01_task-rest_bold.json", json.dumps({"B": "subject"}))
    session = {"RepetitionTime": 2.0, "B": "session", "C": "session"}
    touch(root, "sub-01/ses-1/sub-01_ses-1_task-rest_bold.json", json.dumps(session))
    touch(root, "sub-01/ses-1/func/sub-01_ses-1_task-rest_run-1_bold.json", '{"C": "file"}')
    touch(root, "sub-01/ses-1/func/sub-01_ses-1_task-rest_run-1_bold.nii.gz")
    touch(root, "sub-01/ses-2/func/sub-01_ses-2_task-rest_run-1_bold.nii.gz")
    index = BidsIndex.build(root)
    one, two = index.select("bold")
    assert index.metadata(one) == {"RepetitionTime": 2.0, "A": "root", "B": "session", "C": "file"}
    assert index.metadata(two) == {"RepetitionTime": 3.0, "A": "root", "B": "subject"}


def _image(name: str) -> BidsFile:
    entities, suffix, extension = parse_name(name)
    return BidsFile(Path("/ds/sub-01/func") / name, entities, "func", suffix, extension)


def test_select_part_keeps_magnitude_unless_asked():
    images = [
        _image(f"sub-01_task-rest_run-{run}{part}_bold.nii.gz")
        for run, part in [(1, ""), (2, "_part-mag"), (2, "_part-phase"), (3, "_part-real")]
    ]
    assert select_part(images) == select_part(images, "mag") == images[:2]
    assert select_part(images, "phase") == [images[2]]
    with pytest.raises(ValueError, match="part must be"):
        select_part(images, "angle")


def test_select_echo_chooses_one_echo_or_lists_the_echoes_found():
    multi = [_image(f"sub-01_task-rest_run-1_echo-{e}_bold.nii.gz") for e in (1, 2, 3)]
    single = [_image("sub-01_task-rest_run-2_bold.nii.gz")]
    lone = [_image("sub-01_task-motor_echo-1_bold.nii.gz")]
    assert select_echo(single + lone) == single + lone
    assert select_echo(multi + single, 2) == [multi[1], *single]
    with pytest.raises(BidstrainError, match="config echo") as error:
        select_echo(multi + single)
    assert str(error.value) == (
        "sub-01: multi-echo images: several echoes and config echo is not set for "
        "sub-01/func/sub-01_task-rest_run-1_echo-*_bold.nii.gz; echoes found: 1, 2, 3; set "
        "config echo to the echo to use (1 for the first)"
    )
    with pytest.raises(BidstrainError, match=r"no echo-4 for .*; echoes found: 1, 2, 3;"):
        select_echo(multi, 4)
    # several acquisitions at fault: one line naming the first and counting the others
    other = [_image(f"sub-01_task-motor_run-1_echo-{e}_bold.nii.gz") for e in (1, 2, 3, 4)]
    with pytest.raises(BidstrainError) as error:
        select_echo(multi + other)
    message = str(error.value)
    assert "\n" not in message and "and 1 more acquisition(s)" in message
    assert "echoes found: 1, 2, 3, 4;" in message
