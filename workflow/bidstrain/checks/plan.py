"""Sample and batch counts, and the learning-rate plan, evaluated with the trainer's own code.

Nothing here re-implements the trainer: the counts come from
:func:`bidstrain.train.data.sample_counts` and :func:`~bidstrain.train.data.batches_per_epoch`,
the plan from :func:`bidstrain.train.schedule.planned_total_steps`, and the rate of every
planned step from :func:`bidstrain.train.schedule.lr_multiplier` and the ``LambdaLR`` that
:func:`~bidstrain.train.schedule.build_scheduler` gives the trainer.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch

from bidstrain.checks import Check, verdict
from bidstrain.train import schedule
from bidstrain.train.data import batches_per_epoch, sample_counts

COUNTS = "sample_counts"
PLAN = "training_plan"
#: Warm-up longer than this share of the run is a warning.
MAX_WARMUP_SHARE = 0.1
#: Steps past the planned end checked for a rise (a resumed or overlong run would take them).
STEPS_PAST_END = 100
#: Steps of the trainer's LambdaLR compared with the multiplier (the start is where a
#: scheduler built at the wrong moment shows).
SCHEDULER_STEPS = 50
#: Rises smaller than this (float noise) are not restarts.
RISE_TOLERANCE = 1e-9


def check_counts(
    stores: Mapping[str, Sequence[str]],
    *,
    batch_size: int,
    batching: str,
    world_size: int,
    subject_samples: Mapping[str, int] | None = None,
    window: int = 1,
    stride: int | None = None,
) -> tuple[Check, int]:
    """Samples per modality and batches per epoch of the training config.

    Parameters
    ----------
    stores : mapping
        ``Plan.training``: ``{modality: [store, ...]}``.
    batch_size, batching, world_size
        ``train.batch_size``, ``train.batching`` and the number of ranks.
    subject_samples : mapping, optional
        Samples per modality had the subject stores been read instead (cross_subject mode
        reports how much averaging folded).
    window, stride : int
        ``train.window`` and ``train.window_stride``: BOLD samples are windows.

    Returns
    -------
    (Check, int)
        The check, and the batches per epoch (per rank).
    """
    counts = sample_counts(stores, window=window, stride=stride)
    n_batches = batches_per_epoch(
        counts, batch_size=batch_size, batching=batching, world_size=world_size
    )
    values = {
        "samples": counts,
        "batches_per_epoch": n_batches,
        "batch_size": batch_size,
        "batching": batching,
        "world_size": world_size,
        "subject_samples": dict(subject_samples or {}),
    }
    fails, warns = [], []
    total = sum(counts.values())
    if n_batches == 0 or total == 0:
        fails.append(
            f"an epoch has no batch: {total} training samples ({counts}); check the "
            "training stores, modalities and tasks in the config"
        )
    elif batching == "mixed" and math.ceil(total / world_size) < batch_size:
        fails.append(
            f"train.batch_size {batch_size} is larger than the {math.ceil(total / world_size)} "
            f"samples each of {world_size} rank(s) gets per epoch ({counts}): every batch would "
            "be a partial one; lower train.batch_size (or use fewer GPUs)"
        )
    elif batching == "single_modality":
        small = {m: n for m, n in counts.items() if n < batch_size}
        message = (
            f"{', '.join(f'{m} has {n}' for m, n in small.items())} samples, fewer than "
            f"train.batch_size {batch_size}"
        )
        if len(small) == len(counts):
            fails.append(f"{message}: no full batch in an epoch; lower train.batch_size")
        elif small:
            warns.append(f"{message}: its only batch is a partial one")
    listing = ", ".join(f"{m} {n}" for m, n in counts.items())
    ok = f"samples {listing}; {n_batches} batches of {batch_size} per epoch and rank"
    return verdict(COUNTS, fails, warns, ok, values), n_batches


def _multipliers(multiplier: Callable[..., float], steps: int, **plan: float) -> np.ndarray:
    return np.array([multiplier(step, **plan) for step in range(steps)], dtype=np.float64)


def _scheduler_rates(
    build: Callable[..., torch.optim.lr_scheduler.LRScheduler], lr: float, steps: int, **plan
) -> np.ndarray:
    """Rates the trainer's scheduler gives its first ``steps`` optimizer steps."""
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([parameter], lr=lr)
    scheduler = build(optimizer, **plan)
    rates = []
    for _ in range(steps):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return np.array(rates, dtype=np.float64)


