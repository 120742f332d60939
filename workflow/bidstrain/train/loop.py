"""The training loop: read it top to bottom in :func:`train`.

One optimizer step (:func:`optimizer_step`) runs the micro-batches of a gradient
accumulation group, reduces the loss statistics and the modality presence across ranks,
drops the gradients of modalities absent from the whole global batch (``freeze_absent``),
clips, and steps only when loss and gradient norm are finite on every rank.

Signals: SIGTERM and SIGUSR1 set a flag; at the next step boundary every rank agrees to
stop, rank 0 writes a checkpoint, and the process exits with :data:`EXIT_INTERRUPTED`
(75, ``EX_TEMPFAIL``). Rerunning the same command (or requeueing the job) resumes from the
checkpoint.
"""

from __future__ import annotations

import logging
import math
import shutil
import signal
import time
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from bidstrain.atomic import atomic_path
from bidstrain.errors import BidstrainError
from bidstrain.train import checkpoint, distributed
from bidstrain.train.data import (
    MODALITIES,
    ModalityBatchSampler,
    VolumeDataset,
    dataset_statistics,
    make_loader,
)
from bidstrain.train.metrics import MetricsLog, progress_line
from bidstrain.train.model import LossSettings, MultiModalAutoencoder
from bidstrain.train.schedule import build_scheduler, planned_total_steps

LOG = logging.getLogger("bidstrain.train")
EXIT_INTERRUPTED = 75
_DDP_UNUSED = "Expected to have finished reduction in the prior iteration"


class Interrupted(Exception):
    """SIGTERM/SIGUSR1 arrived; a checkpoint was written at ``step``."""

    def __init__(self, step: int):
        self.step = step
        super().__init__(f"interrupted at step {step}; checkpoint written, rerun to resume")


@dataclass
class Trainer:
    """What an optimizer step needs."""

    model: torch.nn.Module  # the DDP wrapper when distributed, else the module itself
    module: MultiModalAutoencoder
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    context: distributed.Context
    config: Mapping[str, Any]
    previous_absent: tuple[str, ...] = ()


@dataclass
class StepResult:
    """One optimizer step, reduced over micro-batches and ranks."""

    lr: float
    loss: float
    loss_per_modality: dict[str, float]
    dummy_loss: float
    grad_norm: float
    skipped: bool
    modalities: list[str]
    samples: int
    stop_requested: bool
    module_norms: dict[str, float] | None


class StopSignals:
    """Turn SIGTERM and SIGUSR1 into a flag read at step boundaries (restored on exit)."""

    def __init__(self):
        self.requested = False
        self._previous = {}

    def _handle(self, signum, frame) -> None:
        self.requested = True
        LOG.warning("received %s: stopping at the next step boundary", signal.Signals(signum).name)

    def __enter__(self) -> StopSignals:
        for signum in (signal.SIGTERM, signal.SIGUSR1):
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


def train(
    config: Mapping[str, Any],
    stores: Mapping[str, Sequence[str]],
    validation_stores: Mapping[str, Sequence[str]],
    *,
    model_out: str | Path,
    metrics_out: str | Path,
    checkpoint_dir: str | Path,
    requested_gpus: int | None = None,
) -> MultiModalAutoencoder:
    """Train the model on ``stores``, validating on ``validation_stores`` every epoch.

    Parameters
    ----------
    config : mapping
        The ``train`` section of the validated workflow configuration.
    stores, validation_stores : mapping
        ``{modality: [store path, ...]}`` (``training_stores()``, ``validation_stores()``).
    model_out, metrics_out : str or Path
        Final ``model.pt`` and ``metrics.jsonl`` (written by rank 0 at the end).
    checkpoint_dir : str or Path
        Checkpoints and the working metrics file; a valid checkpoint of the same
        configuration there is resumed from.
    requested_gpus : int, optional
        GPUs the job asked for (``train.gpus`` by default); only logged, when torch sees
        no GPU.

    Returns
    -------
    MultiModalAutoencoder
        The trained model (on every rank).

    Raises
    ------
    Interrupted
        After SIGTERM/SIGUSR1, once the checkpoint is written.
    BidstrainError
        Bad configuration, too many non-finite steps, or DDP finding a parameter without
        gradient.
    """
    context = distributed.init(config["gpus"] if requested_gpus is None else requested_gpus)
    try:
        return _train(
            config,
            stores,
            validation_stores,
            context,
            Path(model_out),
            Path(metrics_out),
            Path(checkpoint_dir),
        )
    finally:
        distributed.shutdown(context)


