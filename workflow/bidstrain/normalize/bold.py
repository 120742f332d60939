"""BOLD runs: z-scored per voxel over time, within a mask, with the run's own statistics."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from bidstrain.errors import BidstrainError
from bidstrain.normalize.confounds import ConfoundRegression, RunConfounds, fixed_mask_index
from bidstrain.normalize.image import ImageInfo, Options
from bidstrain.normalize.masked_cache import MaskedCache, cache_plan
from bidstrain.normalize.masking import mask_file
from bidstrain.normalize.moments import VoxelMoments
from bidstrain.normalize.nifti_stream import NiftiLayout
from bidstrain.normalize.parcels import ParcelMeans
from bidstrain.normalize.passes import (
    ParcelJob,
    check_not_all_zero,
    choose_mask,
    frame_moments,
    masked_blocks,
    open_image,
    run_time_grid,
    scan_image,
    voxel_deviations,
    write_voxel_zscored_store,
    zscore_parameters,
)
from bidstrain.normalize.resample_time import TimeGrid

log = logging.getLogger(__name__)


def _check_volumes(layout: NiftiLayout, info: ImageInfo, ddof: int) -> None:
    if layout.n_volumes <= ddof:
        raise BidstrainError(
            f"{layout.n_volumes} volume(s): a z-score over time with ddof={ddof} needs at "
            f"least {ddof + 1} (config normalize.ddof)",
            path=layout.path,
            subject=info.subject,
        )


def normalize_bold(
    nifti_path: str | Path,
    out_store: str | Path,
    info: ImageInfo,
    options: Options,
    confounds: RunConfounds | None = None,
    parcels: ParcelJob | None = None,
) -> dict[str, Any]:
    """Z-score a BOLD run per voxel over time, within a mask, into a store.

    Two streamed passes (:mod:`bidstrain.normalize.passes`); three when the run is
    resampled in time (``options.target_tr``), the second for the statistics of its
    frames, except for a ``linear`` or ``pchip`` run without confounds whose voxels pass 1
    keeps: pass 1 takes its frames' moments then, over the kept voxels
    (:func:`~bidstrain.normalize.resample_time.frame_accumulator`). The image is
    decompressed once: pass 1 keeps the voxels the mask will come from (a mask file's, or
    those around the first block's bright voxels) in a temporary file that the later
    passes read
    (:mod:`~bidstrain.normalize.masked_cache`: ``itemsize`` bytes per kept voxel and
    volume on disk). Where it cannot (``mask="none"``, or a mask beyond the kept voxels),
    the image is read again by pass 2, and a resampled run keeps the masked voxels there
    for its third pass. Pass 1 also sums the parcels of a run with a mask file and no
    confounds (unless resampled with ``pchip``), over the mask's voxels it keeps
    (``parcel_means`` of :func:`~bidstrain.normalize.passes.scan_image`).

    Peak memory, besides the libraries: about 40 bytes per grid voxel (pass 1 sums, the
    mean volume, the mask), plus for blocks of ``b`` volumes ``2 * b`` stored volumes (the
    reader's two buffers) and ``b * (itemsize + 12)`` bytes per masked voxel (pass 2),
    whatever the number of volumes. Measured on a 96x96x96x300 int16 run with a
    230,000-voxel mask and the default ``b = 4``: peak RSS 110 MB for the whole process,
    of which 58 MB are the interpreter with numpy, nibabel, zarr and isal; ``mask="epi"``
    imports ``scipy.ndimage`` for the mask, not nilearn
    (:func:`bidstrain.normalize.masking.epi_mask`).
    Resampling in time adds ``8 * (s + b)`` bytes per masked voxel for a support of ``s``
    volumes (2 linear, 4 pchip, ``20 * max(tr, target) / tr`` fourier:
    :mod:`~bidstrain.normalize.resample_time`), and
    :data:`~bidstrain.normalize.resample_time.BATCH_FRAMES` frames of output (16 for
    ``fourier``), for ``pchip`` the slopes of the volumes its next frames span, and when
    pass 1 sums a ``linear`` run's frames, ``32`` bytes per kept voxel (peak RSS 155 MB
    instead of 149 MB at 0.8 s), or a ``pchip`` run's, its resampler over the kept voxels
    and the frames' sums, about ``8 * (3 * b + 2 * s + 12)`` bytes per kept voxel (256 at
    ``b = 4``; the frames' computation adds transients of about half that), freed when
    the pass ends (peak RSS 4 MB higher on that run); parcels ``8`` bytes per volume and
    parcel (per frame for ``pchip``).

    Parameters
    ----------
    nifti_path : str or Path
        The run (``.nii`` or ``.nii.gz``, 4D).
    out_store : str or Path
        The store to write (``*.zarr``); replaced atomically.
    info : ImageInfo
        Subject, entities and repetition time (from the ingest record).
    options : Options
        Mask, ddof, non-finite policy, block size.
    confounds : RunConfounds, optional
        Confounds to regress out first, as ``nilearn.signal.clean`` does
        (:mod:`~bidstrain.normalize.confounds`); the volumes outside their sample mask are
        left out of the store. Adds ``8 k`` bytes per fitted voxel for ``k`` confounds.
    parcels : ParcelJob, optional
        Write the run's parcel time series too (:mod:`~bidstrain.normalize.parcels`).

    Returns
    -------
    dict
        The store's attributes.

    Raises
    ------
    BidstrainError
        For no more than ``ddof`` volumes, an all-zero image, an empty mask or one on
        another grid, and NaN/Inf inside the mask (unless ``options.nonfinite == "mask"``).
    """
    layout = open_image(nifti_path, info)
    _check_volumes(layout, info, options.ddof)
    regression = None
    if confounds is not None:
        regression = ConfoundRegression(confounds, layout, fixed_mask_index(layout, info, options))
    grid = run_time_grid(layout, info, options, None if confounds is None else confounds.kept)
    known_mask = mask_file(layout, info, options)
    plan = cache_plan(layout, options, known_mask)
    # fourier's frames cost pass 1 more than its wait for the decompression (BENCHMARKS.md)
    frames_in_pass_1 = grid.method in ("linear", "pchip") and regression is None
    scan = scan_image(
        layout,
        options.block_volumes,
        options.ddof,
        regression=regression,
        plan=plan,
        frame_grid=grid if frames_in_pass_1 else None,
        parcel_means=_pass_1_parcel_means(parcels, known_mask, layout, grid, regression),
    )
    cache, pass_1_moments, parcel_means = scan.cache, scan.frame_moments, scan.parcel_means
    try:
        check_not_all_zero(scan, layout, info)
        mask, n_nonfinite = choose_mask(layout, info, options, scan)
        index = layout.stored_index(mask)
        mean, variance = scan.mean[index], scan.variance[index]
        del scan
        if cache is not None and cache.columns(index) is None:
            log.info("%s: the mask reaches beyond the voxels kept by the first pass: the "
                     "image is decompressed again", layout.path)  # fmt: skip
            cache.close()
            cache = pass_1_moments = None
        if cache is None or not np.array_equal(index, cache.index):  # non-finite voxels out
            parcel_means = None
        if regression is not None:
            regression.restrict(index)
            variance = regression.residual_variance(variance, layout, options.ddof)
        if not grid.identity:  # the frames' own statistics: pass 1's, or one more pass
            if cache is None:
                cache = MaskedCache(index, layout.dtype.newbyteorder("="), layout.n_volumes)
            mean, variance = _frame_statistics(
                layout, index, options, grid, mean, regression, cache, pass_1_moments
            )
            pass_1_moments = None  # not held through the last pass
        return write_voxel_zscored_store(
            out_store,
            layout,
            info,
            options,
            mask,
            mean,
            np.sqrt(variance),
            grid=grid,
            regression=regression,
            parcels=parcels,
            cache=cache,
            parcel_means=parcel_means,
            stats_from=[str(layout.path.resolve())],
            heldout=False,
            n_nonfinite=n_nonfinite,
        )
    finally:
        if cache is not None:
            cache.close()


def _pass_1_parcel_means(
    parcels: ParcelJob | None,
    known_mask: np.ndarray | None,
    layout: NiftiLayout,
    grid: TimeGrid,
    regression: ConfoundRegression | None,
) -> ParcelMeans | None:
    """The parcel means pass 1 sums the volumes of (:func:`scan_image`): when the mask is
    a file (the voxels pass 1 keeps), the volumes are not regressed, and their sums give
    the frames'; None otherwise."""
    if parcels is None or known_mask is None or regression is not None:
        return None
    intercept = np.full(int(known_mask.sum()), layout.inter, dtype=np.float64)
    means = ParcelMeans(parcels.atlas, known_mask, intercept, layout.slope, grid)
    return means if means.sums_volumes else None


def _frame_statistics(
    layout: NiftiLayout,
    index: np.ndarray,
    options: Options,
    grid: TimeGrid,
    mean: np.ndarray,
    regression: ConfoundRegression | None,
    cache: MaskedCache | None = None,
    pass_1_moments: VoxelMoments | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-voxel mean and variance (image units) of a resampled run's valid frames: from
    pass 1's ``pass_1_moments`` of the voxels of ``cache`` when they are given, else from
    one more pass, whose masked voxels are read from ``cache`` when it is complete, else
    kept in it for the next pass."""
    if grid.valid.sum() <= options.ddof:
        raise BidstrainError(
            f"{int(grid.valid.sum())} valid frames at TR {grid.target_tr} s: a z-score with "
            f"ddof={options.ddof} needs at least {options.ddof + 1} (config time.tr, "
            "normalize.confounds)",
            path=layout.path,
        )
    if pass_1_moments is not None:
        columns = cache.columns(index)
        frame_mean = pass_1_moments.mean()[columns] * layout.slope + layout.inter
        return frame_mean, pass_1_moments.variance(options.ddof)[columns] * layout.slope**2
    center, _, _ = zscore_parameters(layout, mean, np.ones_like(mean))
    block = options.block_volumes
    if regression is None:
        source = voxel_deviations(layout, index, block, center, cache=cache)
    else:
        source = regression.residuals(masked_blocks(layout, index, block, cache), center)
    moments = frame_moments(source, grid, index.size)
    frame_mean = mean + moments.mean() * layout.slope
    return frame_mean, moments.variance(options.ddof) * layout.slope**2
