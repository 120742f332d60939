"""Per-voxel count, mean and variance: accumulated block by block, and pooled across runs.

Sums are accumulated in float64. For integer images of up to 16 bits the values and
their squares are integers below 2**30, so every sum is exact for up to 2**23 volumes and
no shift is needed. For other types the sums are of the deviations from the first volume
(the "shifted data" algorithm), which removes the cancellation that makes the textbook
``E[x**2] - E[x]**2`` inaccurate; values that are already deviations from an estimate of
their mean (``centered``: a resampled run's frames) are summed as they are.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: Bytes of float64 temporaries per tile (rows x columns summed at once): a block of 4
#: volumes is cut into tiles of 65,536 voxels. Measured on a 96^3 grid: with blocks of 4
#: rows, 0.75x the time of tiles of 8,192 voxels (int16 and float32); with blocks of 16
#: rows, tiles of 16 MB took 1.2 to 1.7x the time of 4 MB ones (the cache is left).
TILE_BYTES = 2**21


def voxel_tiles(n_voxel: int, n_rows: int = 1) -> list[slice]:
    """Column tiles of a block of ``n_rows`` rows, about :data:`TILE_BYTES` of float64
    each (at least 1,024 voxels), none of them a single voxel.

    numpy sums a one-column tile in another order than a wider one (``einsum`` makes the
    time axis its inner loop), so the last digit of a voxel's variance would depend on
    whether it falls alone in the last tile, that is on the file's voxel order
    (:mod:`bidstrain.io.orientation`): a last tile of one voxel joins the tile before it.
    Wider tiles sum each voxel in the same order (row after row), so the tile width
    changes no digit.
    """
    width = max(TILE_BYTES // (8 * max(n_rows, 1)), 2**10)
    starts = list(range(0, n_voxel, width))
    if len(starts) > 1 and n_voxel - starts[-1] == 1:
        starts.pop()
    return [slice(start, end) for start, end in zip(starts, [*starts[1:], n_voxel], strict=False)]


class VoxelMoments:
    """Running per-voxel sums of a stream of volumes.

    Parameters
    ----------
    n_voxel : int
        Values per volume.
    dtype : numpy.dtype
        Type of the values; float input also records which voxels hold a NaN or Inf.
    centered : bool
        The values are finite float64 deviations from an estimate of each voxel's mean: no
        shift, no copy of the blocks, no non-finite flags.

    Notes
    -----
    Memory: 17 bytes per voxel (two float64 sums, the non-finite flags), plus the shift
    (8 bytes per voxel) for types other than integers of up to 16 bits.
    """

    def __init__(self, n_voxel: int, *, dtype: np.dtype, centered: bool = False):
        dtype = np.dtype(dtype)
        self.count = 0
        self.exact_integers = dtype.kind in "iu" and dtype.itemsize <= 2
        self.centered = centered
        self.shift: np.ndarray | None = None
        self.sum = np.zeros(n_voxel, dtype=np.float64)
        self.sum_squares = np.zeros(n_voxel, dtype=np.float64)
        flagged = dtype.kind == "f" and not centered
        self.nonfinite = np.zeros(n_voxel, dtype=bool) if flagged else None
        self.n_voxel = n_voxel
        self._tiles: dict[int, list[slice]] = {}  # by rows per block

    @classmethod
    def from_sums(
        cls, count: int, total: np.ndarray, squares: np.ndarray, shift: np.ndarray | None = None
    ) -> VoxelMoments:
        """Moments of ``count`` values whose per-voxel sum and sum of squares (float64)
        were computed elsewhere: of the values minus ``shift`` when it is given."""
        moments = cls(total.size, dtype=np.float64, centered=True)
        moments.count, moments.sum, moments.sum_squares = count, total, squares
        moments.shift = shift
        return moments

    def update(self, block: np.ndarray) -> None:
        """Add a block of volumes, shape ``(n, n_voxel)`` (any real dtype)."""
        if block.shape[0] == 0:
            return
        if self.shift is None and not (self.exact_integers or self.centered):
            self.shift = block[0].astype(np.float64)
        rows = block.shape[0]
        if rows not in self._tiles:
            self._tiles[rows] = voxel_tiles(self.n_voxel, rows)
        for tile in self._tiles[rows]:
            deviation = block[:, tile]
            if not self.centered:  # a copy: the shift is subtracted in place
                deviation = deviation.astype(np.float64)
            with np.errstate(invalid="ignore", over="ignore"):  # non-finite input: flagged
                if self.shift is not None:
                    deviation -= self.shift[tile]
                self.sum[tile] += deviation.sum(axis=0)
                self.sum_squares[tile] += np.einsum("ij,ij->j", deviation, deviation)
            if self.nonfinite is not None:
                self.nonfinite[tile] |= ~np.isfinite(deviation).all(axis=0)
        self.count += block.shape[0]

    def mean(self) -> np.ndarray:
        """Per-voxel mean (float64); NaN or Inf where the voxel held non-finite values."""
        mean = self.sum / self.count
        return mean if self.shift is None else mean + self.shift

    def variance(self, ddof: int) -> np.ndarray:
        """Per-voxel variance with ``ddof`` delta degrees of freedom (float64, >= 0)."""
        if self.count <= ddof:
            raise ValueError(f"{self.count} volumes leave no degree of freedom with ddof={ddof}")
        with np.errstate(invalid="ignore"):
            squared_deviations = self.sum_squares - self.sum**2 / self.count
            return np.maximum(squared_deviations, 0.0) / (self.count - ddof)


def pool_moments(
    counts: Sequence[int],
    means: Sequence[np.ndarray],
    variances: Sequence[np.ndarray],
    ddofs: Sequence[int],
    ddof: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Mean and variance of several runs taken together, from each run's own statistics.

    The exact pooled formula (Chan et al.): the squared deviations of each run about its
    own mean, ``variance * (count - ddof)``, plus ``count * (mean - pooled_mean) ** 2``.

    Parameters
    ----------
    counts : sequence of int
        Volumes of each run.
    means, variances : sequence of ndarray
        Per-voxel mean and variance of each run (same shape).
    ddofs : sequence of int
        The ddof each run's variance was computed with.
    ddof : int
        The ddof of the pooled variance.

    Returns
    -------
    mean, variance : ndarray (float64)
    """
    total = int(sum(counts))
    if total <= ddof:
        raise ValueError(f"{total} volumes leave no degree of freedom with ddof={ddof}")
    weights = np.asarray(counts, dtype=np.float64)
    means64 = [np.asarray(m, dtype=np.float64) for m in means]
    pooled_mean = sum(w * m for w, m in zip(weights, means64, strict=True)) / total
    squared_deviations = sum(
        np.asarray(v, dtype=np.float64) * (n - d) + n * (m - pooled_mean) ** 2
        for n, m, v, d in zip(counts, means64, variances, ddofs, strict=True)
    )
    return pooled_mean, squared_deviations / (total - ddof)
