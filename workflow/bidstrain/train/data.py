"""From normalized Zarr stores to batches: counting, sampling, reading volumes.

One sample is one volume (one time point) of one store: a T1w image, a DWI volume, a BOLD
frame (of a cross-subject average or of a subject's run).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch
import xarray as xr

from bidstrain.store import open_store, to_grid

BATCHINGS = ("mixed", "single_modality")


def sample_counts(stores: Mapping[str, Sequence[str]]) -> dict[str, int]:
    """Number of samples per modality: the volumes of all its stores.

    Parameters
    ----------
    stores : mapping
        ``{modality: [store path, ...]}`` as ``training_stores()`` gives them.

    Returns
    -------
    dict
        ``{modality: n_samples}`` for every modality of ``stores``.
    """
    return {modality: sum(map(_n_volumes, paths)) for modality, paths in stores.items()}


def _n_volumes(path: str) -> int:
    with open_store(path) as ds:
        return int(ds.sizes["time"])


def batches_per_epoch(
    counts: Mapping[str, int], *, batch_size: int, batching: str, world_size: int = 1
) -> int:
    """Micro-batches each rank processes per epoch (the same on every rank).

    ``mixed``: all samples are shuffled together and dealt to ranks (padded by repeating
    samples so every rank gets ``ceil(n / world_size)``), then cut into batches.
    ``single_modality``: each modality's samples are cut into batches of ``batch_size``,
    the batches are shuffled together and dealt to ranks (padded by repeating batches).

    Parameters
    ----------
    counts : mapping
        ``{modality: n_samples}`` (see :func:`sample_counts`).
    batch_size : int
        Samples per rank per micro-batch.
    batching : {"mixed", "single_modality"}
    world_size : int
        Number of ranks.

    Returns
    -------
    int
    """
    if batching not in BATCHINGS:
        raise ValueError(f"batching must be one of {BATCHINGS}, got {batching!r}")
    if batch_size < 1 or world_size < 1:
        raise ValueError(f"batch_size={batch_size} and world_size={world_size} must be >= 1")
    if batching == "mixed":
        per_rank = math.ceil(sum(counts.values()) / world_size)
        return math.ceil(per_rank / batch_size)
    n_batches = sum(math.ceil(n / batch_size) for n in counts.values())
    return math.ceil(n_batches / world_size)


MODALITIES = ("T1w", "bold", "dwi")


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


class VolumeDataset(torch.utils.data.Dataset):
    """Volumes of normalized stores on their 3D grid, cropped or padded per modality.

    Stores are opened lazily in the process that reads them (a DataLoader worker opens its
    own), never shared across a fork. Item ``n`` is ``(modality, volume)`` with ``volume``
    a float32 array of ``shapes[modality]``; zero outside the store's mask.

    Parameters
    ----------
    stores : mapping
        ``{modality: [store path, ...]}``.
    shapes : mapping
        ``{modality: (x, y, z)}`` (``train.shapes``).
    """

    def __init__(self, stores: Mapping[str, Sequence[str]], shapes: Mapping[str, Sequence[int]]):
        self.shapes = {m: tuple(int(n) for n in shapes[m]) for m in stores}
        counts = {path: _n_volumes(path) for paths in stores.values() for path in paths}
        self.samples = [
            (modality, path, t)
            for modality in MODALITIES
            for path in stores.get(modality, ())
            for t in range(counts[path])
        ]
        self.modalities = [modality for modality, _, _ in self.samples]
        self._grids: dict[str, tuple[xr.Dataset, xr.DataArray]] = {}

    def __len__(self) -> int:
        return len(self.samples)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_grids": {}}

    def _open(self, path: str) -> tuple[xr.Dataset, xr.DataArray]:
        if path not in self._grids:
            ds = open_store(path, use_dask=False)
            self._grids[path] = (ds.drop_vars(["data", "mean", "std"]).load(), ds["data"])
        return self._grids[path]

    def __getitem__(self, index: int) -> tuple[str, np.ndarray]:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: Sequence[int]) -> list[tuple[str, np.ndarray]]:
        """Read a batch with one read per store (what the DataLoader calls)."""
        by_store: dict[str, list[int]] = {}
        for index in indices:
            by_store.setdefault(self.samples[index][1], []).append(self.samples[index][2])
        volumes = {}
        for path, times in by_store.items():
            grid, data = self._open(path)
            unique = sorted(set(times))
            rows = np.asarray(data[unique].values, dtype=np.float32)
            for t, row in zip(unique, rows, strict=True):
                volumes[path, t] = row
        out = []
        for index in indices:
            modality, path, t = self.samples[index]
            grid = self._grids[path][0]
            volume = to_grid(grid, volumes[path, t])
            out.append((modality, fit_to_shape(volume, self.shapes[modality])))
        return out


def collate(items: Sequence[tuple[str, np.ndarray]]) -> dict[str, torch.Tensor]:
    """Group a batch by modality: ``{modality: tensor (n, 1, x, y, z)}`` in
    :data:`MODALITIES` order."""
    batch = {}
    for modality in MODALITIES:
        volumes = [volume for m, volume in items if m == modality]
        if volumes:
            batch[modality] = torch.from_numpy(np.stack(volumes)[:, None])
    return batch


class ModalityBatchSampler(torch.utils.data.Sampler):
    """Batches of sample indices, different on every rank, the same count on every rank.

    The order depends only on ``(seed, epoch)``, so all ranks draw the same permutation
    and take their own share; :meth:`set_epoch` also sets the position to start from
    (the batches already consumed, on resume).

    Parameters
    ----------
    modalities : sequence of str
        Modality of every sample (``VolumeDataset.modalities``).
    batch_size : int
    batching : {"mixed", "single_modality"}
    rank, world_size : int
    seed : int
    """

    def __init__(
        self,
        modalities: Sequence[str],
        *,
        batch_size: int,
        batching: str,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
    ):
        self.modalities = np.asarray(modalities)
        self.batch_size = batch_size
        self.batching = batching
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.epoch = 0
        self.start = 0
        counts = {m: int((self.modalities == m).sum()) for m in MODALITIES}
        self.n_batches = batches_per_epoch(
            counts, batch_size=batch_size, batching=batching, world_size=world_size
        )

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Draw the order of ``epoch`` and skip its first ``start`` batches."""
        self.epoch, self.start = epoch, start

    def __len__(self) -> int:
        return self.n_batches - self.start

    def _rank_batches(self) -> list[np.ndarray]:
        rng = np.random.default_rng([self.seed, self.epoch])
        if self.batching == "mixed":
            order = _pad(rng.permutation(len(self.modalities)), self.world_size)
            mine = order[self.rank :: self.world_size]
            return [mine[i : i + self.batch_size] for i in range(0, len(mine), self.batch_size)]
        batches = []
        for modality in MODALITIES:
            members = rng.permutation(np.flatnonzero(self.modalities == modality))
            batches += [
                members[i : i + self.batch_size] for i in range(0, len(members), self.batch_size)
            ]
        order = _pad(rng.permutation(len(batches)), self.world_size)
        return [batches[i] for i in order[self.rank :: self.world_size]]

    def __iter__(self):
        for batch in self._rank_batches()[self.start :]:
            yield batch.tolist()


