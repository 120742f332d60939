"""The order of an epoch's samples: random, yet read a few stores and chunks at a time.

For a seed and an epoch, every rank draws the same order of all samples and takes its own
contiguous share. The order is built so that a loader reads few stores at once and each
inner chunk of a store while it is still cached (webdataset's shard shuffling, with
stores as shards):

1. the stores are shuffled and taken ``store_group`` at a time;
2. within a group, the inner chunks of its stores (``StoreLayout.chunk`` volumes each) are
   shuffled, and their volumes laid end to end;
3. the resulting sequence is shuffled within consecutive windows of ``shuffle_buffer``
   samples (a shuffle buffer), so a batch mixes volumes of several chunks and stores.

With ``store_group`` and ``shuffle_buffer`` at least the number of stores and samples, the
order is a uniform permutation. ``single_modality`` batching builds one such sequence per
modality, cuts each into batches, and interleaves the batches at random, each modality's
in its own order.

The order is drawn over sample *slots* (a BOLD store's windows, the same number every
epoch; a chunk of samples holds about one inner chunk of frames); the batches hold the
global index of each sample's first frame, its window shifted by the epoch's offset
(:mod:`bidstrain.train.windows`). Without windows a slot is its frame.

Resuming is exact: the order and the window offsets depend only on ``(seed, epoch)`` and
the settings, and :meth:`ModalityBatchSampler.set_epoch` skips the batches already
consumed.
"""

from __future__ import annotations

import numpy as np
import torch

from bidstrain.config import TrainConfig
from bidstrain.modalities import MODALITIES
from bidstrain.train.data import BATCHINGS, StoreLayout, batches_per_epoch
from bidstrain.train.windows import draw_offsets


