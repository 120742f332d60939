"""The streaming passes every normalization is made of, and the checks between them.

pass 1 (:func:`scan_image`)
    per-voxel sums over the whole grid (:class:`~bidstrain.normalize.moments.VoxelMoments`):
    the mean volume a mask is computed from, the voxels holding NaN/Inf, and the per-voxel
    mean and variance.
pass 2 (:func:`write_voxel_zscored_store`, or :func:`bidstrain.normalize.volumes.write_per_volume`)
    masked blocks of volumes (gathered with precomputed flat indices), minus the
    confounds when they are regressed, become the store's frames (:func:`frames`: the
    volumes, or resampled in time by :mod:`~bidstrain.normalize.resample_time`), are
    z-scored and written to the store; the parcels' sums are taken on the way (of the
    volumes, or of the frames: :mod:`~bidstrain.normalize.parcels`).

A BOLD run resampled in time with its own statistics is streamed once more between the
two (:func:`frame_moments`): the statistics of its frames are not those of its volumes.
Pass 1 takes them itself for a ``linear`` or ``pchip`` run without confounds whose
voxels it keeps (:func:`scan_image`'s ``frame_grid``): ``linear`` frames' sums are
weighted sums of the volumes and of their neighbours' products, and ``pchip`` frames are
computed from the volumes as they come.
Resampling holds the volumes of one interpolation support, never the whole run: memory
stays bounded by the block, the support and the mask, whatever the run's length.

Pass 1 streams the image with a thread decompressing ahead
(:mod:`~bidstrain.normalize.nifti_stream`) and can keep the voxels the mask will come from
in a temporary file, which the later passes then read instead of the image
(:mod:`~bidstrain.normalize.masked_cache`); pass 2 writes the store from a second thread.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bidstrain.dataset.atlas import Atlas
from bidstrain.dataset.masks import MASK_KEYS
from bidstrain.errors import BidstrainError
from bidstrain.io.orientation import OBLIQUE_DEGREES
from bidstrain.io.store import ZERO_STD, chunk_volumes, create_store
from bidstrain.normalize.confounds import ConfoundRegression
from bidstrain.normalize.image import ImageInfo, Options
from bidstrain.normalize.masked_cache import CachePlan, MaskedCache
from bidstrain.normalize.masking import epi_mask, head_mask, load_mask
from bidstrain.normalize.moments import VoxelMoments
from bidstrain.normalize.nifti_stream import NiftiLayout, iter_blocks, read_layout
from bidstrain.normalize.parcels import ParcelMeans, ParcelOutputs, write_parcel_outputs
from bidstrain.normalize.resample_time import (
    TimeGrid,
    TimeResampler,
    frame_accumulator,
    time_grid,
)

log = logging.getLogger(__name__)


def open_image(path, info: ImageInfo) -> NiftiLayout:
    """The layout of an image to normalize (:func:`read_layout`); warns when it is oblique.

    An oblique image is stored on its own voxels in the RAS+ order of its closest axes
    (:mod:`bidstrain.io.orientation`), its affine kept: nothing is resampled.
    """
    layout = read_layout(path, info.subject)
    obliquity = layout.orientation.obliquity
    if obliquity > OBLIQUE_DEGREES:
        log.warning(
            "sub-%s: %s: oblique by %.2f degrees: stored unresampled in the RAS+ order of "
            "its closest axes (as %s), with its oblique affine; resample it to an "
            "axis-aligned grid first if the voxel axes must follow the world axes",
            info.subject,
            layout.path,
            obliquity,
            layout.source_orientation,
        )
    return layout


@dataclass
class Scan:
    """What pass 1 learned about an image (real values, whole grid)."""

    mean: np.ndarray  # per-voxel mean, stored (Fortran) order
    variance: np.ndarray  # per-voxel variance, stored order
    mean_volume: np.ndarray  # the (x, y, z) volume a mask is computed from
    nonfinite: np.ndarray  # (x, y, z) bool, voxels holding NaN or Inf
    cache: MaskedCache | None = None  # voxels kept for the next passes; the caller closes it
    #: the moments of the frames of the cached voxels (complete), when pass 1 was given a
    #: grid
    frame_moments: VoxelMoments | None = None
    #: the parcels' volume sums of the cached voxels (complete), when pass 1 was given them
    parcel_means: ParcelMeans | None = None


def scan_image(
    layout: NiftiLayout,
    block: int,
    ddof: int,
    mean_rows: np.ndarray | None = None,
    regression: ConfoundRegression | None = None,
    plan: CachePlan | None = None,
    frame_grid: TimeGrid | None = None,
    parcel_means: ParcelMeans | None = None,
) -> Scan:
    """Pass 1: per-voxel moments of the whole grid.

    Parameters
    ----------
    layout : NiftiLayout
        The image.
    block : int
        Volumes per streamed block.
    ddof : int
        Delta degrees of freedom of the variance.
    mean_rows : ndarray of bool, optional
        Volumes whose mean is the mask's volume (DWI b=0); by default all of them.
    regression : ConfoundRegression, optional
        A BOLD run's confounds: the moments are those of the kept volumes, and the
        regression is fitted on them (:mod:`~bidstrain.normalize.confounds`).
    plan : CachePlan, optional
        Which voxels to keep for the next passes, chosen on the first block: the scan's
        ``cache`` (:mod:`~bidstrain.normalize.masked_cache`).
    frame_grid : TimeGrid, optional
        A resampled run's frames (and no ``regression``): the moments of its frames over
        the kept voxels are taken in this pass too, the scan's ``frame_moments``
        (:func:`~bidstrain.normalize.resample_time.frame_accumulator`), so that no pass
        is needed for the frames' statistics. The main thread has the time: in pass 1 it
        waits for the decompressing thread.
    parcel_means : ParcelMeans, optional
        The parcel means of a run whose mask is the voxels ``plan`` keeps (a mask file's)
        and whose volumes are summed (:attr:`ParcelMeans.sums_volumes`), centered on the
        image's intercept: the volumes' stored values are summed in this pass, the
        scan's ``parcel_means``, so that pass 2 only writes the voxels.
    """
    moments = VoxelMoments(layout.n_grid, dtype=layout.dtype)
    selected_sum = None if mean_rows is None else np.zeros(layout.n_grid, dtype=np.float64)
    cache = accumulator = None
    try:
        for start, values in iter_blocks(layout, block):
            if plan is not None and start == 0:
                cache = plan(values)
                if cache is not None and frame_grid is not None:
                    accumulator = frame_accumulator(frame_grid, cache.index.size, shifted=True)
            kept = None if cache is None else cache.append_grid(values)
            if kept is not None:
                positions = np.arange(start, start + kept.shape[0])
                if accumulator is not None:
                    accumulator.add(positions, kept)
                if parcel_means is not None:
                    parcel_means.add_volumes(positions, kept)
            if regression is not None:
                values = regression.select(start, values)
                regression.accumulate(values)
            moments.update(values)
            if selected_sum is not None:
                rows = mean_rows[start : start + values.shape[0]]
                selected_sum += values[rows].sum(axis=0, dtype=np.float64)
    except BaseException:
        if cache is not None:
            cache.close()
        raise
    mean = moments.mean() * layout.slope + layout.inter
    variance = moments.variance(ddof) * layout.slope**2
    if selected_sum is None:
        mean_volume = mean
    else:
        mean_volume = selected_sum / mean_rows.sum() * layout.slope + layout.inter
    nonfinite = (
        np.zeros(layout.n_grid, dtype=bool) if moments.nonfinite is None else moments.nonfinite
    )
    if cache is None or not cache.complete:
        accumulator = parcel_means = None
    return Scan(
        mean,
        variance,
        layout.to_grid(mean_volume),
        layout.to_grid(nonfinite),
        cache,
        None if accumulator is None else accumulator.moments(),  # the resampler is freed
        parcel_means,
    )


def aligned_block(block_volumes: int, n_time: int, n_voxel: int) -> tuple[int, int]:
    """Store chunk and read block (a whole number of chunks, so no chunk is written twice)."""
    chunk = chunk_volumes(n_time, n_voxel)
    return chunk, max(1, math.ceil(block_volumes / chunk)) * chunk


def choose_mask(
    layout: NiftiLayout, info: ImageInfo, options: Options, scan: Scan
) -> tuple[np.ndarray, int]:
    """The mask (minus non-finite voxels when configured) and the number of those voxels."""
    key = MASK_KEYS[info.modality]
    if options.mask == "none":
        mask = np.ones(layout.shape, dtype=bool)
    elif options.mask == "epi":
        mask = epi_mask(scan.mean_volume)
    elif options.mask == "head":
        mask = head_mask(scan.mean_volume)
    else:
        mask = load_mask(
            options.mask,
            layout.shape,
            layout.affine,
            image=layout.path,
            config_key=key,
            subject=info.subject,
        )
    check_not_empty(mask, layout, info, f"config {key}: {options.mask}", tried=options.mask)
    mask, n_nonfinite = exclude_nonfinite(mask, scan.nonfinite, layout, info, options)
    check_not_empty(mask, layout, info, f"after removing {n_nonfinite} non-finite voxels")
    return mask, n_nonfinite


def check_not_empty(
    mask: np.ndarray, layout: NiftiLayout, info: ImageInfo, how: str, tried: str | None = None
) -> None:
    """Raise when ``mask`` selects no voxel (``how`` says where it came from; ``tried``,
    the mask option that gave it, is not offered again)."""
    if not mask.any():
        others = [option for option in ("epi", "none") if option != tried]
        raise BidstrainError(
            f"the mask is empty ({how}); choose another mask (config "
            f"{MASK_KEYS[info.modality]}: {', '.join(others)}, or a mask file)",
            path=layout.path,
            subject=info.subject,
        )


def exclude_nonfinite(
    mask: np.ndarray, nonfinite: np.ndarray, layout: NiftiLayout, info: ImageInfo, options: Options
) -> tuple[np.ndarray, int]:
    """Remove the voxels holding NaN/Inf from ``mask`` (or raise, as configured)."""
    bad = mask & nonfinite
    n_bad = int(bad.sum())
    if n_bad and options.nonfinite == "error":
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise BidstrainError(
            f"{n_bad} voxels inside the mask hold NaN or Inf values (first at voxel {first}); "
            "fix the image, or set config normalize.nonfinite: mask to leave them out",
            path=layout.path,
            subject=info.subject,
        )
    return mask & ~bad, n_bad


def check_not_all_zero(scan: Scan, layout: NiftiLayout, info: ImageInfo) -> None:
    """Raise when every value of the image is zero."""
    if not np.any(np.nan_to_num(scan.mean)) and not np.any(np.nan_to_num(scan.variance)):
        raise BidstrainError(
            "every value of every volume is zero (an empty or failed export?)",
            path=layout.path,
            subject=info.subject,
        )


def store_attrs(layout: NiftiLayout, info: ImageInfo, options: Options, **values: Any) -> dict:
    """Store attributes shared by every modality (see :mod:`bidstrain.io.store`)."""
    return {
        "modality": info.modality,
        "subject": info.subject,
        "session": info.session,
        "entities": dict(info.entities),
        "repetition_time": info.repetition_time,
        "source_path": str(layout.path.resolve()),
        "source_size": layout.path.stat().st_size,
        "source_dtype": str(layout.dtype),
        "source_orientation": layout.source_orientation,
        "ddof": options.ddof,
        "mask_source": options.mask,
    } | values


def volume_times(layout: NiftiLayout, info: ImageInfo) -> np.ndarray:
    """Onset of each volume in seconds; the volume index when there is no TR (T1w, DWI)."""
    step = info.repetition_time if info.repetition_time else 1.0
    return np.arange(layout.n_volumes, dtype=np.float64) * step


def zscore_parameters(
    layout: NiftiLayout, mean: np.ndarray, std: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``center`` and ``scale`` in stored units for real-valued per-voxel statistics.

    ``(stored * slope + inter - mean) / std == (stored - center) * scale``; zero-variance
    voxels get ``scale = 0`` (they become 0). Also returns the zero-variance flags.
    """
    zero = std < ZERO_STD
    center = (mean - layout.inter) / layout.slope
    scale = np.divide(layout.slope, std, out=np.zeros_like(std), where=~zero)
    return center, scale, zero


def voxel_deviations(
    layout: NiftiLayout,
    index: np.ndarray,
    block: int,
    center: np.ndarray,
    *,
    check_values: bool = False,
    subject: str | None = None,
    cache: MaskedCache | None = None,
):
    """Pass 2's input without confounds: ``stored - center`` of every volume.

    ``index`` holds the flat stored positions of the mask's voxels; ``center`` is per
    masked voxel in stored units, so the header's slope and intercept never touch the
    data. With ``check_values`` (a held-out run, streamed once) NaN/Inf and an all-zero
    input are detected here. ``cache``: see :func:`masked_blocks`.

    Yields
    ------
    positions : ndarray of int
        The volumes of the rows.
    deviations : ndarray, shape (len(positions), index.size), float64
        A reused buffer: valid until the next item is requested.

    Notes
    -----
    Memory: besides the reader's two blocks of stored values, ``block * index.size``
    masked stored values and float64 deviations.
    """
    deviations = np.empty((block, index.size), dtype=np.float64)
    stored_zero = -layout.inter / layout.slope
    any_nonzero = False
    for start, masked in masked_blocks(layout, index, block, cache):
        n = masked.shape[0]
        np.subtract(masked, center, out=deviations[:n])
        if check_values:
            any_nonzero = any_nonzero or bool(np.any(masked != stored_zero))
            if not np.isfinite(masked).all():
                raise BidstrainError(
                    f"NaN or Inf inside the mask in volumes {start}-{start + n - 1}; fix the "
                    "image, or set config normalize.nonfinite: mask to leave those voxels out",
                    path=layout.path,
                    subject=subject,
                )
        yield np.arange(start, start + n), deviations[:n]
    if check_values and not any_nonzero:
        raise BidstrainError(
            "every value inside the mask is zero", path=layout.path, subject=subject
        )


def masked_blocks(
    layout: NiftiLayout, index: np.ndarray, block: int, cache: MaskedCache | None = None
):
    """The stored values of the mask's voxels (flat stored positions ``index``), block
    after block: ``(start, masked)``, ``masked`` a reused buffer.

    Read from the image, and appended to ``cache`` when it is given and not complete; read
    back from ``cache`` when it is complete, which it must then hold ``index`` of
    (:mod:`~bidstrain.normalize.masked_cache`).
    """
    if cache is not None and cache.complete:
        yield from cache.blocks(block, index)
        return
    masked = np.empty((block, index.size), dtype=layout.dtype.newbyteorder("="))
    for start, values in iter_blocks(layout, block):
        n = values.shape[0]
        np.take(values, index, axis=1, out=masked[:n], mode="clip")  # indices are valid
        if cache is not None:
            cache.append(masked[:n])
        yield start, masked[:n]


def run_time_grid(
    layout: NiftiLayout, info: ImageInfo, options: Options, kept: np.ndarray | None
) -> TimeGrid:
    """The frames a BOLD run is stored on: its volumes (kept by the sample mask), or
    config ``time.tr`` (:mod:`~bidstrain.normalize.resample_time`).

    Raises
    ------
    BidstrainError
        When a repetition time is asked for and the run has none.
    """
    if options.target_tr is not None and not info.repetition_time:
        raise BidstrainError(
            f"config time.tr is {options.target_tr} s but the run has no repetition time "
            "(RepetitionTime in its sidecar or header)",
            path=layout.path,
            subject=info.subject,
        )
    source_tr = info.repetition_time or 1.0
    return time_grid(layout.n_volumes, source_tr, options.target_tr, options.time_method, kept)


def frames(source, grid: TimeGrid, n_voxel: int):
    """The store's frames, in time order, from pass 2's ``(positions, deviations)``:
    the kept volumes themselves, or resampled (:class:`TimeResampler`)."""
    if grid.identity:
        for _, deviations in source:
            yield deviations
        return
    resampler = TimeResampler(grid, n_voxel)
    for positions, deviations in source:
        yield from resampler.push(positions, deviations)
    yield from resampler.finish()


def frame_moments(source, grid: TimeGrid, n_voxel: int) -> VoxelMoments:
    """Per-voxel moments of the store's frames (a resampled run's own statistics), from
    pass 2's ``(positions, deviations)`` (:func:`frame_accumulator`: those of ``linear``
    frames are summed from the volumes)."""
    accumulator = frame_accumulator(grid, n_voxel, shifted=False)
    for positions, deviations in source:
        accumulator.add(positions, deviations)
    return accumulator.moments()


def write_frames(writer, blocks, scale: np.ndarray) -> None:
    """Z-score the blocks of frames (deviations from the mean, in stored units) into
    the store: ``block * scale``.

    The blocks can be the passes' reused buffers: each is z-scored into a buffer of this
    loop before the next is requested. The store writes (encoding, checksum, file) run in
    a background thread while the next block is computed (numpy, xxhash and file writes
    release the GIL), one block at a time and in order, from two z-score buffers in turn;
    a write's error is raised here. The buffers of this loop are freed when it returns,
    before the parcel outputs are written.
    """
    buffers = [np.empty((0, scale.size), dtype=np.float32) for _ in range(2)]
    in_flight: deque[Future] = deque()  # the writes not known done, oldest first
    written = 0
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="store-write") as pool:
        for turn, deviations in enumerate(blocks):
            if len(in_flight) == len(buffers):
                in_flight.popleft().result()  # its buffer is free (or its error raised)
            n, slot = deviations.shape[0], turn % len(buffers)
            if buffers[slot].shape[0] < n:
                buffers[slot] = np.empty((n, scale.size), dtype=np.float32)
            zscored = buffers[slot][:n]
            np.multiply(deviations, scale, out=zscored)
            in_flight.append(pool.submit(writer.write, written, zscored))
            written += n
        while in_flight:
            in_flight.popleft().result()


