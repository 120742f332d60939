"""From normalized Zarr stores to batches: counting, reading volumes, the loader.

One sample is one volume (one time point) of one store: a T1w image, a DWI volume, a BOLD
frame (of a cross-subject average or of a subject's run).

Start-up reads no store: :func:`store_layout` takes every store's volume count from the
normalize tables (``results/normalized/sub-*/sub-*_scans.tsv``, listed under ``tables`` in
the trainer's store file) and, for stores in no table (the averages), from the array
metadata alone. Stores open lazily in the process that reads them (a DataLoader worker
opens its own), at most ``train.max_open_stores`` at once (:mod:`bidstrain.train.reader`);
the batch order (:mod:`bidstrain.train.sampler`) reads a few stores at a time.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from bidstrain.config import TrainConfig
from bidstrain.io.scans_table import read_tables
from bidstrain.io.store import chunk_volumes, read_dims
from bidstrain.modalities import MODALITIES
from bidstrain.train.buffers import BatchBuffer, BatchRing, allocate, ring_slots
from bidstrain.train.reader import OpenStores

BATCHINGS = ("mixed", "single_modality")


@dataclass(frozen=True)
class StoreLayout:
    """Where the samples are: the stores, in :data:`MODALITIES` order and then in the
    order given, and the sample indices of each.

    Attributes
    ----------
    paths : tuple of str
    modality : ndarray of int8
        Index in :data:`MODALITIES` of each store's modality.
    volumes : ndarray of int64
        Volumes (samples) of each store.
    chunk : ndarray of int64
        Volumes per inner chunk of each store (the unit the batch order groups reads by).
    offsets : ndarray of int64
        Index of each store's first sample; ``offsets[-1]`` is the number of samples.
    modalities : tuple of str
        The modalities the layout was asked for (some may have no store).
    """

    paths: tuple[str, ...]
    modality: np.ndarray
    volumes: np.ndarray
    chunk: np.ndarray
    offsets: np.ndarray
    modalities: tuple[str, ...]

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def counts(self) -> dict[str, int]:
        """``{modality: samples}`` for every modality of the layout."""
        return {
            m: int(self.volumes[self.modality == MODALITIES.index(m)].sum())
            for m in self.modalities
        }

    def locate(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Store index and volume index of each sample index."""
        store = np.searchsorted(self.offsets, indices, side="right") - 1
        return store, indices - self.offsets[store]


def store_layout(stores: Mapping[str, Sequence[str]], tables: Sequence[str] = ()) -> StoreLayout:
    """The layout of ``stores`` without opening any store's data.

    Parameters
    ----------
    stores : mapping
        ``{modality: [store path, ...]}``.
    tables : sequence of str
        Normalize tables (:mod:`bidstrain.io.scans_table`): the volumes and masked voxels
        of the stores they list. Stores in none of them are counted from their array
        metadata (:func:`bidstrain.io.store.read_dims`).
    """
    listed = {row.store: (row.volumes, row.voxels) for row in read_tables(tables)}
    paths, codes, volumes, chunks = [], [], [], []
    for code, modality in enumerate(MODALITIES):
        for path in stores.get(modality, ()):
            n_time, n_voxel = listed.get(os.path.normpath(path)) or read_dims(path)[:2]
            paths.append(path)
            codes.append(code)
            volumes.append(n_time)
            chunks.append(chunk_volumes(n_time, n_voxel))
    volumes = np.asarray(volumes, dtype=np.int64)
    return StoreLayout(
        paths=tuple(paths),
        modality=np.asarray(codes, dtype=np.int8),
        volumes=volumes,
        chunk=np.asarray(chunks, dtype=np.int64),
        offsets=np.concatenate([[0], np.cumsum(volumes)]).astype(np.int64),
        modalities=tuple(stores),
    )


def sample_counts(
    stores: Mapping[str, Sequence[str]], tables: Sequence[str] = ()
) -> dict[str, int]:
    """Number of samples per modality: the volumes of all its stores.

    Parameters
    ----------
    stores : mapping
        ``{modality: [store path, ...]}`` as ``Plan.training`` gives them.
    tables : sequence of str
        Normalize tables giving volume counts without opening stores (:func:`store_layout`).

    Returns
    -------
    dict
        ``{modality: n_samples}`` for every modality of ``stores``.
    """
    return store_layout(stores, tables).counts()


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


