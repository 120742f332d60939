"""One pass over a store: everything the data checks need, read once, in bounded memory.

:func:`scan_store` streams a store's ``data`` (a voxel store's or a parcel store's) in
blocks of volumes and keeps per-voxel (per-parcel) and per-volume moments, the count of
non-finite values, the BOLD DVARS series, a seeded sample of values for the scale table,
and the first volumes at a seeded sample of voxels for comparison with the raw image.
:func:`read_raw_volumes` reads those first volumes from the NIfTI (a prefix of the gzip
stream, so it costs a few volumes, not the whole file).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from bidstrain.io.orientation import reorientation
from bidstrain.io.store import (
    StoreMeta,
    open_parcel_store,
    open_store,
    read_meta,
    read_parcel_attrs,
    segments_of_valid,
    store_meta,
)

#: Float64 bytes per block of volumes read at a time.
BLOCK_BYTES = 64 * 2**20
#: Volumes per store sampled for the scale table.
SAMPLE_VOLUMES = 8
#: First volumes compared with the raw image.
HEAD_VOLUMES = 3


@dataclass
class StoreScan:
    """Summary of one store's contents (see :func:`scan_store`).

    Attributes
    ----------
    path : str
    meta : StoreMeta
        The store attributes.
    n_time, n_voxel : int
        Rows and columns of ``data`` (voxels, or parcels of a parcel store).
    grid_size : int
        Voxels of the 3D grid (``mask.size``); a parcel store's parcels.
    mean, std : ndarray
        The saved statistics (float64), along ``meta.stats_dim``.
    moments_mean, moments_std : ndarray
        Mean and std (``meta.ddof``) of ``data`` along the dimension the statistics
        normalize over: over time per voxel (parcel) when ``stats_dim`` is ``voxel``
        (``parcel``), over voxels per volume when it is ``time``; non-finite values left
        out. For an average with ``frame_subjects`` each frame weighs its number of
        subjects (the average of z-scored subjects then has weighted mean 0:
        :mod:`bidstrain.checks.normalization`).
    n_nonfinite : int
        NaN/Inf values in ``data``.
    sample : ndarray
        Values of ``data`` at up to :data:`SAMPLE_VOLUMES` volumes x ``sample_voxels``
        voxels, flattened (float64).
    head_voxels : ndarray
        Store voxel (parcel) indices of the sample.
    head_ijk : tuple of ndarray
        Grid indices ``(i, j, k)`` of ``head_voxels``; empty for a parcel store, whose
        raw values are those of its voxel store.
    head : ndarray, shape (HEAD_VOLUMES or fewer, len(head_voxels))
        ``data`` at the first volumes and the sampled voxels.
    dvars : ndarray
        For BOLD: RMS over voxels of the raw-scale difference between successive volumes
        of the store, leaving out the steps across a left-out frame (a scrubbed volume:
        those volumes were not successive); empty otherwise.
    frame_subjects, frame_valid : ndarray or None
        An average's subjects per frame of its grid and which frames it holds
        (:mod:`bidstrain.average.frames`); None for other stores.
    n_partial_parcels : int or None
        A parcel average's parcels that some of its subjects' runs do not cover (None
        for other stores, and for a parcel average that does not record them).
    """

    path: str
    meta: StoreMeta
    n_time: int
    n_voxel: int
    grid_size: int
    mean: np.ndarray
    std: np.ndarray
    moments_mean: np.ndarray
    moments_std: np.ndarray
    n_nonfinite: int
    sample: np.ndarray
    head_voxels: np.ndarray
    head_ijk: tuple[np.ndarray, ...]
    head: np.ndarray
    dvars: np.ndarray
    frame_subjects: np.ndarray | None = None
    frame_valid: np.ndarray | None = None
    n_partial_parcels: int | None = None

    @property
    def modality(self) -> str:
        """``T1w``, ``bold`` or ``dwi``."""
        return self.meta.modality

    @property
    def is_average(self) -> bool:
        """Whether the store is a cross-subject average."""
        return self.meta.is_average

    @property
    def is_parcels(self) -> bool:
        """Whether the store holds parcel time series (a parcel store)."""
        return self.meta.stats_dim == "parcel"

    @property
    def unit(self) -> str:
        """What the statistics are per: ``voxel``, ``parcel`` or ``volume``."""
        return {"time": "volume"}.get(self.meta.stats_dim, self.meta.stats_dim)

    @property
    def over_time(self) -> bool:
        """Whether the statistics are per column (voxel or parcel), over time."""
        return self.unit != "volume"

    @property
    def label(self) -> str:
        """Who the store is about, for messages: ``sub-01 ses-1 task-rest run-1 bold``."""
        return self.meta.label()

    def raw(self, values: np.ndarray, volumes: slice | np.ndarray) -> np.ndarray:
        """Raw-scale values ``data * std + mean`` of ``values`` (volumes x sampled voxels)."""
        if self.over_time:
            return values * self.std[self.head_voxels] + self.mean[self.head_voxels]
        return values * self.std[volumes, None] + self.mean[volumes, None]


def _moments(total: np.ndarray, squares: np.ndarray, count: np.ndarray, ddof: int):
    count = np.maximum(count, 1)
    mean = total / count
    variance = np.maximum(squares - count * mean**2, 0.0) / np.maximum(count - ddof, 1)
    return mean, np.sqrt(variance)


def scan_store(path: str | Path, *, sample_voxels: int, seed: int = 0) -> StoreScan:
    """Read a store once and summarize it for the checks.

    Parameters
    ----------
    path : str or Path
        A store of the :mod:`bidstrain.io.store` layout, or a parcel store.
    sample_voxels : int
        Voxels sampled (``checks.sample_voxels``) for the scale table and the raw comparison.
    seed : int
        Seed of the voxel and volume draws (the same store always gives the same sample).

    Raises
    ------
    BidstrainError
        When the store is missing or lacks variables or attributes of the layout.
    """
    parcels = read_meta(path).stats_dim == "parcel"
    ds = open_parcel_store(path) if parcels else open_store(path, use_dask=False)
    meta = store_meta(ds)
    n_time, n_voxel = (int(n) for n in ds.data.shape)
    ddof = meta.ddof
    over_time = meta.stats_dim != "time"
    mean = ds["mean"].values.astype(np.float64)
    std = ds["std"].values.astype(np.float64)
    rng = np.random.default_rng(seed)
    head_voxels = np.sort(rng.choice(n_voxel, min(sample_voxels, n_voxel), replace=False))
    sample_times = set(rng.choice(n_time, min(SAMPLE_VOLUMES, n_time), replace=False).tolist())

    frame_subjects = ds["frame_subjects"].values if "frame_subjects" in ds else None
    frame_valid = ds["frame_valid"].values if frame_subjects is not None else None
    weights = (
        np.ones(n_time) if frame_subjects is None else frame_subjects[frame_valid].astype(float)
    )
    voxel_sums = np.zeros((3, n_voxel))  # weight, sum, sum of squares over time
    volume_moments = np.zeros((2, n_time))
    n_nonfinite = 0
    samples, head = [], None
    bold = meta.modality == "bold" and meta.per_voxel
    dvars = np.zeros(max(n_time - 1, 0) if bold else 0)
    previous = None
    block = max(1, BLOCK_BYTES // (8 * max(n_voxel, 1)))
    for start in range(0, n_time, block):
        stop = min(start + block, n_time)
        values = ds.data[start:stop].values.astype(np.float64)
        finite = np.isfinite(values)
        n_nonfinite += int(values.size - finite.sum())
        clean = np.where(finite, values, 0.0)
        weight = weights[start:stop, None]
        voxel_sums += (
            (finite * weight).sum(axis=0),
            (clean * weight).sum(axis=0),
            (np.square(clean) * weight).sum(axis=0),
        )
        volume_moments[:, start:stop] = _moments(
            clean.sum(axis=1), np.square(clean).sum(axis=1), finite.sum(axis=1), ddof
        )
        if head is None:
            head = values[:HEAD_VOLUMES][:, head_voxels]
        samples += [values[t - start, head_voxels] for t in range(start, stop) if t in sample_times]
        if dvars.size:
            raw = clean * std + mean
            steps = np.diff(raw if previous is None else np.vstack([previous, raw]), axis=0)
            dvars[start - (previous is not None) : stop - 1] = np.sqrt(
                np.square(steps).mean(axis=1)
            )
            previous = raw[-1:]
    if dvars.size and "frame_valid" in ds:
        # a step from the last volume of a segment to the first of the next spans a gap
        dvars = np.delete(dvars, np.cumsum(segments_of_valid(ds["frame_valid"].values))[:-1] - 1)
    moments = _moments(voxel_sums[1], voxel_sums[2], voxel_sums[0], ddof)
    return StoreScan(
        path=str(path),
        meta=meta,
        n_time=n_time,
        n_voxel=n_voxel,
        grid_size=n_voxel if parcels else int(ds.mask.size),
        mean=mean,
        std=std,
        moments_mean=moments[0] if over_time else volume_moments[0],
        moments_std=moments[1] if over_time else volume_moments[1],
        n_nonfinite=n_nonfinite,
        sample=np.concatenate(samples) if samples else np.zeros(0),
        head_voxels=head_voxels,
        head_ijk=() if parcels else tuple(ds[axis].values[head_voxels] for axis in "ijk"),
        head=head,
        dvars=dvars,
        frame_subjects=frame_subjects,
        frame_valid=frame_valid,
        n_partial_parcels=read_parcel_attrs(path).get("n_partial_parcels") if parcels else None,
    )


def read_raw_volumes(path: str | Path, n_volumes: int) -> np.ndarray:
    """The first ``n_volumes`` volumes of a NIfTI image as float32, shape ``(x, y, z, n)``,
    in the RAS+ voxel order of the stores (an LAS or LPI file is reoriented as the
    normalize job reorients it).

    Only the needed prefix of a ``.nii.gz`` is decompressed. Scaling (``scl_slope``) is
    applied, as every reader of the image would.
    """
    img = nib.load(path)
    if len(img.shape) == 3:
        volumes = np.asarray(img.dataobj, dtype=np.float32)[..., None]
    else:
        volumes = np.asarray(img.dataobj[..., :n_volumes], dtype=np.float32)
    return reorientation(img.affine, img.shape[:3], path=path).volume(volumes)


def raw_head(scan: StoreScan) -> np.ndarray:
    """Raw image values at the scan's sampled voxels and first volumes (like ``scan.head``)."""
    raw = read_raw_volumes(scan.meta.source_path, scan.head.shape[0])
    return raw[(*scan.head_ijk, slice(0, scan.head.shape[0]))].T.astype(np.float64)
