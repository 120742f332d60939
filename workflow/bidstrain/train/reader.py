"""Reading volumes of stores in a loader process: a bounded set of open stores.

A :class:`StoreReader` is one open store: its ``data`` array and the :class:`GridMap` of
its mask. Uncompressed stores (``float32``, ``float16``: the shard holds each inner chunk
as plain little-endian values) are read by the byte range of each volume straight from the
shard file (``os.preadv`` into the output buffer), at the page cache's speed: zarr costs
about 0.7 ms of fixed overhead per read here, more than reading a 0.9 MB volume. A float32
store without resampling is read straight onto the model's grid
(:mod:`bidstrain.train.scatter`), the other stores' volumes are read, then placed (a float16
store's converted to float32 first: :func:`as_float32`). Compressed
stores (``bitround-N``) are read through zarr one inner chunk at a time, and the decoded
chunks are kept in a small cache, since the loader's order reads the volumes of a chunk
close together (:mod:`bidstrain.train.sampler`).

:class:`OpenStores` keeps at most ``capacity`` stores open (least recently used first
out), so a loader over 20,000 stores never holds 20,000 sets of open files.

A BOLD window (``train.window`` frames, :mod:`bidstrain.train.windows`) of a float32 store
without resampling is read frame by frame straight onto the model's grid (each frame one
vectored read, as a volume); in other uncompressed stores its frames are one byte range
of the shard, read at once and then placed. A parcel store
(:class:`ParcelReader`) is small and read whole once.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import google_crc32c
import numpy as np
import torch
import zarr

from bidstrain.errors import BidstrainError
from bidstrain.io.shards import ABSENT, check_layout
from bidstrain.io.store import CONSOLIDATED
from bidstrain.train.resample import GridMap
from bidstrain.train.scatter import ScatteredRead

#: Bytes of the CRC32C that ends a shard index.
_CRC_BYTES = 4


def as_float32(rows: np.ndarray) -> np.ndarray:
    """``rows`` (read from a store) as float32 before they are placed on the grid: a
    float16 store's converted by torch, whose vectorized conversion took 0.4 ms for 4.5
    million values here against numpy's 8 ms (numpy 2.4 converts float16 one value at a
    time, also inside the scatter onto the grid)."""
    if rows.dtype == np.float32:
        return rows
    converted = np.empty(rows.shape, dtype=np.float32)
    torch.from_numpy(converted).copy_(torch.from_numpy(np.ascontiguousarray(rows)))
    return converted


class StoreReader:
    """One open store, read volume by volume onto the model's grid.

    Parameters
    ----------
    path : str
        The store.
    volumes : int
        Volumes the plan counted for it (from its normalize table or its metadata): a
        store with another count is an error, since the batch order was drawn from it.
    shape : sequence of int
        The model's grid of its modality.
    factor : int
        Downsampling factor of its modality (``train.resample``).
    """

    def __init__(self, path: str, volumes: int, shape: Sequence[int], factor: int):
        self.path = path
        try:
            group = zarr.open_group(path, mode="r", zarr_format=3, use_consolidated=CONSOLIDATED)
            self.data = group["data"]
            mask = group["mask"][...]
        except (FileNotFoundError, KeyError) as error:
            raise BidstrainError(f"cannot read the store: {error}", path=path) from None
        if self.data.shape[0] != volumes:
            raise BidstrainError(
                f"the store has {self.data.shape[0]} volumes but the training plan counted "
                f"{volumes} (its normalize table is older than the store: rerun the "
                "normalize job of its subject)",
                path=path,
            )
        self.grid_map = GridMap(mask, shape, factor)
        #: The model grid's voxels that hold data (:mod:`bidstrain.train.validity`).
        self.valid_bits = self.grid_map.valid_bits
        self.chunk = self.data.chunks[0]
        self._shards: dict[int, tuple[int, np.ndarray]] = {}
        self._direct = _plain_layout(self.data)
        self._per_shard = self.data.shards[0] if self._direct else 0
        self._volume_bytes = self.data.shape[1] * self.data.dtype.itemsize
        self._scattered = (
            ScatteredRead(self.grid_map)
            if self._direct and self.data.dtype == np.float32 and factor == 1
            else None
        )

    def close(self) -> None:
        """Close the shard files this reader opened."""
        for fd, _ in self._shards.values():
            os.close(fd)
        self._shards.clear()

    def read(self, times: Sequence[int], cache: ChunkCache) -> np.ndarray:
        """Volumes ``times`` (store voxels), float32 or the store's float16."""
        rows = np.empty((len(times), self.data.shape[1]), dtype=self.data.dtype)
        for n, t in enumerate(times):
            if self._direct:
                self._read_direct(int(t), rows[n])
                continue
            index, offset = divmod(int(t), self.chunk)
            key = (self.path, index)
            chunk = cache.get(key)
            if chunk is None:
                chunk = self.data[index * self.chunk : (index + 1) * self.chunk]
                cache.put(key, chunk)
            rows[n] = chunk[offset]
        return rows

    def place(self, t: int, out: np.ndarray, cache: ChunkCache) -> None:
        """Write volume ``t`` onto ``out`` (the model's grid, C-contiguous float32, 0 where
        :attr:`grid_map` writes nothing), as :meth:`GridMap.place` of :meth:`read` does;
        float32 stores without resampling by one vectored read straight into ``out``."""
        located = None if self._scattered is None else self._locate(t)
        # A short vectored read (the file ends early, or a network file system returned
        # less): the plain read decides whether the shard is truncated.
        if (
            located is None
            or self._scattered(located[1], located[2], out) != self._scattered.nbytes
        ):
            self.grid_map.place(as_float32(self.read([t], cache))[0], out)

    def place_window(self, start: int, regions: Sequence[np.ndarray], cache: ChunkCache) -> None:
        """Write frames ``start, start + 1, ...`` onto ``regions`` (one per frame), as
        :meth:`place` does; frames that are not read straight onto the grid are read
        together (:meth:`read_window`)."""
        if self._scattered is not None:
            for n, region in enumerate(regions):
                self.place(start + n, region, cache)
            return
        rows = as_float32(self.read_window(start, len(regions), cache))
        for row, region in zip(rows, regions, strict=True):
            self.grid_map.place(row, region)

    def read_window(self, start: int, frames: int, cache: ChunkCache) -> np.ndarray:
        """Volumes ``start .. start + frames - 1`` (store voxels): one read of their byte
        range where they are consecutive bytes of one uncompressed shard (its inner chunks
        lie in order, so across inner chunks too), else :meth:`read`."""
        if self._direct and frames > 1:
            first, last = self._locate(start), self._locate(start + frames - 1)
            if (
                first is not None
                and last is not None
                and first[0] == last[0]
                and last[2] - first[2] == (frames - 1) * self._volume_bytes
            ):
                rows = np.empty((frames, self.data.shape[1]), dtype=self.data.dtype)
                if os.preadv(first[1], [rows], first[2]) == rows.nbytes:
                    return rows
        return self.read(range(start, start + frames), cache)

    def _read_direct(self, t: int, row: np.ndarray) -> None:
        located = self._locate(t)
        if located is None:
            row[...] = self.data.fill_value
        elif os.preadv(located[1], [row], located[2]) != row.nbytes:
            raise BidstrainError(f"shard {located[0]} of data is truncated", path=self.path)

    def _locate(self, t: int) -> tuple[int, int, int] | None:
        """Shard, open shard file and byte position of volume ``t`` of an uncompressed
        store; None where its inner chunk is absent (the fill value)."""
        shard, within = divmod(t, self._per_shard)
        index, offset = divmod(within, self.chunk)
        fd, chunk_offsets = self._shard(shard)
        start = chunk_offsets[index]
        if start == ABSENT:
            return None
        return shard, fd, int(start) + offset * self._volume_bytes

    def _shard(self, shard: int) -> tuple[int, np.ndarray]:
        """The open shard file and the byte offset of each of its inner chunks."""
        if shard not in self._shards:
            file = Path(self.path, "data", "c", str(shard), *["0"] * (self.data.ndim - 1))
            fd = os.open(file, os.O_RDONLY)
            n_chunks = self.data.shards[0] // self.chunk
            size = os.fstat(fd).st_size
            index_bytes = 16 * n_chunks
            raw = os.pread(fd, index_bytes + _CRC_BYTES, size - index_bytes - _CRC_BYTES)
            checksum = int.from_bytes(raw[index_bytes:], "little")
            if (
                len(raw) != index_bytes + _CRC_BYTES
                or google_crc32c.value(raw[:index_bytes]) != checksum
            ):
                os.close(fd)
                raise BidstrainError(f"shard index of {file} is corrupt", path=self.path)
            entries = np.frombuffer(raw[:index_bytes], dtype="<u8").reshape(n_chunks, 2)
            self._shards[shard] = (fd, entries[:, 0].copy())
        return self._shards[shard]


