"""The frames of the stores of one average: matched by frame time, averaged where valid.

A BOLD store's ``data`` holds the *valid* frames of its run's time grid only: its
``frame_time`` lists every frame of the grid and ``frame_valid`` which of them are in
``data`` (:mod:`bidstrain.io.store`; frames whose interpolation needed a volume the sample
mask dropped are left out). Row ``r`` of ``data`` is therefore the ``r``-th valid frame,
not frame ``r``: subjects whose left-out frames differ are matched frame by frame on the
grid, never row by row. A store without ``frame_time`` has every frame valid.

The average keeps the grid of its stores (cut to the shortest with ``average.truncate``)
and, at each frame, the mean over the subjects valid there; a frame is valid in the
average where at least ``average.min_subjects`` subjects are.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import zarr

from bidstrain.errors import BidstrainError

#: Largest difference (in repetition times) between the onsets of a frame in two stores,
#: beyond what their repetition times' difference explains.
ONSET_TOLERANCE = 1e-6


@dataclass(frozen=True)
class FrameGrid:
    """The time grid of one store: every frame's onset and whether it is in ``data``."""

    times: np.ndarray
    valid: np.ndarray

    @property
    def n_frames(self) -> int:
        """Frames of the grid (valid or not)."""
        return int(self.times.size)

    @classmethod
    def read(cls, group: zarr.Group, path: str) -> FrameGrid:
        """The grid of an open store (``frame_time`` and ``frame_valid``, or its ``time``
        with every frame valid).

        Raises
        ------
        BidstrainError
            When ``frame_valid`` does not count the rows of ``data``.
        """
        if "frame_time" not in group:
            times = np.asarray(group["time"][...], dtype=np.float64)
            return cls(times, np.ones(times.size, dtype=bool))
        grid = cls(
            np.asarray(group["frame_time"][...], dtype=np.float64),
            np.asarray(group["frame_valid"][...], dtype=bool),
        )
        n_rows = int(group["data"].shape[0])
        if int(grid.valid.sum()) != n_rows:
            raise BidstrainError(
                f"frame_valid marks {int(grid.valid.sum())} frames valid but data holds "
                f"{n_rows} (an incomplete store: rerun its normalize job)",
                path=path,
            )
        return grid

    def packed(self) -> bytes:
        """``valid`` as bits (what an average keeps of a store between its passes)."""
        return np.packbits(self.valid).tobytes()


def unpack(bits: bytes, n_frames: int) -> np.ndarray:
    """The first ``n_frames`` entries of a :meth:`FrameGrid.packed` validity."""
    return np.unpackbits(np.frombuffer(bits, dtype=np.uint8), count=n_frames).astype(bool)


def frames_mismatch(
    grid: FrameGrid, reference: FrameGrid, *, repetition_time: float, tr_tolerance: float
) -> str | None:
    """Why the frames of ``grid`` are not those of ``reference`` over their common length
    (None when they match: frame ``k``'s onsets differ by at most ``k * tr_tolerance``, as
    two repetition times within the tolerance allow, plus :data:`ONSET_TOLERANCE`)."""
    n = min(grid.n_frames, reference.n_frames)
    allowed = np.arange(n) * tr_tolerance + ONSET_TOLERANCE * repetition_time
    apart = np.flatnonzero(np.abs(grid.times[:n] - reference.times[:n]) > allowed)
    if not apart.size:
        return None
    k = int(apart[0])
    return (
        f"frame {k} starts at {grid.times[k]:.6g} s against {reference.times[k]:.6g} s "
        f"({apart.size} frames apart)"
    )


def subject_valid(packed: Sequence[bytes], n_frames: int) -> np.ndarray:
    """Frames where a subject is valid: any of its sessions' (their packed validities)."""
    valid = np.zeros(n_frames, dtype=bool)
    for bits in packed:
        valid |= unpack(bits, n_frames)
    return valid


def rows_of(valid: np.ndarray, start: int, stop: int) -> tuple[int, int, np.ndarray]:
    """Where frames ``start:stop`` of a store are in its ``data``: the rows
    ``first:last`` and the positions of those rows' frames within ``start:stop``."""
    first = int(np.count_nonzero(valid[:start]))
    positions = np.flatnonzero(valid[start:stop])
    return first, first + positions.size, positions