def _train(config, stores, validation_stores, context, model_out, metrics_out, checkpoint_dir):
    check_shapes(config, stores)
    torch.manual_seed(config["seed"])  # initialization and token masking
    config_hash = checkpoint.config_hash(config, stores)

    # Data: the batch order depends on (seed, epoch) only, so resuming is exact.
    dataset = VolumeDataset(stores, config["shapes"])
    if len(dataset) == 0:
        raise BidstrainError("no training samples: the training stores are empty")
    sampler = ModalityBatchSampler(
        dataset.modalities,
        batch_size=config["batch_size"],
        batching=config["batching"],
        rank=context.rank,
        world_size=context.world_size,
        seed=config["seed"],
    )
    loader = make_loader(dataset, sampler, num_workers=config["num_workers"])
    accum = config["grad_accum_steps"]
    steps_per_epoch = math.ceil(sampler.n_batches / accum)
    total_steps = planned_total_steps(
        batches_per_epoch=sampler.n_batches, epochs=config["epochs"], grad_accum_steps=accum
    )
    validation = validation_loader(config, validation_stores, context)

    # Model, optimizer, and the schedule: built before any state is loaded into them.
    loss_settings = LossSettings(
        normalize=config["loss"]["normalize"],
        eps=config["loss"]["eps"],
        weights=config["loss"]["weights"],
        target_stats=dataset_statistics(dataset) if config["loss"]["stats"] == "dataset" else None,
        dummy_enabled=config["dummy_loss"]["enabled"],
        dummy_scale=config["dummy_loss"]["scale"],
    )
    module = MultiModalAutoencoder(
        {m: config["shapes"][m] for m in stores},
        patch=config["patch_size"],
        dim=config["embed_dim"],
        depth=config["depth"],
        heads=config["heads"],
        mask_ratio=config["mask_ratio"],
        loss=loss_settings,
    ).to(context.device)
    optimizer = torch.optim.AdamW(
        module.parameters(), lr=config["lr"], weight_decay=config["weight_decay"]
    )
    scheduler = build_scheduler(
        optimizer,
        total_steps=total_steps,
        warmup_steps=config["warmup_steps"],
        min_lr_ratio=config["min_lr_ratio"],
    )

    # Resume from the newest checkpoint of this configuration, if any.
    step, epoch, position, consecutive_skips, skipped_steps = 0, 0, 0, 0, 0
    state = checkpoint.load_latest(checkpoint_dir, config_hash)
    if state is not None:
        module.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        checkpoint.set_rng_state(state["rng"])
        step, epoch, position = state["step"], state["epoch"], state["position"]
        consecutive_skips, skipped_steps = state["consecutive_skips"], state["skipped_steps"]
        LOG.info("resumed from step %d (epoch %d, batch group %d)", step, epoch, position)
    model = module
    if context.distributed:
        model = DistributedDataParallel(
            module, find_unused_parameters=config["find_unused_parameters"]
        )
    trainer = Trainer(model, module, optimizer, scheduler, context, config)

    metrics = (
        MetricsLog(checkpoint_dir / "metrics.jsonl", step if state is not None else None)
        if context.is_main
        else None
    )
    plan = {
        "kind": "plan",
        "total_steps": total_steps,
        "warmup_steps": config["warmup_steps"],
        "lr": config["lr"],
        "min_lr_ratio": config["min_lr_ratio"],
        "epochs": config["epochs"],
        "batches_per_epoch": sampler.n_batches,
        "grad_accum_steps": accum,
        "world_size": context.world_size,
        "config_hash": config_hash,
    }
    log_main(context, metrics, plan)
    LOG.info(
        "training on %s, %d rank(s): %d samples %s, %d steps",
        context.device,
        context.world_size,
        len(dataset),
        {m: dataset.modalities.count(m) for m in stores},
        total_steps,
    )

    def save_checkpoint() -> None:
        at_end = position == steps_per_epoch
        if context.is_main:
            checkpoint.save(
                checkpoint_dir,
                {
                    "model": module.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "step": step,
                    "epoch": epoch + 1 if at_end else epoch,
                    "position": 0 if at_end else position,
                    "consecutive_skips": consecutive_skips,
                    "skipped_steps": skipped_steps,
                    "rng": checkpoint.rng_state(),
                    "config_hash": config_hash,
                },
            )

    seconds = []
    with StopSignals() as stop:
        while epoch < config["epochs"]:
            sampler.set_epoch(epoch, start=position * accum)
            started = time.perf_counter()
            for group in accumulation_groups(loader, accum):
                result = optimizer_step(
                    trainer,
                    group,
                    log_norms=(step + 1) % config["log_every"] == 0,
                    stop_requested=stop.requested,
                )
                step, position = step + 1, position + 1
                seconds.append(time.perf_counter() - started)
                started = time.perf_counter()
                consecutive_skips = consecutive_skips + 1 if result.skipped else 0
                skipped_steps += result.skipped
                log_step(context, metrics, result, step, epoch, seconds[-1])
                if step % config["log_every"] == 0 or step == total_steps:
                    LOG.info(
                        progress_line(
                            step=step,
                            total=total_steps,
                            loss=result.loss,
                            lr=result.lr,
                            seconds_per_step=float(np.median(seconds[-20:])),
                            skipped=skipped_steps,
                        )
                    )
                check_skips(config, result, step, consecutive_skips)
                if position == steps_per_epoch:
                    validate(trainer, validation, metrics, step, epoch)
                if step % config["checkpoint_every"] == 0 or result.stop_requested:
                    save_checkpoint()
                if result.stop_requested:
                    raise Interrupted(step)
            epoch, position = epoch + 1, 0
        if step % config["checkpoint_every"] != 0:
            save_checkpoint()

    if context.is_main:
        metrics.close()
        with atomic_path(model_out) as tmp:
            torch.save({"model": module.state_dict(), "config": dict(config), "step": step}, tmp)
        with atomic_path(metrics_out) as tmp:
            shutil.copyfile(checkpoint_dir / "metrics.jsonl", tmp)
        LOG.info("wrote %s and %s", model_out, metrics_out)
    return module


