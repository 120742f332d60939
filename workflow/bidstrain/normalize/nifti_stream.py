"""Read the voxel data of a NIfTI image sequentially, a block of volumes at a time.

nibabel parses the header; the data are then read as one forward stream: ``.nii.gz``
through ``isal.igzip`` (decompression releases the GIL, about twice as fast as zlib),
``.nii`` as a plain file. Slicing nibabel's proxy volume by volume instead restarts the
gzip stream at every slice, which is quadratic in the number of volumes on ``.nii.gz``.

A ``.nii.gz`` is read to its end, so that the CRC of every gzip member is checked (the
ingest stage reads only the trailer when its size agrees with the header).

A background thread decompresses the next block while the caller works on the current
one (isal releases the GIL), so on two free cores a pass costs about the decompression
alone. isal's reader is given an input buffer of :data:`GZIP_INPUT_BYTES` and each block
is filled in one call: the thread then takes the GIL a few times per block. With
``igzip.open``'s 512 KB input buffer it took it about a thousand times per 260 MB file,
each time waiting for the main thread's next switch (5 ms while that runs Python): the
decompression of a 96x96x96x300 run took 6.5 s instead of 1.0 s next to a busy main
thread, and pass 1 of a normalization waited on it whenever the main thread ran Python
(its imports, its EPI mask).

Copying the whole decompressed stream of a normalization's first pass to a temporary
file and reading it back in the second was measured slower here (3.84 s against 3.40 s
for a 96x96x96x300 int16 run, medians of 5): writing 530 MB through the page cache costs
about what isal saves. Only the voxels around the mask are kept
(:mod:`bidstrain.normalize.masked_cache`).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from isal import igzip, isal_zlib

from bidstrain.errors import BidstrainError
from bidstrain.io.nifti_files import check_voxel_type
from bidstrain.io.orientation import Reorientation, reorientation

#: Bytes asked of the decompressor per call while reading past the last volume.
READ_CHUNK_BYTES = 4 * 2**20
#: Input buffer of the gzip reader: compressed bytes read from the file at once.
GZIP_INPUT_BYTES = 8 * 2**20


@dataclass(frozen=True)
class NiftiLayout:
    """Where and how a NIfTI image stores its voxels (read from the header only).

    The grid is described in RAS+ voxel order (:mod:`bidstrain.io.orientation`): ``shape``,
    ``affine``, :meth:`stored_index` and :meth:`to_grid` are those of the store, while
    blocks are read in the file's order; the reorientation is a gather of voxel indices,
    so it costs nothing per volume.

    Attributes
    ----------
    path : Path
        The image file (``.nii`` or ``.nii.gz``).
    n_volumes : int
        Volumes along the fourth axis (1 for a 3D image).
    dtype : numpy.dtype
        On-disk dtype, with its byte order.
    offset : int
        Byte offset of the voxel data in the (uncompressed) stream.
    slope, inter : float
        Scaling of stored to real values, ``real = stored * slope + inter`` (1 and 0 when
        the header has none).
    orientation : Reorientation
        The file's grid (shape, affine as nibabel chooses it: sform, else qform) and the
        axis permutation and flips that bring it to RAS+ order.
    """

    path: Path
    n_volumes: int
    dtype: np.dtype
    offset: int
    slope: float
    inter: float
    orientation: Reorientation

    @property
    def shape(self) -> tuple[int, int, int]:
        """Spatial grid ``(x, y, z)`` in RAS+ voxel order (the store's grid)."""
        return self.orientation.shape

    @property
    def affine(self) -> np.ndarray:
        """Voxel-to-world affine of the RAS+ grid (the store's affine)."""
        return self.orientation.affine

    @property
    def source_orientation(self) -> str:
        """Axis codes of the file's voxel order, for example ``"LAS"``."""
        return self.orientation.source_orientation

    @property
    def n_grid(self) -> int:
        """Voxels in one volume."""
        return int(np.prod(self.shape))

    @property
    def volume_bytes(self) -> int:
        """Bytes of one stored volume."""
        return self.n_grid * self.dtype.itemsize

    @property
    def is_compressed(self) -> bool:
        """Whether the file is gzipped (``.nii.gz``)."""
        return self.path.name.endswith(".gz")

    @property
    def is_float(self) -> bool:
        """Whether stored values can be non-finite."""
        return self.dtype.kind == "f"

    def stored_index(self, mask: np.ndarray) -> np.ndarray:
        """Positions in a stored volume of the mask's voxels, in the mask's C order.

        ``mask`` lies on the RAS+ grid (:attr:`shape`). NIfTI stores a volume in the file's
        voxel order with ``x`` fastest (Fortran order); a block row returned by
        :func:`iter_blocks` indexed with this array gives the voxels in the store's order.
        """
        return self.orientation.source_index(mask)

    def to_grid(self, values: np.ndarray) -> np.ndarray:
        """Turn a flat stored volume (length :attr:`n_grid`) into an ``(x, y, z)`` array
        in RAS+ voxel order."""
        source = np.asarray(values).reshape(self.orientation.source_shape, order="F")
        return self.orientation.volume(source)


def read_layout(path: str | Path, subject: str | None = None) -> NiftiLayout:
    """Parse the header of ``path`` with nibabel (no voxel data are read).

    Raises
    ------
    BidstrainError
        When the file is not a readable 3D or 4D NIfTI-1/2 image of real scalars with an
        orientation.
    """
    path = Path(path)
    try:
        img = nib.load(path)
    except Exception as error:  # nibabel raises many types for unreadable files
        raise BidstrainError(
            f"not a readable NIfTI image: {error}", path=path, subject=subject
        ) from None
    if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
        raise BidstrainError(
            f"expected a NIfTI image, got {type(img).__name__}", path=path, subject=subject
        )
    shape = tuple(int(n) for n in img.shape)
    if len(shape) == 5 and shape[4] == 1:
        shape = shape[:4]
    if len(shape) not in (3, 4):
        raise BidstrainError(
            f"expected a 3D or 4D image, got shape {shape}", path=path, subject=subject
        )
    dtype = np.dtype(img.get_data_dtype())
    check_voxel_type(dtype, path, subject)
    return NiftiLayout(
        path=path,
        n_volumes=shape[3] if len(shape) == 4 else 1,
        dtype=dtype,
        offset=int(img.dataobj.offset),
        slope=float(img.dataobj.slope),
        inter=float(img.dataobj.inter),
        orientation=reorientation(img.affine, shape[:3], path=path, subject=subject),
    )


@contextmanager
def _open_stream(layout: NiftiLayout):
    """Open the data stream positioned at the first voxel."""
    with layout.path.open("rb") as file:
        if layout.is_compressed:
            # the reader igzip.open wraps (every member, every CRC checked), with a larger
            # input buffer: see the module's notes
            stream = isal_zlib._GzipReader(file, GZIP_INPUT_BYTES)
            skipped = len(stream.read(layout.offset))
        else:
            stream = file
            skipped = stream.seek(layout.offset)
        if skipped != layout.offset:
            raise BidstrainError(
                f"file ends inside the header ({skipped} of {layout.offset} bytes)",
                path=layout.path,
            )
        yield stream


def _fill(stream, buffer: memoryview) -> int:
    """Read into ``buffer`` until it is full or the stream ends; return the bytes read."""
    filled = 0
    while filled < len(buffer):
        n = stream.readinto(buffer[filled:])
        if not n:
            break
        filled += n
    return filled


class _Prefetcher:
    """Fill blocks in a background thread, two buffers in rotation."""

    def __init__(self, layout: NiftiLayout, block_volumes: int):
        self.layout = layout
        self.block_volumes = block_volumes
        self.free: queue.Queue[bytearray] = queue.Queue()
        for _ in range(2):
            self.free.put(bytearray(block_volumes * layout.volume_bytes))
        self.ready: queue.Queue = queue.Queue()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="nifti-prefetch", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            with _open_stream(self.layout) as stream:
                for start in range(0, self.layout.n_volumes, self.block_volumes):
                    buffer = self._next_free()
                    if buffer is None:
                        return
                    n = min(self.block_volumes, self.layout.n_volumes - start)
                    want = n * self.layout.volume_bytes
                    got = _fill(stream, memoryview(buffer)[:want])
                    if got < want:
                        raise BidstrainError(
                            f"truncated voxel data: the header describes "
                            f"{self.layout.n_volumes} volumes, the stream ends in volume "
                            f"{start + got // self.layout.volume_bytes + 1}",
                            path=self.layout.path,
                        )
                    self.ready.put((start, n, buffer))
                if self.layout.is_compressed:  # to the end: every member's CRC is checked
                    while stream.read(READ_CHUNK_BYTES):
                        pass
        except (EOFError, igzip.BadGzipFile, isal_zlib.error) as error:
            self.ready.put(
                BidstrainError(
                    f"corrupt or truncated .nii.gz: {error} (re-copy or re-export the file)",
                    path=self.layout.path,
                )
            )
        except BaseException as error:  # handed to the consuming thread
            self.ready.put(error)
        else:
            self.ready.put(None)

    def _next_free(self) -> bytearray | None:
        while not self.stop.is_set():
            try:
                return self.free.get(timeout=0.1)
            except queue.Empty:
                continue
        return None

    def close(self) -> None:
        self.stop.set()
        self.thread.join()


def iter_blocks(layout: NiftiLayout, block_volumes: int) -> Iterator[tuple[int, np.ndarray]]:
    """Yield the stored voxel values, ``block_volumes`` volumes at a time, in order.

    Parameters
    ----------
    layout : NiftiLayout
        From :func:`read_layout`.
    block_volumes : int
        Volumes per block (the last block may be shorter).

    Yields
    ------
    start : int
        Index of the block's first volume.
    block : ndarray, shape (n, x * y * z)
        Stored (unscaled) values in native byte order, one row per volume, voxels in
        stored (Fortran) order: see :meth:`NiftiLayout.stored_index`. The array is a view
        of a reused buffer: it is valid until the next block is requested.

    Notes
    -----
    Memory: two blocks of stored values (``2 * block_volumes * layout.volume_bytes``),
    and for a ``.nii.gz`` the reader's input buffer (:data:`GZIP_INPUT_BYTES`).

    Raises
    ------
    BidstrainError
        When the stream ends before the volumes the header describes.
    """
    native = layout.dtype.newbyteorder("=")
    prefetcher = _Prefetcher(layout, max(1, int(block_volumes)))
    try:
        while True:
            item = prefetcher.ready.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            start, n, buffer = item
            block = np.frombuffer(buffer, dtype=layout.dtype, count=n * layout.n_grid)
            if layout.dtype != native:
                block = block.byteswap(inplace=True).view(native)
            yield start, block.reshape(n, layout.n_grid)
            prefetcher.free.put(buffer)
    finally:
        prefetcher.close()
