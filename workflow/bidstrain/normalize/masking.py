"""The mask an image is normalized within: computed, read from a file, or the whole grid.

Config values (``normalize.mask`` for BOLD, ``normalize.dwi_mask``, ``normalize.t1w_mask``):

``epi``
    :func:`nilearn.masking.compute_epi_mask` on the mean volume (BOLD: mean over time; DWI:
    mean of the b=0 volumes, or of all volumes when there is none). The mean is computed
    while streaming, and nilearn's mask of a 3D mean equals its mask of the 4D run.
``head``
    For T1w: a head mask (head versus air): Otsu's threshold of the log intensities, the
    largest connected component, holes filled. A head rather than a brain mask, because a
    brain mask needs skull stripping or a template in the image's space.
``none``
    Every voxel of the grid.
otherwise
    A path pattern to a mask image on the image's grid, in any voxel order (it is brought
    to RAS+ order as the image is, :mod:`bidstrain.orientation`; non-zero voxels are kept),
    with placeholders ``{bids_dir}``, ``{subject}``, ``{session}`` and any BIDS entity key
    of the image (``{task}``, ``{run}``, ``{acq}``...), for example
    ``{bids_dir}/derivatives/masks/sub-{subject}/func/sub-{subject}_task-{task}_desc-brain_mask.nii.gz``.
"""

from __future__ import annotations

import string
import warnings
from collections.abc import Mapping
from pathlib import Path

import nibabel as nib
import numpy as np

from bidstrain.errors import BidstrainError
from bidstrain.grid import grid_mismatch

KEYWORDS = frozenset({"epi", "head", "none"})
_ENTITY_ALIASES = {"subject": "sub", "session": "ses"}


def is_pattern(mask: str) -> bool:
    """Whether a mask config value is a path pattern rather than a keyword."""
    return mask not in KEYWORDS


def resolve_pattern(
    pattern: str, entities: Mapping[str, str], bids_dir: str | Path, config_key: str
) -> str:
    """Fill a mask path pattern for one image.

    Parameters
    ----------
    pattern : str
        The config value, with ``{placeholders}``.
    entities : mapping
        The image's BIDS entities (``sub``, ``ses``, ``task``, ``run``...).
    bids_dir : str or Path
        Value of ``{bids_dir}``.
    config_key : str
        The config key the pattern came from, for error messages.

    Raises
    ------
    BidstrainError
        When the pattern names an entity the image does not have.
    """
    values = {"bids_dir": str(bids_dir)}
    for _, name, _, _ in string.Formatter().parse(pattern):
        if name is None or name == "bids_dir":
            continue
        key = _ENTITY_ALIASES.get(name, name)
        if key not in entities:
            raise BidstrainError(
                f"config {config_key} {pattern!r} uses {{{name}}}, but the image has no "
                f"'{key}' entity (its entities: {dict(entities)})",
                subject=entities.get("sub"),
            )
        values[name] = entities[key]
    return pattern.format(**values)


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

    The mask is reoriented as the image is (:mod:`bidstrain.orientation`), and ``shape``
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
        img = nib.as_closest_canonical(img)
        data = np.asarray(img.dataobj)
    except Exception as error:  # nibabel raises many types for unreadable files
        raise BidstrainError(
            f"mask (config {config_key}) is not a readable image: {error}",
            path=path,
            subject=subject,
        ) from None
    mismatch = grid_mismatch(data.shape, img.affine, shape, affine)
    if mismatch:
        raise BidstrainError(
            f"mask (config {config_key}) is not on the grid of {image} (both in RAS+ voxel "
            f"order): {mismatch}; give a mask on the image's grid",
            path=path,
            subject=subject,
        )
    return (data != 0) & np.isfinite(data)


def epi_mask(mean_volume: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """nilearn's :func:`~nilearn.masking.compute_epi_mask` of a mean volume, as a bool array.

    Non-finite values count as 0, as in nilearn. An empty result is returned as is (the
    caller reports it with the file and config key).
    """
    from nilearn.masking import compute_epi_mask  # imports scikit-learn: only when used

    finite = np.where(np.isfinite(mean_volume), mean_volume, 0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Computed an empty mask": reported by the caller
        mask_img = compute_epi_mask(nib.Nifti1Image(finite, affine))
    return np.asarray(mask_img.dataobj).astype(bool)


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
