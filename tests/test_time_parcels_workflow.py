"""The workflow with BOLD at one repetition time and parcel time series: normalize,
average and the checks on the fMRIPrep demo, with the demo atlas beside it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from bidstrain import paths
from bidstrain.demo.generate import ATLAS_NAME, make_atlas_demo, make_fmriprep_demo
from bidstrain.io.store import read_meta, read_parcel_stats
from conftest import REPO, run_snakemake

pytestmark = [pytest.mark.integration, pytest.mark.slow]  # a workflow to the checks: a minute

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
    )
    run_snakemake(
        workdir,
        "checks",
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
    summary = json.loads((workflow_run / paths.checks_summary("demo")).read_text())
    assert summary["passed"], summary
    normalization = next(c for c in summary["checks"] if c["name"] == "normalization")
    assert normalization["status"] != "fail", normalization["message"]
