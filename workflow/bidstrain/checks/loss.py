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

The same batches say how often a batch would mask only tokens without data
(:func:`padding_only_chance`), as a masked autoencoder's loss counts the masked tokens
only:

- on a voxel grid, the voxels outside a store's mask and in the padding of a grid smaller
  than ``train.shapes`` hold no data, nor do the parcels of a parcel window with no voxel
  in the run's mask, and the loss does not count them (:mod:`bidstrain.train.validity`):
  a batch that masks only such tokens scores nothing and teaches that modality nothing.
  More than :data:`MAX_PADDING_ONLY` of such batches warns;
- stimulus features count every value: when every masked token of a batch's samples
  holds zeros (constant features), the variance of what the loss counts is 0 and a
  ``var``- or ``std``-normalized loss over the batch's variance divides by
  ``train.loss.eps``: a loss of millions for one step, which Adam's second moments then
  remember. More than :data:`MAX_PADDING_ONLY` of such batches fails the check.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from bidstrain.checks import Check, verdict
from bidstrain.config import TrainConfig
from bidstrain.modalities import MODALITIES, STIMULUS_KINDS
from bidstrain.train.data import dataset_statistics, volume_dataset
from bidstrain.train.losses import normalized_mse
from bidstrain.train.model import describe_sequence, encoder_sequences
from bidstrain.train.sampler import batch_sampler
from bidstrain.train.tokens import channel_groups
from bidstrain.train.validity import split

NAME = "initial_loss"
#: Batches read per modality (at most; fewer when the epoch holds fewer).
N_BATCHES = 8
#: Largest share of batches that may mask only tokens without data (see the module).
MAX_PADDING_ONLY = 1e-3
#: Longest encoder sequence without a warning: attention's cost grows with its square.
MAX_SEQUENCE_TOKENS = 8192


