"""The whole workflow through ``snakemake --profile profiles/slurm`` on the real test cluster.

One SLURM run of target ``all`` on the demo dataset (``slurm_all_run``) serves three tests:
the end-to-end test reads its jobs and outputs; the group test reads how the per-subject
jobs were packed into SLURM jobs (``--group-components subject=2``: the demo's three
subjects in two SLURM jobs) and compares their stores with a local run's; the requeue
test reads what happened to
the training job, which the fixture requeued half-way with ``scontrol requeue`` (SLURM
sends SIGTERM, the trainer checkpoints and exits 75, SLURM starts the job again and it
resumes). Half-way is a step fixed in advance, whatever the machine's speed: the test-only
hook ``BIDSTRAIN_TEST_PAUSE_AT_STEP`` (``bidstrain.train.stop``; the SLURM executor
submits with ``sbatch --export=ALL``, so the job sees it) holds the trainer after that
step until the requeue's SIGTERM arrives.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import xarray as xr
from bidstrain import paths
from bidstrain.io.store import open_store
from bidstrain.train.stop import PAUSE_AT_STEP
from conftest import REPO, run_snakemake
from slurm_support import (
    FINISHED,
    LOCAL_RULE,
    SlurmRun,
    scontrol_job,
    slurm_snakemake,
    wait_for,
)

pytestmark = [pytest.mark.slurm, pytest.mark.integration]

EXPERIMENT = "demo"
# About 17 steps per epoch on the demo data (its T1w and DWI validation session left
# out): 2 epochs are over 30 steps; the requeue comes after step 25, past half of them.
TRAIN_EPOCHS = 2
REQUEUE_AFTER_STEP = 25
#: Subjects per SLURM job of group ``subject`` (the profile's default is 4).
GROUP_SIZE = 2
RUN_TIMEOUT_S = 480
JOB_ID = re.compile(r"SLURM_JOB_ID=(\d+)")


def read_metrics(path: Path) -> list[dict]:
    """The complete JSON lines of a metrics.jsonl that may still be growing."""
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:  # the line being written
            break
    return records


def steps_of(records: list[dict]) -> list[int]:
    return [record["step"] for record in records if record["kind"] == "step"]


@dataclass(frozen=True)
class SlurmAllRun:
    """What ``slurm_all_run`` left: the working dir, the run's config arguments,
    snakemake's exit status and output, the SLURM jobs of the run (``squeue``: job id ->
    state and comment), the training job's id and the last step logged before its
    requeue."""

    workdir: Path
    config_args: tuple[str, ...]
    config: dict
    returncode: int
    output: str
    submitted: set[str]
    jobs: dict[str, tuple[str, str]]
    train_job: str
    requeued_after_step: int


def last_step(metrics: Path) -> int:
    return max(steps_of(read_metrics(metrics)), default=0)


def running_train_job(run: SlurmRun) -> str | None:
    """The SLURM job id of the run's training job, once it runs."""
    train = [job for job in run.jobs() if job.comment == "rule_train"]
    return train[0].job_id if train and train[0].state == "RUNNING" else None


