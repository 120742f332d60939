"""fMRIPrep and QSIPrep outputs as input: dataset kind, space, the images, masks and tables."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from bidstrain.dataset.bids import BidsIndex
from bidstrain.dataset.derivatives import (
    brain_mask,
    confounds_file,
    dataset_kind,
    gradients,
    nested_derivatives_warning,
    parse_space,
    select_preproc,
)
from bidstrain.demo.generate import DemoSpec, make_demo, make_fmriprep_demo, make_qsiprep_demo
from bidstrain.errors import BidstrainError
from bidstrain.io.store import open_store, store_meta
from bidstrain.normalize import ImageInfo, normalize_volumes
from normalize_support import image_options

MNI = "MNI152NLin2009cAsym"


@pytest.fixture(scope="module")
def fmriprep(tmp_path_factory) -> Path:
    return make_fmriprep_demo(tmp_path_factory.mktemp("fmriprep"))


@pytest.fixture(scope="module")
def qsiprep(tmp_path_factory) -> Path:
    return make_qsiprep_demo(tmp_path_factory.mktemp("qsiprep"))


def test_dataset_kind_from_the_description(fmriprep, qsiprep, tmp_path):
    kind = dataset_kind(fmriprep)
    assert (kind.kind, kind.pipeline, kind.is_derivative) == ("fmriprep", "fMRIPrep", True)
    assert dataset_kind(qsiprep).kind == "qsiprep"
    raw = make_demo(tmp_path / "raw", DemoSpec(n_subjects=1, modalities=("T1w",)))
    assert dataset_kind(raw).kind == "raw" and not dataset_kind(raw).is_derivative
    old = tmp_path / "old"  # BIDS < 1.4 derivatives: PipelineDescription
    old.mkdir()
    (old / "dataset_description.json").write_text(
        json.dumps({"Name": "x", "PipelineDescription": {"Name": "fmriprep", "Version": "1.5"}})
    )
    assert (dataset_kind(old).kind, dataset_kind(old).version) == ("fmriprep", "1.5")
    other = tmp_path / "other"
    other.mkdir()
    (other / "dataset_description.json").write_text(
        json.dumps({"DatasetType": "derivative", "GeneratedBy": [{"Name": "MRIQC"}]})
    )
    assert dataset_kind(other).kind == "derivative"
    assert not dataset_kind(other).ships_brain_masks and dataset_kind(fmriprep).ships_brain_masks
    # DatasetType decides when given: a raw dataset may name the tools that made it
    (other / "dataset_description.json").write_text(
        json.dumps({"DatasetType": "raw", "GeneratedBy": [{"Name": "qMRLab"}]})
    )
    assert dataset_kind(other).kind == "raw"
    (other / "dataset_description.json").write_text("")
    with pytest.raises(
        BidstrainError, match="dataset_description.json: the dataset description is empty"
    ):
        dataset_kind(other)


def test_warning_when_a_raw_dataset_holds_fmriprep_outputs(fmriprep, tmp_path):
    raw = make_demo(tmp_path / "raw", DemoSpec(n_subjects=1, modalities=("T1w",)))
    assert nested_derivatives_warning(raw) is None
    shutil.copytree(fmriprep, raw / "derivatives" / "fmriprep")
    warning = nested_derivatives_warning(raw)
    assert str(raw / "derivatives" / "fmriprep") in warning and "(fmriprep)" in warning
    # a nested dataset whose description cannot be read is no reason to stop
    (raw / "derivatives" / "brainvisa").mkdir()
    (raw / "derivatives" / "brainvisa" / "dataset_description.json").write_text("")
    assert nested_derivatives_warning(raw) == warning
    assert nested_derivatives_warning(fmriprep) is None


def test_space_in_fmriprep_syntax():
    assert parse_space(f"{MNI}:res-2").entities == {"space": MNI, "res": "2"}
    assert parse_space("T1w").entities == {"space": "T1w"}
    assert str(parse_space("MNIPediatricAsym:cohort-1:res-2")) == "MNIPediatricAsym:cohort-1:res-2"
    assert parse_space(None) is None
    with pytest.raises(BidstrainError, match="'foo-2' is not a modifier"):
        parse_space(f"{MNI}:foo-2")
    with pytest.raises(BidstrainError, match="not a space label"):
        parse_space("MNI_152")


def test_index_of_an_fmriprep_tree_ignores_what_is_not_an_image(fmriprep):
    index = BidsIndex.build(fmriprep)
    assert index.problems == []
    assert {f.extension for f in index.images} == {".nii.gz"}
    assert not [f for f in index.images if "figures" in f.path.parts]
    suffixes = {f.suffix for f in index.images}
    assert suffixes == {"bold", "T1w", "mask", "boldref", "dseg", "probseg"}
    bold = select_preproc(index.images, parse_space(f"{MNI}:res-2"), "bold")
    assert index.metadata(bold[0])["RepetitionTime"] == 2.0


@pytest.mark.parametrize(
    ("space", "entities"), [(f"{MNI}:res-2", {"space": MNI, "res": "2"}), ("T1w", {"space": "T1w"})]
)
def test_one_bold_per_run_in_the_chosen_space(fmriprep, space, entities):
    index = BidsIndex.build(fmriprep)
    chosen = select_preproc(index.images, parse_space(space), "bold")
    assert len(chosen) == 4  # 2 subjects x 2 runs
    assert len({(f.subject, f.entities["run"]) for f in chosen}) == 4
    for image in chosen:
        assert {
            k: image.entities.get(k) for k in ("space", "res") if k in image.entities
        } == entities
        assert image.entities["desc"] == "preproc"
        mask = brain_mask(index, image)
        assert mask.name == image.path.name.replace("desc-preproc_bold", "desc-brain_mask")
        table = confounds_file(image)
        assert table.name == (
            f"sub-{image.subject}_task-rest_run-{image.entities['run']}"
            "_desc-confounds_timeseries.tsv"
        )


def test_anatomical_reference_is_the_t1w_space(fmriprep):
    index = BidsIndex.build(fmriprep)
    native = select_preproc(index.images, parse_space("T1w"), "T1w")
    assert [f.path.name for f in native] == [
        "sub-01_desc-preproc_T1w.nii.gz",
        "sub-02_desc-preproc_T1w.nii.gz",
    ]
    assert brain_mask(index, native[0]).name == "sub-01_desc-brain_mask.nii.gz"
    template = select_preproc(index.images, parse_space(MNI), "T1w")  # any resolution
    assert [f.entities["space"] for f in template] == [MNI, MNI]


def test_several_spaces_and_none_chosen_is_an_error_listing_them(fmriprep):
    index = BidsIndex.build(fmriprep)
    with pytest.raises(BidstrainError) as error:
        select_preproc(index.select("bold"), None, "bold", dataset=index.images)
    assert str(error.value) == (
        "the bold images are in several spaces and config space is not set; spaces found: "
        f"T1w: {MNI}:res-2, T1w; bold: {MNI}:res-2, T1w; set config space to one of them "
        f"(fMRIPrep's --output-spaces syntax, for example {MNI}:res-2)"
    )


def test_a_space_missing_for_one_modality_lists_the_spaces_of_every_modality(fmriprep, tmp_path):
    """BOLD written in one more space than the T1w: choosing it fails for the T1w, and
    the message lists BOLD's spaces too, in one line."""
    root = tmp_path / "fmriprep"
    shutil.copytree(fmriprep, root)
    for image in BidsIndex.build(root).select("bold", space=["T1w"]):
        extra = image.path.name.replace("space-T1w", "space-MNI152NLin6Asym_res-2")
        (image.path.parent / extra).touch()
    index = BidsIndex.build(root)
    assert len(select_preproc(index.select("bold"), parse_space("MNI152NLin6Asym"), "bold")) == 4
    with pytest.raises(BidstrainError) as error:
        select_preproc(
            index.select("T1w"), parse_space("MNI152NLin6Asym"), "T1w", dataset=index.images
        )
    assert str(error.value) == (
        "config space MNI152NLin6Asym: no T1w image in that space for "
        f"sub-01/anat/sub-01_desc-preproc_T1w.nii.gz (has {MNI}:res-2, T1w) and 1 more run(s); "
        f"spaces found: T1w: {MNI}:res-2, T1w; bold: {MNI}:res-2, MNI152NLin6Asym:res-2, T1w; "
        "set it to a space every run has"
    )


