"""The real `snakemake checks` and `snakemake average` on the demo dataset."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import xarray as xr
from bidstrain.io.store import open_store
from conftest import REPO, run_snakemake

pytestmark = pytest.mark.integration

#: train.* overrides that fail the checks, and what the log says.
BAD_PLANS = {
    "batch_size: 1000": "check sample_counts failed: train.batch_size 1000 is larger "
    "than the 67 samples each of 1 rank(s) gets per epoch",
    "warmup_steps: 600": "check training_plan failed: train.warmup_steps 600 is not "
    "shorter than the run's 510 optimizer steps",
}


def with_overrides(workdir, yaml_text: str) -> list[str]:
    """Arguments that load the repository config, then ``yaml_text`` over it (nested keys
    merge; ``--config`` would pass nested numbers as strings)."""
    extra = workdir / "overrides.yaml"
    extra.write_text(yaml_text + "\n")
    return ["--configfile", str(REPO / "config" / "config.yaml"), str(extra)]


def test_checks_pass_on_the_demo(demo_run):
    summary = json.loads((demo_run / "results/checks/demo/summary.json").read_text())
    assert summary["passed"] is True
    statuses = {check["name"]: check["status"] for check in summary["checks"]}
    assert statuses == dict.fromkeys(statuses, "pass") and len(statuses) == 6
    counts = next(c for c in summary["checks"] if c["name"] == "sample_counts")["values"]
    # cross_subject: 40 averaged time points, not the 4 x 40 of the subject runs
    assert counts["samples"]["bold"] == 40 and counts["subject_samples"]["bold"] == 160
    table = (demo_run / "results/checks/demo/summary.tsv").read_text().splitlines()
    assert table[0] == "check\tstatus\tmessage" and len(table) == 7


def test_demo_average_counts_a_subject_with_two_sessions_once(demo_run):
    normalized = demo_run / "results/normalized"
    runs = [
        open_store(normalized / f"{s}_task-rest_run-1_desc-zscore_bold.zarr").data
        for s in ("sub-01/func/sub-01", "sub-02/func/sub-02")
    ]
    sessions = [
        open_store(
            normalized / f"sub-03/ses-{n}/func/sub-03_ses-{n}_task-rest_run-1_desc-zscore_bold.zarr"
        ).data
        for n in (1, 2)
    ]
    average = open_store(demo_run / "results/average/task-rest_run-1_desc-average_bold.zarr")
    assert average.attrs["subjects"] == ["01", "02", "03"]
    expected = xr.concat([*runs, (sessions[0] + sessions[1]) / 2], "subject").mean("subject")
    np.testing.assert_allclose(average.data.values, expected.values, atol=1e-6)


def test_checks_rule_stops_bad_plans_of_one_experiment_only(tmp_path, demo_run, demo_bids):
    """Experiment ``b``'s failed checks stop it and leave experiment ``demo`` alone: its
    summary and model are not touched, and its run has nothing left to do."""
    workdir = tmp_path / "run"
    shutil.copytree(demo_run, workdir, symlinks=True)  # only the checks rerun
    kept_files = ["results/checks/demo/summary.json", "results/train/demo/model.pt"]
    before = {name: _signature(workdir / name) for name in kept_files}
    for overrides, expected in BAD_PLANS.items():
        result = run_snakemake(
            workdir,
            "checks",
            *with_overrides(tmp_path, f"train: {{experiment: b, {overrides}}}"),
            config={"bids_dir": demo_bids},
            check=False,
        )
        assert result.returncode != 0
        log = (workdir / "logs/checks/b.log").read_text()
        assert expected in log, result.stderr[-3000:] + log
        assert "bidstrain: error:" in log and "check(s) failed" in log and "Traceback" not in log
        kept = json.loads((workdir / "logs/checks/b/summary.json").read_text())
        assert kept["passed"] is False
        assert not (workdir / "results/checks/b/summary.json").exists()
    assert {name: _signature(workdir / name) for name in kept_files} == before
    again = run_snakemake(workdir, "all", "--dry-run", config={"bids_dir": demo_bids})
    assert "Nothing to be done" in again.stdout + again.stderr, again.stdout


def _signature(path) -> tuple[bytes, int]:
    """A file's content and modification time."""
    return path.read_bytes(), path.stat().st_mtime_ns


def test_per_subject_mode_has_nothing_to_average(tmp_path, demo_bids):
    args = with_overrides(tmp_path, "average: {mode: per_subject}")
    config = {"bids_dir": demo_bids}
    result = run_snakemake(tmp_path, "average", "--dry-run", *args, config=config)
    assert "average_bold" not in result.stdout
    plan = run_snakemake(tmp_path, "checks", "--dry-run", *args, config=config).stdout
    assert "average_bold" not in plan and "normalize_subject" in plan
