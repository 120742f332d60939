"""Voxel grids: whether two images, masks or stores lie on the same one.

A grid is a 3D shape and a voxel-to-world affine. Statistics, masks and averages only
carry over between images on the same grid; every such comparison goes through
:func:`grid_mismatch`, with the one tolerance :data:`AFFINE_TOLERANCE` unless the user
configured another (``average.affine_tolerance``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: Largest absolute difference between two affines' entries that still counts as the same
#: grid (millimetres for the translation; a 1e-3 change of a 2 mm voxel's size is 2 um).
AFFINE_TOLERANCE = 1e-3


def grid_mismatch(
    shape: Sequence[int],
    affine: np.ndarray,
    reference_shape: Sequence[int],
    reference_affine: np.ndarray,
    atol: float = AFFINE_TOLERANCE,
) -> str | None:
    """Why a grid differs from a reference grid, or None when they are the same.

    Parameters
    ----------
    shape, reference_shape : sequence of int
        The grids' shapes (3D; a mask with a fourth axis does not match a 3D grid).
    affine, reference_affine : array_like, shape (4, 4)
        The grids' voxel-to-world affines.
    atol : float
        Largest absolute difference between affine entries that still counts as equal.

    Returns
    -------
    str or None
        ``"shape (x, y, z) against grid (x, y, z)"`` or ``"another affine (largest
        difference d > atol)"``, for the caller to put in its message with what to change.
    """
    shape = tuple(int(n) for n in shape)
    reference_shape = tuple(int(n) for n in reference_shape)
    if shape != reference_shape:
        return f"shape {shape} against grid {reference_shape}"
    difference = float(
        np.abs(
            np.asarray(affine, dtype=np.float64) - np.asarray(reference_affine, dtype=np.float64)
        ).max()
    )
    if not difference <= atol:  # NaN in an affine is a mismatch too
        return f"another affine (largest difference {difference:.3g} > {atol})"
    return None