def optimizer_step(
    trainer: Trainer,
    micro_batches: Sequence[Mapping[str, torch.Tensor]],
    *,
    log_norms: bool,
    stop_requested: bool = False,
) -> StepResult:
    """Forward and backward over ``micro_batches``, then one guarded optimizer step.

    The micro-batches' losses are averaged (``loss / len(micro_batches)``). Gradients of
    modalities that no rank saw are set to None when ``train.dummy_loss.freeze_absent``, so
    AdamW leaves them alone. The pre-clip total norm is what ``clip_grad_norm_`` returns.
    The step is skipped on every rank when any rank's loss or the norm is not finite.
    """
    model, module, context, config = trainer.model, trainer.module, trainer.context, trainer.config
    n_mod = len(MODALITIES)
    # [loss, dummy, samples, loss per modality..., micro-batches per modality...]
    totals = torch.zeros(3 + 2 * n_mod, dtype=torch.float64, device=context.device)
    autocast = torch.autocast(
        context.device.type,
        dtype=torch.bfloat16,
        enabled=bool(config["bf16"]) and context.device.type == "cuda",
    )
    for index, batch in enumerate(micro_batches):
        batch = {m: volume.to(context.device, non_blocking=True) for m, volume in batch.items()}
        last = index == len(micro_batches) - 1
        with nullcontext() if last or not context.distributed else model.no_sync():
            with autocast:
                output = forward(trainer, batch)
            (output.loss / len(micro_batches)).backward()
        totals[0] += output.loss.detach().double()
        totals[1] += output.dummy_loss.double()
        totals[2] += sum(volume.shape[0] for volume in batch.values())
        for i, modality in enumerate(MODALITIES):
            if modality in output.loss_per_modality:
                totals[3 + i] += output.loss_per_modality[modality].detach().double()
                totals[3 + n_mod + i] += 1
    distributed.all_reduce(totals)
    present = [m for i, m in enumerate(MODALITIES) if totals[3 + n_mod + i] > 0]

    module_norms = gradient_norms(module, present) if log_norms else None
    if config["dummy_loss"]["freeze_absent"]:
        for modality in module.modalities:
            if modality not in present:
                for param in module.modality_parameters(modality):
                    param.grad = None
    grad_norm = torch.nn.utils.clip_grad_norm_(module.parameters(), config["clip_grad_norm"])

    n_micro = len(micro_batches) * context.world_size
    flags = torch.tensor(
        [
            float(not (torch.isfinite(totals[0]) and torch.isfinite(grad_norm))),
            float(stop_requested),
        ],
        device=context.device,
    )
    distributed.all_reduce(flags, op="max")
    skipped = bool(flags[0] > 0)
    lr = trainer.optimizer.param_groups[0]["lr"]
    if not skipped:
        trainer.optimizer.step()
    with warnings.catch_warnings():
        # A skipped step still uses its slot of the planned schedule; torch warns when the
        # very first step is the skipped one.
        warnings.filterwarnings("ignore", "Detected call of `lr_scheduler.step")
        trainer.scheduler.step()
    trainer.optimizer.zero_grad(set_to_none=True)
    return StepResult(
        lr=lr,
        loss=float(totals[0] / n_micro),
        loss_per_modality={
            m: float(totals[3 + i] / totals[3 + n_mod + i])
            for i, m in enumerate(MODALITIES)
            if m in present
        },
        dummy_loss=float(totals[1] / n_micro),
        grad_norm=float(grad_norm),
        skipped=skipped,
        modalities=present,
        samples=int(totals[2]),
        stop_requested=bool(flags[1] > 0),
        module_norms=module_norms,
    )


