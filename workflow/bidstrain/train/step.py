"""One optimizer step: the micro-batches of an accumulation group, reduced over ranks.

:func:`optimizer_step` runs forward and backward over the micro-batches, reduces the loss
statistics, the modality presence and the stop flag across ranks in one collective, drops
the gradients of modalities absent from the whole global batch (``freeze_absent``), clips,
and steps only when the global loss and the gradient norm are finite.

Two host synchronizations per step are inherent and are the only ones: the reduced
statistics (which modalities are present decides which gradients to drop; the stop flag
decides whether to stop) and the gradient norm (whether it is finite decides the step).
Everything the step's metrics record holds comes from these two.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch

from bidstrain.config import TrainConfig
from bidstrain.errors import BidstrainError
from bidstrain.modalities import MODALITIES, MODEL_INPUTS
from bidstrain.train import distributed, validity
from bidstrain.train.model import MultiModalAutoencoder, mask_generator


class GradientArrivals:
    """Names of the parameters that received a gradient in the current backward pass,
    recorded by a hook on each parameter's gradient accumulation."""

    def __init__(self, module: torch.nn.Module):
        self.names: set[str] = set()
        self.expected = {name for name, p in module.named_parameters() if p.requires_grad}
        for name, param in module.named_parameters():
            if param.requires_grad:
                param.register_post_accumulate_grad_hook(lambda _, name=name: self.names.add(name))

    def missing(self) -> list[str]:
        """Parameters without a gradient since the last :meth:`clear`."""
        return sorted(self.expected - self.names)

    def clear(self) -> None:
        """Forget the gradients seen (at the start of an accumulation group)."""
        self.names.clear()


@dataclass
class Trainer:
    """What an optimizer step needs.

    When distributed without ``find_unused_parameters``, DDP needs a gradient for every
    parameter in the backward pass that synchronizes; :attr:`arrivals` watches for that.
    """

    model: torch.nn.Module  # the DDP wrapper when distributed, else the module itself
    module: MultiModalAutoencoder
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    context: distributed.Context
    config: TrainConfig
    arrivals: GradientArrivals | None = field(default=None, init=False)

    def __post_init__(self):
        if self.context.distributed and not self.config.run.find_unused_parameters:
            self.arrivals = GradientArrivals(self.module)


@dataclass
class StepResult:
    """One optimizer step, reduced over micro-batches and ranks (host values)."""

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


def optimizer_step(
    trainer: Trainer,
    micro_batches: Sequence[Mapping[str, torch.Tensor]],
    *,
    step: int,
    log_norms: bool,
    stop_requested: bool = False,
) -> StepResult:
    """Forward and backward over ``micro_batches``, then one guarded optimizer step.

    The micro-batches' losses are averaged (``loss / len(micro_batches)``). Gradients of
    modalities that no rank saw are set to None when ``train.dummy_loss.freeze_absent``, so
    AdamW leaves them alone. The pre-clip total norm is what ``clip_grad_norm_`` returns.
    The step is skipped on every rank when any rank's loss or the norm is not finite: the
    loss is summed over ranks (a NaN anywhere makes the sum NaN everywhere) and the
    gradients, hence their norm, are identical on every rank after DDP's all-reduce.
    ``stop_requested`` (this rank's) comes back as ``StepResult.stop_requested``: whether
    any rank asked to stop. ``step`` (1-based) seeds the token masks with the rank and the
    micro-batch (:func:`~bidstrain.train.model.mask_generator`).
    """
    context = trainer.context
    sums = accumulate(trainer, micro_batches, step)
    sums["stop"] = float(stop_requested)
    totals = distributed.all_reduce_named(sums, context.device)
    present = [m for m in MODEL_INPUTS if totals[f"batches.{m}"] > 0]

    module = trainer.module
    module_norms = gradient_norms(module, present) if log_norms else None
    if trainer.config.dummy_loss.freeze_absent:
        for modality in module.inputs:
            if modality not in present:
                for param in module.modality_parameters(modality):
                    param.grad = None
    grad_norm = float(
        torch.nn.utils.clip_grad_norm_(module.parameters(), trainer.config.optimizer.clip_grad_norm)
    )
    skipped = not (math.isfinite(totals["loss"]) and math.isfinite(grad_norm))
    lr = trainer.optimizer.param_groups[0]["lr"]
    if not skipped:
        trainer.optimizer.step()
    with warnings.catch_warnings():
        # A skipped step still uses its slot of the planned schedule; torch warns when the
        # very first step is the skipped one.
        warnings.filterwarnings("ignore", "Detected call of `lr_scheduler.step")
        trainer.scheduler.step()
    trainer.optimizer.zero_grad(set_to_none=True)
    n_micro = len(micro_batches) * context.world_size
    return StepResult(
        lr=lr,
        loss=totals["loss"] / n_micro,
        loss_per_modality={m: totals[f"loss.{m}"] / totals[f"batches.{m}"] for m in present},
        dummy_loss=totals["dummy_loss"] / n_micro,
        grad_norm=grad_norm,
        skipped=skipped,
        modalities=present,
        samples=int(totals["samples"]),
        stop_requested=totals["stop"] > 0,
        module_norms=module_norms,
    )


