"""Initial loss scale: each modality's loss of a zero prediction on real training batches.

The batches come from the trainer's own dataset and sampler (the same volumes, crop or pad
and batching), the loss from :func:`bidstrain.train.losses.normalized_mse` under the
configured ``train.loss`` (normalization, statistics, epsilon, weights). A zero
prediction is what an untrained network's head roughly gives: when one modality's loss is
orders of magnitude above another's, it dominates training from the first step.

Every modality that trains is looked at: the batches of epoch 0 are taken in the trainer's
order, and a batch is read only while it holds a modality seen in fewer than
:data:`N_BATCHES` batches so far. The order itself costs no read, so a rare modality (one
T1w per hundreds of BOLD volumes) is found wherever it falls in the epoch, and at most
:data:`N_BATCHES` batches per modality are read. A modality that trains and was seen in no
batch fails the check, named.

The stimulus kinds of ``train.stimuli`` come with the BOLD windows of the same batches
(:mod:`bidstrain.train.stimulus_windows`): their zero-prediction losses are those of
their features in the batches that hold BOLD, compared with the modalities' like any
modality's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from bidstrain.checks import Check, verdict
from bidstrain.config import TrainConfig
from bidstrain.modalities import MODALITIES, STIMULUS_KINDS
from bidstrain.train.data import dataset_statistics, volume_dataset
from bidstrain.train.losses import normalized_mse
from bidstrain.train.sampler import batch_sampler

NAME = "initial_loss"
#: Batches read per modality (at most; fewer when the epoch holds fewer).
N_BATCHES = 8


def zero_prediction_losses(
    stores: Mapping[str, Sequence[str]],
    train: TrainConfig,
    *,
    stimuli: Mapping[str, Mapping[str, str]] | None = None,
) -> dict[str, dict[str, float]]:
    """Mean zero-prediction loss per modality over up to :data:`N_BATCHES` batches of epoch 0
    that hold it (module docstring).

    Parameters
    ----------
    stores : mapping
        The stores training reads, by modality (with ``train.bold_input: parcels`` the
        BOLD runs' parcel stores).
    train : TrainConfig
        The ``train`` settings.
    stimuli : mapping, optional
        ``{BOLD store: {kind: aligned store}}`` of the training BOLD stores (with
        ``train.stimuli``).

    Returns
    -------
    dict
        ``{modality: {"loss", "weighted", "batches"}}`` for every modality seen.
    """
    dataset = volume_dataset(stores, train, stimuli=stimuli)
    layout = dataset.layout
    sampler = batch_sampler(layout, train)
    sampler.set_epoch(0)
    loss_config = train.loss
    stats = dataset_statistics(dataset) if loss_config.stats == "dataset" else {}
    kinds = set(dataset.stimuli.kinds) if dataset.stimuli is not None else set()
    wanted = {m for m, count in layout.counts().items() if count}
    wanted |= kinds if "bold" in wanted else set()
    sums: dict[str, list[float]] = {}
    for indices in sampler:
        store, _ = layout.locate(np.asarray(indices, dtype=np.int64))
        held = {MODALITIES[code] for code in np.unique(layout.modality[store])}
        held |= kinds if "bold" in held else set()
        needed = {m for m in held & wanted if len(sums.get(m, ())) < N_BATCHES}
        if needed:
            for modality, target in dataset.batch(indices).items():
                if modality in needed:
                    loss = normalized_mse(
                        torch.zeros_like(target),
                        target,
                        normalize=loss_config.normalize,
                        eps=loss_config.eps,
                        target_stats=stats.get(modality),
                    )
                    sums.setdefault(modality, []).append(float(loss))
        if all(len(sums.get(m, ())) >= N_BATCHES for m in wanted):
            break
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
    stores: Mapping[str, Sequence[str]],
    train: TrainConfig,
    *,
    max_ratio: float,
    stimuli: Mapping[str, Mapping[str, str]] | None = None,
) -> Check:
    """Fail when the weighted zero-prediction losses of the modalities (and of the
    stimulus kinds of ``train.stimuli``, from the aligned stores ``stimuli``: ``{BOLD
    store: {kind: aligned store}}``) differ by more than ``max_ratio``
    (``checks.max_scale_ratio``); modalities weighted 0 are left out."""
    losses = zero_prediction_losses(stores, train, stimuli=stimuli)
    values = {
        "losses": losses,
        "normalize": train.loss.normalize,
        "max_scale_ratio": max_ratio,
    }
    weighted = {m: v["weighted"] for m, v in losses.items() if v["weighted"] > 0}
    kinds = list(train.model.stimuli) if stores.get("bold") else []
    trained = [m for m, paths in stores.items() if paths] + kinds
    trained = [m for m in trained if train.loss.weights[m] > 0]
    unseen = [m for m in trained if m not in losses]
    constant = [m for m in trained if m in losses and not losses[m]["weighted"] > 0]
    fails = []
    if constant:
        fails.append(
            f"the training data of {', '.join(constant)} are constant (a zero-prediction "
            "loss of 0): the model can learn nothing from them (all parcels outside the "
            "brain mask, or every voxel of zero variance? see the normalize logs)"
        )
    if unseen:
        fails.append(
            f"no batch of epoch 0 held {', '.join(unseen)}: the initial loss of "
            f"{', '.join(unseen)} is unknown (do the training stores hold volumes?)"
        )
    if len(weighted) > 1:
        high, low = max(weighted, key=weighted.get), min(weighted, key=weighted.get)
        ratio = weighted[high] / weighted[low]
        values["ratio"] = ratio
        if ratio > max_ratio:
            fails.append(
                f"the initial (zero-prediction) {train.loss.normalize}-normalized loss of "
                f"{high} ({weighted[high]:.4g}) is {ratio:.3g}x that of {low} "
                f"({weighted[low]:.4g}), above checks.max_scale_ratio {max_ratio}: {high} "
                f"would dominate training (normalize its data{_HOW.get(high, '')}, set "
                "train.loss.normalize: var, or adjust train.loss.weights)"
            )
    listing = ", ".join(
        f"{m} {v:.3g} ({_batches(losses[m]['batches'])})" for m, v in weighted.items()
    )
    return verdict(NAME, fails, [], f"initial loss per modality: {listing}", values)


#: How to normalize a stimulus kind's features.
_HOW = {kind: ": stimuli.normalize true" for kind in STIMULUS_KINDS}


def _batches(n: int) -> str:
    return f"{n} batch" + ("" if n == 1 else "es")
