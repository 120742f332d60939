"""Batch buffers: where the loader writes model input, once per sample.

A :class:`BatchBuffer` is one flat float32 block that a batch's tensors are views of (each
modality's samples one after the other, in the order the batch lists them). A loader
process writes its batches into a :class:`BatchRing` of such buffers, allocated once and
reused: a DataLoader worker's in shared memory that the main process allocated
(:mod:`.worker_batches`: a batch reaches the main process without a copy), the main
process's own page-locked when the batches go to a GPU (the copy to the GPU then does not
block), else plain memory.

A reused buffer keeps what the previous batch wrote, and a sample rewrites only its masked
voxels: where the previous batch put a volume of the same grid, it was 0 outside the union
of the masks written so far (a :class:`Footprint`), so only the voxels of that union that
the new volume's :class:`~bidstrain.train.resample.GridMap` does not write are zeroed
(none for the same mask); any other region is zeroed whole, but for the part of the block
that no batch has written yet: plain and shared memory come zeroed from the kernel.

A buffer's first batch costs more than the next ones: the kernel provides and zeroes each
page on its first write (measured on a 2-core machine: about 1-2 GB/s for plain memory,
less for shared memory, against 10-20 GB/s for a write into pages already there). A ring is made
once per loader process, so this is paid once per training run (``slots`` buffers of
``batch_size`` samples: 165 MB each for two 20-frame windows on the MNI 2 mm grid).

Lifetime: a batch stays valid until its process has written ``slots`` more batches (the
ring's buffers are used in turn). :func:`~bidstrain.train.ring_size.ring_slots` gives the
number of slots that keeps every batch the training step can still read intact, and
:func:`~bidstrain.train.ring_size.loader_bytes` the bytes of a loader's rings.
"""

from __future__ import annotations

import math
import mmap
from collections.abc import Hashable, Sequence

import numpy as np
import torch

from bidstrain.train.resample import GridMap


def allocate(size: int, *, pin: bool = False) -> tuple[torch.Tensor, bool]:
    """A flat float32 tensor of ``size`` elements for batches of this process, and whether
    it is all zeros.

    Page-locked when ``pin`` (which needs CUDA): then it may hold a previous block's
    values. Otherwise plain memory: zeros that the kernel provides page by page on first
    write (no pass over the block here).
    """
    if pin:
        return torch.empty(size, dtype=torch.float32, pin_memory=True), False
    # Anonymous pages of their own: numpy's large arrays ask for transparent huge pages,
    # whose first write can stall the loader for the kernel's memory compaction.
    block = mmap.mmap(-1, 4 * max(size, 1))
    return torch.from_numpy(np.frombuffer(block, dtype=np.float32)[:size]), True


def shared_block(size: int) -> torch.Tensor:
    """A flat float32 tensor of ``size`` zeros in shared memory (a file descriptor that a
    spawned process receives with its arguments); the kernel provides its pages on first
    write."""
    empty = torch.empty(0, dtype=torch.float32)
    return empty.new(empty._typed_storage()._new_shared(size, device=empty.device))


class Footprint:
    """The grid voxels that the maps of one grid, written into a ring so far, write (their
    union): a sample region of that grid in the ring's buffers is 0 outside it.

    Parameters
    ----------
    size : int
        Voxels of the grid.
    """

    def __init__(self, size: int):
        self.voxels = np.zeros(size, dtype=bool)
        self._rest: dict[Hashable, np.ndarray] = {}

    def rest(self, grid_map: GridMap) -> np.ndarray:
        """The flat indices of the footprint that ``grid_map`` does not write, after adding
        the voxels it writes to the footprint."""
        rest = self._rest.get(grid_map.key)
        if rest is None:
            if not self.voxels[grid_map.target].all():
                self.voxels[grid_map.target] = True
                self._rest.clear()  # the footprint grew: every map's rest with it
            outside = self.voxels.copy()
            outside[grid_map.target] = False
            rest = self._rest[grid_map.key] = np.flatnonzero(outside)
        return rest


