"""Whether a NIfTI file holds every voxel its header describes, and voxels that are numbers.

Checked from the header and the file's size, without decompressing, whenever possible:

``.nii``
    the file must reach ``vox_offset + data bytes``; bytes after that are allowed.
``.nii.gz``
    the gzip trailer's ``ISIZE`` (the last four bytes) is the decompressed size of the last
    gzip member modulo 2**32. When it equals ``vox_offset + data bytes`` modulo 2**32, the
    file is complete (a file cut short ends in compressed data, which matches by chance
    once in four billion) and nothing is decompressed. Otherwise the trailer is only a
    hint: the stream may legitimately be longer than the header describes (trailing
    bytes, padding), or hold several members (``pigz -i``, BGZF), whose last trailer
    holds the last member's size only. The file is then decompressed once (isal, without
    keeping the output): it is rejected only when the stream ends before the data block
    does (saying how many bytes are missing) or is corrupt (a CRC, length or deflate
    error, a member cut short, bytes that are not gzip data after the last member).
    When the trailer agrees, the CRC is not checked here: the normalize stage checks it
    as it streams the file (:mod:`bidstrain.normalize.nifti_stream`).
"""

from __future__ import annotations

import logging
import struct
from pathlib import Path

import nibabel as nib
import numpy as np
from isal import isal_zlib

from bidstrain.errors import BidstrainError

log = logging.getLogger(__name__)

#: Compressed bytes read at a time, and decompressed bytes produced at most per call.
INPUT_CHUNK_BYTES = 2**20
OUTPUT_CHUNK_BYTES = 16 * 2**20
_GZIP_MAGIC = b"\x1f\x8b"
_GZIP_WBITS = 31  # zlib's "gzip header and trailer, 32 KiB window"


def data_end(img: nib.Nifti1Image) -> int:
    """Byte position in the (decompressed) file where the voxel data end."""
    header = img.header
    n_values = int(np.prod(header.get_data_shape(), dtype=np.int64))
    return int(img.dataobj.offset) + n_values * header.get_data_dtype().itemsize


def check_voxel_type(dtype: np.dtype, path: str | Path, subject: str | None = None) -> None:
    """Raise unless voxels are real scalars (integers or floats of any byte order).

    Raises
    ------
    BidstrainError
        For RGB/RGBA (structured), complex and other non-scalar voxel types.
    """
    dtype = np.dtype(dtype)
    if dtype.fields is not None or dtype.kind not in "iuf":
        kind = "RGB" if dtype.fields is not None else str(dtype)
        raise BidstrainError(
            f"voxel type {kind} is not a real scalar ({dtype}); bidstrain z-scores real "
            "values only (convert the image, or leave it out with a .bidsignore pattern)",
            path=path,
            subject=subject,
        )


def check_complete(path: str | Path, img: nib.Nifti1Image) -> None:
    """Raise unless ``path`` holds every byte of the data block ``img``'s header describes.

    Parameters
    ----------
    path : str or Path
        The ``.nii`` or ``.nii.gz`` file.
    img : nibabel image
        Its header, as loaded by ``nibabel.load`` (no voxel data read).

    Raises
    ------
    BidstrainError
        When the file or its decompressed stream ends before the data block ends (with
        the number of missing bytes), or the gzip stream is corrupt.
    """
    path = Path(path)
    needed = data_end(img)
    if not path.name.endswith(".gz"):
        size = path.stat().st_size
        if size < needed:
            raise BidstrainError(
                f"truncated NIfTI: {size} bytes, the header describes {needed} "
                f"({needed - size} bytes of voxel data missing)",
                path=path,
            )
        return
    with path.open("rb") as handle:
        handle.seek(-4, 2)
        (trailer,) = struct.unpack("<I", handle.read(4))
    if trailer == needed % 2**32:
        return
    size = gzip_stream_size(path, needed)
    if size < needed:
        raise BidstrainError(
            f"truncated .nii.gz: the decompressed stream holds {size} bytes, the header "
            f"describes {needed} ({needed - size} bytes of voxel data missing; re-copy or "
            "re-export the file)",
            path=path,
        )
    log.info("%s: gzip trailer is a hint only; stream verified (%d bytes)", path, size)


def gzip_stream_size(path: str | Path, needed: int = 0) -> int:
    """Decompress every gzip member of ``path`` (discarding the output); return its size.

    Zero bytes after the last member are padding; other bytes there are an error, as
    for the gzip readers of Python and isal (which the normalize stage uses).

    Parameters
    ----------
    path : str or Path
        A gzip file.
    needed : int
        Bytes the caller needs, only to word the error of a stream cut short.

    Raises
    ------
    BidstrainError
        When a member fails its CRC or length check, is not valid deflate data, or the
        file ends inside a member.
    """
    path = Path(path)
    total = 0
    decompressor = None
    pending = b""
    with path.open("rb") as handle:
        while True:
            if not pending:
                pending = handle.read(INPUT_CHUNK_BYTES)
                if not pending:
                    break
            if decompressor is None:
                pending = pending.lstrip(b"\0")
                if len(pending) == 1:
                    pending += handle.read(1)
                if not pending:
                    continue
                if pending[:2] != _GZIP_MAGIC:
                    raise BidstrainError(
                        f"corrupt .nii.gz: bytes that are not gzip data follow the stream's "
                        f"{total} decompressed bytes (re-copy or re-export the file)",
                        path=path,
                    )
                decompressor = isal_zlib.decompressobj(wbits=_GZIP_WBITS)
            try:
                total += _drain(decompressor, pending)
            except isal_zlib.error as error:
                raise BidstrainError(
                    f"corrupt .nii.gz: the gzip stream fails its check ({error}); re-copy or "
                    "re-export the file",
                    path=path,
                ) from None
            pending = decompressor.unused_data if decompressor.eof else b""
            if decompressor.eof:
                decompressor = None
    if decompressor is not None:
        missing = f"; {needed - total} bytes of voxel data missing" if total < needed else ""
        raise BidstrainError(
            f"truncated .nii.gz: the gzip stream is cut short after {total} decompressed "
            f"bytes{missing} (re-copy or re-export the file)",
            path=path,
        )
    return total


def _drain(decompressor, data: bytes) -> int:
    """Feed ``data`` to a gzip member's decompressor; return the bytes it produced.

    Output is produced at most :data:`OUTPUT_CHUNK_BYTES` at a time and discarded, so a
    stream of zeros (compressed about 1,000 to 1) never fills memory.
    """
    produced = 0
    while True:
        out = decompressor.decompress(data, OUTPUT_CHUNK_BYTES)
        produced += len(out)
        data = decompressor.unconsumed_tail
        if decompressor.eof or (not data and len(out) < OUTPUT_CHUNK_BYTES):
            return produced
