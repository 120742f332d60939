"""The workflow with BOLD at one repetition time and parcel time series: the whole of it
(normalize, average, checks, training on parcel windows, embed and the report) on the
fMRIPrep demo, with the demo atlas beside it."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import zarr
from bidstrain import paths
from bidstrain.demo.generate import ATLAS_NAME, make_atlas_demo, make_fmriprep_demo
from bidstrain.io.store import read_meta, read_parcel_stats
from conftest import REPO, run_snakemake

pytestmark = [pytest.mark.integration, pytest.mark.slow]  # a whole workflow: a minute

SPACE = "MNI152NLin2009cAsym"


@pytest.fixture(scope="module")
def workflow_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("time-parcels")
    bids = make_fmriprep_demo(root / "fmriprep")
    atlas = make_atlas_demo(root / "atlas")
    workdir = root / "work"
    settings = root / "settings.yaml"
    settings.write_text(
        f'space: "{SPACE}:res-2"\nmodalities: [bold]\n'
        "normalize:\n  confounds:\n    strategy: scrubbing\n"
        "time:\n  tr: 0.8\n  method: pchip\n"
        f"parcellation:\n  name: {ATLAS_NAME}\n  path: {atlas}\n"
        "train:\n  bold_input: parcels\n  window: 6\n  patch_frames: 2\n  epochs: 2\n"
        "  warmup_steps: 2\n"
        "embed:\n  enabled: true\n"
    )
    run_snakemake(
        workdir,
        "all",
        "--configfile",
        str(REPO / "config" / "config.yaml"),
        str(settings),
        config={"bids_dir": bids},
    )
    return workdir


def test_every_run_is_at_the_target_tr_with_its_parcels_and_the_checks_pass(workflow_run):
    results = workflow_run / "results"
    stores = sorted((results / "normalized").glob("sub-*/func/*_desc-zscore_bold.zarr"))
    assert stores
    for store in stores:
        meta = read_meta(store)
        assert (meta.repetition_time, meta.source_repetition_time) == (0.8, 2.0)
        assert meta.time_method == "pchip" and meta.n_invalid_frames > 0  # scrubbed volumes
        stem = store.name.replace("_desc-zscore_bold.zarr", "")
        stem = stem.replace("_res-2", f"_seg-{ATLAS_NAME}_res-2")
        parcels = store.with_name(f"{stem}_desc-zscore_timeseries.zarr")
        count, _, _, parcel_meta = read_parcel_stats(parcels)
        assert parcel_meta.heldout == meta.heldout and parcel_meta.repetition_time == 0.8
        for tsv in ("stat-mean_timeseries.tsv", "stat-coverage_bold.tsv"):
            assert store.with_name(f"{stem}_{tsv}").is_file()
    averages = sorted((results / "average").glob("*.zarr"))
    assert averages and all(read_meta(a).repetition_time == 0.8 for a in averages)
    for average in averages:
        assert_frames_averaged_where_valid(workflow_run, average)
    summary = json.loads((workflow_run / paths.checks_summary("demo")).read_text())
    assert summary["passed"], summary
    normalization = next(c for c in summary["checks"] if c["name"] == "normalization")
    assert normalization["status"] != "fail", normalization["message"]


def test_parcel_windows_are_trained_embedded_and_drawn(workflow_run):
    """Averages keep their runs' confound strategy (the model records it, and embed
    compares it with the config); embed reads the parcel stores the model was trained
    on; the average and model-input figures read what their jobs are given."""
    results = workflow_run / "results"
    averages = sorted((results / "average").glob("*.zarr"))
    assert {read_meta(a).confounds_strategy for a in averages} == {"scrubbing"}
    description = json.loads((workflow_run / paths.trained_model_description("demo")).read_text())
    assert description["preparation"]["bold_input"] == "parcels"
    assert description["input"]["bold"]["window"] == 6
    assert description["normalization"]["bold"]["confounds_strategy"] == "scrubbing"
    embedded = (workflow_run / paths.embed_table("demo")).read_text().splitlines()[1:]
    assert embedded and all("_desc-zscore_timeseries.zarr" in line for line in embedded)
    for figure in (
        paths.training_figure("demo", "model_input"),
        paths.embed_figure("demo"),
        *(paths.average_figure(a.name.replace("_desc-average_bold.zarr", "")) for a in averages
          if a.name.endswith("_bold.zarr")),
    ):  # fmt: skip
        assert (workflow_run / figure).stat().st_size > 10_000, figure


def assert_frames_averaged_where_valid(workdir: Path, average: Path) -> None:
    """The average (voxel or parcel) against numpy in float64: each frame of the grid the
    mean over the subjects valid there; the demo's subjects are scrubbed at different
    volumes, so some frames average one subject."""
    meta = read_meta(average)
    group = zarr.open_group(average, mode="r")
    voxel_stores = [
        Path(
            p.replace(f"_seg-{ATLAS_NAME}", "").replace(
                "_desc-zscore_timeseries", "_desc-zscore_bold"
            )
        )
        for p in meta.source_path
    ]
    series = []
    for store, voxels in zip(meta.source_path, voxel_stores, strict=True):
        member = zarr.open_group(workdir / store, mode="r")
        valid = zarr.open_group(workdir / voxels, mode="r")["frame_valid"][...]
        data = member["data"][...].astype(np.float64)
        if "mask" in group:  # voxels: the member's voxels of the average's mask
            data = data[:, group["mask"][...][member["mask"][...]]]
        grid = np.full((valid.size, data.shape[1]), np.nan)
        grid[valid] = data
        series.append(grid)
    assert len(set(meta.subjects)) == len(series)  # one session each: subjects are members
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # frames no subject holds
        want = np.nanmean(np.stack(series), axis=0)
    counts = (~np.isnan(np.stack(series))).any(axis=2).sum(axis=0)
    np.testing.assert_array_equal(group["frame_subjects"][...], counts)
    assert set(counts) >= {1, len(series)}, counts
    valid = group["frame_valid"][...]
    np.testing.assert_array_equal(valid, counts >= 1)
    np.testing.assert_allclose(group["time"][...], group["frame_time"][...][valid])
    np.testing.assert_allclose(group["data"][...], want[valid], atol=1e-5)