class ParcelReader:
    """One open parcel store (:func:`bidstrain.io.store.write_parcel_store`): its ``data``
    (frames x parcels, one small chunk) read once into memory, and which parcels hold
    data (:attr:`valid_bits`: a coverage above 0; a parcel with no voxel in the run's mask,
    or in none of an average's subjects' runs, is 0 and holds none).

    Parameters
    ----------
    path : str
    volumes : int
        Frames the plan counted for it (an error when the store has another count).
    """

    def __init__(self, path: str, volumes: int):
        self.path = path
        try:
            group = zarr.open_group(path, mode="r", zarr_format=3, use_consolidated=CONSOLIDATED)
            self.data = np.asarray(group["data"][...], dtype=np.float32)
            self.valid_bits = np.packbits(np.asarray(group["coverage"][...]) > 0)
        except (FileNotFoundError, KeyError) as error:
            raise BidstrainError(f"cannot read the parcel store: {error}", path=path) from None
        if self.data.shape[0] != volumes:
            raise BidstrainError(
                f"the parcel store has {self.data.shape[0]} frames but the training plan "
                f"counted {volumes} (rerun the normalize job of its subject)",
                path=path,
            )

    def window(self, start: int, out: np.ndarray) -> None:
        """Write frames ``start .. start + len(out) - 1`` into ``out`` (frames x parcels)."""
        out[...] = self.data[start : start + len(out)]

    def close(self) -> None:
        """Nothing to close: the values are in memory."""


