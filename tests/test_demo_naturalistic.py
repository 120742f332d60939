"""`make demo-naturalistic` as a user runs it: the film dataset, a study folder started
from config/naturalistic.yaml, the workflow to the encoding model, and the report."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml
from bidstrain import paths
from bidstrain.plan import ENCODING_FIGURES
from conftest import REPO, snakemake_env

pytestmark = [pytest.mark.integration, pytest.mark.slow]  # the whole naturalistic workflow


def _make_demo(demo) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["make", "-C", str(REPO), "demo-naturalistic", f"NATURALISTIC={demo}"],
        capture_output=True,
        text=True,
        env=snakemake_env(uses_slurm=False),
    )


def test_make_demo_naturalistic_runs_the_film_to_the_encoding_model_and_report(tmp_path):
    demo = tmp_path / "naturalistic"
    result = _make_demo(demo)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    study = demo / "study"
    # the study starts from config/naturalistic.yaml: its keys, the dataset and experiment
    overlay = yaml.safe_load((REPO / "config" / "naturalistic.yaml").read_text())
    assert yaml.safe_load((study / "config" / "config.yaml").read_text()) == {
        **overlay,
        "bids_dir": str(demo / "bids"),
        "train": {"experiment": "naturalistic", **overlay["train"]},
    }
    metrics = json.loads(
        (study / paths.encoding_output("naturalistic", "metrics.json")).read_text()
    )
    model, ridge = (metrics["predictions"][name]["mean_correlation"] for name in ("model", "ridge"))
    assert model > 0.3 and model >= ridge - 0.05, metrics["predictions"]
    # three slabs of four respond to the film (voxel_weights): above chance, nearly all
    tested = metrics["predictions"]["model"]["tested_targets"]
    significant = metrics["predictions"]["model"]["significant_targets"]
    assert 0.9 * tested * 3 / 4 <= significant <= tested, metrics["predictions"]["model"]
    report = study / "results" / "report"
    assert sorted(p.name for p in (report / "stimuli").glob("*.png")) == [
        "task-movie_run-1.png",
        "task-movie_run-2.png",
    ]
    html = (study / "results" / "report.html").read_text()
    for figure in ENCODING_FIGURES:  # the encoding model's result, beside every stage's
        assert f"{paths.encoding_dir('naturalistic')}/{figure}" in html, figure
    # config/naturalistic.yaml makes a model that does not learn an error (exit 0 above)
    metrics_lines = (study / "results" / "train" / "naturalistic" / "metrics.jsonl").read_text()
    (summary,) = [r for r in map(json.loads, metrics_lines.splitlines()) if r["kind"] == "summary"]
    assert summary["strict"] and summary["modalities"]["bold"]["status"] == "pass", summary
    again = _make_demo(demo)  # nothing changed: nothing is rebuilt
    assert again.returncode == 0, again.stderr[-4000:]
    assert "Nothing to be done" in again.stdout + again.stderr
    assert "bidstrain-naturalistic-demo" not in again.stdout

    # the multi-modal model with the film's video and sound beside BOLD (at the default
    # 64x48 video, in tokens of train.patch_features): every kind beats its baseline
    stimuli = "train={experiment: stimuli, stimuli: [video, audio], epochs: 60}"
    command = [sys.executable, "-m", "bidstrain.cli", "-C", str(study), "run", "train"]
    trained = subprocess.run(
        [*command, "--cores", "2", "--config", stimuli],
        capture_output=True,
        text=True,
        env={**snakemake_env(uses_slurm=False), "PYTHONPATH": str(REPO / "workflow")},
    )
    assert trained.returncode == 0, trained.stdout[-4000:] + trained.stderr[-4000:]
    lines = (study / "results" / "train" / "stimuli" / "metrics.jsonl").read_text().splitlines()
    (summary,) = [r for r in map(json.loads, lines) if r["kind"] == "summary"]
    ratios = {m: s["ratio"] for m, s in summary["modalities"].items()}
    assert set(ratios) == {"bold", "video", "audio"} and max(ratios.values()) < 0.8, ratios