def test_a_run_without_the_chosen_space_is_named(fmriprep, tmp_path):
    root = tmp_path / "fmriprep"
    shutil.copytree(fmriprep, root)
    missing = (
        root
        / "sub-02"
        / "func"
        / f"sub-02_task-rest_run-2_space-{MNI}_res-2_desc-preproc_bold.nii.gz"
    )
    missing.unlink()
    index = BidsIndex.build(root)
    with pytest.raises(BidstrainError) as error:
        select_preproc(index.images, parse_space(f"{MNI}:res-2"), "bold")
    message = str(error.value)
    assert f"spaces found: T1w: {MNI}:res-2, T1w; bold: {MNI}:res-2, T1w;" in message
    assert "for sub-02/func/sub-02_task-rest_run-2_desc-preproc_bold.nii.gz (has T1w);" in message
    assert "run-1" not in message and "more run" not in message
    image = select_preproc(index.images, parse_space("T1w"), "bold")[0]
    mask = brain_mask(index, image)
    mask.unlink()
    with pytest.raises(BidstrainError, match=f"no {mask.name} next to the image.*normalize.mask"):
        brain_mask(BidsIndex.build(root), image)
    # BIDS's other name for it, label-brain (older fMRIPrep outputs, bids-examples' synthetic)
    label = mask.with_name(mask.name.replace("desc-brain", "label-brain"))
    label.touch()
    assert brain_mask(BidsIndex.build(root), image) == label


