"""The realistic configuration (config/train-mni2mm.yaml: MNI 2 mm grid, T1w at 1 mm
downsampled by 2, patch 16, ViT-B encoder) trains on CPU, and the checks' loss-scale and
batch-count checks run with it."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import yaml
from bidstrain.checks.loss import check_loss_scale
from bidstrain.checks.plan import check_counts
from bidstrain.config import TrainConfig, validate_config
from bidstrain.io.store import create_store
from bidstrain.train.loop import train
from train_support import REPO

T1W_1MM = (193, 229, 193)
MNI_2MM = (97, 115, 97)


def write_realistic_store(path, grid, modality: str, seed: int) -> str:
    """One volume of standard normal values in an ellipsoid (a brain-sized mask)."""
    axes = np.meshgrid(*[np.linspace(-1, 1, n, dtype=np.float32) for n in grid], indexing="ij")
    mask = sum(a**2 for a in axes) <= 0.55
    values = np.random.default_rng(seed).standard_normal((1, int(mask.sum())), dtype=np.float32)
    with create_store(path, mask=mask, affine=np.eye(4), time=np.zeros(1)) as writer:
        writer.write(0, values)
        dim = "voxel" if modality == "bold" else "time"
        size = values.shape[1] if dim == "voxel" else 1
        writer.add_variable("mean", (dim,), np.zeros(size, dtype=np.float32))
        writer.add_variable("std", (dim,), np.ones(size, dtype=np.float32))
        writer.attrs.update(
            modality=modality,
            subject="01",
            source_path=str(path),
            ddof=1,
            n_zero_variance=0,
            stats_dim=dim,
            stats_from=[],
        )
    return str(path)


@pytest.mark.slow  # the realistic grid: two training steps and the checks
def test_realistic_config_trains_two_steps_on_cpu_and_its_checks_run(tmp_path):
    config = yaml.safe_load((REPO / "config" / "train-mni2mm.yaml").read_text())
    config["bids_dir"] = "unused"
    settings = validate_config(config)["train"]
    assert (settings["embed_dim"], settings["depth"], settings["heads"]) == (768, 12, 12)
    assert settings["resample"]["T1w"] == 2 and settings["bf16"]
    settings.update(bf16=False, batch_size=1, epochs=1, warmup_steps=0, log_every=1, num_workers=0)
    typed = TrainConfig.from_dict(settings)
    stores = {
        "T1w": [write_realistic_store(tmp_path / "t1w.zarr", T1W_1MM, "T1w", 0)],
        "bold": [write_realistic_store(tmp_path / "bold.zarr", MNI_2MM, "bold", 1)],
    }
    counts, n_batches = check_counts(stores, batch_size=1, batching="mixed", world_size=1)
    assert counts.status == "pass" and n_batches == 2
    scale = check_loss_scale(stores, typed, max_ratio=100)
    assert scale.status == "pass", scale.message
    assert set(scale.values["losses"]) == {"T1w", "bold"}
    for losses in scale.values["losses"].values():  # var-normalized zero prediction: ~1
        assert 0.5 < losses["loss"] < 2.0
    out = tmp_path / "out"
    model = train(
        typed,
        stores,
        {},
        model_out=out / "model.pt",
        metrics_out=out / "metrics.jsonl",
        checkpoint_dir=out / "checkpoints",
    )
    assert sum(p.numel() for p in model.encoder.parameters()) > 80e6  # ViT-B's 85 M
    assert model.embed["bold"].grid == (6, 7, 6)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if r["kind"] == "step"]
    assert [r["step"] for r in steps] == [1, 2]
    assert all(math.isfinite(r["loss"]) and not r["skipped"] for r in steps)
    assert {m for r in steps for m in r["modalities"]} == {"T1w", "bold"}
