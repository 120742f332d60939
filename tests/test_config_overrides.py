"""``--config`` overrides on a real ``snakemake -n``: nested sections keep their numbers,
a dotted key stops with one line showing the form that works, and a changed setting is
named at parse time."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
from bidstrain import paths
from bidstrain.demo.generate import make_empty_dataset
from conftest import REPO, run_snakemake, snakemake_command, snakemake_env

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def bids(tmp_path_factory):
    return make_empty_dataset(tmp_path_factory.mktemp("overrides") / "bids", 3)


def dry_run(workdir, bids, **overrides) -> subprocess.CompletedProcess:
    return run_snakemake(workdir, "-n", "train", config={"bids_dir": bids, **overrides})


def test_a_nested_override_keeps_its_numbers_and_booleans(tmp_path, bids):
    dry_run(
        tmp_path,
        bids,
        train="{lr: 0.002, warmup_steps: 7, bf16: true, loss: {eps: 1e-5}, "
        "shapes: {bold: [16, 16, 8]}}",
    )
    settings = json.loads((tmp_path / paths.plan_train_settings("demo")).read_text())
    assert settings["lr"] == 0.002 and isinstance(settings["lr"], float)
    assert settings["warmup_steps"] == 7 and settings["bf16"] is True
    assert settings["loss"]["eps"] == 1e-5
    assert settings["shapes"]["bold"] == [16, 16, 8]
    # a string key keeps the string, even when it reads as a number
    dry_run(tmp_path, bids, train="{experiment: 2024}")
    settings = json.loads((tmp_path / paths.plan_train_settings("2024")).read_text())
    assert settings["experiment"] == "2024"


def test_a_wrong_nested_value_is_still_named(tmp_path):
    result = run_snakemake(tmp_path, "-n", config={"train": "{lr: fast}"}, check=False)
    assert result.returncode != 0
    assert "config key 'train.lr': 'fast' is not of type 'number'" in result.stdout + result.stderr


def test_a_dotted_key_stops_with_the_nested_form_in_one_line(tmp_path):
    """Snakemake's parser refuses dotted keys before the workflow is read; the workflow's
    default profile (read first) names the form that works."""
    command = snakemake_command(
        tmp_path, "-n", config={"train.lr": "0.002", "train.loss.normalize": "std"}
    )
    result = subprocess.run(
        command, capture_output=True, text=True, env=snakemake_env(uses_slurm=False), cwd=REPO
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "bidstrain: --config train.lr=0.002: Snakemake does not take dotted keys; "
        "write the section as YAML instead: --config train='{lr: 0.002}'"
    )
    assert "Traceback" not in result.stderr


def test_changed_settings_are_named_at_parse_time(tmp_path, bids):
    first = dry_run(tmp_path, bids)
    assert "settings changed" not in first.stdout + first.stderr
    changed = dry_run(tmp_path, bids, train="{lr: 0.002, loss: {normalize: std}}")
    lines = [line for line in (changed.stdout + changed.stderr).splitlines() if "changed:" in line]
    assert lines == [
        "bidstrain: train settings changed: loss.normalize var -> std; lr 0.001 -> 0.002",
        "bidstrain: checks settings changed: train.loss.normalize var -> std",
    ]
    again = dry_run(tmp_path, bids, train="{lr: 0.002, loss: {normalize: std}}")
    assert "settings changed" not in again.stdout + again.stderr


@pytest.mark.slow
def test_a_dry_run_with_other_settings_leaves_a_planned_job_its_own(tmp_path, bids):
    """The train job planned first reads its settings' snapshot: a later dry run with
    another train.lr rewrites the settings file, not the snapshot."""

    def planned_settings(**overrides) -> Path:
        result = run_snakemake(
            tmp_path, "-n", "-p", "train", config={"bids_dir": bids, **overrides}
        )
        (settings,) = re.findall(r"--settings '?(\S+?train\.json)'?\s", result.stdout)
        assert "/snapshots/" in settings, settings
        return tmp_path / settings

    first = planned_settings()
    second = planned_settings(train="{lr: 0.005}")
    assert second != first
    assert json.loads(first.read_text())["lr"] == 0.001
    assert json.loads(second.read_text())["lr"] == 0.005
    live = tmp_path / paths.plan_train_settings("demo")
    assert json.loads(live.read_text())["lr"] == 0.005