def _pad(order: np.ndarray, multiple: int) -> np.ndarray:
    """Repeat ``order`` from its start until its length is a multiple of ``multiple``."""
    missing = -len(order) % multiple
    return np.concatenate([order, np.resize(order, missing)]) if missing else order


def dataset_statistics(dataset: VolumeDataset) -> dict[str, tuple[float, float]]:
    """Mean and variance of every modality's volumes as the model sees them (on the
    cropped or padded grid), for ``train.loss.stats: dataset``."""
    sums: dict[str, np.ndarray] = {}
    for start in range(0, len(dataset), 16):
        for modality, volume in dataset.__getitems__(range(start, min(start + 16, len(dataset)))):
            values = volume.astype(np.float64)
            total = sums.setdefault(modality, np.zeros(3))
            total += (values.size, values.sum(), (values**2).sum())
    stats = {}
    for modality, (n, total, squares) in sums.items():
        mean = total / n
        stats[modality] = (float(mean), float(max(squares / n - mean**2, 0.0)))
    return stats


def make_loader(
    dataset: VolumeDataset, sampler: ModalityBatchSampler, *, num_workers: int
) -> torch.utils.data.DataLoader:
    """A DataLoader over ``sampler``'s batches; workers are spawned, not forked (a forked
    worker after Zarr use in the parent can hang)."""
    return torch.utils.data.DataLoader(
        dataset,
        batch_sampler=sampler,
        collate_fn=collate,
        num_workers=num_workers,
        multiprocessing_context="spawn" if num_workers > 0 else None,
        persistent_workers=num_workers > 0,
        generator=torch.Generator(),  # its seed draw must not consume the global torch RNG
    )