def test_single_space_needs_no_choice(qsiprep):
    index = BidsIndex.build(qsiprep)
    assert index.problems == []
    dwi = select_preproc(index.images, None, "dwi")
    assert [f.path.name for f in dwi] == [
        "sub-01_space-T1w_desc-preproc_dwi.nii.gz",
        "sub-02_space-T1w_desc-preproc_dwi.nii.gz",
    ]
    found = gradients(index, dwi[0])
    assert found[".bval"].name == "sub-01_space-T1w_desc-preproc_dwi.bval"
    assert found[".bvec"].name == "sub-01_space-T1w_desc-preproc_dwi.bvec"
    assert brain_mask(index, dwi[0]).name == "sub-01_space-T1w_desc-brain_mask.nii.gz"


def test_qsiprep_dwi_normalized_with_its_own_mask_and_gradients(qsiprep, tmp_path):
    import nibabel as nib

    index = BidsIndex.build(qsiprep)
    image = select_preproc(index.images, parse_space("T1w"), "dwi")[0]
    found = gradients(index, image)
    bval = [float(b) for b in found[".bval"].read_text().split()]
    bvec = [[float(x) for x in row.split()] for row in found[".bvec"].read_text().splitlines()]
    info = ImageInfo("dwi", image.subject, entities=dict(image.entities), bval=bval, bvec=bvec)
    mask = brain_mask(index, image)
    normalize_volumes(image.path, tmp_path / "dwi.zarr", info, image_options(mask=str(mask)))
    ds = open_store(tmp_path / "dwi.zarr", use_dask=False)
    assert np.array_equal(ds.mask.values, np.asarray(nib.load(mask).dataobj) > 0)
    assert np.allclose(ds.bval.values, bval)
    assert store_meta(ds).mask_source == str(mask)


def test_the_echoes_beside_a_combined_multi_echo_run_are_not_runs(fmriprep, tmp_path):
    """fMRIPrep's --me-output-echos: each echo in the run's native space, beside the
    optimally combined series in every output space. The combined series is the run."""
    root = tmp_path / "fmriprep"
    shutil.copytree(fmriprep, root)
    for image in BidsIndex.build(root).select("bold", space=["T1w"]):
        for echo in (1, 2, 3):
            name = image.path.name.replace("_space-T1w", "").replace("_desc", f"_echo-{echo}_desc")
            (image.path.parent / name).touch()
    index = BidsIndex.build(root)
    assert any("echo" in image.entities for image in index.select("bold"))
    chosen = select_preproc(index.images, parse_space(f"{MNI}:res-2"), "bold")
    assert len(chosen) == 4 and all(image.entities["space"] == MNI for image in chosen)
