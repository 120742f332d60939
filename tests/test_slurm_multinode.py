"""Training on two SLURM nodes: ``snakemake --profile profiles/slurm train`` with
``BIDSTRAIN_TRAIN_NODES=2`` on the test cluster's two-node partition.

The job gets two nodes with one (fake) GPU each; the launcher starts one torchrun per node
through srun with a c10d rendezvous on the first node; the two trainers (gloo, on the CPU)
train as one world of 2 ranks. The reference is a 2-rank run on one node (local
snakemake, ``resources.train.gpus: 2``): same world size, same batches, so the same
metrics. Half-way the two-node job is requeued (``scontrol requeue`` while the test-only
pause hook holds it after a fixed step): every rank stops at that step, one checkpoint,
and the requeued job resumes with every step counted once.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from unittest import mock

import pytest
from bidstrain.train.stop import PAUSE_AT_STEP
from conftest import REPO, run_snakemake
from slurm_support import scontrol_job, slurm_snakemake, wait_for

pytestmark = [pytest.mark.slurm, pytest.mark.integration, pytest.mark.slow]

EXPERIMENT = "demo"
EPOCHS = 2
RUN_TIMEOUT_S = 480


def _metrics(workdir: Path) -> list[dict]:
    path = workdir / "results" / "train" / EXPERIMENT / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def _steps(records: list[dict]) -> list[dict]:
    return [record for record in records if record["kind"] == "step"]


def _copy_of(demo_run: Path, workdir: Path, extra: str) -> tuple[str, ...]:
    """A copy of the demo run with its training removed; the config file arguments that
    set the ``train`` section's epochs and warm-up, and the ``extra`` YAML lines."""
    shutil.copytree(demo_run, workdir, symlinks=True)
    shutil.rmtree(workdir / "results" / "train")
    settings = workdir.parent / f"{workdir.name}.yaml"
    settings.write_text(f"train:\n  epochs: {EPOCHS}\n  warmup_steps: 3\n{extra}")
    return ("--configfile", str(REPO / "config" / "config.yaml"), str(settings))


def test_two_nodes_train_as_one_world_and_resume_a_requeue_exactly(
    slurm_two_nodes, demo_run, demo_bids, tmp_path
):
    config = {"bids_dir": demo_bids}
    reference = tmp_path / "one_node"
    run_snakemake(
        reference,
        "train",
        *_copy_of(demo_run, reference, "resources:\n  train:\n    gpus: 2\n"),
        config=config,
    )
    expected = _steps(_metrics(reference))
    total = len(expected)
    half = total // 2

    workdir = tmp_path / "two_nodes"
    config_args = _copy_of(demo_run, workdir, "")
    paused = workdir / "results" / "train" / EXPERIMENT / "checkpoints" / f"paused-at-{half}"
    environment = {
        "BIDSTRAIN_SLURM_PARTITION": slurm_two_nodes["partition"],
        "BIDSTRAIN_TRAIN_NODES": "2",
        "BIDSTRAIN_TRAIN_GPUS": "1",
        PAUSE_AT_STEP: str(half),
    }
    with (
        mock.patch.dict(os.environ, environment),
        slurm_snakemake(
            workdir, "train", "--slurm-keep-successful-logs", *config_args, config=config
        ) as run,
    ):
        wait_for(paused.exists, timeout=RUN_TIMEOUT_S, what=f"a pause after step {half}", run=run)
        (train_job,) = [job.job_id for job in run.jobs() if job.comment == "rule_train"]
        requeue = subprocess.run(["scontrol", "requeue", train_job], capture_output=True, text=True)
        assert requeue.returncode == 0, requeue.stderr
        assert run.wait(timeout=RUN_TIMEOUT_S) == 0, run.output()

    job = scontrol_job(train_job)
    assert job["NumNodes"] == "2" and job["Restarts"] == "1", job
    assert job["TresPerNode"].endswith("gpu:1"), job
    log = (workdir / "logs" / "train" / f"{EXPERIMENT}.log").read_text()
    ranks = set(re.findall(r"rank (\d) of 2 on node (\w+)", log))
    assert ranks == {("0", "n1"), ("1", "n2")} or ranks == {("0", "n2"), ("1", "n1")}, log
    records = _metrics(workdir)
    assert len([r for r in records if r["kind"] == "plan"]) == 2  # started, resumed
    steps = _steps(records)
    assert [r["step"] for r in steps] == list(range(1, total + 1))
    for got, want in zip(steps, expected, strict=True):
        assert got["loss"] == pytest.approx(want["loss"], abs=1e-6), (got, want)
        assert got["lr"] == pytest.approx(want["lr"], rel=1e-9), (got, want)
