"""One orientation for every store: RAS+ voxel order, by axis permutations and flips only.

Two images of the same head, one stored RAS and one LAS, hold mirrored voxel arrays; a
model reading arrays would see them mirrored. Every store is therefore written in the
voxel order of :func:`nibabel.as_closest_canonical`: the voxel axes are permuted and
flipped so that the first points closest to Right, the second to Anterior, the third to
Superior. Nothing is resampled: an oblique affine stays oblique (its closest axes are
chosen), and the voxel values are the file's.

A :class:`Reorientation` maps between the two voxel orders without moving a whole image:
the streaming reader gathers the masked voxels of each block through
:meth:`Reorientation.source_index`, so reorienting costs nothing per volume.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from nibabel.orientations import aff2axcodes, apply_orientation, inv_ornt_aff, io_orientation

from bidstrain.errors import BidstrainError


@dataclass(frozen=True)
class Reorientation:
    """The permutation and flips that bring a voxel grid to RAS+ order.

    Attributes
    ----------
    ornt : ndarray, shape (3, 2)
        nibabel orientation: source axis ``i`` becomes RAS axis ``ornt[i, 0]``, reversed
        when ``ornt[i, 1] == -1``.
    source_shape : tuple of int
        The grid as stored in the file.
    source_affine : ndarray, shape (4, 4)
        The file's voxel-to-world affine.
    """

    ornt: np.ndarray
    source_shape: tuple[int, int, int]
    source_affine: np.ndarray

    @property
    def source_orientation(self) -> str:
        """Axis codes of the file's voxel order, for example ``"LAS"``."""
        return "".join(aff2axcodes(self.source_affine))

    @property
    def is_identity(self) -> bool:
        """Whether the file is already in RAS+ voxel order."""
        return bool((self.ornt == [[0, 1], [1, 1], [2, 1]]).all())

    @property
    def shape(self) -> tuple[int, int, int]:
        """The grid in RAS+ voxel order."""
        shape = [0, 0, 0]
        for axis, (target, _) in enumerate(self.ornt):
            shape[int(target)] = self.source_shape[axis]
        return tuple(shape)

    @property
    def affine(self) -> np.ndarray:
        """Voxel-to-world affine of the RAS+ grid (the same world positions)."""
        return self.source_affine @ inv_ornt_aff(self.ornt, self.source_shape)

    def volume(self, source: np.ndarray) -> np.ndarray:
        """A volume ``(x, y, z[, ...])`` of the source grid, in RAS+ voxel order."""
        return np.ascontiguousarray(apply_orientation(source, self.ornt))

    def source_index(self, mask: np.ndarray) -> np.ndarray:
        """Flat positions in a stored source volume of the voxels of a RAS+ grid mask.

        Parameters
        ----------
        mask : ndarray of bool, shape :attr:`shape`
            A mask on the RAS+ grid.

        Returns
        -------
        ndarray of intp
            For each voxel of ``mask`` in C order (the store's voxel order), its position
            in a volume as NIfTI stores it (``x`` fastest, Fortran order).
        """
        canonical = np.nonzero(mask)
        source = []
        for axis, (target, flip) in enumerate(self.ornt):
            coordinate = canonical[int(target)]
            if flip < 0:
                coordinate = self.source_shape[axis] - 1 - coordinate
            source.append(coordinate)
        return np.ravel_multi_index(source, self.source_shape, order="F").astype(np.intp)

    def bvecs(self, bvecs: np.ndarray) -> np.ndarray:
        """The file's ``.bvec`` directions (3 rows) in the store's RAS+ voxel axes.

        ``.bvec`` follows FSL's convention (BIDS requires it): voxel axes, with the x
        component negated when the image's affine has a positive determinant (FSL reads
        voxels in radiological order). So the same scan stored LAS and RAS has the same
        ``.bvec`` file, and both give the same stored directions. The stored ones are
        plain voxel axes of the RAS+ grid (no such negation): a flipped axis negates its
        component, a permutation reorders the rows.
        """
        voxel = np.asarray(bvecs, dtype=np.float64).copy()
        if np.linalg.det(self.source_affine[:3, :3]) > 0:
            voxel[0] = -voxel[0]
        out = np.empty_like(voxel)
        for axis, (target, flip) in enumerate(self.ornt):
            out[int(target)] = flip * voxel[axis]
        return out


def reorientation(
    affine: np.ndarray, shape: tuple[int, int, int], *, path=None, subject: str | None = None
) -> Reorientation:
    """The :class:`Reorientation` of a grid (``nibabel.as_closest_canonical`` semantics).

    Raises
    ------
    BidstrainError
        When the affine has no orientation (a zero or degenerate voxel axis).
    """
    affine = np.asarray(affine, dtype=np.float64)
    ornt = io_orientation(affine)
    if np.isnan(ornt).any():
        raise BidstrainError(
            "the affine has a degenerate voxel axis, so the image has no orientation "
            f"(affine {affine.tolist()})",
            path=path,
            subject=subject,
        )
    return Reorientation(ornt.astype(np.int64), tuple(int(n) for n in shape[:3]), affine)
