"""`snakemake train` on the demo dataset (through the shared `demo_run` of target `all`)."""

from __future__ import annotations

import json

import pytest
import torch

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
