"""Which values of a batch hold data: its store's mask on the model's grid, or the parcels
that cover any voxel.

A volume reaches the model on ``train.shapes``: its store's masked voxels, block-averaged,
then cropped or padded (:mod:`bidstrain.train.resample`), 0 everywhere else. Those zeros
are not data: a loss that counted them would reward a model for predicting 0 outside the
brain and in the padding, and its baseline (predicting the mean) would be the mean of a
mixture of brain values and zeros. A parcel with no voxel in its run's mask is 0 in the
same way. So the losses count only the values that hold data (and, under masking, only
the masked tokens' of those).

The loader adds to a batch, under :func:`valid_key` of each image modality, one row of
packed bits per sample (``np.packbits``, big-endian bit order): of the grid in C order,
the voxels the sample's :class:`~bidstrain.train.resample.GridMap` writes; of a parcel
window, the parcels of coverage above 0 (:class:`~bidstrain.train.reader.ParcelReader`);
the same for every frame of a window. They lie in the batch buffer after the modality's
samples (:meth:`~bidstrain.train.buffers.BatchBuffer.bits`), so a worker's reach the main
process as places in its ring, as the samples do; at one bit per voxel they add 1/32 of
a volume.
Stimulus features have no such key: every value of theirs is data (a constant feature
too). :func:`split` separates a batch's inputs from its masks.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch

#: What a validity key starts with; no modality or stimulus kind does.
PREFIX = "valid:"


def valid_key(modality: str) -> str:
    """The batch key of ``modality``'s packed validity bits."""
    return PREFIX + modality


def is_valid_key(name: str) -> bool:
    """Whether ``name`` is a batch key of validity bits rather than an input."""
    return name.startswith(PREFIX)


def unpack(bits: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Packed validity bits ``(n, bytes)`` (uint8) as a bool mask ``(n, 1, *shape)`` (a
    grid ``(x, y, z)`` or parcels ``(p,)``), on the device of ``bits``."""
    shifts = torch.arange(7, -1, -1, dtype=torch.uint8, device=bits.device)
    flags = (bits.unsqueeze(-1) >> shifts) & 1
    return flags.flatten(1)[:, : math.prod(shape)].bool().view(bits.shape[0], 1, *shape)


def inputs(batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The batch without its validity keys (nothing unpacked)."""
    return {name: value for name, value in batch.items() if not is_valid_key(name)}


def split(
    batch: Mapping[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """``(inputs, valid)``: the batch without its validity keys, and ``{modality: bool
    (n, 1, x, y, z)}`` (``(n, 1, parcels)`` for parcel windows) for the modalities that
    have one (:func:`unpack`)."""
    values = inputs(batch)
    valid = {
        name[len(PREFIX) :]: unpack(bits, values[name[len(PREFIX) :]].shape[2:])
        for name, bits in batch.items()
        if is_valid_key(name)
    }
    return values, valid