def forward(trainer: Trainer, batch: Mapping[str, torch.Tensor]):
    """The model's forward pass; DDP's error about a parameter without gradient becomes an
    explanation of the dummy loss."""
    try:
        output = trainer.model(batch)
    except RuntimeError as error:
        if _DDP_UNUSED not in str(error):
            raise
        absent = ", ".join(trainer.previous_absent) or "(none in the batch)"
        raise BidstrainError(
            f"modality {absent} got no gradient on rank {trainer.context.rank} in the previous "
            "step (its batch had no such sample), and DDP requires a gradient for every "
            "parameter in every step. Enable train.dummy_loss.enabled (it adds "
            "train.dummy_loss.scale x the sum of an absent modality's parameters to the loss) "
            "or set train.find_unused_parameters: true"
        ) from None
    trainer.previous_absent = tuple(m for m in trainer.module.modalities if m not in batch)
    return output


def gradient_norms(module: MultiModalAutoencoder, present: Sequence[str]) -> dict[str, float]:
    """Gradient norm of every per-modality module and of the shared encoder, labelled
    ``[<modality>]`` when its modality is in the global batch, ``[inactive]`` when not,
    ``[shared]`` for the encoder."""
    norms = {}
    for name, (owner, submodule) in module.modality_modules().items():
        grads = [p.grad.detach().float() for p in submodule.parameters() if p.grad is not None]
        norm = (
            float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])))
            if grads
            else 0.0
        )
        label = owner if owner == "shared" or owner in present else "inactive"
        norms[f"[{label}] {name}"] = norm
    return norms


def accumulation_groups(loader: Iterable, size: int) -> Iterator[list]:
    """Consecutive groups of ``size`` micro-batches; the last group of an epoch may be
    shorter."""
    group = []
    for batch in loader:
        group.append(batch)
        if len(group) == size:
            yield group
            group = []
    if group:
        yield group


def validation_loader(config, validation_stores, context):
    """Loader over the held-out stores (None when there are none)."""
    stores = {m: paths for m, paths in validation_stores.items() if paths}
    if not stores:
        LOG.info("no validation stores (normalize.heldout selects no run): no validation loss")
        return None
    dataset = VolumeDataset(stores, config["shapes"])
    sampler = ModalityBatchSampler(
        dataset.modalities,
        batch_size=config["batch_size"],
        batching="mixed",
        rank=context.rank,
        world_size=context.world_size,
        seed=config["seed"],
    )
    return make_loader(dataset, sampler, num_workers=0)


