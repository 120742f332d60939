"""Learning-rate schedule: linear warm-up in optimizer steps, then cosine to a floor.

One function (:func:`lr_multiplier`) defines the schedule; the trainer wraps it in a
``LambdaLR`` (:func:`build_scheduler`) and the checks stage evaluates the same function to
verify a training plan before any GPU time is spent. Two classic mistakes are excluded by
construction: the rate at the first step is above zero (warm-up counts ``step + 1``), and
past the last planned step the rate stays at the floor (the cosine is never evaluated past
its end, which would raise the rate again like an accidental restart).
"""

from __future__ import annotations

import math
from functools import partial

import torch


def lr_multiplier(step: int, *, total_steps: int, warmup_steps: int, min_lr_ratio: float) -> float:
    """Multiplier of the peak learning rate at 0-based optimizer step ``step``.

    Parameters
    ----------
    step : int
        0-based optimizer step (the rate used by the ``step + 1``-th ``optimizer.step()``).
    total_steps : int
        Planned number of optimizer steps (see :func:`planned_total_steps`).
    warmup_steps : int
        Length of the linear warm-up; steps ``0 .. warmup_steps - 1`` use
        ``(step + 1) / (warmup_steps + 1)``, so step 0 is above zero.
    min_lr_ratio : float
        Final multiplier of the cosine, in [0, 1]; used for every ``step >= total_steps``.

    Returns
    -------
    float
        In ``(0, 1]`` during warm-up, then non-increasing from 1 to ``min_lr_ratio``.
    """
    if total_steps < 1 or warmup_steps < 0 or not 0.0 <= min_lr_ratio <= 1.0 or step < 0:
        raise ValueError(
            f"bad schedule: step={step}, total_steps={total_steps}, "
            f"warmup_steps={warmup_steps}, min_lr_ratio={min_lr_ratio}"
        )
    if step >= total_steps:
        return float(min_lr_ratio)
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
    return float(min_lr_ratio + (1.0 - min_lr_ratio) * cosine)


def build_scheduler(
    optimizer: torch.optim.Optimizer, *, total_steps: int, warmup_steps: int, min_lr_ratio: float
) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` following :func:`lr_multiplier`; call ``scheduler.step()`` once per
    optimizer step.

    Build it before loading any optimizer or scheduler state: ``LambdaLR`` rewrites the
    optimizer's ``lr`` from ``initial_lr`` when it is created, so building it after a
    checkpoint was loaded would discard the resumed rate.
    """
    schedule = partial(
        lr_multiplier,
        total_steps=total_steps,
        warmup_steps=warmup_steps,
        min_lr_ratio=min_lr_ratio,
    )
    return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)


def planned_total_steps(*, batches_per_epoch: int, epochs: int, grad_accum_steps: int) -> int:
    """Optimizer steps of a run: ``ceil(batches_per_epoch / grad_accum_steps) * epochs``.

    The last, shorter accumulation group of an epoch still makes an optimizer step (its
    micro-batches are weighted by their own count), so no batch is dropped.
    """
    if grad_accum_steps < 1 or epochs < 0 or batches_per_epoch < 0:
        raise ValueError(
            f"bad plan: batches_per_epoch={batches_per_epoch}, epochs={epochs}, "
            f"grad_accum_steps={grad_accum_steps}"
        )
    return math.ceil(batches_per_epoch / grad_accum_steps) * epochs
