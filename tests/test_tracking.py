"""Experiment trackers (``train.loggers``): TensorBoard events and an offline W&B run,
both fed the records of ``metrics.jsonl``; a missing package names its extra."""

from __future__ import annotations

import builtins

import pytest
from bidstrain.errors import BidstrainError
from bidstrain.train.loop import train
from bidstrain.train.tracking import open_trackers, scalars
from train_support import metrics_records, tiny_stores, train_config

pytestmark = pytest.mark.integration

COUNTS = {"T1w": 2, "bold": 6}


def run(tmp_path, loggers):
    stores = tiny_stores(tmp_path / "stores", COUNTS)
    validation = tiny_stores(tmp_path / "validation", {"bold": 4})
    out = tmp_path / "train" / "exp"
    train(
        train_config(loggers=loggers, experiment="exp"),
        stores,
        validation,
        model_out=out / "model.pt",
        metrics_out=out / "metrics.jsonl",
        checkpoint_dir=out / "checkpoints",
    )
    return out, metrics_records(out / "metrics.jsonl")


def test_tensorboard_events_hold_the_metrics_of_every_step(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, records = run(tmp_path, ["jsonl", "tensorboard"])
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    steps = [r for r in records if r["kind"] == "step"]
    loss = events.Scalars("train/loss")
    assert [e.step for e in loss] == [r["step"] for r in steps]
    assert [e.value for e in loss] == pytest.approx([r["loss"] for r in steps], rel=1e-6)
    lr = events.Scalars("train/lr")
    assert [e.value for e in lr] == pytest.approx([r["lr"] for r in steps], rel=1e-6)
    validation = [r for r in records if r["kind"] == "validation"]
    baseline = events.Scalars("validation/baseline/bold")
    assert [e.value for e in baseline] == pytest.approx(
        [r["baseline_per_modality"]["bold"] for r in validation], rel=1e-6
    )
    summary = records[-1]["modalities"]["bold"]
    assert events.Scalars("summary/bold/ratio")[0].value == pytest.approx(summary["ratio"])


def test_wandb_offline_writes_its_run_folder_with_the_metrics(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)  # offline is the default
    monkeypatch.setenv("WANDB_SILENT", "true")
    out, records = run(tmp_path, ["wandb"])
    runs = sorted((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    (data,) = runs[0].glob("run-*.wandb")  # the run's records, synced by `wandb sync`
    content = data.read_bytes()
    plan = next(r for r in records if r["kind"] == "plan")
    assert f"exp-{plan['config_hash']}".encode() in content  # the run's name
    assert b"experiment" in content and b"loggers" in content  # the train config
    for tag in (b"train/loss", b"validation/baseline/bold", b"summary/bold/ratio"):
        assert tag in content


def test_wandb_mode_disabled_is_honoured(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    out, _ = run(tmp_path, ["wandb"])
    assert not any((out / "wandb").glob("*run-*"))


@pytest.mark.parametrize("package", ["tensorboard", "wandb"])
def test_a_missing_package_names_the_extra(tmp_path, monkeypatch, package):
    real_import = builtins.__import__

    def without(name, *args, **kwargs):
        if name == package or name.startswith(f"{package}.") or name == "torch.utils.tensorboard":
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", without)
    with pytest.raises(BidstrainError, match=rf"pip install 'bidstrain\[{package}\]'"):
        open_trackers([package], directory=tmp_path, experiment="e", config_hash="h", config={})


def test_every_record_kind_flattens_to_finite_scalars():
    step, values = scalars(
        {
            "kind": "validation",
            "step": 7,
            "loss": 0.5,
            "loss_per_modality": {"bold": 0.5},
            "baseline_per_modality": {"bold": 1.0},
        }
    )
    assert step == 7
    assert values == {
        "validation/loss": 0.5,
        "validation/loss/bold": 0.5,
        "validation/baseline/bold": 1.0,
        "validation/ratio/bold": 0.5,
    }
    constant = {"kind": "validation", "step": 8, "loss": 0.0, "loss_per_modality": {"bold": 0.0}}
    _, values = scalars({**constant, "baseline_per_modality": {"bold": 0.0}})
    assert values == {"validation/loss": 0.0, "validation/loss/bold": 0.0} | {
        "validation/baseline/bold": 0.0  # constant data: no ratio, not a division by zero
    }
    _, values = scalars(
        {"kind": "grad_norms", "step": 3, "norms": {"[bold] embed.bold": float("nan")}}
    )
    assert values == {}
    assert scalars({"kind": "plan"}) == (None, {})
