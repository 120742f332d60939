"""The mask an image is normalized within: computed, read from a file, or the whole grid.

Config values (``normalize.mask`` for BOLD, ``normalize.dwi_mask``, ``normalize.t1w_mask``):

``epi``
    nilearn's :func:`~nilearn.masking.compute_epi_mask` with its defaults, computed on the
    mean volume (BOLD: mean over time; DWI: mean of the b<=50 volumes, or of all volumes when
    there is none) by :func:`epi_mask`, which does nilearn's steps with the same numpy and
    scipy.ndimage calls without importing nilearn (``nilearn.masking`` imports scikit-learn:
    about 1.9 s and 130 MB per job). The mean is computed while streaming, and nilearn's mask
    of a 3D mean equals its mask of the 4D run.
``head``
    For T1w: a head mask (head versus air): Otsu's threshold of the log intensities, the
    largest connected component, holes filled. A head rather than a brain mask, because a
    brain mask needs skull stripping or a template in the image's space.
``none``
    Every voxel of the grid.
otherwise
    A path pattern to a mask image on the image's grid, in any voxel order (it is brought
    to RAS+ order as the image is, :mod:`bidstrain.io.orientation`; non-zero voxels are kept),
    with placeholders ``{bids_dir}``, ``{subject}``, ``{session}`` and any BIDS entity key
    of the image (``{task}``, ``{run}``, ``{acq}``...), for example
    ``{bids_dir}/derivatives/masks/sub-{subject}/func/sub-{subject}_task-{task}_desc-brain_mask.nii.gz``.

Computed masks depend on the order of the voxels they are given: between connected
components of equal size, :func:`epi_mask` (as nilearn) and :func:`head_mask` keep the
lowest label, the first in C order, and the smoothing runs along the axes in order, in
place, so its last digits follow the axis order. They are therefore always computed on
the RAS+ grid (the mean volume is reoriented first), never in the file's voxel order, and
the 48 orders of one image give one mask (``tests/test_orientation.py``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import nibabel as nib
import numpy as np

from bidstrain.dataset.masks import MASK_KEYS, is_pattern
from bidstrain.errors import BidstrainError, relative_to_study
from bidstrain.io.grid import grid_mismatch
from bidstrain.io.orientation import reorientation

if TYPE_CHECKING:
    from bidstrain.normalize.image import ImageInfo, Options
    from bidstrain.normalize.nifti_stream import NiftiLayout


def load_mask(
    path: str | Path,
    shape: tuple[int, int, int],
    affine: np.ndarray,
    *,
    image: str | Path,
    config_key: str,
    subject: str | None = None,
) -> np.ndarray:
    """Read a mask image in RAS+ voxel order and check that it lies on the image's grid.

    The mask is reoriented as the image is (:mod:`bidstrain.io.orientation`), and ``shape``
    and ``affine`` are the image's after reorientation, so a mask stored in another voxel
    order on the same grid is accepted.

    Raises
    ------
    BidstrainError
        When the mask cannot be read or its shape or affine differ from the image's.
    """
    try:
        img = nib.load(path)
        if img.ndim == 4 and img.shape[3] == 1:
            img = img.slicer[..., 0]
        data = np.asarray(img.dataobj)
    except Exception as error:  # nibabel raises many types for unreadable files
        where = "" if Path(path).exists() else relative_to_study(path)
        raise BidstrainError(
            f"mask (config {config_key}) is not a readable image: {error}{where}",
            path=path,
            subject=subject,
        ) from None
    if data.ndim == 3:
        orientation = reorientation(img.affine, data.shape, path=path, subject=subject)
        data, mask_affine = orientation.volume(data), orientation.affine
    else:  # a shape mismatch, reported below
        mask_affine = img.affine
    mismatch = grid_mismatch(data.shape, mask_affine, shape, affine)
    if mismatch:
        raise BidstrainError(
            f"mask (config {config_key}) is not on the grid of {image} (both in RAS+ voxel "
            f"order): {mismatch}; give a mask on the image's grid",
            path=path,
            subject=subject,
        )
    return (data != 0) & np.isfinite(data)


def mask_file(layout: NiftiLayout, info: ImageInfo, options: Options) -> np.ndarray | None:
    """The mask an image is normalized within when it is a file (known before the image
    is read, :func:`load_mask`); None for a computed mask (``epi``, ``head``) or ``none``."""
    if not is_pattern(options.mask):
        return None
    return load_mask(
        options.mask,
        layout.shape,
        layout.affine,
        image=layout.path,
        config_key=MASK_KEYS[info.modality],
        subject=info.subject,
    )


def epi_mask(
    mean_volume: np.ndarray,
    *,
    lower_cutoff: float = 0.2,
    upper_cutoff: float = 0.85,
    opening: int = 2,
) -> np.ndarray:
    """nilearn's :func:`~nilearn.masking.compute_epi_mask` of a mean volume, as a bool array.

    The steps and calls of nilearn 0.13 (``compute_epi_mask`` with ``connected=True``,
    ``exclude_zeros=False``, ``ensure_finite=True``, no resampling), so the mask is the same
    voxel for voxel (``tests/test_epi_mask.py`` compares them):

    1. the volume is smoothed with a Gaussian of FWHM 1 voxel along each axis
       (``scipy.ndimage.gaussian_filter1d``, in place, axes in order), non-finite values
       set to 0 first, and NaN voxels set back to 0 afterwards;
    2. the threshold is the middle of the largest gap between consecutive sorted values,
       between the fractions ``lower_cutoff`` and ``upper_cutoff`` of them; voxels at or
       above it are kept;
    3. erosion by ``opening`` iterations, the largest connected component (faces only),
       dilation by ``2 * opening`` and erosion by ``opening`` iterations (scipy's default
       cross-shaped structuring element, outside the grid counts as background).

    Parameters
    ----------
    mean_volume : ndarray, shape (x, y, z)
        Any real dtype (the normalizer's is float64); signed integer volumes are smoothed
        in float32 (int64 in float64), as in nilearn.
    lower_cutoff, upper_cutoff : float
        Fractions of the sorted values between which the threshold is searched.
    opening : int
        Iterations of the opening (0: no smoothing, opening nor closing, as in nilearn).

    Returns
    -------
    ndarray of bool
        The mask. Empty where nilearn warns "Computed an empty mask", and for a volume of
        one voxel (where nilearn raises ``ValueError``): the caller reports it with the file
        and config key.
    """
    from scipy import ndimage  # imported only by jobs that compute a mask

    volume = np.asarray(mean_volume)
    if volume.dtype.kind == "i":
        volume = volume.astype(np.float64 if volume.dtype == np.int64 else np.float32)
    else:
        volume = volume.copy()
    nan = np.isnan(volume)
    volume[~np.isfinite(volume)] = 0
    if opening:
        sigma = 1.0 / np.sqrt(8 * np.log(2))  # FWHM of 1 voxel
        for axis in range(volume.ndim):
            ndimage.gaussian_filter1d(volume, sigma, output=volume, axis=axis)
    volume[nan] = 0
    found = gap_threshold(volume, lower_cutoff, upper_cutoff)
    if found is None:
        return np.zeros(volume.shape, dtype=bool)
    mask = volume >= found[1]
    if opening:
        mask = ndimage.binary_erosion(mask, iterations=opening)
    if mask.any():
        labels, n_labels = ndimage.label(mask)
        if n_labels > 1:
            counts = np.bincount(labels.ravel())
            counts[0] = 0
            mask = labels == counts.argmax()
    if opening:
        mask = ndimage.binary_dilation(mask, iterations=2 * opening)
        mask = ndimage.binary_erosion(mask, iterations=opening)
    return mask


def gap_threshold(
    values: np.ndarray, lower_cutoff: float = 0.2, upper_cutoff: float = 0.85
) -> tuple[float, float] | None:
    """nilearn's EPI threshold: the middle of the largest gap between consecutive sorted
    values, searched between the fractions ``lower_cutoff`` and ``upper_cutoff`` of them.

    Returns ``(start, threshold)``, ``start`` the value the search starts from (the
    ``lower_cutoff`` quantile); None when that range holds fewer than two values.
    """
    ordered = np.sort(values, axis=None)
    lower = int(np.floor(lower_cutoff * ordered.size))
    upper = min(int(np.floor(upper_cutoff * ordered.size)), ordered.size - 1)
    if upper <= lower:
        return None
    gap = int(np.argmax(ordered[lower + 1 : upper + 1] - ordered[lower:upper]))
    return float(ordered[lower]), 0.5 * (ordered[lower + gap] + ordered[lower + gap + 1])


def dilate(mask: np.ndarray, iterations: int) -> np.ndarray:
    """``scipy.ndimage.binary_dilation(mask, iterations=iterations)`` for ``iterations >= 1``
    (the cross-shaped structuring element, outside the grid as background) in numpy: for
    code that must not wait for scipy's import."""
    dilated = np.asarray(mask, dtype=bool).copy()
    for _ in range(iterations):
        previous = dilated.copy()
        for axis in range(dilated.ndim):
            head = [slice(None)] * dilated.ndim
            tail = [slice(None)] * dilated.ndim
            head[axis], tail[axis] = slice(1, None), slice(None, -1)
            dilated[tuple(head)] |= previous[tuple(tail)]
            dilated[tuple(tail)] |= previous[tuple(head)]
    return dilated


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold: the intensity that maximizes the between-class variance."""
    counts, edges = np.histogram(values, bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2
    weight_low = np.cumsum(counts).astype(np.float64)
    weight_high = weight_low[-1] - weight_low
    sum_low = np.cumsum(counts * centres)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean_low = sum_low / weight_low
        mean_high = (sum_low[-1] - sum_low) / weight_high
        between = weight_low * weight_high * (mean_low - mean_high) ** 2
    return float(edges[1:][np.nanargmax(between[:-1])])


def head_mask(volume: np.ndarray) -> np.ndarray:
    """Head mask of an anatomical volume: tissue versus air.

    Otsu's threshold of the log intensities (on a linear scale Otsu splits bright brain
    from dim scalp; on a log scale air noise and tissue are the two clear classes), then
    the largest connected component with its holes filled.
    """
    from scipy import ndimage  # only T1w jobs need it: kept out of every job's imports

    finite = np.where(np.isfinite(volume), volume, 0.0).astype(np.float64)
    if np.ptp(finite) == 0:
        return np.zeros(volume.shape, dtype=bool)
    log_intensity = np.log1p(finite - finite.min())
    foreground = log_intensity > otsu_threshold(log_intensity[log_intensity > 0])
    labels, n_components = ndimage.label(foreground)
    if n_components == 0:
        return foreground
    sizes = np.bincount(labels.ravel())[1:]
    largest = labels == 1 + int(np.argmax(sizes))
    return ndimage.binary_fill_holes(largest)