def epoch_order(
    layout: StoreLayout,
    stores: np.ndarray,
    rng: np.random.Generator,
    *,
    store_group: int,
    shuffle_buffer: int,
) -> np.ndarray:
    """Sample slots of ``stores`` (indices into ``layout``) in the order described in
    the module docstring."""
    stores = rng.permutation(stores)
    samples, chunks = layout.samples, layout.chunk_samples
    n_chunks = -(-samples[stores] // chunks[stores])
    unit_store = np.repeat(stores, n_chunks)
    first_unit = np.cumsum(n_chunks) - n_chunks
    unit_index = np.arange(unit_store.size) - np.repeat(first_unit, n_chunks)
    unit_group = np.repeat(np.arange(stores.size) // store_group, n_chunks)
    units = np.lexsort((rng.random(unit_store.size), unit_group))
    unit_store, unit_index = unit_store[units], unit_index[units]
    chunk = chunks[unit_store]
    start = layout.sample_offsets[unit_store] + unit_index * chunk
    length = np.minimum(chunk, samples[unit_store] - unit_index * chunk)
    order = _expand(start, length)
    return _window_shuffle(order, shuffle_buffer, rng)


def _expand(start: np.ndarray, length: np.ndarray) -> np.ndarray:
    """``concatenate([arange(s, s + n) for s, n in zip(start, length)])``, vectorized."""
    before = np.cumsum(length) - length
    return np.arange(int(length.sum()), dtype=np.int64) + np.repeat(start - before, length)


def _window_shuffle(order: np.ndarray, window: int, rng: np.random.Generator) -> np.ndarray:
    """``order`` shuffled within consecutive windows of ``window`` entries."""
    if window <= 1 or order.size == 0:
        return order
    padded = np.full(-(-order.size // window) * window, -1, dtype=np.int64)
    padded[: order.size] = order
    shuffled = rng.permuted(padded.reshape(-1, window), axis=1).ravel()
    return shuffled[shuffled >= 0]


def _pad(order: np.ndarray, multiple: int) -> np.ndarray:
    """Repeat ``order`` from its start until its length is a multiple of ``multiple``."""
    missing = -len(order) % multiple
    return np.concatenate([order, np.resize(order, missing)]) if missing else order


class ModalityBatchSampler(torch.utils.data.Sampler):
    """Batches of sample indices, different on every rank, the same count on every rank.

    Parameters
    ----------
    layout : StoreLayout
        The dataset's stores (``VolumeDataset.layout``).
    batch_size : int
    batching : {"mixed", "single_modality"}
    rank, world_size : int
    seed : int
    store_group, shuffle_buffer : int
        ``train.store_group`` and ``train.shuffle_buffer`` (module docstring).
    pad : bool
        Repeat samples so that every rank has as many batches (training: the ranks step
        together); without, ``mixed`` batching deals each sample to one rank once, and a
        rank may have one batch fewer (validation, where each sample counts once).
    """

    def __init__(
        self,
        layout: StoreLayout,
        *,
        batch_size: int,
        batching: str,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        store_group: int,
        shuffle_buffer: int,
        pad: bool = True,
    ):
        if batching not in BATCHINGS:
            raise ValueError(f"batching must be one of {BATCHINGS}, got {batching!r}")
        if not pad and batching != "mixed":
            raise ValueError("only mixed batching deals samples without padding")
        self.layout = layout
        self.batch_size = batch_size
        self.batching = batching
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.store_group = store_group
        self.shuffle_buffer = shuffle_buffer
        self.pad = pad
        self.epoch = 0
        self.start = 0
        if pad:
            self.n_batches = batches_per_epoch(
                layout.counts(), batch_size=batch_size, batching=batching, world_size=world_size
            )
        else:  # np.array_split's share of this rank
            total = sum(layout.counts().values())
            share = total // world_size + (rank < total % world_size)
            self.n_batches = -(-share // batch_size)

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Draw the order of ``epoch`` and skip its first ``start`` batches."""
        self.epoch, self.start = epoch, start

    def __len__(self) -> int:
        return self.n_batches - self.start

    def _order(self, stores: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return epoch_order(
            self.layout,
            stores,
            rng,
            store_group=self.store_group,
            shuffle_buffer=self.shuffle_buffer,
        )

    def rank_batches(self) -> tuple[np.ndarray, np.ndarray]:
        """This rank's batches of the current epoch: the samples of all of them in order
        (the global index of each one's first frame), and the ``n_batches + 1`` bounds of
        each batch in that array."""
        slots, bounds = self._rank_slots()
        offsets = draw_offsets(self.layout.slack(), self.seed, self.epoch)
        return self.layout.starts(slots, offsets), bounds

    def _rank_slots(self) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng([self.seed, self.epoch])
        every_store = np.arange(len(self.layout.paths))
        size, world = self.batch_size, self.world_size
        if self.batching == "mixed":
            order = self._order(every_store, rng)
            if not self.pad:
                mine = np.array_split(order, world)[self.rank]
                return mine, np.append(np.arange(0, len(mine), size), len(mine))
            order = _pad(order, world)
            share = len(order) // world
            mine = order[self.rank * share : (self.rank + 1) * share]
            return mine, np.append(np.arange(0, share, size), share)
        orders = [
            self._order(every_store[self.layout.modality == code], rng)
            for code in range(len(MODALITIES))
        ]
        starts, lengths = [], []  # of each stream's batches, in the concatenated orders
        base = 0
        for order in orders:
            first = np.arange(0, len(order), size)
            starts.append(base + first)
            lengths.append(np.minimum(size, len(order) - first))
            base += len(order)
        labels = rng.permutation(np.repeat(np.arange(len(orders)), [len(s) for s in starts]))
        chosen_start = np.empty(labels.size, dtype=np.int64)
        chosen_length = np.empty(labels.size, dtype=np.int64)
        for code, (first, length) in enumerate(zip(starts, lengths, strict=True)):
            slots = np.flatnonzero(labels == code)  # its batches, in its own order
            chosen_start[slots], chosen_length[slots] = first, length
        picked = _pad(np.arange(labels.size), world)
        share = len(picked) // world
        mine = picked[self.rank * share : (self.rank + 1) * share]
        flat = np.concatenate(orders)[_expand(chosen_start[mine], chosen_length[mine])]
        return flat, np.append(0, np.cumsum(chosen_length[mine]))

    def __iter__(self):
        flat, bounds = self.rank_batches()
        for n in range(self.start, len(bounds) - 1):
            yield flat[bounds[n] : bounds[n + 1]].tolist()


def batch_sampler(
    layout: StoreLayout,
    train: TrainConfig,
    *,
    batching: str | None = None,
    rank: int = 0,
    world_size: int = 1,
    pad: bool = True,
) -> ModalityBatchSampler:
    """The sampler the ``train`` config section describes (``batching`` overrides
    ``train.batching``: validation reads ``mixed``, without ``pad``)."""
    return ModalityBatchSampler(
        layout,
        batch_size=train.loader.batch_size,
        batching=batching or train.loader.batching,
        rank=rank,
        world_size=world_size,
        seed=train.run.seed,
        store_group=train.loader.store_group,
        shuffle_buffer=train.loader.shuffle_buffer,
        pad=pad,
    )
