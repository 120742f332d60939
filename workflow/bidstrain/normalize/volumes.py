"""T1w and DWI images: each volume z-scored over the voxels of its mask."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from bidstrain.dataset.masks import MASK_KEYS
from bidstrain.errors import BidstrainError
from bidstrain.io.store import StoreWriter, create_store
from bidstrain.normalize.image import ImageInfo, Options
from bidstrain.normalize.nifti_stream import NiftiLayout, iter_blocks
from bidstrain.normalize.passes import (
    ZERO_STD,
    aligned_block,
    check_not_all_zero,
    choose_mask,
    open_image,
    scan_image,
    store_attrs,
    volume_times,
)

#: b-values up to this count as b=0 for the DWI mask.
B0_THRESHOLD = 50.0


def write_per_volume(
    writer: StoreWriter,
    layout: NiftiLayout,
    index: np.ndarray,
    block: int,
    ddof: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Pass 2 of a per-volume normalization; returns the real-valued mean and std per volume.

    ``index`` holds the flat stored positions of the mask's voxels.
    """
    means = np.empty(layout.n_volumes, dtype=np.float64)
    stds = np.empty(layout.n_volumes, dtype=np.float64)
    sign = np.sign(layout.slope)
    for start, values in iter_blocks(layout, block):
        n = values.shape[0]
        masked = np.take(values, index, axis=1).astype(np.float64)
        center = masked.mean(axis=1)
        masked -= center[:, None]
        std = np.sqrt(np.einsum("ij,ij->i", masked, masked) / (index.size - ddof))
        std_real = std * abs(layout.slope)
        scale = np.divide(sign, std, out=np.zeros_like(std), where=std_real >= ZERO_STD)
        writer.write(start, (masked * scale[:, None]).astype(np.float32))
        means[start : start + n] = center * layout.slope + layout.inter
        stds[start : start + n] = std_real
    return means, stds


def normalize_volumes(
    nifti_path: str | Path, out_store: str | Path, info: ImageInfo, options: Options
) -> dict[str, Any]:
    """Z-score each volume of a T1w or DWI image over the voxels of its mask, into a store.

    The mask comes from the mean of the b=0 volumes for DWI (``epi``) or from the volume
    itself for T1w (``head``). DWI b-values and b-vectors become the ``bval`` (time) and
    ``bvec`` (time, direction) coordinates. ``mean`` and ``std`` have dimension ``time``
    (``stats_dim: "time"``); ``n_zero_variance`` counts constant volumes.

    Streamed in two passes like :func:`bidstrain.normalize.bold.normalize_bold`, with the
    same peak memory. Parameters and errors as there; a mask of no more than ``ddof``
    voxels is an error. The store is in RAS+ voxel order, as every store
    (:mod:`bidstrain.io.orientation`), and so is ``bvec``: the ``.bvec`` directions are in the
    file's voxel axes, and follow its axis permutation and flips.
    """
    layout = open_image(nifti_path, info)
    mean_rows = None
    time_coords = None
    if info.modality == "dwi":
        bval = np.asarray(info.bval, dtype=np.float64)
        if bval.size != layout.n_volumes:
            raise BidstrainError(
                f"{bval.size} b-values for {layout.n_volumes} volumes (rerun the ingest stage)",
                path=layout.path,
                subject=info.subject,
            )
        bvec = layout.orientation.bvecs(np.asarray(info.bvec, dtype=np.float64)).T
        b0 = bval <= B0_THRESHOLD
        mean_rows = b0 if b0.any() else None
        time_coords = {"bval": (("time",), bval), "bvec": (("time", "direction"), bvec)}
    scan = scan_image(layout, options.block_volumes, 0, mean_rows)
    check_not_all_zero(scan, layout, info)
    mask, n_nonfinite = choose_mask(layout, info, options, scan)
    del scan
    index = layout.stored_index(mask)
    if index.size <= options.ddof:
        raise BidstrainError(
            f"the mask holds {index.size} voxel(s), too few for a z-score with "
            f"ddof={options.ddof} (config {MASK_KEYS[info.modality]})",
            path=layout.path,
            subject=info.subject,
        )
    chunk, block = aligned_block(options.block_volumes, layout.n_volumes, index.size)
    with create_store(
        out_store,
        mask=mask,
        affine=layout.affine,
        time=volume_times(layout, info),
        time_coords=time_coords,
        chunk=chunk,
        storage=options.storage,
    ) as writer:
        means, stds = write_per_volume(writer, layout, index, block, options.ddof)
        writer.add_variable("mean", ("time",), means.astype(np.float32))
        writer.add_variable("std", ("time",), stds.astype(np.float32))
        writer.attrs.update(
            store_attrs(
                layout,
                info,
                options,
                stats_dim="time",
                stats_from=[str(layout.path.resolve())],
                heldout=False,
                n_zero_variance=int((stds < ZERO_STD).sum()),
                n_nonfinite=n_nonfinite,
            )
        )
    return writer.attrs
