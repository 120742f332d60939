"""DDP with 2 CPU processes (gloo) and stimulus tokens (train.stimuli): batches with and
without BOLD on different ranks, the stimulus kinds in every log, model.json's record of
their features, and an exact resume."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from bidstrain.train.description import load_model
from bidstrain.train.stop import EXIT_INTERRUPTED, STOP_AT_STEP
from ddp_support import launch_trainer
from train_support import (
    assert_same_steps,
    metrics_records,
    train_config,
    write_aligned,
    write_store,
)

pytestmark = pytest.mark.integration

KINDS = {"video": 4, "text": 3}
CONFIG = {
    "batching": "single_modality",
    "epochs": 2,
    "window": 2,
    "patch_frames": 2,
    "stimuli": list(KINDS),
    "log_every": 1,
}


def _stores(root):
    rng = np.random.default_rng(0)
    stores = {"T1w": [write_store(root / "t1w.zarr", modality="T1w", n_time=2, seed=9)]}
    bold = [write_store(root / f"bold{i}.zarr", modality="bold", n_time=8, seed=i) for i in (0, 1)]
    held = write_store(root / "held.zarr", modality="bold", n_time=4, seed=5)
    stimuli = {
        store: {
            kind: write_aligned(
                root / f"{i}-{kind}.zarr", rng.standard_normal((n, size)), kind, store
            )
            for kind, size in KINDS.items()
        }
        for i, (store, n) in enumerate([(bold[0], 8), (bold[1], 8), (held, 4)])
    }
    return {**stores, "bold": bold}, {"bold": [held]}, stimuli


@pytest.fixture(scope="module")
def stimulus_run(tmp_path_factory):
    """An uninterrupted 2-rank run with stimuli: its directory, stores and logs."""
    out = tmp_path_factory.mktemp("stimulus-ddp")
    stores, validation, stimuli = _stores(out)
    codes, logs = launch_trainer(
        out, train_config(**CONFIG), stores, 2, validation=validation, stimuli=stimuli
    )
    assert codes == [0, 0], logs
    return out, stores, validation, stimuli


def test_stimulus_kinds_train_under_ddp_and_appear_in_every_log(stimulus_run):
    out, *_ = stimulus_run
    records = metrics_records(out / "metrics.jsonl")
    steps = [r for r in records if r["kind"] == "step"]
    assert records[0]["world_size"] == 2 and len(steps) == records[0]["total_steps"]
    with_stimuli = [r for r in steps if "video" in r["modalities"]]
    assert with_stimuli and all(set(KINDS) <= set(r["loss_per_modality"]) for r in with_stimuli)
    # single-modality batches: one rank's T1w batch (no BOLD: the dummy term covers the
    # stimulus kinds) beside the other's BOLD windows, or DDP would have failed
    assert any({"T1w", "video"} <= set(r["modalities"]) for r in steps), "ranks never differed"
    norms = [r["norms"] for r in records if r["kind"] == "grad_norms"]
    assert any(n["[video] embed.video"] > 0 and n["[text] head.text"] > 0 for n in norms)
    (validation, *_) = [r for r in records if r["kind"] == "validation"]
    assert set(validation["loss_per_modality"]) == {"bold", *KINDS}
    assert set(validation["baseline_per_modality"]) == {"bold", *KINDS}


def test_model_json_records_the_stimulus_features_and_the_model_loads(stimulus_run):
    out, stores, _, stimuli = stimulus_run
    description = json.loads((out / "model.json").read_text())
    recorded = description["preparation"]["stimuli"]
    assert set(recorded) == set(KINDS)
    for kind, size in KINDS.items():
        assert recorded[kind]["features"] == size
        assert recorded[kind]["delays"] == [2, 3] and recorded[kind]["normalized"] is True
        runs = sorted(r for s in recorded[kind]["statistics"] for r in s["training_runs"])
        assert runs == sorted(stores["bold"])  # the training runs' stores, not the held-out
    model, _ = load_model(out / "model.pt")
    assert model.stimuli == list(KINDS)
    saved = torch.load(out / "model.pt")["model"]
    assert torch.equal(
        model.state_dict()["embed.video.proj.weight"], saved["embed.video.proj.weight"]
    )


def test_a_stopped_run_with_stimuli_resumes_exactly(tmp_path, stimulus_run):
    reference, stores, validation, stimuli = stimulus_run
    config = train_config(**CONFIG)
    options = {"validation": validation, "stimuli": stimuli}
    codes, logs = launch_trainer(tmp_path, config, stores, 2, **options, **{STOP_AT_STEP: "2"})
    assert codes == [EXIT_INTERRUPTED] * 2, logs
    codes, logs = launch_trainer(tmp_path, config, stores, 2, **options)
    assert codes == [0, 0], logs
    assert "resumed from step 2" in logs[0]
    resumed = metrics_records(tmp_path / "metrics.jsonl")
    assert_same_steps(resumed, metrics_records(reference / "metrics.jsonl"))
    for got, want in zip(
        [r for r in resumed if r["kind"] == "step"],
        [r for r in metrics_records(reference / "metrics.jsonl") if r["kind"] == "step"],
        strict=True,
    ):
        for kind, loss in want["loss_per_modality"].items():
            assert got["loss_per_modality"][kind] == pytest.approx(loss, rel=1e-6)
