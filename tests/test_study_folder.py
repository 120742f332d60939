"""A study in its own folder, outside the clone: the real `snakemake -n` and `bidstrain
dry-run` started elsewhere, with the study's config found relative to the study."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import REPO, snakemake_env

pytestmark = pytest.mark.integration

SNAKEFILE = str(REPO / "workflow" / "Snakefile")


def _run(command: list[str], cwd) -> subprocess.CompletedProcess:
    return subprocess.run(
        command, cwd=cwd, capture_output=True, text=True, env=snakemake_env(uses_slurm=False)
    )


def _snakemake(*args: str) -> list[str]:
    return [sys.executable, "-m", "snakemake", "--snakefile", SNAKEFILE, "--nolock", *args]


@pytest.fixture
def study(tmp_path, demo_bids):
    """A study folder whose config/config.yaml names the dataset by a path relative to
    the study folder, and a folder elsewhere to start from."""
    folder = tmp_path / "studies" / "mine"
    (folder / "config").mkdir(parents=True)
    bids = os.path.relpath(demo_bids, folder)
    (folder / "config" / "config.yaml").write_text(
        f"bids_dir: {bids}\ntrain: {{experiment: first}}\n"
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    return folder, elsewhere


def test_snakemake_directory_runs_the_study_with_its_config(study):
    folder, elsewhere = study
    result = _run(_snakemake("--directory", str(folder), "-n", "all"), cwd=elsewhere)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "results/train/first/model.pt" in result.stdout
    assert "results/checks/first/summary.json" in result.stdout
    # the plan's files are the study's, its bids_dir relative to the study folder
    assert (folder / "results/plan/first/stores.json").exists()
    assert not (elsewhere / "results").exists()


def test_a_relative_configfile_given_inside_the_study(study):
    folder, _ = study
    (folder / "config" / "config.yaml").rename(folder / "other.yaml")
    result = _run(_snakemake("--configfile", "other.yaml", "-n", "all"), cwd=folder)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "results/train/first/model.pt" in result.stdout


def test_a_missing_config_says_what_to_do(study):
    folder, elsewhere = study
    (folder / "config" / "config.yaml").unlink()
    result = _run(_snakemake("--directory", str(folder), "-n"), cwd=elsewhere)
    assert result.returncode != 0
    message = " ".join((result.stdout + result.stderr).split())
    assert f"bidstrain: no configuration: the study folder {folder} has no" in message
    assert "bidstrain init" in message and "--configfile" in message
    assert "Traceback" not in result.stderr


def test_bidstrain_dry_run_reads_configfiles_relative_to_the_study(study):
    folder, elsewhere = study
    (folder / "second.yaml").write_text("train: {experiment: second}\n")
    command = [sys.executable, "-m", "bidstrain.cli", "-C", str(folder), "dry-run"]
    result = _run([*command, "--configfile", "second.yaml", "--nolock"], cwd=elsewhere)
    assert result.returncode == 0, result.stderr[-3000:]
    # the study's config/config.yaml, then second.yaml over it
    assert "results/train/second/model.pt" in result.stdout
    assert "results/train/first" not in result.stdout
