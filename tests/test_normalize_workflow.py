"""`snakemake normalize` on the demo dataset: every store, opened the way users open them."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import xarray as xr
from bidstrain.dataset.bids import BidsIndex
from conftest import run_snakemake

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def normalized(tmp_path_factory, demo_bids) -> Path:
    workdir = tmp_path_factory.mktemp("normalize")
    run_snakemake(workdir, "normalize", config={"bids_dir": demo_bids})
    return workdir


def _open(path: Path) -> xr.Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return xr.open_zarr(path).load()  # as users open it: consolidated metadata


def _store(workdir: Path, image) -> Path:
    return workdir / "results" / "normalized" / f"{image.prefix}_desc-zscore_{image.suffix}.zarr"


def test_every_image_has_a_store_that_gives_back_the_raw_values(normalized, demo_bids):
    index = BidsIndex.build(demo_bids)
    images = [image for suffix in ("bold", "T1w", "dwi") for image in index.select(suffix)]
    assert len(images) == 16
    for image in images:
        ds = _open(_store(normalized, image))
        raw = nib.load(image.path).get_fdata()[ds.mask.values].T  # (time, voxel)
        data = ds.data.values
        assert data.dtype == np.float32 and ds.attrs["ddof"] == 1
        if ds.attrs["stats_dim"] == "voxel":
            recovered = data * ds["std"].values + ds["mean"].values
        else:
            recovered = data * ds["std"].values[:, None] + ds["mean"].values[:, None]
        np.testing.assert_allclose(recovered, raw.reshape(data.shape), rtol=1e-5, atol=1e-3)
        if image.suffix == "bold" and image.entities["run"] == "1":
            varying = ds["std"].values > 0
            np.testing.assert_allclose(data[:, varying].mean(axis=0), 0, atol=1e-4)
            np.testing.assert_allclose(data[:, varying].std(axis=0, ddof=1), 1, atol=1e-4)
            assert ds.attrs["repetition_time"] == 2.0 and not ds.attrs["heldout"]
        elif image.suffix != "bold":
            np.testing.assert_allclose(data.mean(axis=1), 0, atol=1e-4)
            np.testing.assert_allclose(data.std(axis=1, ddof=1), 1, atol=1e-4)
        if image.suffix == "dwi":
            assert ds.bval.values.tolist() == [0, 0] + [1000] * 6


def test_heldout_runs_use_the_same_sessions_training_run(normalized, demo_bids):
    index = BidsIndex.build(demo_bids)
    for image in index.select("bold", run=["2"]):
        ds = _open(_store(normalized, image))
        training = image.path.with_name(image.path.name.replace("run-2", "run-1"))
        assert ds.attrs["heldout"] is True
        assert ds.attrs["stats_from"] == [str(training.resolve())]
        fitted = _open(
            _store(normalized, index.by_prefix(image.prefix.replace("run-2", "run-1"), "bold"))
        )
        np.testing.assert_array_equal(ds.mask.values, fitted.mask.values)
        np.testing.assert_array_equal(ds["mean"].values, fitted["mean"].values)
        assert np.abs(ds.data.values.mean(axis=0)).mean() > 0.1


def test_heldout_selection_leaving_no_run_fails_at_parse_time(tmp_path, demo_bids):
    result = run_snakemake(
        tmp_path,
        "-n",
        "normalize",
        config={"bids_dir": demo_bids, "normalize": {"heldout": {"run": ["1", "2"]}}},
        check=False,
    )
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "bidstrain: sub-01:" in output
    assert "no task-rest run left" in output and "normalize.heldout" in output


def test_mask_pattern_becomes_an_input_of_each_job(tmp_path, demo_bids):
    pattern = "{bids_dir}/derivatives/sub-{subject}/sub-{subject}_task-{task}_run-{run}_mask.nii.gz"
    result = run_snakemake(
        tmp_path,
        "-n",
        "normalize",
        config={"bids_dir": demo_bids, "normalize": {"mask": pattern}},
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0  # the masks do not exist: Snakemake says which
    assert f"{demo_bids}/derivatives/sub-01/sub-01_task-rest_run-1_mask.nii.gz" in output


def test_results_get_a_dataset_description_written_only_when_it_changes(normalized, demo_bids):
    path = normalized / "results" / "dataset_description.json"
    description = json.loads(path.read_text())
    assert description["DatasetType"] == "derivative"
    assert description["GeneratedBy"][0]["Name"] == "bidstrain"
    assert description["SourceDatasets"] == [{"URL": Path(demo_bids).absolute().as_uri()}]
    before = path.stat().st_mtime_ns
    run_snakemake(normalized, "-n", "normalize", config={"bids_dir": demo_bids})
    assert path.stat().st_mtime_ns == before
