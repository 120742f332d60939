"""The training loop end to end on tiny stores: metrics, validation, checkpoints, resume
after SIGTERM, the non-finite guard."""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from bidstrain.errors import BidstrainError
from bidstrain.train.checkpoint import config_hash, load_latest
from bidstrain.train.loop import EXIT_INTERRUPTED, train
from bidstrain.train.metrics import MetricsLog
from train_support import REPO, tiny_stores, train_cli_args, train_config, write_store

pytestmark = pytest.mark.slow

COUNTS = {"T1w": 2, "bold": 6, "dwi": 4}


def run(tmp_path, stores, validation=None, **overrides):
    out = tmp_path / "out"
    train(
        train_config(**overrides),
        stores,
        validation or {},
        model_out=out / "model.pt",
        metrics_out=out / "metrics.jsonl",
        checkpoint_dir=out / "checkpoints",
    )
    return records(out / "metrics.jsonl")


def records(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def of_kind(lines, kind):
    return [line for line in lines if line["kind"] == kind]


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    return tiny_stores(tmp_path_factory.mktemp("stores"), COUNTS)


def test_metrics_follow_the_contract(tmp_path, stores):
    """Also runs the DataLoader with a spawned worker process."""
    validation = {"bold": [write_store(tmp_path / "val.zarr", modality="bold", n_time=3, seed=7)]}
    lines = run(tmp_path, stores, validation, epochs=2, grad_accum_steps=2, num_workers=1)
    (plan,) = of_kind(lines, "plan")
    assert plan["batches_per_epoch"] == 6 and plan["total_steps"] == 6  # 3 groups x 2 epochs
    steps = of_kind(lines, "step")
    assert [s["step"] for s in steps] == list(range(1, 7))
    assert [s["epoch"] for s in steps] == [0, 0, 0, 1, 1, 1]
    assert all(s["grad_norm"] > 0 and math.isfinite(s["grad_norm"]) for s in steps[:3])
    assert steps[0]["lr"] == pytest.approx(1e-3 / 3)  # warm-up of 2 steps: above 0 at once
    for step in steps:
        assert set(step) >= {"loss", "loss_per_modality", "dummy_loss", "modalities"}
        assert set(step["loss_per_modality"]) == set(step["modalities"])
        assert not step["skipped"] and step["samples_per_s"] > 0
    assert [g["step"] for g in of_kind(lines, "grad_norms")] == [2, 4, 6]
    validations = of_kind(lines, "validation")
    assert [(v["step"], v["epoch"]) for v in validations] == [(3, 0), (6, 1)]
    assert set(validations[0]["loss_per_modality"]) == {"bold"}
    saved = torch.load(tmp_path / "out" / "model.pt")
    assert saved["step"] == 6 and "embed.bold.proj.weight" in saved["model"]
    assert load_latest(tmp_path / "out" / "checkpoints", plan["config_hash"])["step"] == 6


def test_a_checkpoint_of_another_configuration_is_ignored(tmp_path, stores, caplog):
    run(tmp_path, stores, epochs=1)
    with caplog.at_level(logging.WARNING, logger="bidstrain.train"):
        lines = run(tmp_path, stores, epochs=1, lr=5e-4)
    assert "written with another training configuration" in caplog.text
    assert len(of_kind(lines, "plan")) == 1
    assert [s["step"] for s in of_kind(lines, "step")] == list(range(1, 7))


def test_metrics_log_drops_lines_past_the_resumed_step(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(
        '{"kind": "plan"}\n{"kind": "step", "step": 1}\n{"kind": "step", "step": 2}\n'
        '{"kind": "step", "step": 3}\n{"kind": "st'
    )
    log = MetricsLog(path, resume_step=2)
    log.write({"kind": "plan"})
    log.close()
    assert [r.get("step") for r in records(path)] == [None, 1, 2, None]


def _cli(tmp_path, config, stores):
    command = [sys.executable, *train_cli_args(tmp_path, config, stores)]
    env = {**os.environ, "PYTHONPATH": str(REPO / "workflow")}
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def test_resume_after_sigterm_reproduces_the_uninterrupted_metrics(tmp_path, stores):
    overrides = {"epochs": 6, "mask_ratio": 0.25, "checkpoint_every": 1000}
    reference = of_kind(run(tmp_path / "reference", stores, **overrides), "step")

    config = train_config(**overrides)
    job = _cli(tmp_path, config, stores)
    working = tmp_path / "checkpoints" / "metrics.jsonl"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and job.poll() is None:
        if working.exists() and working.read_text().count('"kind": "step"') >= 2:
            job.send_signal(signal.SIGTERM)
            break
        time.sleep(0.02)
    output = job.communicate(timeout=60)[0].decode()
    assert job.returncode == EXIT_INTERRUPTED, output
    assert "SIGTERM" in output and not (tmp_path / "model.pt").exists()
    stopped = load_latest(tmp_path / "checkpoints", config_hash(config, stores))["step"]
    assert 2 <= stopped < len(reference)

    job = _cli(tmp_path, config, stores)
    output = job.communicate(timeout=120)[0].decode()
    assert job.returncode == 0, output
    assert f"resumed from step {stopped}" in output
    resumed = of_kind(records(tmp_path / "metrics.jsonl"), "step")
    assert [s["step"] for s in resumed] == [s["step"] for s in reference]
    for got, want in zip(resumed, reference, strict=True):
        for key in ("loss", "grad_norm", "lr", "dummy_loss"):
            assert got[key] == pytest.approx(want[key], rel=1e-6, abs=1e-9), (got["step"], key)
        assert got["modalities"] == want["modalities"]


def test_non_finite_steps_are_skipped_counted_and_stop_the_run_when_too_many(tmp_path):
    stores = {
        "bold": [write_store(tmp_path / "bold.zarr", modality="bold", n_time=8, nan_volume=3)]
    }
    lines = run(tmp_path / "skip", stores, epochs=2, batching="mixed")
    steps = of_kind(lines, "step")
    skipped = [s for s in steps if s["skipped"]]
    assert len(skipped) == 2  # the NaN volume once per epoch
    assert all(not math.isfinite(s["loss"]) for s in skipped)
    assert all(math.isfinite(s["loss"]) for s in steps if not s["skipped"])
    with pytest.raises(BidstrainError, match="train.max_consecutive_skips"):
        run(tmp_path / "limit", stores, epochs=1, max_consecutive_skips=0)
    with pytest.raises(BidstrainError, match="train.nonfinite: stop"):
        run(tmp_path / "stop", stores, epochs=1, nonfinite="stop")


def test_shapes_must_be_multiples_of_the_patch(tmp_path, stores):
    with pytest.raises(BidstrainError, match=r"train.shapes.T1w = \[8, 8, 6\]"):
        run(tmp_path, stores, shapes={"T1w": [8, 8, 6], "bold": [8, 8, 8], "dwi": [8, 8, 8]})