@pytest.fixture(scope="module")
def slurm_all_run(slurm_cluster, demo_bids, tmp_path_factory) -> SlurmAllRun:
    """``snakemake --profile profiles/slurm all`` on the demo data; the training job is
    requeued (``scontrol requeue``) while the pause hook holds it after step
    :data:`REQUEUE_AFTER_STEP` (more than half of the planned steps)."""
    workdir = tmp_path_factory.mktemp("slurm_all") / "run"
    workdir.mkdir()
    epochs = workdir.parent / "train_epochs.yaml"
    epochs.write_text(f"train:\n  epochs: {TRAIN_EPOCHS}\n  warmup_steps: 3\n")
    config_args = ("--configfile", str(REPO / "config" / "config.yaml"), str(epochs))
    config = {"bids_dir": demo_bids}
    checkpoints = workdir / "results" / "train" / EXPERIMENT / "checkpoints"
    live_metrics = checkpoints / "metrics.jsonl"
    paused = checkpoints / f"paused-at-{REQUEUE_AFTER_STEP}"
    # The SLURM logs of successful jobs are deleted unless kept. The hook's variable is in
    # snakemake's environment when it starts, hence in every job's.
    with (
        mock.patch.dict(os.environ, {PAUSE_AT_STEP: str(REQUEUE_AFTER_STEP)}),
        slurm_snakemake(
            workdir,
            "all",
            "--slurm-keep-successful-logs",
            "--group-components",
            f"subject={GROUP_SIZE}",
            *config_args,
            config=config,
        ) as run,
    ):
        wait_for(
            paused.exists,
            timeout=RUN_TIMEOUT_S,
            what=f"the trainer paused after step {REQUEUE_AFTER_STEP} ({paused})",
            run=run,
        )
        train_job = wait_for(
            lambda: running_train_job(run), timeout=30, what="a running train job", run=run
        )
        requeued_after_step = last_step(live_metrics)
        requeue = subprocess.run(
            ["scontrol", "requeue", train_job], capture_output=True, text=True, timeout=30
        )
        assert requeue.returncode == 0, f"scontrol requeue {train_job}: {requeue.stderr}"
        returncode = run.wait(timeout=RUN_TIMEOUT_S)
        return SlurmAllRun(
            workdir=workdir,
            config_args=config_args,
            config=config,
            returncode=returncode,
            output=run.output(),
            submitted=run.submitted_job_ids(),
            jobs={job.job_id: (job.state, job.comment) for job in run.jobs()},
            train_job=train_job,
            requeued_after_step=requeued_after_step,
        )


def _rule_logs(workdir: Path) -> dict[Path, str]:
    return {path: path.read_text() for path in sorted((workdir / "logs").rglob("*.log"))}


@pytest.mark.slow  # the whole workflow on SLURM: minutes
def test_whole_workflow_runs_as_slurm_jobs_with_a_gpu_for_training(slurm_all_run):
    run = slurm_all_run
    assert run.returncode == 0, run.output
    # Every job the executor submitted is a SLURM job of this run, and it completed.
    assert run.submitted and run.submitted == set(run.jobs), (run.submitted, run.jobs)
    assert {state for state, _ in run.jobs.values()} == {"COMPLETED"}, run.jobs

    # Every rule's log names the SLURM job it ran in; local rules ran outside SLURM.
    local_rules = set(LOCAL_RULE.findall(run.output))
    assert local_rules == {"ingest", "all"}, local_rules
    finished = FINISHED.findall(run.output)
    remote_jobs = [rule for rule in finished if rule not in local_rules]
    logs = _rule_logs(run.workdir)
    in_slurm = {path: JOB_ID.search(text) for path, text in logs.items()}
    outside = [path.relative_to(run.workdir) for path, match in in_slurm.items() if not match]
    assert outside == [Path("logs/ingest/manifest.log")], outside
    job_of_log = {path: match.group(1) for path, match in in_slurm.items() if match}
    # per subject one normalize job (ingestion first), one figure job per figure group,
    # averages, checks, training, figures
    assert len(job_of_log) == len(remote_jobs) >= 16, (len(job_of_log), remote_jobs)
    assert set(job_of_log.values()) <= run.submitted
    # Per-subject jobs share SLURM jobs (group "subject"): fewer SLURM jobs than jobs.
    assert len(run.submitted) < len(remote_jobs)

    # The training job asked SLURM for a GPU and got one.
    train_log = (run.workdir / "logs" / "train" / f"{EXPERIMENT}.log").read_text()
    assert f"SLURM_JOB_ID={run.train_job}" in train_log
    assert re.search(r"CUDA_VISIBLE_DEVICES=[01]\b", train_log), train_log[:500]
    train = scontrol_job(run.train_job)
    assert train["TresPerJob"].endswith("gpu:1"), train
    assert run.jobs[run.train_job][1] == "rule_train"

    # Every output is there and complete: nothing left to do, stores open, PNGs are PNGs.
    dry = run_snakemake(run.workdir, "all", "--dry-run", *run.config_args, config=run.config)
    assert "Nothing to be done" in dry.stdout + dry.stderr, dry.stdout
    stores = sorted((run.workdir / "results").glob("*/**/*.zarr"))
    assert len(stores) == 18, stores  # 16 subject stores, 2 averages
    for path in stores:
        ds = open_store(path)
        assert np.isfinite(ds["data"].values).all(), path
    figures = sorted((run.workdir / "results" / "report").rglob("*.png"))
    assert len(figures) >= 16 + 2 + 2 + 5, figures
    assert all(path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for path in figures)
    assert (run.workdir / "results" / "train" / EXPERIMENT / "model.pt").stat().st_size > 0
    # (metrics.jsonl, every step exactly once: the requeue test below)


