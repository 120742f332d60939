"""Batches from DataLoader workers, passed as places in memory the main process shares.

A worker writes its batches into its ring (:class:`~bidstrain.train.buffers.BatchRing`) in
shared memory. Returned as tensors, each batch would reach the main process as a new
shared-memory handle: torch sends the block's file descriptor over a new socket connection
for every batch, about 1 ms whatever the batch's size (on 2 cores one worker then delivered
5,000-8,000 parcel windows of 32 kB per second, against 40,000 from the main process
alone). So the main process allocates every worker's ring before the workers start
(:class:`WorkerRings`; a spawned worker receives its descriptor once, with its arguments),
and a worker returns a :class:`RingBatch`: where each tensor of its batch lies in its ring.
The main process makes the tensors from its own mapping of the same memory
(:meth:`RingBatch.tensors`): no handle, no copy. A batch stays valid as long as in the
worker's ring (:func:`~bidstrain.train.ring_size.ring_slots`).

Tensors of a batch outside the ring (stimulus features) travel as numpy arrays, by value.
"""

from __future__ import annotations

import math
import uuid
import weakref
from dataclasses import dataclass

import numpy as np
import torch

from bidstrain.train.buffers import BatchRing, shared_block

#: ``{token: blocks}``: the rings of the loaders of this (main) process, by
#: :attr:`WorkerRings.token`; what a :class:`RingBatch` names.
_RINGS: dict[str, list[torch.Tensor]] = {}


@dataclass(frozen=True)
class RingBatch:
    """A worker's batch as it travels to the main process.

    Attributes
    ----------
    token : str
        The loader's :attr:`WorkerRings.token`.
    worker : int
        The worker whose ring holds the batch.
    places : dict
        ``{name: (offset, shape, dtype)}``: the tensors in the ring, from ``offset`` of the
        ring viewed as ``dtype`` (float32 samples, uint8 validity bits).
    arrays : dict
        ``{name: array}``: the batch's other tensors.
    """

    token: str
    worker: int
    places: dict[str, tuple[int, tuple[int, ...], torch.dtype]]
    arrays: dict[str, np.ndarray]

    def tensors(self) -> dict[str, torch.Tensor]:
        """The batch in the main process: views of the worker's ring, then the arrays."""
        block = _RINGS[self.token][self.worker]
        batch = {
            name: block.view(dtype)[offset : offset + math.prod(shape)].view(shape)
            for name, (offset, shape, dtype) in self.places.items()
        }
        batch.update({name: torch.from_numpy(array) for name, array in self.arrays.items()})
        return batch

    def pin_memory(self) -> dict[str, torch.Tensor]:
        """The batch copied to page-locked memory (the DataLoader's ``pin_memory``)."""
        return {name: tensor.pin_memory() for name, tensor in self.tensors().items()}


class WorkerRings:
    """The rings of a loader's workers, allocated in shared memory by the main process.

    Parameters
    ----------
    workers : int
        The loader's worker processes: one ring each.
    slots, size : int
        Buffers per ring, float32 values per buffer.
    """

    def __init__(self, workers: int, slots: int, size: int):
        self.token = uuid.uuid4().hex
        self.slots, self.size = slots, size
        self.blocks = [shared_block(slots * size) for _ in range(workers)]
        _RINGS[self.token] = self.blocks
        weakref.finalize(self, _RINGS.pop, self.token, None)

    def ring(self, worker: int) -> BatchRing:
        """``worker``'s ring (in that worker)."""
        return BatchRing(self.slots, self.size, block=self.blocks[worker])

    def batch(self, worker: int, tensors: dict[str, torch.Tensor]) -> RingBatch:
        """``tensors``, a batch that ``worker`` wrote into its ring, as it travels: the
        contiguous tensors in the ring by place, any other by value."""
        block = self.blocks[worker]
        storage = block.untyped_storage().data_ptr()
        places, arrays = {}, {}
        for name, tensor in tensors.items():
            in_ring = tensor.untyped_storage().data_ptr() == storage
            if in_ring and tensor.is_contiguous():
                places[name] = (tensor.storage_offset(), tuple(tensor.shape), tensor.dtype)
            else:
                arrays[name] = tensor.numpy()
        return RingBatch(self.token, worker, places, arrays)