@torch.no_grad()
def validate(trainer: Trainer, loader, metrics, step: int, epoch: int) -> None:
    """Per-modality loss on the held-out stores (no gradients, no masking), logged."""
    if loader is None:
        return
    module, context = trainer.module, trainer.context
    n_mod = len(MODALITIES)
    totals = torch.zeros(2 * n_mod, dtype=torch.float64, device=context.device)
    module.eval()
    for batch in loader:
        batch = {m: volume.to(context.device) for m, volume in batch.items()}
        output = module(batch)
        for i, modality in enumerate(MODALITIES):
            if modality in batch:
                n = batch[modality].shape[0]
                totals[i] += n * output.loss_per_modality[modality].double()
                totals[n_mod + i] += n
    module.train()
    distributed.all_reduce(totals)
    per_modality = {
        m: float(totals[i] / totals[n_mod + i])
        for i, m in enumerate(MODALITIES)
        if totals[n_mod + i] > 0
    }
    weights = trainer.config["loss"]["weights"]
    loss = sum(weights.get(m, 1.0) * value for m, value in per_modality.items())
    record = {
        "kind": "validation",
        "step": step,
        "epoch": epoch,
        "loss": loss,
        "loss_per_modality": per_modality,
    }
    log_main(context, metrics, record)
    if context.is_main:
        LOG.info("validation after epoch %d: loss %.4f %s", epoch, loss, per_modality)


def log_step(context, metrics, result: StepResult, step: int, epoch: int, seconds: float) -> None:
    """The ``step`` record (and the ``grad_norms`` record at the logging interval)."""
    log_main(
        context,
        metrics,
        {
            "kind": "step",
            "step": step,
            "epoch": epoch,
            "lr": result.lr,
            "loss": result.loss,
            "loss_per_modality": result.loss_per_modality,
            "dummy_loss": result.dummy_loss,
            "grad_norm": result.grad_norm,
            "skipped": result.skipped,
            "modalities": result.modalities,
            "samples_per_s": result.samples / seconds,
            "seconds_per_step": seconds,
        },
    )
    if result.module_norms is not None:
        log_main(
            context, metrics, {"kind": "grad_norms", "step": step, "norms": result.module_norms}
        )


def check_skips(config, result: StepResult, step: int, consecutive_skips: int) -> None:
    """Stop on a non-finite step (``train.nonfinite: stop``) or after too many in a row."""
    if not result.skipped:
        return
    LOG.warning(
        "step %d skipped: non-finite loss %s or gradient norm %s on some rank (%d in a row)",
        step,
        result.loss,
        result.grad_norm,
        consecutive_skips,
    )
    if config["nonfinite"] == "stop":
        raise BidstrainError(
            f"non-finite loss ({result.loss}) or gradient norm ({result.grad_norm}) at step "
            f"{step} (train.nonfinite: stop; set it to skip to skip such steps)"
        )
    if consecutive_skips > config["max_consecutive_skips"]:
        raise BidstrainError(
            f"{consecutive_skips} consecutive steps up to step {step} had a non-finite loss or "
            f"gradient norm (last loss {result.loss}, grad norm {result.grad_norm}): the data "
            "or the learning rate is broken (lower train.lr, check the stores for NaN, or raise "
            "train.max_consecutive_skips)"
        )


def log_main(context, metrics, record: dict) -> None:
    """Write a metrics record on rank 0."""
    if context.is_main:
        metrics.write(record)


def check_shapes(config, stores) -> None:
    """Every trained modality's shape must be a multiple of the patch size."""
    patch = config["patch_size"]
    for modality in stores:
        shape = config["shapes"][modality]
        if any(n % patch for n in shape):
            raise BidstrainError(
                f"train.shapes.{modality} = {shape} is not a multiple of train.patch_size = "
                f"{patch} on every axis (change one of them)"
            )
