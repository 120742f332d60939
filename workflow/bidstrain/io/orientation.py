"""One orientation for every store: RAS+ voxel order, by axis permutations and flips only.

Two images of the same head, one stored RAS and one LAS, hold mirrored voxel arrays; a
model reading arrays would see them mirrored. Every store is therefore written in RAS+
voxel order: the voxel axes are permuted and flipped so that the first points closest to
Right, the second to Anterior, the third to Superior. Nothing is resampled: the voxel
values are the file's.

The closest axes are chosen by :func:`closest_axes` from the directions of the voxel axes
in world space, and by nothing else, so the 48 ways of storing one grid (6 axis orders
times 8 flips) all give the same RAS+ grid, and the same stores. While every voxel axis
is within 45 degrees of its world axis this is :func:`nibabel.as_closest_canonical`'s
grid (nibabel 5.4: the same on all 15,302 of 20,000 random rotations below 45 degrees).
nibabel's own choice depends on the file's axis order where two assignments tie (an axis
at 45 degrees between two world axes), and in earlier releases it did for any strong
obliquity (axes were assigned in the file's order); here ties go by a rule on the world
directions. An oblique affine stays oblique in the store; its angle is
:attr:`Reorientation.obliquity`.

A :class:`Reorientation` maps between the two voxel orders without moving a whole image:
the streaming reader gathers the masked voxels of each block through
:meth:`Reorientation.source_index`, so reorienting costs nothing per volume.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
from nibabel.orientations import apply_orientation, inv_ornt_aff, ornt2axcodes

from bidstrain.errors import BidstrainError

#: The anatomical direction at the low and at the high index end of each voxel axis of a
#: RAS+ grid (every store's): x runs from Left to Right, y from Posterior to Anterior, z
#: from Inferior to Superior.
RAS_ENDS = (("L", "R"), ("P", "A"), ("I", "S"))
#: Obliquity (degrees) up to which an image counts as axis-aligned; above it the
#: normalize job warns that the stored grid is oblique (a header's float32 affine
#: rounds to about 1e-5 degrees).
OBLIQUE_DEGREES = 0.01


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
        return "".join(ornt2axcodes(self.ornt))

    @property
    def obliquity(self) -> float:
        """Largest angle in degrees between a voxel axis and its RAS axis (0: aligned)."""
        directions = _directions(self.source_affine)
        cosines = np.abs(directions[self.ornt[:, 0], np.arange(3)])
        return float(np.degrees(np.arccos(np.clip(cosines.min(), 0.0, 1.0))))

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


def _directions(affine: np.ndarray) -> np.ndarray:
    """Unit world direction of each voxel axis (the columns of the affine's linear part)."""
    linear = np.asarray(affine, dtype=np.float64)[:3, :3]
    return linear / np.linalg.norm(linear, axis=0)


def closest_axes(affine: np.ndarray) -> np.ndarray:
    """The RAS axis and direction closest to each voxel axis, as a nibabel orientation.

    Of the 6 ways to give the three voxel axes distinct world axes, the one with the
    largest sum of ``|cos|`` between each voxel axis and its world axis; the sign of each
    cosine gives the flip. Exact ties (an axis at 45 degrees between two world axes) go
    to the assignment whose RAS+ axis directions are the largest in lexicographic order.
    Both the sum (taken in world-axis order) and the directions are the same numbers
    whatever the order and flips the voxel axes are stored in, so every storage order of
    a grid gets the same RAS+ grid.

    Parameters
    ----------
    affine : array_like, shape (4, 4)
        A voxel-to-world affine with three independent voxel axes.

    Returns
    -------
    ndarray of int64, shape (3, 2)
        ``[[world axis, +1 or -1], ...]``, one row per voxel axis.
    """
    directions = _directions(affine)

    def rank(source_of: tuple[int, ...]) -> tuple:  # source_of[world axis] = its voxel axis
        cosines = [directions[world, source] for world, source in enumerate(source_of)]
        signs = [-1 if cosine < 0 else 1 for cosine in cosines]
        ras_axes = (directions[:, source_of] * signs).T
        return sum(abs(cosine) for cosine in cosines), tuple(ras_axes.ravel())

    source_of = max(itertools.permutations(range(3)), key=rank)
    ornt = np.empty((3, 2), dtype=np.int64)
    for world, source in enumerate(source_of):
        ornt[source] = (world, -1 if directions[world, source] < 0 else 1)
    return ornt


def reorientation(
    affine: np.ndarray, shape: tuple[int, int, int], *, path=None, subject: str | None = None
) -> Reorientation:
    """The :class:`Reorientation` of a grid (see :func:`closest_axes`).

    Raises
    ------
    BidstrainError
        When the affine has no orientation (a zero, non-finite or degenerate voxel axis).
    """
    affine = np.asarray(affine, dtype=np.float64)
    linear = affine[:3, :3]
    with np.errstate(invalid="ignore", divide="ignore"):
        volume = abs(np.linalg.det(linear)) / np.prod(np.linalg.norm(linear, axis=0))
    if not np.isfinite(affine).all() or not volume > 1e-6:
        raise BidstrainError(
            "the affine has a zero, non-finite or degenerate voxel axis, so the image has "
            f"no orientation (affine {affine.tolist()}); fix the header's sform/qform",
            path=path,
            subject=subject,
        )
    return Reorientation(closest_axes(affine), tuple(int(n) for n in shape[:3]), affine)
