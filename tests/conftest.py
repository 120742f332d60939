"""Shared fixtures: the demo dataset and a runner for the real `snakemake` command."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bidstrain.demo import DemoSpec, make_demo

REPO = Path(__file__).resolve().parents[1]


def run_snakemake(
    workdir: Path, *args: str, config: dict | None = None, check: bool = True
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
    """
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
        *args,
    ]
    if config:  # last: --config takes every following word as KEY=VALUE
        command += ["--config", *(f"{key}={value}" for key, value in config.items())]
    env = {**os.environ, "PYTHONPATH": str(REPO / "workflow")}
    result = subprocess.run(command, capture_output=True, text=True, env=env)
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