class BatchBuffer:
    """One batch's memory: tensors carved from a flat block, samples written in place.

    Parameters
    ----------
    flat : torch.Tensor
        float32, one dimension: the block.
    zeroed : bool
        Whether ``flat`` is all zeros (no region that no batch wrote needs zeroing).
    footprints : dict, optional
        ``{grid shape: Footprint}`` of the ring the buffer belongs to; None for a buffer
        written once (every region it gives out is zeroed whole unless ``zeroed``).
    """

    def __init__(
        self,
        flat: torch.Tensor,
        *,
        zeroed: bool = False,
        footprints: dict[tuple[int, ...], Footprint] | None = None,
    ):
        self.flat = flat
        self._values = flat.numpy()
        self._footprints = footprints
        # map key by region start (None: values written whole), previous batch
        self._written: dict[int, Hashable | None] = {}
        self._writing: dict[int, Hashable | None] = {}  # the same for this batch
        self._used = 0
        #: The block is 0 from here on (no batch before this one wrote there).
        self._clean = 0 if zeroed else self._values.size

    def start(self) -> None:
        """Begin a new batch: its tensors start at the beginning of the block."""
        if self._writing:
            self._written, self._writing = self._writing, {}
        self._clean = max(self._clean, self._used)
        self._used = 0

    def tensor(self, count: int, shape: Sequence[int], frames: int = 1) -> tuple[torch.Tensor, int]:
        """The next ``(count, frames, *shape)`` tensor of the batch and its offset in the
        block."""
        size = count * frames * math.prod(shape)
        offset = self._claim(size)
        return self.flat[offset : offset + size].view(count, frames, *shape), offset

    def bits(self, count: int, nbytes: int) -> torch.Tensor:
        """The next ``(count, nbytes)`` uint8 tensor of the batch (validity bits,
        :mod:`.validity`), in whole float32 values of the block, written whole by the
        caller: recorded as written without a map, as :meth:`values`."""
        words = -(-count * nbytes // 4)
        offset = self._claim(words)
        self._writing[offset] = None
        flat = self.flat[offset : offset + words].view(torch.uint8)
        return flat[: count * nbytes].view(count, nbytes)

    def _claim(self, size: int) -> int:
        """The offset of the next ``size`` values of the batch, now taken."""
        offset = self._used
        if offset + size > self._values.size:
            raise ValueError(
                f"a batch of {offset + size} values does not fit a buffer of {self._values.size}"
            )
        self._used += size
        return offset

    def values(self, offset: int, size: int) -> np.ndarray:
        """``size`` values of the block at ``offset``, written whole by the caller (no
        zeroing: parcel windows have no voxels outside a mask). The region is recorded as
        written without a map, so a volume placed there by a later batch is zeroed whole."""
        self._writing[offset] = None
        return self._values[offset : offset + size]

    def sample(self, offset: int, grid_map: GridMap) -> np.ndarray:
        """The region at ``offset`` for a volume that ``grid_map`` places, 0 wherever the
        map writes nothing.

        A region where no batch wrote yet in a zeroed block is left as it is. A region
        that the previous batch wrote on the same grid is 0 outside the grid's
        :class:`Footprint`: only the footprint's voxels that ``grid_map`` does not write
        are zeroed (none when the previous volume had the same map). Any other region is
        zeroed whole."""
        region = self._values[offset : offset + grid_map.size]
        rest = None
        if self._footprints is not None:
            footprint = self._footprints.get(grid_map.shape)
            if footprint is None:
                footprint = self._footprints[grid_map.shape] = Footprint(grid_map.size)
            rest = footprint.rest(grid_map)  # every map written into the ring joins it
        if offset < self._clean:
            previous = self._written.get(offset)
            if rest is None or previous is None or previous[0] != grid_map.shape:
                region.fill(0)
            elif previous != grid_map.key:
                region[rest] = 0
        self._writing[offset] = grid_map.key
        return region


class BatchRing:
    """``slots`` :class:`BatchBuffer` of ``size`` float32 values each, used in turn
    (see the module docstring for how long a batch stays valid).

    Parameters
    ----------
    slots, size : int
    pin : bool
        Page-locked buffers (for a GPU).
    block : torch.Tensor, optional
        ``slots * size`` float32 zeros to carve the buffers from (a worker's ring, which
        the main process allocated: :func:`shared_block`); by default each buffer is
        allocated here (:func:`allocate`).
    """

    def __init__(
        self, slots: int, size: int, *, pin: bool = False, block: torch.Tensor | None = None
    ):
        footprints: dict[tuple[int, ...], Footprint] = {}
        self.buffers = []
        for slot in range(slots):
            if block is None:
                flat, zeroed = allocate(size, pin=pin)
            else:
                flat, zeroed = block[slot * size : (slot + 1) * size], True
            self.buffers.append(BatchBuffer(flat, zeroed=zeroed, footprints=footprints))
        self._next = 0

    def next(self) -> BatchBuffer:
        """The buffer for the next batch (the oldest batch's)."""
        buffer = self.buffers[self._next]
        self._next = (self._next + 1) % len(self.buffers)
        buffer.start()
        return buffer
