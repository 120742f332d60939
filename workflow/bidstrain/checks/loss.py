"""Initial loss scale: each modality's loss of a zero prediction on real training batches.

The batches come from the trainer's own dataset and sampler (the same volumes, crop or pad
and batching), the loss from :func:`bidstrain.train.losses.normalized_mse` under the
configured ``train.loss`` (normalization, statistics, epsilon, weights). A zero
prediction is what an untrained network's head roughly gives: when one modality's loss is
orders of magnitude above another's, it dominates training from the first step.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from bidstrain.checks import Check, verdict
from bidstrain.config import TrainConfig
from bidstrain.train.data import dataset_statistics, volume_dataset
from bidstrain.train.losses import normalized_mse
from bidstrain.train.sampler import batch_sampler

NAME = "initial_loss"
#: Batches read (the first of epoch 0, as the trainer draws them).
N_BATCHES = 8


def zero_prediction_losses(
    stores: Mapping[str, Sequence[str]], train: TrainConfig, *, n_batches: int = N_BATCHES
) -> dict[str, dict[str, float]]:
    """Mean zero-prediction loss per modality over the first batches of epoch 0.

    Parameters
    ----------
    stores : mapping
        ``Plan.training``.
    train : TrainConfig
        The ``train`` config section.
    n_batches : int
        Batches to read.

    Returns
    -------
    dict
        ``{modality: {"loss", "weighted", "batches"}}``.
    """
    dataset = volume_dataset(stores, train)
    sampler = batch_sampler(dataset.layout, train)
    sampler.set_epoch(0)
    loss_config = train.loss
    stats = dataset_statistics(dataset) if loss_config.stats == "dataset" else {}
    sums: dict[str, list[float]] = {}
    for n, indices in enumerate(sampler):
        if n == n_batches:
            break
        for modality, target in dataset.batch(indices).items():
            loss = normalized_mse(
                torch.zeros_like(target),
                target,
                normalize=loss_config.normalize,
                eps=loss_config.eps,
                target_stats=stats.get(modality),
            )
            sums.setdefault(modality, []).append(float(loss))
    weights = loss_config.weights
    return {
        m: {
            "loss": sum(losses) / len(losses),
            "weighted": weights[m] * sum(losses) / len(losses),
            "batches": len(losses),
        }
        for m, losses in sums.items()
    }


def check_loss_scale(
    stores: Mapping[str, Sequence[str]], train: TrainConfig, *, max_ratio: float
) -> Check:
    """Fail when the weighted zero-prediction losses of the modalities differ by more than
    ``max_ratio`` (``checks.max_scale_ratio``); modalities weighted 0 are left out."""
    losses = zero_prediction_losses(stores, train)
    values = {
        "losses": losses,
        "normalize": train.loss.normalize,
        "max_scale_ratio": max_ratio,
    }
    weighted = {m: v["weighted"] for m, v in losses.items() if v["weighted"] > 0}
    fails = []
    if len(weighted) > 1:
        high, low = max(weighted, key=weighted.get), min(weighted, key=weighted.get)
        ratio = weighted[high] / weighted[low]
        values["ratio"] = ratio
        if ratio > max_ratio:
            fails.append(
                f"the initial (zero-prediction) {train.loss.normalize}-normalized loss of "
                f"{high} ({weighted[high]:.4g}) is {ratio:.3g}x that of {low} "
                f"({weighted[low]:.4g}), above checks.max_scale_ratio {max_ratio}: {high} "
                "would dominate training (normalize its data, set train.loss.normalize: var, "
                "or adjust train.loss.weights)"
            )
    listing = ", ".join(f"{m} {v:.3g}" for m, v in weighted.items())
    return verdict(NAME, fails, [], f"initial loss per modality: {listing}", values)