def _plain_layout(array: zarr.Array) -> bool:
    """Whether the shard holds each inner chunk as plain little-endian values (no
    compression, no filter), the layout :class:`~bidstrain.io.shards.ShardStream` writes."""
    (sharding,) = array.metadata.codecs
    codecs = sharding.to_dict()["configuration"]["codecs"]
    plain = [dict(c) for c in codecs] == [{"name": "bytes", "configuration": {"endian": "little"}}]
    if plain:
        check_layout(array)
    return plain and array.dtype in (np.float32, np.float16)


class ChunkCache:
    """Decoded inner chunks of compressed stores, the least recently used dropped first
    once they hold more than ``capacity`` volumes."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self._chunks: OrderedDict[tuple[str, int], np.ndarray] = OrderedDict()
        self._volumes = 0

    def get(self, key: tuple[str, int]) -> np.ndarray | None:
        """The chunk ``(store, chunk index)``, made the most recently used; None when
        not cached."""
        chunk = self._chunks.get(key)
        if chunk is not None:
            self._chunks.move_to_end(key)
        return chunk

    def put(self, key: tuple[str, int], chunk: np.ndarray) -> None:
        """Cache a chunk, dropping the least recently used ones beyond the capacity in
        volumes (never the last one)."""
        self._chunks[key] = chunk
        self._volumes += len(chunk)
        while self._volumes > self.capacity and len(self._chunks) > 1:
            _, dropped = self._chunks.popitem(last=False)
            self._volumes -= len(dropped)


class OpenStores:
    """At most ``capacity`` open :class:`StoreReader`, least recently used closed first."""

    def __init__(self, capacity: int, chunk_cache: int):
        self.capacity = capacity
        self.cache = ChunkCache(chunk_cache)
        self._readers: OrderedDict[str, StoreReader | ParcelReader] = OrderedDict()
        #: Stores opened so far (reopenings included): what the bound costs.
        self.opened = 0

    def get(
        self, path: str, volumes: int, shape: Sequence[int], factor: int
    ) -> StoreReader | ParcelReader:
        """The reader of ``path``, opened if it is not: a :class:`ParcelReader` when
        ``shape`` has one axis (parcels), else a :class:`StoreReader`."""
        reader = self._readers.get(path)
        if reader is not None:
            self._readers.move_to_end(path)
            return reader
        if len(shape) == 1:
            reader = ParcelReader(path, volumes)
        else:
            reader = StoreReader(path, volumes, shape, factor)
        self.opened += 1
        self._readers[path] = reader
        while len(self._readers) > self.capacity:
            _, oldest = self._readers.popitem(last=False)
            oldest.close()
        return reader

    def __len__(self) -> int:
        return len(self._readers)

    def close(self) -> None:
        """Close every reader."""
        while self._readers:
            self._readers.popitem()[1].close()
