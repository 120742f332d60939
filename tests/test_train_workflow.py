"""`snakemake train` on the demo dataset (through the shared `demo_run` of target `all`)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from bidstrain.cli import main as cli
from conftest import REPO
from rerun_support import INPUT_UPDATED, PARAMS_CHANGED, planned_jobs

pytestmark = pytest.mark.integration


def test_snakemake_train_on_the_demo_writes_metrics_and_a_model(demo_run):
    out = demo_run / "results" / "train" / "demo"
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    (plan,) = [line for line in lines if line["kind"] == "plan"]
    steps = [line for line in lines if line["kind"] == "step"]
    assert len(steps) == plan["total_steps"] > 0
    assert not any(step["skipped"] for step in steps)
    validations = [line for line in lines if line["kind"] == "validation"]
    assert [v["epoch"] for v in validations] == list(range(plan["epochs"]))
    # Held-out run 2 (BOLD) and sub-03 ses-2 (T1w, DWI: train.heldout) validate.
    assert set(validations[-1]["loss_per_modality"]) == {"T1w", "bold", "dwi"}
    # The demo learns: every modality ends at most 0.8 x the baseline of predicting the mean.
    summary = lines[-1]
    assert summary["kind"] == "summary" and summary["unvalidated"] == []
    for modality, values in summary["modalities"].items():
        assert values["baseline"] == pytest.approx(1.0, abs=1e-3)
        assert values["ratio"] <= 0.8, (modality, values)
        assert values["status"] == "pass"
    description = json.loads((out / "model.json").read_text())
    assert description["modalities"] == ["T1w", "bold", "dwi"]
    assert description["normalization"]["bold"]["average"] is True
    saved = torch.load(out / "model.pt")
    assert saved["description"] == description
    assert {"embed.T1w.proj.weight", "embed.bold.proj.weight", "embed.dwi.proj.weight"} <= set(
        saved["model"]
    )
    assert "training on cpu" in (demo_run / "logs" / "train" / "demo.log").read_text()


#: a new value for every rule's resources (``resources.<rule>``)
CHANGED_RESOURCES = """resources:
  normalize_subject: {cpus: 1, mem_mb: 3000, runtime: 61}
  average_bold: {mem_mb: 1500, runtime: 11, runtime_per_member: 0.2}
  checks: {mem_mb: 5000, runtime: 31}
  train: {cpus: 1, mem_mb: 9000, runtime: 61}
  report: {mem_mb: 2500, runtime: 11}
  report_normalize: {mem_mb: 4500, runtime: 11, runtime_per_subject: 4}
  report_average: {mem_mb: 4500, runtime: 31}
  report_model_input: {mem_mb: 4500, runtime: 11}
"""


@pytest.fixture
def rerun_dir(demo_run, tmp_path):
    """A copy of ``demo_run``'s working dir (results and Snakemake's records, times kept)."""
    return shutil.copytree(demo_run, tmp_path / "run", symlinks=True)


def test_a_changed_lr_reruns_exactly_training_and_its_reports(rerun_dir, demo_bids, tmp_path):
    """Locally (the SLURM profile's twin: tests/test_slurm_reruns.py): train.lr reaches
    training alone, through its settings file; its figures follow its outputs."""
    jobs = planned_jobs(rerun_dir, demo_bids, tmp_path, "train:\n  lr: 0.0005\n")
    assert jobs == {
        ("train", PARAMS_CHANGED): 1,
        ("report_train", INPUT_UPDATED): 1,
        ("report_model_input", INPUT_UPDATED): 1,
    }, jobs


def test_a_dry_run_names_the_settings_behind_each_params_change(
    rerun_dir, demo_bids, tmp_path, capsys
):
    """`bidstrain dry-run` reads the two snapshots a "Params have changed" reason names
    (hashes only) and says what differs: the new learning rate of training; then, for
    each subject, the run now held out and the statistics the other run takes from it."""

    def told(changes: str) -> list[str]:
        changed = tmp_path / "changed.yaml"
        changed.write_text(changes)
        configs = ["--configfile", str(REPO / "config" / "config.yaml"), str(changed)]
        arguments = ["dry-run", "-C", str(rerun_dir), "all", *configs, "--config"]
        assert cli.main([*arguments, f"bids_dir={demo_bids}"]) == 0
        output = capsys.readouterr().out
        assert "Params have changed since last execution" in output  # Snakemake's, passed on
        heading = "bidstrain: the settings that changed since these jobs' outputs were made:"
        return output.split(heading + "\n")[1].splitlines()

    assert told("train:\n  lr: 0.0005\n") == ["  train.json: lr 0.001 -> 0.0005"]
    lines = told("normalize:\n  heldout: {run: ['1']}\n")
    run1 = "results/normalized/sub-01/func/sub-01_task-rest_run-1_desc-zscore_bold.zarr"
    run2 = run1.replace("run-1", "run-2")
    assert f"  sub-01.json: [{run1}].stats_from: 1 added ({run2})" in lines
    assert f"  sub-01.json: [{run2}].stats_from: 1 removed ({run1})" in lines
    # training reruns for its inputs, not its settings: only the subjects' specs changed
    assert {line.split(":")[0] for line in lines} == {f"  sub-{s}.json" for s in ("01", "02", "03")}


def test_changed_resources_rerun_nothing(rerun_dir, demo_bids, tmp_path):
    assert planned_jobs(rerun_dir, demo_bids, tmp_path, "{}\n") == {}
    assert planned_jobs(rerun_dir, demo_bids, tmp_path, CHANGED_RESOURCES) == {}