@pytest.mark.slow  # the whole workflow on SLURM: minutes
def test_per_subject_jobs_run_in_groups_of_two_with_the_stores_of_a_local_run(
    slurm_all_run, demo_run
):
    """The demo's 3 subjects in groups of 2: their normalize jobs ran as 2 SLURM jobs of
    group ``subject`` (not 3), and the stores equal, values and attributes, those of the
    local run ``demo_run``. The figure jobs (one per figure group) are not in the group:
    one that waits on many subjects would join their normalize jobs into one."""
    run = slurm_all_run
    assert run.returncode == 0, run.output
    subject_jobs = {
        job_id for job_id, (_, comment) in run.jobs.items() if comment.startswith("rule_subject_")
    }
    subjects_of_job = defaultdict(set)
    for table in sorted((run.workdir / "results" / "normalized").glob("sub-*/sub-*_scans.tsv")):
        subject = table.parent.name
        log = run.workdir / "logs" / "normalize" / f"{subject}.log"
        subjects_of_job[JOB_ID.search(log.read_text()).group(1)].add(subject)
    assert set(subjects_of_job) == subject_jobs, (subjects_of_job, run.jobs)
    assert sorted(len(subjects) for subjects in subjects_of_job.values()) == [1, GROUP_SIZE]
    figure_logs = sorted((run.workdir / "logs" / "report" / "normalize").glob("group-*.log"))
    figure_jobs = {JOB_ID.search(log.read_text()).group(1) for log in figure_logs}
    assert len(figure_jobs) == len(figure_logs) == 3 and not figure_jobs & subject_jobs

    stores = sorted(
        path.relative_to(run.workdir) for path in run.workdir.glob("results/normalized/**/*.zarr")
    )
    assert len(stores) == 16, stores
    for store in stores:
        xr.testing.assert_identical(
            open_store(run.workdir / store).load(), open_store(demo_run / store).load()
        )


@pytest.mark.slow  # the whole workflow on SLURM: minutes
def test_training_requeued_half_way_resumes_and_logs_every_step_once(slurm_all_run):
    run = slurm_all_run
    assert run.returncode == 0, run.output
    train = scontrol_job(run.train_job)
    assert train["Restarts"] == "1", train
    assert train["JobState"] == "COMPLETED", train

    records = read_metrics(run.workdir / "results" / "train" / EXPERIMENT / "metrics.jsonl")
    plans = [r for r in records if r["kind"] == "plan"]
    assert len(plans) == 2, plans  # the first start and the resumed one
    total = plans[0]["total_steps"]
    assert plans[1]["total_steps"] == total
    assert total // 2 <= run.requeued_after_step < total
    assert run.requeued_after_step == REQUEUE_AFTER_STEP
    assert steps_of(records) == list(range(1, total + 1))
    assert [r["epoch"] for r in records if r["kind"] == "validation"] == list(range(TRAIN_EPOCHS))

    # The job's SLURM log (--open-mode=append) holds both attempts, each running the rule
    # (the job step runs it as a local rule); the rule's own log is the resumed attempt's
    # (snakemake deletes a rule's log before running the rule again).
    slurm_log = (
        run.workdir / ".snakemake" / "slurm_logs" / "rule_train" / f"{run.train_job}.log"
    ).read_text()
    assert slurm_log.count("DUE TO JOB REQUEUE") >= 1, slurm_log
    assert len(re.findall(r"^localrule train:$", slurm_log, flags=re.MULTILINE)) == 2, slurm_log
    train_log = (run.workdir / "logs" / "train" / f"{EXPERIMENT}.log").read_text()
    assert "resumed from step" in train_log, train_log


