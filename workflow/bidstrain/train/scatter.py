"""Reading a volume's store voxels from a file straight onto the model's grid.

An uncompressed float32 store holds a volume's masked voxels as one byte range of its
shard file, in C order of the mask. Without resampling (factor 1), each run of those voxels
that lands on consecutive voxels of the model's grid is one buffer of a vectored read
(``preadv``): the kernel copies the page cache's bytes into place, run by run, with no
copy of the volume and no index per voxel (a numpy scatter from a read buffer costs
several times the read itself). Voxels the crop drops are read into a scratch buffer.
``os.preadv`` would need a Python buffer object per run; the buffers here are one
``struct iovec`` array, rebased onto the output for each volume, passed through ctypes.
"""

from __future__ import annotations

import ctypes
import errno
import os

import numpy as np

from bidstrain.train.resample import GridMap

#: ``struct iovec``: a buffer's address and its size in bytes.
_IOVEC = np.dtype([("base", np.uintp), ("len", np.uintp)])
#: The most buffers one ``preadv`` call takes.
_IOV_MAX = os.sysconf("SC_IOV_MAX")

_preadv = ctypes.CDLL(None, use_errno=True).preadv
_preadv.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int, ctypes.c_int64]
_preadv.restype = ctypes.c_ssize_t


class ScatteredRead:
    """One volume's float32 store voxels read from a file onto the grid of ``grid_map``.

    One thread at a time: each call rewrites its iovec array (a loader process reads its
    stores in one thread).

    Parameters
    ----------
    grid_map : GridMap
        Where the store's voxels land; factor 1 (a block mean needs the values first).
    """

    def __init__(self, grid_map: GridMap):
        if grid_map.factor != 1:
            raise ValueError("a scattered read places voxels one to one (factor 1)")
        n_voxel = grid_map.n_voxel
        target = np.full(n_voxel, -1, dtype=np.int64)  # grid voxel of each store voxel
        target[slice(None) if grid_map.source is None else grid_map.source] = grid_map.target
        kept = target >= 0
        starts = np.ones(n_voxel, dtype=bool)  # store voxels that start a run
        starts[1:] = (kept[1:] != kept[:-1]) | (kept[1:] & (target[1:] != target[:-1] + 1))
        first = np.flatnonzero(starts)
        length = np.diff(first, append=n_voxel)
        dropped = ~kept[first]
        #: Where each run goes: its byte offset on the grid (dropped runs: the scratch's).
        self._offsets = np.where(dropped, 0, 4 * target[first]).astype(np.uintp)
        self._dropped = np.flatnonzero(dropped)
        self._scratch = np.empty(int(length[dropped].max(initial=1)), dtype=np.float32)
        self._iov = np.zeros(first.size, dtype=_IOVEC)
        self._iov["len"] = 4 * length
        #: One ``preadv`` call per ``_IOV_MAX`` runs: its first iovec's byte offset in
        #: the iovec array (the array's address is taken at each call), count and bytes.
        self._calls = [
            (start * _IOVEC.itemsize, part.size, int(part["len"].sum()))
            for start in range(0, first.size, _IOV_MAX)
            for part in [self._iov[start : start + _IOV_MAX]]
        ]
        self._size = grid_map.size
        #: Bytes of one volume in the file.
        self.nbytes = 4 * n_voxel

    def __call__(self, fd: int, position: int, out: np.ndarray) -> int:
        """Read the volume at byte ``position`` of ``fd`` onto ``out`` (the model's grid:
        float32, C-contiguous, writeable); only the voxels the map writes are written.
        Returns the bytes read (fewer than :attr:`nbytes` where the file ends early)."""
        if out.dtype != np.float32 or out.size != self._size or not out.flags.c_contiguous:
            raise ValueError(f"out must be {self._size} contiguous float32 values")
        if not out.flags.writeable:
            raise ValueError("out is read-only")
        bases = self._iov["base"]
        np.add(self._offsets, out.ctypes.data, out=bases)
        bases[self._dropped] = self._scratch.ctypes.data
        iovecs, done = self._iov.ctypes.data, 0
        for start, count, nbytes in self._calls:
            read = _preadv(fd, iovecs + start, count, position + done)
            while read < 0 and ctypes.get_errno() == errno.EINTR:  # as os.preadv retries
                read = _preadv(fd, iovecs + start, count, position + done)
            if read < 0:
                error = ctypes.get_errno()
                raise OSError(error, os.strerror(error))
            done += read
            if read < nbytes:
                break
        return done
