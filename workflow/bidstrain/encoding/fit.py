"""Training the linear encoding model: full-batch AdamW steps over time points, each
rank computing the gradient of its share of them, the shares summed across ranks.

The objective is scikit-learn's ridge objective scaled by ``1 / (N * targets)``:
``(||Y - XW - b||^2 + alpha ||W||^2) / (N * targets)`` with ``N`` training time points
(the intercept is not penalised), so at convergence the weights are ridge's with the
same ``alpha``. Rank ``r`` of ``R`` takes the time points ``r, r + R, ...``
(:func:`shard`); each sums its squared errors, divides by the global ``N``, and the
gradients are summed over ranks (:func:`bidstrain.train.distributed.all_reduce`): the
gradient of the whole objective whatever the world size. The penalty enters once (on
rank 0).

Resume is exact: the only randomness is the initial weights (``train.seed``), the
optimizer and schedule states are in the checkpoint (:mod:`bidstrain.train.checkpoint`),
and a step depends on nothing else.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bidstrain.config import EncodingConfig
from bidstrain.encoding.data import EncodingData
from bidstrain.train import checkpoint
from bidstrain.train.distributed import Context, all_reduce, all_reduce_named
from bidstrain.train.lock import ExperimentLock
from bidstrain.train.schedule import build_scheduler
from bidstrain.train.stop import StopSignals

LOG = logging.getLogger("bidstrain.encoding")
#: Final learning rate as a fraction of ``encoding.lr`` (cosine, no warm-up).
MIN_LR_RATIO = 0.01


class Interrupted(Exception):
    """A signal or a step limit stopped training after ``step``; a checkpoint is written."""

    def __init__(self, step: int):
        self.step = step
        super().__init__(f"interrupted at step {step}; checkpoint written, rerun to resume")


@dataclass(frozen=True)
class Fitted:
    """The trained weights (targets x features), intercept (targets) and the alpha used."""

    weight: np.ndarray
    bias: np.ndarray
    alpha: float
    steps: int
    loss: float

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Predicted BOLD (time x targets) of features ``x`` (time x features), float64."""
        return np.asarray(x, np.float64) @ self.weight.T.astype(np.float64) + self.bias


def shard(n: int, rank: int, world_size: int) -> np.ndarray:
    """The time points of rank ``rank``: ``rank, rank + world_size, ...`` below ``n``."""
    return np.arange(rank, n, world_size)


def run_identity(
    config: EncodingConfig, seed: int, alpha: float, world_size: int, data: EncodingData
) -> dict[str, Any]:
    """What a checkpoint must share with a run to be resumed by it (the shape of
    :func:`bidstrain.train.checkpoint.run_identity`, so its :func:`~bidstrain.train.
    checkpoint.set_aside` can name the changes): the settings that determine the
    weights, the world size, and a hash of every array."""
    content = {
        name: hashlib.sha256(np.ascontiguousarray(getattr(data, name)).tobytes()).hexdigest()[:16]
        for name in ("train_x", "train_y")
    }
    return {
        "train": {**config.hashed(), "seed": seed, "alpha_used": alpha},
        "world_size": world_size,
        "training": {"features": ["train_x"], "bold": ["train_y"]},
        "validation": {},
        "content": content,
    }


def fit(
    data: EncodingData,
    config: EncodingConfig,
    *,
    alpha: float,
    seed: int,
    context: Context,
    checkpoint_dir: str | Path,
    stop_after: int | None = None,
) -> Fitted:
    """Train the encoding model on ``data``'s training runs (resuming a checkpoint of the
    same run in ``checkpoint_dir``).

    Parameters
    ----------
    data : EncodingData
    config : EncodingConfig
        ``epochs`` (full-batch steps), ``lr``, ``weight_decay``, ``checkpoint_every``.
    alpha : float
        Ridge penalty (scikit-learn's units).
    seed : int
        ``train.seed``: the initial weights.
    context : Context
        Rank, world size and device (:func:`bidstrain.train.distributed.init`).
    checkpoint_dir : path
        Checkpoints (``step-*.pt``) and the experiment lock.
    stop_after : int, optional
        Stop after this optimizer step as if SIGTERM had arrived (one checkpoint, then
        :class:`Interrupted`); tests interrupt a run this way.

    Raises
    ------
    Interrupted
        After a stop signal (:mod:`bidstrain.train.stop`) or ``stop_after``, once the
        checkpoint is written.
    """
    directory = Path(checkpoint_dir)
    identity = run_identity(config, seed, alpha, context.world_size, data)
    run_hash = checkpoint.run_hash(identity)
    rows = shard(data.train_x.shape[0], context.rank, context.world_size)
    x = torch.as_tensor(data.train_x[rows], dtype=torch.float32, device=context.device)
    y = torch.as_tensor(data.train_y[rows], dtype=torch.float32, device=context.device)
    scale = 1.0 / (data.train_x.shape[0] * data.n_targets)
    torch.manual_seed(seed)
    model = torch.nn.Linear(data.n_features, data.n_targets).to(context.device)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    scheduler = build_scheduler(
        optimizer, total_steps=config.epochs, warmup_steps=0, min_lr_ratio=MIN_LR_RATIO
    )
    lock = ExperimentLock(directory) if context.is_main else None
    if lock:
        lock.acquire()
    try:
        step = _resume(directory, run_hash, identity, model, optimizer, scheduler, context)
        loss = float("nan")
        with StopSignals() as signals:
            while step < config.epochs:
                loss = _step(model, optimizer, x, y, scale, alpha, context)
                scheduler.step()
                step += 1
                stopping = all_reduce_named(
                    {"stop": float(signals.requested or step == stop_after)}, context.device, "max"
                )["stop"]
                if step % config.checkpoint_every == 0 or step == config.epochs or stopping:
                    _save(directory, step, run_hash, identity, model, optimizer, scheduler, context)
                if stopping and step < config.epochs:
                    raise Interrupted(step)
        return Fitted(
            weight=model.weight.detach().cpu().numpy().copy(),
            bias=model.bias.detach().cpu().double().numpy().copy(),
            alpha=alpha,
            steps=step,
            loss=loss,
        )
    finally:
        if lock:
            lock.release()


def _step(model, optimizer, x, y, scale: float, alpha: float, context: Context) -> float:
    """One full-batch step; the objective's value (all ranks summed) before it."""
    optimizer.zero_grad(set_to_none=False)
    residual = model(x) - y
    loss = scale * residual.square().sum()
    if context.is_main:
        loss = loss + scale * alpha * model.weight.square().sum()
    loss.backward()
    for parameter in model.parameters():
        all_reduce(parameter.grad)
    total = all_reduce(loss.detach().clone())
    optimizer.step()
    return float(total)


def _resume(directory, run_hash, identity, model, optimizer, scheduler, context) -> int:
    """Load the newest checkpoint of this run (its step), or set another run's aside (0)."""
    saved = checkpoint.load_latest(directory) if directory.exists() else None
    if saved is not None and saved["config_hash"] == run_hash:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        LOG.info("resumed from %s", saved["path"])
        return int(saved["train_state"]["step"])
    if context.is_main and directory.exists():
        checkpoint.set_aside(directory, saved, identity)
    return 0


def _save(directory, step, run_hash, identity, model, optimizer, scheduler, context) -> None:
    if context.is_main:
        directory.mkdir(parents=True, exist_ok=True)
        checkpoint.save(
            directory,
            {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "train_state": {"step": step},
                "config_hash": run_hash,
                "run": identity,
            },
        )
