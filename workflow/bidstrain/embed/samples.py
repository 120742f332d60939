"""The samples the embed job gives the model: a store's volumes, or the non-overlapping
windows of a BOLD run (voxels or parcels), ``batch_size`` samples at a time, never the
whole store at once.

A BOLD run's windows lie within its segments as in training (frames never separated by a
left-out frame, :func:`bidstrain.io.store.read_segments`): a segment of ``n`` frames
gives ``n // window`` windows, its frames ``[k * window, (k + 1) * window)``; the frames
after its last whole window, and segments shorter than a window, are left out (counted
in a log line). Each sample is labelled with the time of its first frame.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
import xarray as xr

from bidstrain.config import ModelConfig
from bidstrain.io.store import read_segments
from bidstrain.train.data import VolumeDataset
from bidstrain.train.reader import ParcelReader
from bidstrain.train.validity import valid_key

LOG = logging.getLogger("bidstrain.embed")


def samples(
    store: str | Path, modality: str, model: ModelConfig, batch_size: int
) -> Iterator[tuple[np.ndarray, np.ndarray, dict[str, torch.Tensor]]]:
    """``(firsts, times, batch)``: the index and the time of each sample's first frame,
    and the samples as the model reads them, ``{modality: samples}``: ``(n, 1, x, y, z)``
    volumes, ``(n, window, x, y, z)`` voxel windows or ``(n, window, parcels)`` parcel
    windows, with the voxels (or parcels) that hold data
    (:mod:`bidstrain.train.validity`)."""
    with xr.open_zarr(store) as ds:
        times = np.asarray(ds["time"].values, dtype=np.float64)
    window = model.window if modality == "bold" else 1
    segments = read_segments(store) if window > 1 else (len(times),)
    starts = window_starts(segments, window)
    if not len(starts):
        LOG.warning(
            "%s: no whole window of %d frames between gaps (frames in segments %s): its "
            "embedding store holds no sample",
            store,
            window,
            list(segments),
        )
    elif len(times) > window * len(starts):
        LOG.info(
            "%s: %d frames outside whole windows of %d frames between gaps left out",
            store,
            len(times) - window * len(starts),
            window,
        )
    if modality == "bold" and model.bold_input == "parcels":
        read = _parcel_reader(store, len(times))
    else:
        read = _voxel_reader(store, modality, model)
    for first in range(0, len(starts), batch_size):
        chosen = starts[first : first + batch_size]
        values, bits = zip(*(read(start, window) for start in chosen), strict=True)
        batch = {modality: torch.stack(values), valid_key(modality): torch.cat(bits)}
        yield chosen, times[chosen], batch


def window_starts(segments: Sequence[int], window: int) -> np.ndarray:
    """First frames of the non-overlapping windows of ``window`` frames within each
    of ``segments`` (lengths of consecutive pieces of a store's frames), in order."""
    lengths = np.asarray(segments, dtype=np.int64)
    firsts = np.cumsum(lengths) - lengths
    pieces = [
        first + np.arange(0, length - window + 1, window)
        for first, length in zip(firsts, lengths, strict=True)
    ]
    return np.concatenate([np.zeros(0, dtype=np.int64), *pieces]).astype(np.int64)


def _voxel_reader(store: str | Path, modality: str, model: ModelConfig):
    """Frames ``[start, start + count)`` on the model's grid, ``(count, x, y, z)``,
    through the training's reader (same resampling, crop or pad), and their validity
    bits ``(1, bytes)`` (the store's, the same for every frame)."""
    dataset = VolumeDataset({modality: [str(store)]}, model.shapes, resample=model.resample)

    def read(start: int, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        batch = dataset.batch(range(start, start + count))
        return batch[modality][:, 0], batch[valid_key(modality)][:1]

    return read


def _parcel_reader(store: str | Path, frames: int):
    """Frames ``[start, start + count)`` of a parcel store of ``frames`` frames,
    ``(count, parcels)``, and the validity bits ``(1, bytes)`` of its parcels, through the
    training's reader."""
    reader = ParcelReader(str(store), frames)
    bits = torch.from_numpy(reader.valid_bits[None])

    def read(start: int, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.from_numpy(reader.data[start : start + count].copy()), bits

    return read