def accumulate(
    trainer: Trainer, micro_batches: Sequence[Mapping[str, torch.Tensor]], step: int
) -> dict[str, torch.Tensor | float]:
    """Forward and backward of every micro-batch (gradients synchronized on the last);
    this rank's sums of the loss statistics, by name, on the device."""
    model, context = trainer.model, trainer.context
    zero = torch.zeros((), dtype=torch.float64, device=context.device)
    sums: dict[str, torch.Tensor | float] = {"loss": zero, "dummy_loss": zero, "samples": 0.0}
    for modality in MODEL_INPUTS:
        sums[f"loss.{modality}"], sums[f"batches.{modality}"] = zero, 0.0
    autocast = torch.autocast(
        context.device.type,
        dtype=torch.bfloat16,
        enabled=bool(trainer.config.run.bf16) and context.device.type == "cuda",
    )
    for index, batch in enumerate(micro_batches):
        batch = {m: volume.to(context.device, non_blocking=True) for m, volume in batch.items()}
        last = index == len(micro_batches) - 1
        if last and trainer.arrivals is not None:
            trainer.arrivals.clear()
        with nullcontext() if last or not context.distributed else model.no_sync():
            generator = mask_generator(trainer.config.run.seed, step, context.rank, index)
            with autocast:
                output = model(batch, masks=trainer.module.token_masks(batch, generator))
            (output.loss / len(micro_batches)).backward()
        sums["loss"] = sums["loss"] + output.loss.detach().double()
        sums["dummy_loss"] = sums["dummy_loss"] + output.dummy_loss.double()
        # samples: BOLD windows count once, with or without their stimulus features
        sums["samples"] += sum(batch[m].shape[0] for m in batch if m in MODALITIES)
        for modality, loss in output.loss_per_modality.items():
            sums[f"loss.{modality}"] = sums[f"loss.{modality}"] + loss.detach().double()
            sums[f"batches.{modality}"] += 1
    if trainer.arrivals is not None:
        check_every_parameter_used(trainer, micro_batches[-1])
    return sums


def check_every_parameter_used(trainer: Trainer, last_batch: Mapping[str, torch.Tensor]) -> None:
    """DDP (without ``find_unused_parameters``) needs a gradient for every parameter in the
    synchronizing backward pass; explain the dummy loss when one got none.

    Raises
    ------
    BidstrainError
        Naming the modalities (or parameters) without gradient and the two settings that fix it.
    """
    missing = set(trainer.arrivals.missing())
    if not missing:
        return
    module = trainer.module
    names = {id(p): n for n, p in module.named_parameters()}
    absent = [
        m for m in module.inputs if missing & {names[id(p)] for p in module.modality_parameters(m)}
    ]
    what = f"modality {', '.join(absent)}" if absent else f"parameters {', '.join(sorted(missing))}"
    held = ", ".join(validity.inputs(last_batch))
    raise BidstrainError(
        f"{what} got no gradient on rank {trainer.context.rank} in this step (the last "
        f"micro-batch held only {held}), and DDP requires a gradient for "
        "every parameter in every step. Enable train.dummy_loss.enabled (it adds "
        "train.dummy_loss.scale x the sum of an absent modality's parameters to the loss) "
        "or set train.find_unused_parameters: true"
    )


def gradient_norms(module: MultiModalAutoencoder, present: Sequence[str]) -> dict[str, float]:
    """Gradient norm of every per-modality module and of the shared parameters (the
    encoder, the mask token), labelled ``[<modality>]`` when its modality is in the
    global batch, ``[inactive]`` when not, ``[shared]`` for the shared ones (every
    parameter is in one group; one host transfer for all of them)."""
    labels, norms = [], []
    reference = next(module.parameters())
    for name, (owner, parameters) in module.parameter_groups().items():
        grads = [p.grad.detach().float() for p in parameters if p.grad is not None]
        norms.append(
            torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))
            if grads
            else torch.zeros((), device=reference.device)
        )
        label = owner if owner == "shared" or owner in present else "inactive"
        labels.append(f"[{label}] {name}")
    return dict(zip(labels, torch.stack(norms).tolist(), strict=True))


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
