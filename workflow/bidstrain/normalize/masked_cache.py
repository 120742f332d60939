"""The masked voxels of a run, kept in a temporary file between two passes.

A BOLD run resampled in time is streamed three times (:mod:`bidstrain.normalize.passes`):
the statistics of the whole grid, those of the resampled frames, then the z-scores. The
last two read only the voxels of the mask. The second pass writes them, as stored, to an
unnamed temporary file (``tempfile.TemporaryFile``: in ``$TMPDIR``, removed when closed
or when the process dies), and the third reads them back instead of decompressing the
image again: for a 96x96x96x300 int16 ``.nii.gz`` with 230,000 voxels in the mask, 138 MB
read back from the page cache instead of 531 MB decompressed and gathered.

Should the file fail to be written (a full disk), the cache is dropped with a warning and
the third pass decompresses the image as before.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator

import numpy as np

log = logging.getLogger(__name__)


class MaskedCache:
    """Masked stored values, written block after block by one pass, read by the next.

    Parameters
    ----------
    n_voxel : int
        Values per volume (the mask's voxels).
    dtype : numpy.dtype
        Their stored type (native byte order).
    n_volumes : int
        Volumes of the run: the cache is complete when all were appended.
    """

    def __init__(self, n_voxel: int, dtype: np.dtype, n_volumes: int):
        self.n_voxel = n_voxel
        self.dtype = np.dtype(dtype)
        self.n_volumes = n_volumes
        self._written = 0
        self._file = tempfile.TemporaryFile(prefix="bidstrain-masked-")

    @property
    def complete(self) -> bool:
        """Whether every volume was appended (and the file is still usable)."""
        return self._file is not None and self._written == self.n_volumes

    def append(self, masked: np.ndarray) -> None:
        """Write the next volumes, ``(n, n_voxel)``, in order; on a write error, drop the
        cache (warning) so that the next pass reads the image."""
        if self._file is None:
            return
        try:
            self._file.write(np.ascontiguousarray(masked, dtype=self.dtype).data)
        except OSError as error:
            log.warning("cannot keep the masked voxels in a temporary file (%s): the "
                        "next pass decompresses the image again", error)  # fmt: skip
            self.close()
            return
        self._written += masked.shape[0]

    def blocks(self, block_volumes: int) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(start, masked)`` of ``block_volumes`` volumes (the last may be
        shorter), as :func:`bidstrain.normalize.nifti_stream.iter_blocks` after the
        mask; ``masked`` is a reused buffer, valid until the next block is requested."""
        if not self.complete:
            raise RuntimeError("the masked-voxel cache is incomplete")
        buffer = np.empty((block_volumes, self.n_voxel), dtype=self.dtype)
        self._file.seek(0)
        for start in range(0, self.n_volumes, block_volumes):
            n = min(block_volumes, self.n_volumes - start)
            view = memoryview(buffer[:n]).cast("B")
            if self._file.readinto(view) != view.nbytes:
                raise RuntimeError("the masked-voxel cache file ends early")
            yield start, buffer[:n]

    def close(self) -> None:
        """Remove the file."""
        if self._file is not None:
            self._file.close()
            self._file = None
