"""Learning-rate schedule, plan arithmetic, normalized losses and sample counting."""

from __future__ import annotations

import math

import pytest
import torch
from bidstrain.train.data import batches_per_epoch, sample_counts
from bidstrain.train.losses import baseline_loss, normalized_mse, sample_losses
from bidstrain.train.schedule import build_scheduler, lr_multiplier, planned_total_steps
from train_support import tiny_stores

PLAN = {"total_steps": 50, "warmup_steps": 5, "min_lr_ratio": 0.1}


def test_first_step_rate_is_above_zero():
    assert lr_multiplier(0, **PLAN) == pytest.approx(1 / 6)
    assert lr_multiplier(0, total_steps=10, warmup_steps=0, min_lr_ratio=0.1) == 1.0


def test_warmup_rises_then_cosine_never_increases_and_never_restarts():
    values = [lr_multiplier(s, **PLAN) for s in range(200)]
    warmup, rest = values[:6], values[5:]
    assert all(a < b for a, b in zip(warmup, warmup[1:], strict=False))
    assert values[5] == 1.0
    assert all(b <= a for a, b in zip(rest, rest[1:], strict=False))
    assert values[49] > 0.1
    assert values[50:] == [0.1] * 150


def test_scheduler_applies_the_multiplier_per_optimizer_step():
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([param], lr=1e-3)
    scheduler = build_scheduler(optimizer, **PLAN)
    seen = []
    for _ in range(60):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    expected = [1e-3 * lr_multiplier(s, **PLAN) for s in range(60)]
    assert seen == pytest.approx(expected)


def test_bad_schedule_arguments_raise():
    with pytest.raises(ValueError, match="total_steps=0"):
        lr_multiplier(0, total_steps=0, warmup_steps=0, min_lr_ratio=0.1)
    with pytest.raises(ValueError, match="min_lr_ratio=1.5"):
        lr_multiplier(0, total_steps=5, warmup_steps=0, min_lr_ratio=1.5)


def test_planned_total_steps_counts_the_last_short_accumulation_group():
    assert planned_total_steps(batches_per_epoch=10, epochs=3, grad_accum_steps=4) == 9
    assert planned_total_steps(batches_per_epoch=8, epochs=2, grad_accum_steps=1) == 16


def test_var_loss_is_scale_invariant_and_std_loss_is_not():
    generator = torch.Generator().manual_seed(0)
    target = torch.randn(4, 1, 8, 8, 8, generator=generator)
    pred = target + 0.3 * torch.randn(4, 1, 8, 8, 8, generator=generator)
    for normalize, factor in (("var", 1.0), ("std", 255.0), ("none", 255.0**2)):
        small = normalized_mse(pred, target, normalize=normalize, eps=1e-6)
        large = normalized_mse(255 * pred, 255 * target, normalize=normalize, eps=1e-6)
        assert large.item() == pytest.approx(factor * small.item(), rel=1e-4), normalize


def test_dataset_statistics_replace_the_batch_variance():
    target = torch.full((2, 4), 3.0)
    pred = target + 2.0
    loss = normalized_mse(pred, target, normalize="var", eps=0.0, target_stats=(0.0, 8.0))
    assert loss.item() == pytest.approx(4.0 / 8.0)
    loss = normalized_mse(pred, target, normalize="std", eps=0.0, target_stats=(0.0, 16.0))
    assert loss.item() == pytest.approx(4.0 / 4.0)


@pytest.mark.parametrize("normalize", ["var", "std", "none"])
@pytest.mark.parametrize("stats", [None, (0.5, 3.0)])
def test_sample_losses_are_each_samples_share_of_the_batch_loss(normalize, stats):
    generator = torch.Generator().manual_seed(0)
    target = 2 + 3 * torch.randn(4, 2, 6, generator=generator)
    pred = target + torch.randn(4, 2, 6, generator=generator)
    where = torch.rand(4, 2, 6, generator=generator) < 0.3
    where[:, 0, 0] = True  # every sample counts some values, not the same number
    options = {"normalize": normalize, "eps": 1e-6, "target_stats": stats}
    loss, baseline = sample_losses(pred, target, where=where, **options)
    weights = where.flatten(1).sum(dim=1).double()
    batch = normalized_mse(pred, target, where=where, **options)
    float32 = {"rtol": 1e-6, "atol": 1e-7}  # each summed in its own order
    weighted = (loss.double() * weights).sum() / weights.sum()
    torch.testing.assert_close(weighted, batch.double(), **float32)
    want = baseline_loss(target, where=where, **options)
    weighted = (baseline.double() * weights).sum() / weights.sum()
    torch.testing.assert_close(weighted, want.double(), **float32)
    # each sample's own error, over the same divisor as the batch's
    first = ((pred[0] - target[0])[where[0]] ** 2).mean()
    torch.testing.assert_close(
        loss[0] / loss[1], first / ((pred[1] - target[1])[where[1]] ** 2).mean()
    )


def test_sample_counts_and_batches_per_epoch(tmp_path):
    stores = tiny_stores(tmp_path, {"T1w": 1, "bold": 7, "dwi": 5})
    counts = sample_counts(stores)
    assert counts == {"T1w": 1, "bold": 7, "dwi": 5}
    assert batches_per_epoch(counts, batch_size=4, batching="mixed") == math.ceil(13 / 4)
    assert batches_per_epoch(counts, batch_size=4, batching="mixed", world_size=2) == 2
    # single_modality: 1 + 2 + 2 batches, dealt to 2 ranks -> 3 each
    assert batches_per_epoch(counts, batch_size=4, batching="single_modality") == 5
    assert batches_per_epoch(counts, batch_size=4, batching="single_modality", world_size=2) == 3
