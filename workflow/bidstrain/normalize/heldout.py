"""Held-out BOLD runs: normalized with statistics pooled from other runs, never their own."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bidstrain.errors import BidstrainError
from bidstrain.io.grid import grid_mismatch
from bidstrain.io.store import open_store, read_meta, store_meta, to_grid
from bidstrain.normalize.confounds import ConfoundRegression, RunConfounds
from bidstrain.normalize.image import ImageInfo, Options
from bidstrain.normalize.masked_cache import known_mask_plan
from bidstrain.normalize.moments import pool_moments
from bidstrain.normalize.nifti_stream import NiftiLayout
from bidstrain.normalize.passes import (
    ParcelJob,
    check_not_all_zero,
    check_not_empty,
    exclude_nonfinite,
    open_image,
    run_time_grid,
    scan_image,
    write_voxel_zscored_store,
)


def pooled_statistics(
    stats_stores: Sequence[str | Path], layout: NiftiLayout, ddof: int, subject: str | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Per-voxel mean and std pooled over BOLD stores, on the voxels all their masks share.

    Returns
    -------
    mask : ndarray of bool, shape (x, y, z)
        Intersection of the stores' masks.
    mean, std : ndarray (float64)
        One value per voxel of ``mask``, in C order.
    sources : list of str
        The source files the stores' statistics came from.

    Raises
    ------
    BidstrainError
        When a store is not per-voxel, lies on another grid than the image, or the masks
        share no voxel.
    """
    if not stats_stores:
        raise BidstrainError("no store to take statistics from", path=layout.path, subject=subject)
    datasets = [open_store(path) for path in stats_stores]
    metas = [store_meta(ds) for ds in datasets]
    mask = np.ones(layout.shape, dtype=bool)
    for path, ds, meta in zip(stats_stores, datasets, metas, strict=True):
        if not meta.per_voxel:
            raise BidstrainError(
                f"store has per-{meta.stats_dim} statistics; a run can only be "
                "normalized with the per-voxel statistics of BOLD stores",
                path=path,
                subject=subject,
            )
        mismatch = grid_mismatch(ds.mask.shape, meta.affine, layout.shape, layout.affine)
        if mismatch:
            raise BidstrainError(
                f"store is not on the grid of {layout.path}: {mismatch}; statistics only "
                "apply on the same grid",
                path=path,
                subject=subject,
            )
        mask &= ds.mask.values
    if not mask.any():
        raise BidstrainError(
            f"the masks of {', '.join(map(str, stats_stores))} share no voxel",
            path=layout.path,
            subject=subject,
        )
    shared = np.nonzero(mask)
    counts, means, variances, ddofs, sources = [], [], [], [], []
    for ds, meta in zip(datasets, metas, strict=True):
        grid = to_grid(ds, np.stack([ds["mean"].values, ds["std"].values]), fill=np.nan)
        counts.append(ds.sizes["time"])
        means.append(grid[0][shared])
        variances.append(grid[1][shared].astype(np.float64) ** 2)
        ddofs.append(meta.ddof)
        sources.extend(meta.stats_from)
    mean, variance = pool_moments(counts, means, variances, ddofs, ddof)
    return mask, mean, np.sqrt(variance), sources


def normalize_with_stats(
    nifti_path: str | Path,
    stats_stores: Sequence[str | Path],
    out_store: str | Path,
    info: ImageInfo | None,
    options: Options,
    confounds: RunConfounds | None = None,
    parcels: ParcelJob | None = None,
) -> dict[str, Any]:
    """Z-score a BOLD run with statistics pooled from other runs' stores, not its own.

    For held-out runs and for data that arrives later: the per-voxel counts, means and
    variances of ``stats_stores`` are pooled exactly
    (:func:`bidstrain.normalize.moments.pool_moments`) and the run is streamed once (twice,
    the first time for its non-finite voxels, when a float image has
    ``options.nonfinite == "mask"``). The store's mask is the intersection of the stores'
    masks (minus voxels with NaN/Inf when ``options.nonfinite == "mask"``), its ``mean``
    and ``std`` are the pooled statistics, ``stats_from`` lists the runs they came from and
    ``heldout`` is True. ``options.mask`` is not used: the statistics define the voxels.
    Peak memory as :func:`bidstrain.normalize.bold.normalize_bold`.

    Parameters
    ----------
    nifti_path : str or Path
        The run to normalize.
    stats_stores : sequence of str or Path
        BOLD stores (``stats_dim: "voxel"``) on the run's grid.
    out_store : str or Path
        The store to write; replaced atomically.
    info : ImageInfo or None
        Subject, entities, TR; None: from the BIDS file name and the first store's TR.
    options : Options
        ``ddof``, ``nonfinite`` and ``block_volumes`` are used.
    confounds : RunConfounds, optional
        The run's own confounds, regressed out before the z-score with the pooled
        statistics (:mod:`~bidstrain.normalize.confounds`); the run is then streamed
        twice (the fit, then the store, which reads the mask's voxels that the fit kept
        in a temporary file: :mod:`~bidstrain.normalize.masked_cache`), and the volumes
        outside their sample mask are left out.
    parcels : ParcelJob, optional
        Write the run's parcel time series too, z-scored with the statistics pooled from
        the training runs (``parcels.outputs.stats_from``, the parcel stores of the runs
        of ``stats_stores``) over the run's own voxels
        (:func:`bidstrain.normalize.parcels.parcel_statistics`).

    Returns
    -------
    dict
        The store's attributes.
    """
    if info is None:
        tr = read_meta(stats_stores[0]).repetition_time if stats_stores else None
        info = ImageInfo.from_name(nifti_path, tr)
    layout = open_image(nifti_path, info)
    mask, mean, std, sources = pooled_statistics(stats_stores, layout, options.ddof, info.subject)
    if parcels is not None:
        parcels = dataclasses.replace(
            parcels, training_voxels=tuple(Path(store) for store in stats_stores)
        )
    n_nonfinite = 0
    regression = scan = None
    if confounds is not None:  # pass 1 fits the regression and finds NaN/Inf and zeros
        regression = ConfoundRegression(confounds, layout, layout.stored_index(mask))
        plan = known_mask_plan(layout, mask)  # pass 2 reads the mask's voxels kept by pass 1
        scan = scan_image(layout, options.block_volumes, 0, regression=regression, plan=plan)
    elif layout.is_float and options.nonfinite == "mask":
        scan = scan_image(layout, options.block_volumes, 0)
    cache = None if scan is None else scan.cache
    try:
        if regression is not None:
            check_not_all_zero(scan, layout, info)
        if scan is not None:
            stats_mask = mask
            mask, n_nonfinite = exclude_nonfinite(mask, scan.nonfinite, layout, info, options)
            check_not_empty(mask, layout, info, f"after removing {n_nonfinite} non-finite voxels")
            kept = mask[np.nonzero(stats_mask)]
            mean, std = mean[kept], std[kept]
        if regression is not None:
            regression.restrict(layout.stored_index(mask))
        grid = run_time_grid(layout, info, options, None if confounds is None else confounds.kept)
        return write_voxel_zscored_store(
            out_store,
            layout,
            info,
            options,
            mask,
            mean,
            std,
            grid=grid,
            check_values=True,
            regression=regression,
            parcels=parcels,
            cache=cache,
            mask_source="intersection of the stats_from masks",
            stats_from=sources,
            heldout=True,
            n_nonfinite=n_nonfinite,
        )
    finally:
        if cache is not None:
            cache.close()