class VolumeDataset(torch.utils.data.Dataset):
    """Volumes of normalized stores on the model's grid of their modality.

    Item ``n`` is ``(modality, volume)``, ``volume`` float32 on ``shapes[modality]``: the
    store's grid downsampled by ``resample[modality]``, then cropped or padded
    (:mod:`bidstrain.train.resample`), zero outside the store's mask. A batch
    (:meth:`batch`) reads each store once and writes each volume's masked voxels once,
    straight into the batch tensors: views of one block, a new one per call or the
    loader's reused buffer (:class:`LoaderBatches`).

    Parameters
    ----------
    stores : mapping
        ``{modality: [store path, ...]}``.
    shapes : mapping
        ``{modality: (x, y, z)}`` (``train.shapes``).
    resample : mapping, optional
        ``{modality: factor}`` (``train.resample``); 1 (no resampling) when missing.
    tables : sequence of str
        Normalize tables giving the volume counts (:func:`store_layout`).
    max_open_stores : int
        Stores a process keeps open at once (``train.max_open_stores``).
    chunk_cache : int
        Decoded volumes of compressed stores a process keeps (:mod:`.reader`).
    """

    def __init__(
        self,
        stores: Mapping[str, Sequence[str]],
        shapes: Mapping[str, Sequence[int]],
        *,
        resample: Mapping[str, int] | None = None,
        tables: Sequence[str] = (),
        max_open_stores: int = 64,
        chunk_cache: int = 512,
    ):
        self.layout = store_layout(stores, tables)
        self.shapes = {m: tuple(int(n) for n in shapes[m]) for m in stores}
        self.resample = {m: int((resample or {}).get(m, 1)) for m in stores}
        self.max_open_stores = max_open_stores
        self.chunk_cache = chunk_cache
        self._open: OpenStores | None = None

    def __len__(self) -> int:
        return len(self.layout)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_open": None}

    @property
    def open_stores(self) -> OpenStores:
        """The stores this process has open."""
        if self._open is None:
            self._open = OpenStores(self.max_open_stores, self.chunk_cache)
        return self._open

    def __getitem__(self, index: int) -> tuple[str, np.ndarray]:
        ((modality, volumes),) = self.batch([index]).items()
        return modality, volumes[0, 0].numpy()

    def batch(
        self, indices: Sequence[int], out: BatchBuffer | None = None
    ) -> dict[str, torch.Tensor]:
        """Samples ``indices`` grouped by modality: ``{modality: tensor (n, 1, x, y, z)}``
        in :data:`MODALITIES` order, each modality's samples in the order of ``indices``.

        Parameters
        ----------
        indices : sequence of int
        out : BatchBuffer, optional
            Where to write the batch (the loader's ring, :mod:`.buffers`); the tensors are
            views of it. By default a new zeroed block (in shared memory in a worker).
        """
        indices = np.asarray(indices, dtype=np.int64)
        layout = self.layout
        store, time = layout.locate(indices)
        codes = layout.modality[store]
        if out is None:
            size = sum(math.prod(self.shapes[MODALITIES[c]]) for c in codes)
            out = BatchBuffer(allocate(size, zero=True), zeroed=True)
        out.start()
        batch = {}
        for code, modality in enumerate(MODALITIES):
            members = np.flatnonzero(codes == code)
            if members.size == 0:
                continue
            shape = self.shapes[modality]
            size = math.prod(shape)
            batch[modality], offset = out.tensor(members.size, shape)
            for s in np.unique(store[members]):
                slots = np.flatnonzero(store[members] == s)
                reader = self.open_stores.get(
                    layout.paths[s], int(layout.volumes[s]), shape, self.resample[modality]
                )
                for slot in slots:
                    region = out.sample(offset + int(slot) * size, reader.grid_map)
                    reader.place(int(time[members[slot]]), region, self.open_stores.cache)
        return batch

    __getitems__ = batch