def tokens_with_data(
    data: torch.Tensor, patch: int, patch_frames: int, patch_channels: int = 1
) -> tuple[np.ndarray, int]:
    """How many of each sample's tokens hold data, and how many tokens a sample has, as
    :mod:`bidstrain.train.tokens` cuts them.

    Parameters
    ----------
    data : Tensor of bool
        Which values of a batch of one modality hold data (its
        :mod:`~bidstrain.train.validity` mask; for stimulus features the values other than
        0): images and voxel windows ``(n, frames, x, y, z)``, in tubelets of
        ``patch_frames`` frames by ``patch**3`` voxels, or channel series ``(n, frames,
        channels)`` (parcel windows, stimulus features), in tokens of ``patch_frames``
        values of a group of channels (:func:`~bidstrain.train.tokens.channel_groups`).
    patch, patch_frames : int
        ``train.patch_size``; ``train.patch_frames`` for BOLD and stimuli, 1 for images.
    patch_channels : int
        Channels a group at most: ``train.patch_features`` for stimuli, 1 for parcels.

    Returns
    -------
    held : ndarray of int, shape (n,)
    n_tokens : int
    """
    n, frames = data.shape[:2]
    steps = frames // patch_frames
    if data.dim() == 5:
        grid = [size // patch for size in data.shape[2:]]
        cropped = data[:, : steps * patch_frames, : grid[0] * patch, : grid[1] * patch]
        cropped = cropped[..., : grid[2] * patch]
        blocks = cropped.reshape(
            n, steps, patch_frames, grid[0], patch, grid[1], patch, grid[2], patch
        )
        flags = blocks.any(dim=8).any(dim=6).any(dim=4).any(dim=2)
    else:
        groups, size = channel_groups(data.shape[2], patch_channels)
        padded = torch.nn.functional.pad(
            data[:, : steps * patch_frames], (0, groups * size - data.shape[2])
        )
        blocks = padded.reshape(n, steps, patch_frames, groups, size)
        flags = blocks.any(dim=4).any(dim=2).transpose(1, 2)
    flags = flags.flatten(1)
    return flags.sum(dim=1).numpy(), flags.shape[1]


def padding_only_chance(held: np.ndarray, n_tokens: int, mask_ratio: float) -> float:
    """The chance that every token a batch masks holds no data, for the batch's samples
    of one modality (``held`` tokens with data of ``n_tokens`` each, :func:`tokens_with_data`).

    Without masking (``mask_ratio`` 0) the loss counts every token: the chance is 0.
    Otherwise the model masks ``max(1, round(mask_ratio * n_tokens))`` tokens of each
    sample, drawn uniformly
    (:meth:`bidstrain.train.model.MultiModalAutoencoder.token_masks`): for one sample the
    chance is ``C(empty, masked) / C(n_tokens, masked)``, and the samples draw
    independently.
    """
    if mask_ratio <= 0:
        return 0.0
    masked = max(1, round(mask_ratio * n_tokens))
    log_chance = 0.0
    for empty in (n_tokens - np.asarray(held)).tolist():
        if empty < masked:
            return 0.0
        log_chance += _log_falling(empty, masked) - _log_falling(n_tokens, masked)
    return math.exp(log_chance)


def _log_falling(n: int, k: int) -> float:
    """``log(n! / (n - k)!)``."""
    return math.lgamma(n + 1) - math.lgamma(n - k + 1)


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
        ``{modality: {"loss", "weighted", "batches", "tokens_with_data",
        "padding_only", "on_grid", "tokens"}}`` for every modality seen: the mean share
        of a sample's tokens that hold data, the mean chance that a batch masks only
        tokens without (:func:`padding_only_chance`; 0 without masking), whether its
        tokens are cut from a grid (images, voxel windows) rather than channel series, and
        a sample's number of tokens.
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
    model = train.model
    sums: dict[str, list[float]] = {}
    tokens: dict[str, list[tuple[float, float]]] = {}  # (share with data, padding-only)
    cut: dict[str, tuple[bool, int]] = {}  # (cut from a grid, tokens a sample)
    for indices in sampler:
        store, _ = layout.locate(np.asarray(indices, dtype=np.int64))
        held = {MODALITIES[code] for code in np.unique(layout.modality[store])}
        held |= kinds if "bold" in held else set()
        needed = {m for m in held & wanted if len(sums.get(m, ())) < N_BATCHES}
        if needed:
            inputs, valid = split(dataset.batch(indices))
            for modality, target in inputs.items():
                if modality in needed:
                    loss = normalized_mse(
                        torch.zeros_like(target),
                        target,
                        normalize=loss_config.normalize,
                        eps=loss_config.eps,
                        target_stats=stats.get(modality),
                        where=valid.get(modality),
                    )
                    sums.setdefault(modality, []).append(float(loss))
                    series = modality == "bold" or modality in STIMULUS_KINDS
                    frames = model.patch_frames if series else 1
                    group = model.patch_features if modality in STIMULUS_KINDS else 1
                    data = valid[modality].expand_as(target) if modality in valid else target.ne(0)
                    with_data, n_tokens = tokens_with_data(data, model.patch_size, frames, group)
                    chance = padding_only_chance(with_data, n_tokens, model.mask_ratio)
                    share = with_data.mean() / n_tokens
                    tokens.setdefault(modality, []).append((share, chance))
                    cut[modality] = (target.dim() == 5, n_tokens)
        if all(len(sums.get(m, ())) >= N_BATCHES for m in wanted):
            break
    weights = loss_config.weights
    return {
        m: {
            "loss": sum(losses) / len(losses),
            "weighted": weights[m] * sum(losses) / len(losses),
            "batches": len(losses),
            "tokens_with_data": float(np.mean([share for share, _ in tokens[m]])),
            "padding_only": float(np.mean([chance for _, chance in tokens[m]])),
            "on_grid": cut[m][0],
            "tokens": cut[m][1],
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
    padding_only = {m: v for m, v in losses.items() if v["padding_only"] > MAX_PADDING_ONLY}
    warns = [_padding_only(m, v) for m, v in padding_only.items() if m not in STIMULUS_KINDS]
    if train.loss.normalize != "none" and train.loss.stats == "batch":
        fails += [
            _padding_only(m, v, train.loss.normalize)
            for m, v in padding_only.items()
            if m in STIMULUS_KINDS
        ]
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
    warns.append(long_sequences({m: v["tokens"] for m, v in losses.items()}, kinds))
    warns = [warning for warning in warns if warning]
    return verdict(NAME, fails, warns, f"initial loss per modality: {listing}", values)


def long_sequences(tokens: Mapping[str, int], kinds: Sequence[str]) -> str:
    """The warning of encoder sequences longer than :data:`MAX_SEQUENCE_TOKENS`, or ``""``.

    Parameters
    ----------
    tokens : mapping
        A sample's tokens per modality and stimulus kind.
    kinds : sequence of str
        The stimulus kinds of ``train.stimuli``: their tokens join BOLD's in one sequence
        (:func:`bidstrain.train.model.encoder_sequences`).
    """
    sequences = encoder_sequences(tokens, kinds)
    long = [s for s in sequences if sum(s.values()) > MAX_SEQUENCE_TOKENS]
    if not long:
        return ""
    listing = "; ".join(describe_sequence(s) for s in long)
    return (
        f"the encoder reads sequences of {listing}, above {MAX_SEQUENCE_TOKENS:,}: "
        "attention's time and memory grow with the square of a sequence's length (a "
        "stimulus kind has a token per train.patch_features features and patch of frames: "
        "a larger train.patch_features or train.patch_frames, or fewer features, such as a "
        "smaller stimuli.video_size or fewer delays, shorten it)"
    )


def _padding_only(modality: str, losses: Mapping[str, Any], normalize: str = "") -> str:
    """What a modality whose batches mask only tokens without data too often (more than
    :data:`MAX_PADDING_ONLY`) risks: for an image modality a batch that teaches it
    nothing; for a stimulus kind under a ``normalize``-d loss over the batch's variance, a
    division by ``train.loss.eps`` (the module docstring)."""
    share = (
        f"{losses['padding_only']:.1%} of {modality} batches would mask only tokens "
        f"without data (only {losses['tokens_with_data']:.0%} of its tokens hold data)"
    )
    if modality in STIMULUS_KINDS:
        return (
            f"{share}: what the loss counts then has a variance of 0, and the {normalize}-"
            "normalized loss divides by train.loss.eps. Leave out the constant features "
            "that hold no data, or set train.loss.stats: dataset"
        )
    if losses["on_grid"]:
        fix = (
            f"Fit train.shapes.{modality} and train.patch_size to the stores' grid (padding "
            "around a smaller grid holds no data)"
        )
    else:
        fix = "Most parcels have no voxel in the runs' brain masks: check the atlas's space"
    return f"{share}: such a batch scores none of its values and teaches {modality} nothing. {fix}"


#: How to normalize a stimulus kind's features.
_HOW = {kind: ": stimuli.normalize true" for kind in STIMULUS_KINDS}


def _batches(n: int) -> str:
    return f"{n} batch" + ("" if n == 1 else "es")