def check_schedule(
    *,
    batches_per_epoch: int,
    epochs: int,
    grad_accum_steps: int,
    lr: float,
    warmup_steps: int,
    min_lr_ratio: float,
    multiplier: Callable[..., float] = schedule.lr_multiplier,
    build: Callable[..., torch.optim.lr_scheduler.LRScheduler] = schedule.build_scheduler,
) -> Check:
    """Preflight the planned run: the rate at every step, and the step count.

    Fails when the planned total steps differ from ``epochs x ceil(batches /
    grad_accum_steps)``, when the rate is 0 or negative at any planned step, when it rises
    after the warm-up (a restart) or past the planned end, when the warm-up is as long as
    the run, or when the trainer's scheduler does not follow the multiplier. Warns when the
    warm-up exceeds :data:`MAX_WARMUP_SHARE` of the run.

    Parameters
    ----------
    batches_per_epoch, epochs, grad_accum_steps, lr, warmup_steps, min_lr_ratio
        The plan (``train.*`` and :func:`check_counts`).
    multiplier, build
        The schedule under test; the trainer's own by default.
    """
    total = schedule.planned_total_steps(
        batches_per_epoch=batches_per_epoch, epochs=epochs, grad_accum_steps=grad_accum_steps
    )
    expected = epochs * math.ceil(batches_per_epoch / grad_accum_steps)
    values = {
        "total_steps": total,
        "expected_total_steps": expected,
        "warmup_steps": warmup_steps,
        "lr": lr,
        "min_lr_ratio": min_lr_ratio,
        "epochs": epochs,
        "batches_per_epoch": batches_per_epoch,
        "grad_accum_steps": grad_accum_steps,
    }
    fails, warns = [], []
    if total != expected:
        fails.append(
            f"the trainer plans {total} optimizer steps, but train.epochs {epochs} x "
            f"ceil({batches_per_epoch} batches / train.grad_accum_steps {grad_accum_steps}) "
            f"= {expected}"
        )
    if total < 1:
        return verdict(PLAN, fails + ["the run has no optimizer step"], [], "", values)
    plan = {"total_steps": total, "warmup_steps": warmup_steps, "min_lr_ratio": min_lr_ratio}
    try:
        rates = lr * _multipliers(multiplier, total + STEPS_PAST_END, **plan)
        built = _scheduler_rates(build, lr, min(total, SCHEDULER_STEPS), **plan)
    except ValueError as error:
        return verdict(
            PLAN, [*fails, f"the trainer's schedule rejects the plan: {error}"], [], "", values
        )
    training = rates[:total]
    values.update(
        first_lr=float(training[0]),
        peak_lr=float(training.max()),
        last_lr=float(training[-1]),
        lr_every_step=[float(r) for r in training[:: max(1, total // 1000)]],
    )
    nonpositive = np.flatnonzero(training <= 0)
    if nonpositive.size:
        step = int(nonpositive[0])
        fails.append(
            f"the learning rate is {training[step]:.3g} at step {step} of {total} "
            f"({nonpositive.size} steps at or below 0): the model would not learn there "
            "(check train.warmup_steps and train.min_lr_ratio)"
        )
    if warmup_steps >= total:
        fails.append(
            f"train.warmup_steps {warmup_steps} is not shorter than the run's {total} optimizer "
            "steps: the rate never reaches train.lr (lower train.warmup_steps or train longer)"
        )
    rises = np.flatnonzero(np.diff(rates[warmup_steps:]) > RISE_TOLERANCE * lr)
    if warmup_steps < total and rises.size:
        step = warmup_steps + int(rises[0]) + 1
        where = "after the planned end" if step >= total else "after the warm-up"
        fails.append(
            f"the learning rate rises again {where}: {rates[step - 1] / lr:.4g} x train.lr at "
            f"step {step - 1} -> {rates[step] / lr:.4g} x train.lr at step {step} (a restart; "
            f"{rises.size} rising steps)"
        )
    mismatch = np.flatnonzero(~np.isclose(built, training[: built.size], rtol=1e-6, atol=0))
    if mismatch.size:
        step = int(mismatch[0])
        fails.append(
            f"the trainer's scheduler gives lr {built[step]:.4g} at step {step}, but the "
            f"schedule says {training[step]:.4g} (was it built after loading a state?)"
        )
    if warmup_steps > MAX_WARMUP_SHARE * total and warmup_steps < total:
        warns.append(
            f"train.warmup_steps {warmup_steps} is {warmup_steps / total:.0%} of the "
            f"{total}-step run (more than {MAX_WARMUP_SHARE:.0%}): most of the run at a low rate"
        )
    ok = (
        f"{total} optimizer steps, rate {training[0] / lr:.3g} x train.lr at step 0, peak "
        f"{training.max() / lr:.3g}, {training[-1] / lr:.3g} at the end, no restart"
    )
    return verdict(PLAN, fails, warns, ok, values)