@dataclass(frozen=True)
class ParcelJob:
    """A BOLD run's parcel outputs, and the atlas on its grid; for a held-out run, the
    voxel stores of its training runs (in the order of ``outputs.stats_from``)."""

    atlas: Atlas
    outputs: ParcelOutputs
    training_voxels: tuple[Path, ...] = ()


def write_voxel_zscored_store(
    out_store,
    layout: NiftiLayout,
    info: ImageInfo,
    options: Options,
    mask: np.ndarray,
    mean: np.ndarray,
    std: np.ndarray,
    *,
    grid: TimeGrid,
    check_values: bool = False,
    regression: ConfoundRegression | None = None,
    parcels: ParcelJob | None = None,
    cache: MaskedCache | None = None,
    parcel_means: ParcelMeans | None = None,
    **attrs: Any,
) -> dict:
    """Stream the image once more and write its frames z-scored per voxel with
    ``mean``/``std``; also its parcel time series when ``parcels`` is given.

    ``mean`` and ``std`` (float64, one per voxel of ``mask`` in C order) are the
    statistics of the store's frames (the run's own, or pooled from other runs); the
    volumes are streamed as deviations from ``mean``, which every method of
    :mod:`~bidstrain.normalize.resample_time` carries through to the frames unchanged
    (a constant stays that constant). ``attrs`` (``stats_from``,
    ``heldout``, ``n_nonfinite``...) complete :func:`store_attrs`. See
    :func:`voxel_deviations` for ``check_values`` and memory. With ``regression``
    (fitted in pass 1 on the voxels of ``mask``), the confounds are removed first and only
    the kept volumes are read into the frames (``check_values`` is then pass 1's
    business). A complete ``cache`` is read instead of the image (:func:`masked_blocks`).
    ``parcel_means``: the parcel means of ``parcels`` with every volume summed by pass 1
    over the voxels of ``mask`` (:func:`scan_image`); this pass sums them otherwise.

    Returns
    -------
    dict
        The store's attributes.
    """
    index = layout.stored_index(mask)
    stored_center, scale, zero = zscore_parameters(layout, mean, std)
    times = grid.times[grid.valid]
    chunk, block = aligned_block(options.block_volumes, times.size, index.size)
    if regression is None:
        source = voxel_deviations(
            layout,
            index,
            block,
            stored_center,
            check_values=check_values,
            subject=info.subject,
            cache=cache,
        )
    else:
        source = regression.residuals(masked_blocks(layout, index, block, cache), stored_center)
        attrs["confounds_strategy"] = regression.confounds.strategy
    if parcel_means is not None and parcels is None:
        raise ValueError("parcel_means without the parcel job (parcels) to write them")
    means = parcel_means
    if parcels is not None and means is None:
        means = ParcelMeans(parcels.atlas, mask, mean, layout.slope, grid)
        source = means.volumes(source)
    blocks = frames(source, grid, index.size)
    if means is not None:
        blocks = means.frames(blocks)
    with create_store(
        out_store,
        mask=mask,
        affine=layout.affine,
        time=times,
        chunk=chunk,
        storage=options.storage,
    ) as writer:
        write_frames(writer, blocks, scale)
        writer.add_variable("mean", ("voxel",), mean.astype(np.float32))
        writer.add_variable("std", ("voxel",), std.astype(np.float32))
        writer.add_variable("frame_time", ("frame",), grid.times)
        writer.add_variable("frame_valid", ("frame",), grid.valid)
        writer.attrs.update(
            store_attrs(
                layout,
                info,
                options,
                stats_dim="voxel",
                n_zero_variance=int(zero.sum()),
                repetition_time=grid.target_tr if info.repetition_time else None,
                source_repetition_time=info.repetition_time,
                time_method=grid.method,
                n_invalid_frames=grid.n_invalid,
                **attrs,
            )
        )
    if means is not None:
        run_frames = {"frame_time": grid.times, "frame_valid": grid.valid}
        write_parcel_outputs(
            parcels.outputs,
            means,
            run_frames,
            options.ddof,
            writer.attrs,
            info.subject,
            mask=mask,
            voxel_stores=parcels.training_voxels,
        )
    return writer.attrs
