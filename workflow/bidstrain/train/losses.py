"""Normalized reconstruction losses.

Modalities differ in scale by orders of magnitude before (and sometimes after)
normalization, so each modality's MSE is divided by a statistic of its target:

- ``var``: MSE / var(target). Scale-invariant: multiplying data and prediction by ``c``
  multiplies MSE by ``c**2`` and the variance by ``c**2``. The default.
- ``std``: MSE / std(target). A common recipe, offered for comparison; it is *not*
  scale-invariant (it grows by ``c``), which is how one modality ends up dominating.
- ``none``: plain MSE.

:func:`baseline_loss` is what a model that learned nothing scores: the loss of predicting
the mean (1.0 under ``var`` with the batch's variance). Validation reports it next to the
model's loss, so that a run that learned nothing says so.
"""

from __future__ import annotations

import torch

NORMALIZATIONS = ("var", "std", "none")
#: The definition of these losses, raised whenever what they count or divide by changes:
#: weights trained under one definition are not resumed under another
#: (:func:`bidstrain.train.checkpoint.run_identity`), and ``model.json`` records it.
#: 1: every voxel of the model's grid counted; 2: only the values that hold data
#: (:mod:`bidstrain.train.validity`).
DEFINITION = 2
#: The definition of a checkpoint or ``model.json`` that records none: written before
#: the definition was recorded, when every voxel counted.
UNRECORDED_DEFINITION = 1


def normalized_mse(
    pred: torch.Tensor,
    target: torch.Tensor,
    *,
    normalize: str,
    eps: float,
    target_stats: tuple[float, float] | None = None,
    where: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean squared error divided by the variance or the std of the target.

    Parameters
    ----------
    pred, target : Tensor
        Same shape; computed in float32 whatever their dtype (bf16 autocast included).
    normalize : {"var", "std", "none"}
        Statistic the MSE is divided by.
    eps : float
        Added to the variance before dividing (and before the square root for ``std``).
    target_stats : tuple of float, optional
        ``(mean, var)`` of the target over the whole dataset (``train.loss.stats:
        dataset``); by default the variance of ``target`` over the batch. Only the
        variance enters the loss.
    where : Tensor of bool, optional
        Broadcastable to ``target``: only these values count (the voxels that hold data,
        :mod:`bidstrain.train.validity`, and under masking the masked tokens' voxels), for
        the error and the batch variance alike. When none counts the loss is 0 (and its
        gradient 0): a batch with nothing to score teaches nothing.

    Returns
    -------
    Tensor
        A scalar.
    """
    pred = pred.float()
    target = target.float()
    weights = _weights(target, where)
    error = _mean((pred - target) ** 2, weights)
    return error / _divisor(target, weights, normalize, eps, target_stats)


def _weights(target: torch.Tensor, where: torch.Tensor | None) -> torch.Tensor | None:
    """``where`` as float32 weights of ``target``'s shape (None: every value counts)."""
    return None if where is None else where.expand_as(target).float()


def _mean(values: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """The mean of ``values`` where ``weights`` is 1 (0 where none is), without asking
    the device how many there are."""
    if weights is None:
        return values.mean()
    return (values * weights).sum() / weights.sum().clamp(min=1.0)


def _divisor(
    target: torch.Tensor,
    weights: torch.Tensor | None,
    normalize: str,
    eps: float,
    target_stats: tuple[float, float] | None,
) -> torch.Tensor | float:
    """What a loss divides the squared error by: the variance (``var``) or the std
    (``std``) of the counted ``target`` values (``weights``), or of ``target_stats``, plus
    ``eps``; 1 under ``none``."""
    if normalize not in NORMALIZATIONS:
        raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {normalize!r}")
    if normalize == "none":
        return 1.0
    if target_stats is None:
        counted = target.detach()
        var = _mean((counted - _mean(counted, weights)) ** 2, weights)
    else:
        var = torch.as_tensor(float(target_stats[1]), dtype=torch.float32, device=target.device)
    return var + eps if normalize == "var" else torch.sqrt(var + eps)


def baseline_loss(
    target: torch.Tensor,
    *,
    normalize: str,
    eps: float,
    target_stats: tuple[float, float] | None = None,
    where: torch.Tensor | None = None,
) -> torch.Tensor:
    """The loss of predicting the mean, under the same settings as :func:`normalized_mse`.

    The mean of ``target`` over ``where`` (per batch), or the dataset mean of
    ``target_stats`` when given. Under ``var`` with the batch's variance this is 1.0 (up to
    ``eps``); under ``std`` the target's std; under ``none`` its variance.

    Returns
    -------
    Tensor
        A scalar: what a model that learned nothing scores on this batch.
    """
    target = target.float()
    if target_stats is None:
        mean = _mean(target, _weights(target, where))
    else:
        mean = torch.as_tensor(float(target_stats[0]), device=target.device)
    return normalized_mse(
        mean.expand_as(target),
        target,
        normalize=normalize,
        eps=eps,
        target_stats=target_stats,
        where=where,
    )


def sample_losses(
    pred: torch.Tensor,
    target: torch.Tensor,
    *,
    normalize: str,
    eps: float,
    target_stats: tuple[float, float] | None = None,
    where: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each sample's share of :func:`normalized_mse` and of :func:`baseline_loss` of the
    batch: its squared error over its values of ``where``, divided by the statistic of
    the whole batch (or ``target_stats``) as training divides it.

    The mean over the samples, weighted by their counted values, is the batch's loss and
    baseline. A sample scored against its own variance instead reads higher whenever it
    holds few values (a parcel window's masked tokens), and its baseline is then 1.0 by
    construction. A sample of which no value counts scores 0 (and weighs nothing).

    Returns
    -------
    tuple of Tensor
        ``(loss, baseline)``, each of shape ``(n,)`` for a batch of ``n`` samples.
    """
    pred, target = pred.float(), target.float()
    weights = torch.ones_like(target) if where is None else _weights(target, where)
    scale = _divisor(target, weights, normalize, eps, target_stats)
    mean = _mean(target, weights) if target_stats is None else float(target_stats[0])
    n_values = weights.flatten(1).sum(dim=1).clamp(min=1.0)
    losses = [(pred - target) ** 2, (target - mean) ** 2]
    loss, baseline = ((values * weights).flatten(1).sum(dim=1) / n_values for values in losses)
    return loss / scale, baseline / scale
