"""From a store's masked voxels to the grid the model sees: block mean, then crop or pad.

A modality's volumes reach the model on ``train.shapes[modality]``: the store's grid is
first downsampled by the integer factor ``train.resample[modality]`` (a mean over blocks of
``factor**3`` voxels, of the voxels inside the store's mask only, so the edge of the brain
keeps its scale; blocks start at voxel 0 and the last one along an axis may be partial, so
a 193x229x193 grid at factor 2 becomes 97x115x97), then cropped or zero-padded centrally to
the shape. Everything outside the mask is 0.

:func:`model_view` does it on a whole 3D volume (what a report figure shows);
:class:`GridMap` does the same for many volumes of one store from their masked voxels, with
the index arithmetic computed once per store (what the training loader does).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np


def fit_to_shape(volume: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Crop or zero-pad the last three axes of ``volume`` centrally to ``shape``."""
    out = np.zeros(volume.shape[:-3] + tuple(shape), dtype=volume.dtype)
    src, dst = [Ellipsis], [Ellipsis]
    for have, want in zip(volume.shape[-3:], shape, strict=True):
        size = min(have, want)
        start_src, start_dst = (have - size) // 2, (want - size) // 2
        src.append(slice(start_src, start_src + size))
        dst.append(slice(start_dst, start_dst + size))
    out[tuple(dst)] = volume[tuple(src)]
    return out


def downsampled_grid(grid: Sequence[int], factor: int) -> tuple[int, int, int]:
    """The grid after a block mean by ``factor``: ``ceil(n / factor)`` on every axis."""
    return tuple(-(-int(n) // factor) for n in grid)


def block_mean(volume: np.ndarray, mask: np.ndarray, factor: int) -> np.ndarray:
    """Mean of ``volume`` over the in-mask voxels of each ``factor**3`` block (0 where a
    block has none); ``volume`` is 3D on the grid of ``mask``, 0 outside it."""
    if factor == 1:
        return np.where(mask, volume, 0).astype(volume.dtype)
    pads = [(0, -n % factor) for n in mask.shape]
    blocks = downsampled_grid(mask.shape, factor)
    shape = [size for n in blocks for size in (n, factor)]
    sums = np.pad(np.where(mask, volume, 0), pads).astype(np.float64).reshape(shape)
    counts = np.pad(mask, pads).reshape(shape).sum(axis=(1, 3, 5))
    total = sums.sum(axis=(1, 3, 5))
    return np.divide(total, counts, out=np.zeros(blocks), where=counts > 0).astype(volume.dtype)


def model_view(
    volume: np.ndarray, mask: np.ndarray, shape: Sequence[int], factor: int = 1
) -> np.ndarray:
    """A 3D volume (on its store's grid, 0 outside ``mask``) as the model sees it."""
    return fit_to_shape(block_mean(volume, mask, factor), shape)


class GridMap:
    """Where each masked voxel of a store lands on the model's grid.

    Parameters
    ----------
    mask : ndarray of bool, shape (x, y, z)
        The store's mask; its True voxels in C order are the store's voxels.
    shape : sequence of int
        The model's grid (``train.shapes[modality]``).
    factor : int
        ``train.resample[modality]`` (1: no resampling).
    """

    def __init__(self, mask: np.ndarray, shape: Sequence[int], factor: int = 1):
        self.shape = tuple(int(n) for n in shape)
        self.factor = int(factor)
        coords = np.nonzero(mask)
        #: Store voxels (the mask's True voxels).
        self.n_voxel = coords[0].size
        blocks = downsampled_grid(mask.shape, self.factor)
        keep = np.ones(coords[0].size, dtype=bool)
        target = []
        for axis, (have, want) in enumerate(zip(blocks, self.shape, strict=True)):
            block = coords[axis] // self.factor
            size = min(have, want)
            start_src, start_dst = (have - size) // 2, (want - size) // 2
            keep &= (block >= start_src) & (block < start_src + size)
            target.append(block - start_src + start_dst)
        #: Store voxels that reach the grid (None: all of them).
        self.source = None if keep.all() else np.flatnonzero(keep)
        flat = np.ravel_multi_index(tuple(t[keep] for t in target), self.shape).astype(np.intp)
        self.size = int(np.prod(self.shape))
        #: Flat indices on the model's grid that a volume writes (ascending); every other
        #: voxel of the grid is 0.
        self.target = flat
        self.inverse = self.scale = None
        if self.factor > 1:
            #: Position in ``target`` of each kept store voxel (its block).
            self.target, self.inverse = np.unique(flat, return_inverse=True)
            counts = np.bincount(self.inverse, minlength=self.target.size)
            self.scale = (1.0 / counts).astype(np.float32)
        #: Equal for two maps that write the same grid voxels (a buffer that one of them
        #: wrote is 0 wherever the other does not write).
        self.key = (self.shape, hashlib.blake2b(self.target.tobytes(), digest_size=16).digest())
        flags = np.zeros(self.size, dtype=bool)
        flags[self.target] = True
        #: The grid voxels a volume writes (:attr:`target`) as ``np.packbits`` of the flat
        #: grid: what :mod:`bidstrain.train.validity` carries in a batch.
        self.valid_bits = np.packbits(flags)

    def place(self, row: np.ndarray, out: np.ndarray) -> None:
        """Write one volume's store voxels ``row`` onto ``out`` (the model's grid,
        C-contiguous, already 0 outside :attr:`target`): only the voxels of
        :attr:`target` are written."""
        flat = out.reshape(self.size)
        values = row if self.source is None else row[self.source]
        if self.scale is None:
            flat[self.target] = values
        else:
            sums = np.bincount(self.inverse, weights=values, minlength=self.target.size)
            means = sums.astype(np.float32)
            means *= self.scale
            flat[self.target] = means
