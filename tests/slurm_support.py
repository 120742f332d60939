"""Running ``snakemake --profile profiles/slurm`` from tests, and reading SLURM's job records.

A run on SLURM must always be stopped and its jobs cancelled, whatever the test does:
snakemake ignores SIGTERM and SIGINT while it waits on SLURM jobs, and waits forever on a
job that stays pending. :func:`slurm_snakemake` starts it in its own session, kills that
session with SIGKILL and cancels the run's jobs (``scancel --name <run id>``: the executor
names every job of a run after the run's id) when the test ends.

Jobs are counted from SLURM itself: ``squeue --states=all --name <run id>`` lists every
job of the run, finished ones too (the test cluster keeps them for MinJobAge = 1 h), and
its comment column names the rule (``rule_<name>...``, ``rule_subject_...`` for a job of
group ``subject``).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from conftest import snakemake_command, snakemake_env

#: The executor checks job states after 40 s, then every 10 s more than the last time
#: (10, 20, ... up to 180 s) until a job finished. 1 s brings the first check forward;
#: the growth is the plugin's own.
FAST_STATUS_CHECKS = (
    "--seconds-between-status-checks",
    "1",
    "--slurm-init-seconds-before-status-checks",
    "1",
)
RUN_ID = re.compile(r"^SLURM run ID: (\S+)", re.MULTILINE)
SUBMITTED = re.compile(r"has been submitted with SLURM jobid (\d+)")
#: A line of the executor's log for every job it saw finish: ``Finished jobid: 5 (Rule: x)``.
FINISHED = re.compile(r"^Finished jobid: \d+ \(Rule: (\w+)\)", re.MULTILINE)
LOCAL_RULE = re.compile(r"^localrule (\w+):", re.MULTILINE)


@dataclass(frozen=True)
class SlurmJob:
    """One job of ``squeue``: its id, state (``COMPLETED``, ``RUNNING``, ...) and comment."""

    job_id: str
    state: str
    comment: str


def squeue_jobs(run_id: str) -> list[SlurmJob]:
    """Every job the snakemake run ``run_id`` submitted, finished ones included."""
    result = subprocess.run(
        ["squeue", "--states=all", "--noheader", "--name", run_id, "--format=%i %T %k"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return [SlurmJob(*line.split(maxsplit=2)) for line in result.stdout.splitlines()]


def scontrol_job(job_id: str) -> dict[str, str]:
    """``scontrol show job`` as a dict (``JobState``, ``Restarts``, ``TresPerJob``, ...)."""
    result = subprocess.run(
        ["scontrol", "--oneliner", "show", "job", job_id],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return dict(re.findall(r"(\S+?)=(\S*)", result.stdout))


class SlurmRun:
    """A ``snakemake --profile profiles/slurm`` process and its log (stdout and stderr)."""

    def __init__(self, command: list[str], log_path: Path):
        self.log_path = log_path
        with open(log_path, "w") as log:
            self.process = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=snakemake_env(uses_slurm=True),
                start_new_session=True,
            )

    def output(self) -> str:
        """What snakemake printed so far."""
        return self.log_path.read_text()

    def run_id(self) -> str | None:
        """The run's id (every SLURM job of the run is named after it); None before it
        is printed."""
        match = RUN_ID.search(self.output())
        return match.group(1) if match else None

    def submitted_job_ids(self) -> set[str]:
        """SLURM job ids of the ``... has been submitted with SLURM jobid N`` lines."""
        return set(SUBMITTED.findall(self.output()))

    def jobs(self) -> list[SlurmJob]:
        """The run's jobs as SLURM lists them (none before the run id is known)."""
        run_id = self.run_id()
        return squeue_jobs(run_id) if run_id else []

    def wait(self, timeout: float) -> int:
        """Wait for snakemake to exit; its exit status, or 124 after ``timeout`` s."""
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return 124

    def stop(self) -> None:
        """Kill snakemake (SIGKILL: it ignores SIGTERM while waiting) and cancel its jobs."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        run_id = self.run_id()
        if run_id:
            subprocess.run(["scancel", "--name", run_id], capture_output=True, timeout=30)


@contextmanager
def slurm_snakemake(
    workdir: Path, *args: str, config: dict | None = None, log_name: str = "snakemake.out"
) -> Iterator[SlurmRun]:
    """Start ``snakemake --profile profiles/slurm ARGS`` in ``workdir`` (in the background).

    Status checks are as frequent as the executor allows. Its output goes to
    ``workdir.parent / log_name``. On leaving the block the process is killed if it still
    runs and every SLURM job of the run is cancelled.
    """
    command = snakemake_command(workdir, *FAST_STATUS_CHECKS, *args, config=config, profile="slurm")
    run = SlurmRun(command, workdir.parent / log_name)
    try:
        yield run
    finally:
        run.stop()


def wait_for(predicate, *, timeout: float, what: str, run: SlurmRun, interval: float = 0.2):
    """Poll ``predicate()`` until it returns a true value, and return that value.

    Raises AssertionError (with snakemake's output) when ``timeout`` seconds pass or the
    snakemake run exits first.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if run.process.poll() is not None:
            raise AssertionError(
                f"snakemake exited ({run.process.returncode}) before {what}:\n{run.output()}"
            )
        time.sleep(interval)
    raise AssertionError(f"no {what} within {timeout:.0f} s:\n{run.output()}")
