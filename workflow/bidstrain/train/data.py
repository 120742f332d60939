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
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from bidstrain.config import TrainConfig
from bidstrain.errors import BidstrainError
from bidstrain.io.scans_table import read_tables
from bidstrain.io.store import chunk_volumes, read_dims, read_meta, read_segments
from bidstrain.modalities import MODALITIES
from bidstrain.train.buffers import BatchBuffer, BatchRing, allocate
from bidstrain.train.reader import OpenStores, ParcelReader
from bidstrain.train.ring_size import loader_bytes, ring_slots, validity_bytes, validity_words
from bidstrain.train.stimulus_windows import StimulusWindows
from bidstrain.train.stop import ignore_stop_signals, start_resource_tracker
from bidstrain.train.validity import split, valid_key
from bidstrain.train.windows import window_counts
from bidstrain.train.worker_batches import RingBatch, WorkerRings

BATCHINGS = ("mixed", "single_modality")


@dataclass(frozen=True)
class StoreLayout:
    """Where the samples are: the stores, in :data:`MODALITIES` order and then in the
    order given, their frames, and the samples (volumes, or BOLD windows) of each.

    A sample is named by its *slot* (``0 .. len(layout) - 1``, the same in every epoch;
    ``sample_offsets`` gives each store's first) and read by the global index of its first
    frame (``offsets``), which :meth:`starts` gives for an epoch's window offsets
    (:mod:`bidstrain.train.windows`). With windows of 1 frame a slot is its frame. The
    attributes after ``modalities`` may be left out: every store is then one segment of
    single-frame samples.

    Attributes
    ----------
    paths : tuple of str
    modality : ndarray of int8
        Index in :data:`MODALITIES` of each store's modality.
    volumes : ndarray of int64
        Frames (volumes) of each store's ``data``.
    chunk : ndarray of int64
        Volumes per inner chunk of each store (the unit the batch order groups reads by).
    offsets : ndarray of int64
        Index of each store's first frame; ``offsets[-1]`` is the number of frames.
    modalities : tuple of str
        The modalities the layout was asked for (some may have no store).
    window, stride : ndarray of int64
        Frames per sample of each store and frames between two of its windows' starts
        (1 and 1 for T1w and DWI).
    segment_store, segment_start, segment_length : ndarray of int64
        Every segment (consecutive valid frames) of every store, in store order: its
        store, its first frame in the store, its frames.
    segment_windows : ndarray of int64
        Windows of each segment (:func:`~bidstrain.train.windows.window_counts`).
    sample_offsets : ndarray of int64
        Slot of each store's first sample; ``sample_offsets[-1]`` is ``len(layout)``.
    invalid : ndarray of int64
        Frames of each BOLD store's time grid left out of its ``data``: dropped by the
        sample mask or the time resampling, or, in a cross-subject average, valid in
        fewer than ``average.min_subjects`` subjects (from the normalize tables, or the
        store's attributes where tables are given and do not list it, as for averages;
        0 without tables, and for T1w and DWI).
    """

    paths: tuple[str, ...]
    modality: np.ndarray
    volumes: np.ndarray
    chunk: np.ndarray
    offsets: np.ndarray
    modalities: tuple[str, ...]
    window: np.ndarray | None = None
    stride: np.ndarray | None = None
    segment_store: np.ndarray | None = None
    segment_start: np.ndarray | None = None
    segment_length: np.ndarray | None = None
    segment_windows: np.ndarray | None = None
    sample_offsets: np.ndarray | None = None
    invalid: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.invalid is None:
            object.__setattr__(self, "invalid", np.zeros(len(self.paths), dtype=np.int64))
        if self.sample_offsets is not None:
            return
        # no windows given: every store one segment of single-frame samples
        n = len(self.paths)
        ones = np.ones(n, dtype=np.int64)
        for name, value in (
            ("window", ones),
            ("stride", ones),
            ("segment_store", np.arange(n, dtype=np.int64)),
            ("segment_start", np.zeros(n, dtype=np.int64)),
            ("segment_length", np.asarray(self.volumes, dtype=np.int64)),
            ("segment_windows", np.asarray(self.volumes, dtype=np.int64)),
            ("sample_offsets", np.asarray(self.offsets, dtype=np.int64)),
        ):
            object.__setattr__(self, name, value)

    def __len__(self) -> int:
        return int(self.sample_offsets[-1])

    @property
    def samples(self) -> np.ndarray:
        """Samples of each store in every epoch."""
        return np.diff(self.sample_offsets)

    @property
    def chunk_samples(self) -> np.ndarray:
        """Samples per unit of the batch order (about one inner chunk of frames)."""
        return np.maximum(1, self.chunk // self.stride)

    def counts(self) -> dict[str, int]:
        """``{modality: samples}`` for every modality of the layout."""
        return {
            m: int(self.samples[self.modality == MODALITIES.index(m)].sum())
            for m in self.modalities
        }

    def slack(self) -> np.ndarray:
        """Per segment, the largest offset of its first window (0 without windows)."""
        window = self.window[self.segment_store]
        stride = self.stride[self.segment_store]
        slack = self.segment_length - window - (self.segment_windows - 1) * stride
        return np.where(self.segment_windows > 0, slack, 0)

    def starts(self, slots: np.ndarray, segment_offsets: np.ndarray | None = None) -> np.ndarray:
        """Global index of the first frame of the samples ``slots``, their segments'
        windows shifted by ``segment_offsets`` (one per segment; none: 0)."""
        slots = np.asarray(slots, dtype=np.int64)
        first_slot = np.cumsum(self.segment_windows) - self.segment_windows
        # the last segment starting at or before the slot: one with windows (a segment
        # without any shares its first slot with the next)
        segment = np.searchsorted(first_slot, slots, side="right") - 1
        store = self.segment_store[segment]
        within = slots - first_slot[segment]
        shift = 0 if segment_offsets is None else segment_offsets[segment]
        frame = self.segment_start[segment] + shift + within * self.stride[store]
        return self.offsets[store] + frame

    def locate(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Store index and frame index of each global frame index."""
        store = np.searchsorted(self.offsets, indices, side="right") - 1
        return store, indices - self.offsets[store]

    def left_out(self) -> dict[str, np.ndarray]:
        """Per store: ``segments`` too short for one window and the ``frames`` they hold
        (every frame of a store with no window at all)."""
        short = self.segment_windows == 0
        n = len(self.paths)
        return {
            "segments": np.bincount(self.segment_store[short], minlength=n),
            "frames": np.bincount(
                self.segment_store[short], weights=self.segment_length[short], minlength=n
            ).astype(np.int64),
        }


def store_layout(
    stores: Mapping[str, Sequence[str]],
    tables: Sequence[str] = (),
    *,
    window: int = 1,
    stride: int | None = None,
) -> StoreLayout:
    """The layout of ``stores`` without opening any store's data.

    Parameters
    ----------
    stores : mapping
        ``{modality: [store path, ...]}``.
    tables : sequence of str
        Normalize tables (:mod:`bidstrain.io.scans_table`): the volumes, masked voxels and
        segments of the stores they list (and of their parcel stores). Stores in none of
        them are counted from their array metadata (:func:`bidstrain.io.store.read_dims`)
        and, with windows, their small ``frame_valid`` array
        (:func:`bidstrain.io.store.read_segments`).
    window, stride : int
        ``train.window`` and ``train.window_stride`` (None: ``window``), for BOLD stores.

    Raises
    ------
    BidstrainError
        When a store's segments do not add up to its volumes (a stale normalize table).
    """
    stride = window if stride is None else stride
    listed, segments_of, invalid_of = {}, {}, {}
    for row in read_tables(tables):
        listed[row.store] = (row.volumes, row.voxels)
        for store in (row.store, row.parcels) if row.parcels else (row.store,):
            if row.segments is not None:
                segments_of[store] = row.segments
            invalid_of[store] = row.invalid_frames or 0
    paths, codes, volumes, chunks, windows, strides, invalid = [], [], [], [], [], [], []
    segment_store, segment_length = [], []
    for code, modality in enumerate(MODALITIES):
        bold = modality == "bold"
        for path in stores.get(modality, ()):
            key = os.path.normpath(path)
            n_time, n_voxel = listed.get(key) or read_dims(path)[:2]
            if not bold or window == 1:
                pieces: Sequence[int] = (n_time,)
            else:
                pieces = segments_of.get(key) or read_segments(path)
                if sum(pieces) != n_time:
                    raise BidstrainError(
                        f"the store has {n_time} frames but its segments {list(pieces)} hold "
                        f"{sum(pieces)} (rerun the normalize job of its subject)",
                        path=path,
                    )
            segment_store.extend([len(paths)] * len(pieces))
            segment_length.extend(pieces)
            paths.append(path)
            codes.append(code)
            volumes.append(n_time)
            chunks.append(chunk_volumes(n_time, n_voxel))
            if bold and tables and key not in invalid_of:
                # the tables leave out a cross-subject average: its attributes say
                invalid.append(read_meta(path).n_invalid_frames)
            else:
                invalid.append(invalid_of.get(key, 0))
            windows.append(window if bold else 1)
            strides.append(stride if bold else 1)
    volumes = np.asarray(volumes, dtype=np.int64)
    window_array = np.asarray(windows, dtype=np.int64)
    stride_array = np.asarray(strides, dtype=np.int64)
    seg_store = np.asarray(segment_store, dtype=np.int64)
    seg_length = np.asarray(segment_length, dtype=np.int64)
    seg_start = seg_length - seg_length  # first frame of each segment within its store
    if seg_length.size:
        before = np.cumsum(seg_length) - seg_length
        store_first = np.concatenate([[0], np.cumsum(volumes)])[seg_store]
        seg_start = before - store_first
    seg_windows = window_counts(seg_length, window_array[seg_store], stride_array[seg_store])
    samples = np.bincount(seg_store, weights=seg_windows, minlength=len(paths)).astype(np.int64)
    return StoreLayout(
        paths=tuple(paths),
        modality=np.asarray(codes, dtype=np.int8),
        volumes=volumes,
        chunk=np.asarray(chunks, dtype=np.int64),
        offsets=np.concatenate([[0], np.cumsum(volumes)]).astype(np.int64),
        modalities=tuple(stores),
        window=window_array,
        stride=stride_array,
        segment_store=seg_store,
        segment_start=seg_start.astype(np.int64),
        segment_length=seg_length,
        segment_windows=seg_windows,
        sample_offsets=np.concatenate([[0], np.cumsum(samples)]).astype(np.int64),
        invalid=np.asarray(invalid, dtype=np.int64),
    )


def sample_counts(
    stores: Mapping[str, Sequence[str]],
    tables: Sequence[str] = (),
    *,
    window: int = 1,
    stride: int | None = None,
) -> dict[str, int]:
    """Number of samples per modality: the volumes (or BOLD windows) of all its stores.

    Parameters
    ----------
    stores : mapping
        ``{modality: [store path, ...]}`` as ``Plan.training`` gives them.
    tables : sequence of str
        Normalize tables giving volume counts without opening stores (:func:`store_layout`).
    window, stride : int
        BOLD windows (:func:`store_layout`).

    Returns
    -------
    dict
        ``{modality: n_samples}`` for every modality of ``stores``.
    """
    return store_layout(stores, tables, window=window, stride=stride).counts()


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
    """Volumes (and BOLD windows) of normalized stores on the model's grid of their
    modality.

    Item ``n`` (the global index of a sample's first frame, :meth:`StoreLayout.starts`) is
    ``(modality, sample)``, ``sample`` float32 of shape ``shapes[modality]``, or
    ``(window, *shapes["bold"])`` for BOLD windows (in a batch every modality has the
    frame axis, 1 but for BOLD windows); each frame the store's grid downsampled by
    ``resample[modality]``, then cropped or padded (:mod:`bidstrain.train.resample`), zero
    outside the store's mask. With ``parcels``, BOLD stores are parcel stores and
    ``shapes["bold"]`` is ``(n_parcels,)``. A batch
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
    window, stride : int
        ``train.window`` and ``train.window_stride`` (:func:`store_layout`).
    stimuli : StimulusWindows, optional
        The stimulus features that come with each BOLD window (``train.stimuli``): a
        batch holds them under each kind's name, ``(n_bold, window, features)``.
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
        window: int = 1,
        stride: int | None = None,
        stimuli: StimulusWindows | None = None,
    ):
        self.layout = store_layout(stores, tables, window=window, stride=stride)
        self.stimuli = stimuli
        self.window = window
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
        """``(modality, sample)``: one volume ``shape``, or a BOLD window ``(window,
        *shape)`` (its stimulus features, if any, are in :meth:`batch`'s)."""
        modality, samples = next(iter(self.batch([index]).items()))
        sample = samples[0] if self.frames(modality) > 1 else samples[0, 0]
        return modality, sample.numpy()

    def frames(self, modality: str) -> int:
        """Frames of one sample of ``modality``."""
        return self.window if modality == "bold" else 1

    def sample_size(self, modality: str) -> int:
        """float32 values of one sample of ``modality`` in a batch buffer, with its
        validity bits (:func:`~bidstrain.train.ring_size.validity_words`)."""
        values = math.prod(self.shapes[modality])
        return self.frames(modality) * values + validity_words(values)

    def largest_sample(self) -> int:
        """float32 values of the largest sample of any modality: what a batch buffer
        holds per sample."""
        return max(self.sample_size(m) for m in self.shapes)

    def batch(
        self, indices: Sequence[int], out: BatchBuffer | None = None
    ) -> dict[str, torch.Tensor]:
        """Samples ``indices`` grouped by modality: ``{modality: tensor (n, frames,
        *shape)}`` in :data:`MODALITIES` order, each modality's samples in the order of
        ``indices`` (global indices of their first frames); then, for each modality, the
        voxels (or parcels) that hold data, under
        :func:`~bidstrain.train.validity.valid_key` (:mod:`bidstrain.train.validity`);
        then the stimulus features.

        Parameters
        ----------
        indices : sequence of int
        out : BatchBuffer, optional
            Where to write the batch (the loader's ring, :mod:`.buffers`); the tensors are
            views of it. By default a new zeroed block.
        """
        indices = np.asarray(indices, dtype=np.int64)
        layout = self.layout
        store, time = layout.locate(indices)
        codes = layout.modality[store]
        if out is None:
            size = sum(self.sample_size(MODALITIES[c]) for c in codes)
            flat, zeroed = allocate(size)
            out = BatchBuffer(flat, zeroed=zeroed)
        out.start()
        batch, validity = {}, {}
        for code, modality in enumerate(MODALITIES):
            members = np.flatnonzero(codes == code)
            if members.size == 0:
                continue
            shape, frames = self.shapes[modality], self.frames(modality)
            size = math.prod(shape)
            batch[modality], offset = out.tensor(members.size, shape, frames)
            validity[valid_key(modality)] = out.bits(members.size, validity_bytes(size))
            valid = validity[valid_key(modality)].numpy()
            for s in np.unique(store[members]):
                slots = np.flatnonzero(store[members] == s)
                reader = self.open_stores.get(
                    layout.paths[s], int(layout.volumes[s]), shape, self.resample[modality]
                )
                valid[slots] = reader.valid_bits
                for slot in slots:
                    first = offset + int(slot) * frames * size
                    start = int(time[members[slot]])
                    if isinstance(reader, ParcelReader):
                        window = out.values(first, frames * size).reshape(frames, size)
                        reader.window(start, window)
                        continue
                    if frames == 1:
                        region = out.sample(first, reader.grid_map)
                        reader.place(start, region, self.open_stores.cache)
                        continue
                    regions = [
                        out.sample(first + frame * size, reader.grid_map) for frame in range(frames)
                    ]
                    reader.place_window(start, regions, self.open_stores.cache)
        batch.update(validity)
        if self.stimuli is not None:
            batch.update(self.stimuli.windows(layout, indices))
        return batch

    __getitems__ = batch


class LoaderBatches(torch.utils.data.Dataset):
    """What the DataLoader reads: :meth:`VolumeDataset.batch` written into this process's
    :class:`~bidstrain.train.buffers.BatchRing`: the main process makes its own on first
    use; a worker writes into the ring the main process allocated for it
    (:class:`~bidstrain.train.worker_batches.WorkerRings`) and returns a
    :class:`~bidstrain.train.worker_batches.RingBatch`, which :class:`RingLoader` makes
    tensors of.

    A batch is valid until its process has written ``slots`` more
    (:func:`~bidstrain.train.ring_size.ring_slots`).

    Parameters
    ----------
    dataset : VolumeDataset
    slots : int
        Buffers in a ring.
    batch_size : int
        The most samples a batch holds.
    pin : bool
        Page-locked buffers in the main process (for a GPU).
    workers : int
        The DataLoader's worker processes (their rings are allocated here).
    """

    def __init__(
        self, dataset: VolumeDataset, *, slots: int, batch_size: int, pin: bool, workers: int = 0
    ):
        self.dataset = dataset
        self.slots = slots
        self.size = batch_size * dataset.largest_sample()
        self.pin = pin
        self.worker_rings = WorkerRings(workers, slots, self.size) if workers else None
        self._ring: BatchRing | None = None

    def __len__(self) -> int:
        return len(self.dataset)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_ring": None}

    def __getitems__(self, indices: Sequence[int]) -> dict[str, torch.Tensor] | RingBatch:
        worker = torch.utils.data.get_worker_info()
        if self._ring is None:
            if worker is None:
                self._ring = BatchRing(self.slots, self.size, pin=self.pin)
            else:
                self._ring = self.worker_rings.ring(worker.id)
        batch = self.dataset.batch(indices, out=self._ring.next())
        return batch if worker is None else self.worker_rings.batch(worker.id, batch)


class RingLoader(torch.utils.data.DataLoader):
    """A DataLoader over :class:`LoaderBatches` that yields every batch as tensors
    (:meth:`~bidstrain.train.worker_batches.RingBatch.tensors` of a worker's)."""

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        return map(_tensors, super().__iter__())


def _tensors(batch: dict[str, torch.Tensor] | RingBatch) -> dict[str, torch.Tensor]:
    return batch.tensors() if isinstance(batch, RingBatch) else batch


def _as_batch(batch: dict[str, torch.Tensor] | RingBatch) -> dict[str, torch.Tensor] | RingBatch:
    """The DataLoader's ``collate_fn``: :class:`LoaderBatches` made the batch."""
    return batch


def volume_dataset(
    stores: Mapping[str, Sequence[str]],
    train: TrainConfig,
    tables: Sequence[str] = (),
    stimuli: Mapping[str, Mapping[str, str]] | None = None,
) -> VolumeDataset:
    """The dataset the ``train`` config section describes (shapes, resampling, open
    stores, BOLD windows; with ``train.bold_input: parcels`` the BOLD stores are parcel
    stores, and ``shapes["bold"]`` is ``(n_parcels,)``: :func:`n_parcels`), with the
    features of ``train.stimuli`` from the aligned stores ``stimuli`` (``{BOLD store:
    {kind: aligned store}}``) checked against the BOLD stores
    (:meth:`~bidstrain.train.stimulus_windows.StimulusWindows.check`)."""
    shapes = dict(train.model.shapes)
    if train.model.bold_input == "parcels" and stores.get("bold"):
        shapes["bold"] = (n_parcels(stores["bold"]),)
    windows = None
    if train.model.stimuli and stores.get("bold"):
        windows = StimulusWindows(stimuli or {}, train.model.stimuli)
    dataset = VolumeDataset(
        stores,
        shapes,
        resample=train.model.resample,
        tables=tables,
        max_open_stores=train.loader.max_open_stores,
        chunk_cache=2 * (train.loader.shuffle_buffer + train.loader.batch_size),
        window=train.model.window,
        stride=train.loader.window_stride,
        stimuli=windows,
    )
    if windows is not None:
        layout = dataset.layout
        bold = np.flatnonzero(layout.modality == MODALITIES.index("bold"))
        windows.check([layout.paths[s] for s in bold], layout.volumes[bold])
    return dataset


def n_parcels(stores: Sequence[str]) -> int:
    """Parcels of the parcel stores ``stores`` (the model's ``n_parcels``), from their
    array metadata.

    Raises
    ------
    BidstrainError
        When a store is not a parcel store, or the stores disagree (parcel stores of
        another atlas).
    """
    counts = {}
    for path in stores:
        n_time, n_parcel, grid = read_dims(path)
        if grid:
            raise BidstrainError(
                "train.bold_input is parcels but this is a voxel store (rerun the plan)",
                path=path,
            )
        counts[path] = n_parcel
    if len(set(counts.values())) > 1:
        raise BidstrainError(
            f"parcel stores of different parcel counts: {sorted(set(counts.values()))} "
            f"(for example {next(iter(counts))}); every store must be of one parcellation"
        )
    return next(iter(counts.values()))


def dataset_statistics(dataset: VolumeDataset) -> dict[str, tuple[float, float]]:
    """Mean and variance of every modality's samples as the model sees them (on the
    cropped or padded grid; the voxels and parcels that hold data only; BOLD windows at
    offset 0), for ``train.loss.stats: dataset``."""
    sums: dict[str, np.ndarray] = {}
    starts = dataset.layout.starts(np.arange(len(dataset)))
    for start in range(0, len(dataset), 16):
        inputs, valid = split(dataset.batch(starts[start : start + 16]))
        for modality, volumes in inputs.items():
            values = volumes.numpy().astype(np.float64)
            if modality in valid:
                values = values[valid[modality].expand_as(volumes).numpy()]
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
    is in use; the workers' rings are shared with the main process, which receives a
    worker's batch as places in its ring (:mod:`~bidstrain.train.worker_batches`). When
    ``device`` is a GPU and ``train.pin_memory`` is set, the main process's buffers are
    page-locked, and batches from workers are copied to page-locked memory by the
    DataLoader; the training step then copies them to the GPU without blocking.

    Parameters
    ----------
    dataset : VolumeDataset
        What the batches are read from.
    sampler : ModalityBatchSampler
        The batches (its ``batch_size`` sizes the buffers).
    train : TrainConfig
        The ``train`` settings (workers, prefetch, accumulation, page-locked memory).
    device : torch.device
        Where the batches go.
    num_workers : int, optional
        Overrides ``train.num_workers`` (validation reads in the main process).
    """
    workers = train.loader.num_workers if num_workers is None else num_workers
    pin = bool(train.loader.pin_memory) and device.type == "cuda"
    if workers > 0:
        start_resource_tracker()
    slots = ring_slots(
        grad_accum_steps=train.optimizer.grad_accum_steps,
        prefetch_factor=train.loader.prefetch_factor,
        workers=workers,
    )
    return RingLoader(
        LoaderBatches(
            dataset, slots=slots, batch_size=sampler.batch_size, pin=pin, workers=workers
        ),
        batch_sampler=sampler,
        collate_fn=_as_batch,
        num_workers=workers,
        multiprocessing_context="spawn" if workers > 0 else None,
        persistent_workers=workers > 0,
        worker_init_fn=ignore_stop_signals if workers > 0 else None,
        prefetch_factor=train.loader.prefetch_factor if workers > 0 else None,
        pin_memory=pin,
        generator=torch.Generator(),  # its seed draw must not consume the global torch RNG
    )


def buffer_bytes(loader: torch.utils.data.DataLoader, train: TrainConfig) -> int:
    """Bytes of the batch buffers that ``loader`` (:func:`make_loader`) allocates, in all
    its processes (:func:`~bidstrain.train.ring_size.loader_bytes`)."""
    dataset = loader.dataset.dataset  # LoaderBatches' VolumeDataset
    return loader_bytes(
        train, dataset.largest_sample(), workers=loader.num_workers, pinned=loader.pin_memory
    )