class LoaderBatches(torch.utils.data.Dataset):
    """What the DataLoader reads: :meth:`VolumeDataset.batch` written into this process's
    :class:`~bidstrain.train.buffers.BatchRing` (made on first use, so a worker makes its
    own in shared memory).

    A batch is valid until the process has written ``slots`` more
    (:func:`~bidstrain.train.buffers.ring_slots`).

    Parameters
    ----------
    dataset : VolumeDataset
    slots : int
        Buffers in the ring.
    batch_size : int
        The most samples a batch holds.
    pin : bool
        Page-locked buffers in the main process (for a GPU).
    """

    def __init__(self, dataset: VolumeDataset, *, slots: int, batch_size: int, pin: bool):
        self.dataset = dataset
        self.slots = slots
        self.size = batch_size * max(math.prod(shape) for shape in dataset.shapes.values())
        self.pin = pin
        self._ring: BatchRing | None = None

    def __len__(self) -> int:
        return len(self.dataset)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_ring": None}

    def __getitems__(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        if self._ring is None:
            pin = self.pin and torch.utils.data.get_worker_info() is None
            self._ring = BatchRing(self.slots, self.size, pin=pin)
        return self.dataset.batch(indices, out=self._ring.next())


def _as_batch(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The DataLoader's ``collate_fn``: :meth:`VolumeDataset.batch` made the batch."""
    return batch


def volume_dataset(
    stores: Mapping[str, Sequence[str]], train: TrainConfig, tables: Sequence[str] = ()
) -> VolumeDataset:
    """The dataset the ``train`` config section describes (shapes, resampling, open stores)."""
    return VolumeDataset(
        stores,
        train.model.shapes,
        resample=train.model.resample,
        tables=tables,
        max_open_stores=train.loader.max_open_stores,
        chunk_cache=2 * (train.loader.shuffle_buffer + train.loader.batch_size),
    )


def dataset_statistics(dataset: VolumeDataset) -> dict[str, tuple[float, float]]:
    """Mean and variance of every modality's volumes as the model sees them (on the
    cropped or padded grid), for ``train.loss.stats: dataset``."""
    sums: dict[str, np.ndarray] = {}
    for start in range(0, len(dataset), 16):
        batch = dataset.batch(range(start, min(start + 16, len(dataset))))
        for modality, volumes in batch.items():
            values = volumes.numpy().astype(np.float64)
            total = sums.setdefault(modality, np.zeros(3))
            total += (values.size, values.sum(), (values**2).sum())
    stats = {}
    for modality, (n, total, squares) in sums.items():
        mean = total / n
        stats[modality] = (float(mean), float(max(squares / n - mean**2, 0.0)))
    return stats


def make_loader(
    dataset: VolumeDataset,
    sampler: torch.utils.data.Sampler,
    train: TrainConfig,
    *,
    device: torch.device,
    num_workers: int | None = None,
) -> torch.utils.data.DataLoader:
    """A DataLoader over ``sampler``'s batches with the ``train`` section's settings.

    Workers are spawned, not forked (a forked worker after Zarr use in the parent can
    hang), persistent, and read ``train.prefetch_factor`` batches ahead each. Each process
    writes its batches into a ring of reused buffers (:class:`LoaderBatches`), sized so
    that a batch stays intact while the step's group of ``train.grad_accum_steps`` batches
    is in use. When ``device`` is a GPU and ``train.pin_memory`` is set, the main process's
    buffers are page-locked, and batches from workers are copied to page-locked memory by
    the DataLoader; the training step then copies them to the GPU without blocking.

    Parameters
    ----------
    sampler : ModalityBatchSampler
        The batches (its ``batch_size`` sizes the buffers).
    num_workers : int, optional
        Overrides ``train.num_workers`` (validation reads in the main process).
    """
    workers = train.loader.num_workers if num_workers is None else num_workers
    pin = bool(train.loader.pin_memory) and device.type == "cuda"
    slots = ring_slots(
        grad_accum_steps=train.optimizer.grad_accum_steps,
        prefetch_factor=train.loader.prefetch_factor,
        workers=workers,
    )
    return torch.utils.data.DataLoader(
        LoaderBatches(dataset, slots=slots, batch_size=sampler.batch_size, pin=pin),
        batch_sampler=sampler,
        collate_fn=_as_batch,
        num_workers=workers,
        multiprocessing_context="spawn" if workers > 0 else None,
        persistent_workers=workers > 0,
        prefetch_factor=train.loader.prefetch_factor if workers > 0 else None,
        pin_memory=pin,
        generator=torch.Generator(),  # its seed draw must not consume the global torch RNG
    )
