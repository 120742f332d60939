"""Shared fixtures: the demo dataset and a runner for the real `snakemake` command."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from bidstrain.demo import DemoSpec, make_demo

REPO = Path(__file__).resolve().parents[1]


def snakemake_command(
    workdir: Path, *args: str, config: dict | None = None, profile: str | None = None
) -> list[str]:
    """The ``snakemake`` command line that :func:`run_snakemake` runs (see there)."""
    command = [
        sys.executable,
        "-m",
        "snakemake",
        "--snakefile",
        str(REPO / "Snakefile"),
        "--configfile",
        str(REPO / "config" / "config.yaml"),
        "--directory",
        str(workdir),
        "--cores",
        "2",
        "--nolock",
    ]
    if profile:
        command += ["--profile", str(REPO / "profiles" / profile)]
    command += args
    if config:  # last: --config takes every following word as KEY=VALUE
        command += ["--config", *(f"{key}={value}" for key, value in config.items())]
    return command


def snakemake_env() -> dict[str, str]:
    """Environment of a ``snakemake`` run: this one, with the package importable."""
    return {**os.environ, "PYTHONPATH": str(REPO / "workflow")}


def run_snakemake(
    workdir: Path,
    *args: str,
    config: dict | None = None,
    check: bool = True,
    profile: str | None = None,
) -> subprocess.CompletedProcess:
    """Run the real ``snakemake`` on the repository's Snakefile inside ``workdir``.

    Parameters
    ----------
    workdir : Path
        Working directory (results/ and logs/ are written there).
    *args : str
        Targets and extra command-line options.
    config : dict, optional
        ``--config KEY=VALUE`` overrides (values are passed as YAML).
    check : bool
        Fail the test with snakemake's output when it exits non-zero.
    profile : str, optional
        A profile under ``profiles/`` (``"slurm"``: jobs go to SLURM; such a run never
        returns while a job is pending, see ``tests/slurm_support.py`` for runs that
        must be stopped). ``--cores 2`` still applies: it caps a group job's CPUs.
    """
    command = snakemake_command(workdir, *args, config=config, profile=profile)
    result = subprocess.run(command, capture_output=True, text=True, env=snakemake_env())
    if check and result.returncode != 0:
        pytest.fail(f"snakemake {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


@pytest.fixture(scope="session")
def demo_bids(tmp_path_factory) -> Path:
    """The default demo dataset, written once per test session. Do not modify it."""
    return make_demo(tmp_path_factory.mktemp("demo") / "bids", DemoSpec())


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory, demo_bids) -> Path:
    """A working directory in which the whole workflow (target ``all``) ran on the demo data.

    Tests read its results; they must not modify them.
    """
    workdir = tmp_path_factory.mktemp("demo_run")
    run_snakemake(workdir, "all", config={"bids_dir": demo_bids})
    return workdir


# --- SLURM test cluster (tests/slurm_cluster.sh) ---------------------------------------

SLURM_CLUSTER_SCRIPT = REPO / "tests" / "slurm_cluster.sh"


def _slurm_cluster_script(command: str, timeout: float) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(
            ["bash", str(SLURM_CLUSTER_SCRIPT), command],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as err:
        return subprocess.CompletedProcess(
            err.cmd,
            124,
            f"did not finish within {timeout:.0f} s\n{err.stdout or ''}",
            err.stderr or "",
        )


@pytest.fixture(scope="session", autouse=True)
def slurm_started() -> list[tuple[str, subprocess.CompletedProcess]]:
    """Install and start the SLURM test cluster once, before any test runs.

    Every ``snakemake`` start asks ``scontrol`` for the cluster's MinJobAge (the SLURM
    executor plugin does so on import) and waits up to 10 s when slurm-client is installed
    but no controller answers, so the cluster is up for the whole session. Failures are
    reported by :func:`slurm_cluster`, in the tests that need SLURM.
    """
    results = []
    for command, timeout in (("install", 600), ("start", 120)):
        results.append((command, _slurm_cluster_script(command, timeout)))
        if results[-1][1].returncode != 0:
            break
    return results


@pytest.fixture(scope="session")
def slurm_cluster(slurm_started) -> Iterator[dict[str, str]]:
    """A running one-node SLURM cluster with two fake GPUs (tests/slurm_cluster.sh).

    Installs Debian's munge/slurm packages when missing and starts the daemons (root
    needed). FAILS, never skips, when the cluster does not come up: SLURM dispatch is part
    of what the tests must prove. The cluster keeps running after the session (other test
    sessions or xdist workers may share it): `sudo tests/slurm_cluster.sh stop` ends it.

    Returns ``{"partition": ..., "node": ...}``; ``BIDSTRAIN_SLURM_PARTITION`` is set for
    ``profiles/slurm`` while the session runs.
    """
    for command, result in slurm_started:
        if result.returncode != 0:
            pytest.fail(
                f"SLURM test cluster: `tests/slurm_cluster.sh {command}` failed "
                f"(exit {result.returncode}):\n{result.stdout}\n{result.stderr}"
            )
    partition = os.environ.get("BIDSTRAIN_SLURM_PARTITION", "debug")
    node = subprocess.run(["hostname", "-s"], capture_output=True, text=True).stdout.strip()
    previous = os.environ.get("BIDSTRAIN_SLURM_PARTITION")
    os.environ["BIDSTRAIN_SLURM_PARTITION"] = partition
    yield {"partition": partition, "node": node}
    if previous is None:
        os.environ.pop("BIDSTRAIN_SLURM_PARTITION", None)