@pytest.mark.parametrize(
    ("environment", "request_", "launcher"),
    [
        (
            {},
            {"gpu=1", "gpu_model=", "nodes=1", "slurm_partition=debug"},
            "bidstrain.train.launch --nodes 1 --gpus-per-node 1 --",
        ),
        (
            {
                "BIDSTRAIN_TRAIN_GPUS": "2",
                "BIDSTRAIN_SLURM_GPU_MODEL": "a100",
                "BIDSTRAIN_SLURM_CPUS_PER_GPU": "4",
                "BIDSTRAIN_SLURM_ACCOUNT": "lab42",
            },
            {"gpu=2", "gpu_model=a100", "cpus_per_gpu=4", "slurm_account=lab42"},
            "bidstrain.train.launch --nodes 1 --gpus-per-node 2 --",
        ),
        (
            {"BIDSTRAIN_TRAIN_NODES": "2", "BIDSTRAIN_SLURM_GPU_MODEL": "a100"},
            {"nodes=2", "tasks=2", "mpi=srun", "gres=gpu:a100:1"},
            "bidstrain.train.launch --nodes 2 --gpus-per-node 1 --",
        ),
    ],
    ids=["profile-defaults", "from-environment", "two-nodes"],
)
def test_dry_run_with_the_slurm_profile_shows_the_training_gpu_request(
    slurm_cluster, demo_bids, tmp_path, monkeypatch, environment, request_, launcher
):
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    result = run_snakemake(
        tmp_path, "train", "--dry-run", config={"bids_dir": demo_bids}, profile="slurm"
    )
    train = result.stdout.split("\nrule train:\n")[1].split("\n\n")[0]
    resources = set(re.search(r"^\s*resources: (.*)$", train, flags=re.MULTILINE)[1].split(", "))
    assert request_ <= resources, train
    assert launcher in train, train
    # One world size: the one the job runs is the one the checks validate and the
    # trainer is told (and refuses to train under another).
    gpus = int(environment.get("BIDSTRAIN_TRAIN_GPUS", "1"))
    gpus *= int(environment.get("BIDSTRAIN_TRAIN_NODES", "1"))
    assert f"--world-size {gpus} " in train, train
    checks_config = json.loads((tmp_path / paths.plan_checks_settings("demo")).read_text())
    assert checks_config["world_size"] == gpus, checks_config
    plan = json.loads((tmp_path / paths.plan_stores("demo")).read_text())
    assert plan["world_size"] == gpus


def test_dry_run_of_the_realistic_config_asks_for_nodes_and_gpus_per_node(
    slurm_cluster, demo_bids, tmp_path, monkeypatch
):
    """config/train-mni2mm.yaml on 2 nodes of 4 GPUs: per-node GPUs (gres), one task per
    node, the mpi marker, 8 ranks told to the trainer and to the checks."""
    monkeypatch.setenv("BIDSTRAIN_TRAIN_NODES", "2")
    monkeypatch.setenv("BIDSTRAIN_TRAIN_GPUS", "4")
    result = run_snakemake(
        tmp_path,
        "train",
        "--dry-run",
        "--configfile",
        str(REPO / "config" / "config.yaml"),
        str(REPO / "config" / "train-mni2mm.yaml"),
        config={"bids_dir": demo_bids},
        profile="slurm",
    )
    train = result.stdout.split("\nrule train:\n")[1].split("\n\n")[0]
    resources = set(re.search(r"^\s*resources: (.*)$", train, flags=re.MULTILINE)[1].split(", "))
    assert {"nodes=2", "tasks=2", "mpi=srun", "gres=gpu:4"} <= resources, train
    assert "--nodes 2 --gpus-per-node 4 --" in train and "--world-size 8 " in train, train
    settings = json.loads((tmp_path / paths.plan_train_settings("mni2mm")).read_text())
    assert settings["embed_dim"] == 768 and settings["bf16"] is True, settings
