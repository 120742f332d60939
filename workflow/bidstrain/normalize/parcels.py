"""Parcel time series of a BOLD run, accumulated in the pass that writes its voxels.

A parcel's value at a frame is the mean of the run's voxels in the parcel and in the
run's mask, after the confound regression and the resampling in time (the frames the
voxel store holds). :class:`ParcelMeans` sums the voxels of each parcel (``np.bincount``
over the voxels' parcel numbers) in the pass that writes the voxel store, so no second
read of the image is needed. Every method of :mod:`~bidstrain.normalize.resample_time`
but ``pchip`` makes a frame a fixed weighted sum of volumes, so a frame's parcel sums
are the same weighted sum of the volumes' parcel sums: those methods sum the volumes
(fewer than the frames when the target repetition time is the shorter) and resample the
sums; ``pchip`` sums its frames. It keeps ``8 * n_parcels`` bytes per volume or frame.
When the mask is a file, the voxels pass 1 keeps are the mask's, and the run's volumes
are not regressed: pass 1 sums the volumes then, of their stored values (centered on the
intercept), while its main thread waits for the decompressing one
(:func:`bidstrain.normalize.passes.scan_image`), and the pass that writes the voxels
only writes them. When the pass ends,
:func:`write_parcel_outputs` z-scores each parcel over time, with the run's own
statistics or, for a held-out run, with those pooled from its subject's training runs
over the same voxels (as the voxels are: a held-out run's mask is the intersection of
the training runs' masks). A training run's parcel store gives them where its parcel
holds as many voxels as the held-out run's (the same voxels, the one mask holding the
other); for the other parcels, its voxel store's values over the held-out run's voxels
give them (:func:`training_parcel_moments`). Then it writes:

- the parcel store (:func:`bidstrain.io.store.write_parcel_store`);
- ``..._seg-<atlas>_stat-mean_timeseries.tsv`` (XCP-D's layout): one column per parcel,
  named as in the label table (a name given to several labels as ``<name>_<index>``:
  :func:`bidstrain.dataset.atlas.distinct_names`), one row per frame of the store, the
  parcel means in the image's units before the z-score; ``n/a`` for a parcel with no
  voxel in the mask;
- ``..._seg-<atlas>_stat-coverage_bold.tsv``: one column per parcel, one row, the fraction
  of the parcel's voxels (on the run's grid) inside the run's mask.

A parcel with no voxel in the mask is reported (a warning naming it, coverage 0) and holds
0 in the store, never NaN.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bidstrain.dataset.atlas import Atlas
from bidstrain.errors import BidstrainError
from bidstrain.io.atomic import write_text_atomic
from bidstrain.io.store import (
    ZERO_STD,
    open_store,
    read_parcel_stats,
    read_parcel_voxel_counts,
    store_meta,
    write_parcel_store,
)
from bidstrain.normalize.moments import pool_moments
from bidstrain.normalize.resample_time import TimeGrid, resample

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ParcelOutputs:
    """The parcel outputs of one BOLD run (from the job's spec).

    Attributes
    ----------
    store, timeseries, coverage : Path
        The parcel store and the two TSVs (:mod:`bidstrain.paths`).
    stats_from : tuple of Path
        Parcel stores whose pooled statistics a held-out run is z-scored with; empty for
        its own.
    """

    store: Path
    timeseries: Path
    coverage: Path
    stats_from: tuple[Path, ...] = ()

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> ParcelOutputs:
        """The ``parcels`` entry of a job's spec."""
        return cls(
            Path(value["store"]),
            Path(value["timeseries"]),
            Path(value["coverage"]),
            tuple(Path(p) for p in value.get("stats_from", ())),
        )


class ParcelMeans:
    """Per-frame parcel means, added block by block: in the pass that writes the voxels, or
    for a run whose mask is a file, the volumes in pass 1 (module docstring).

    Parameters
    ----------
    atlas : Atlas
        On the run's grid.
    mask : ndarray of bool, shape (x, y, z)
        The run's mask; its voxels (C order) are the columns of the blocks.
    center : ndarray, shape (n_voxel,)
        The values (image units) the blocks' deviations are taken from.
    slope : float
        Image units per unit of the deviations (the header's scaling).
    grid : TimeGrid
        The run's frames: :meth:`volumes` sums the volumes, and :meth:`frames` the frames,
        as the method asks (module docstring).
    """

    def __init__(
        self, atlas: Atlas, mask: np.ndarray, center: np.ndarray, slope: float, grid: TimeGrid
    ):
        self.atlas = atlas
        self.grid = grid
        n = atlas.n_parcels
        of_voxel = atlas.parcel[mask]
        #: the parcel (column) of each voxel of the mask, ``n_parcels`` for none
        self.parcel_of_voxel = np.where(of_voxel >= 0, of_voxel, n)
        self.n_voxels = np.bincount(self.parcel_of_voxel, minlength=n + 1)[:n]
        on_grid = np.bincount(atlas.parcel[atlas.parcel >= 0], minlength=n)
        self.coverage = np.divide(
            self.n_voxels, on_grid, out=np.zeros(n, dtype=np.float64), where=on_grid > 0
        )
        self._divisor = np.maximum(self.n_voxels, 1).astype(np.float64)
        base = np.bincount(self.parcel_of_voxel, weights=center, minlength=n + 1)[:n]
        self._base = base / self._divisor
        self._slope = slope
        self._sums_volumes = grid.method != "pchip"
        #: the volumes' sums (a volume never added is 0, as in the resampling), or the
        #: frames' sums in time order
        self._volume_sums = np.zeros((grid.n_source if self._sums_volumes else 0, n))
        self._frame_sums: list[np.ndarray] = []

    @property
    def empty(self) -> np.ndarray:
        """Parcels without a voxel in the mask."""
        return self.n_voxels == 0

    @property
    def sums_volumes(self) -> bool:
        """Whether the volumes are summed (the frames are a fixed weighted sum of them)."""
        return self._sums_volumes

    def add_volumes(self, positions: np.ndarray, deviations: np.ndarray) -> None:
        """Sum the volumes at ``positions``: the rows of ``deviations`` (from ``center``,
        in stored units); only when :attr:`sums_volumes`."""
        if not self._sums_volumes:
            raise RuntimeError("a pchip run's parcels are summed on its frames, not volumes")
        for position, row in zip(positions, deviations, strict=True):
            self._volume_sums[position] = self._sums(row)

    def volumes(self, source):
        """Pass the pass's ``(positions, deviations)`` blocks of volumes through, summing
        them when the frames are a fixed weighted sum of them."""
        for positions, deviations in source:
            if self._sums_volumes:
                self.add_volumes(positions, deviations)
            yield positions, deviations

    def frames(self, blocks):
        """Pass the blocks of frames (deviations, in time order) through, summing them
        when the volumes are not summed (``pchip``)."""
        for deviations in blocks:
            if not self._sums_volumes:
                self._frame_sums.extend(self._sums(row) for row in deviations)
            yield deviations

    def _sums(self, row: np.ndarray) -> np.ndarray:
        n = self.atlas.n_parcels
        return np.bincount(self.parcel_of_voxel, weights=row, minlength=n + 1)[:n]

    def series(self) -> np.ndarray:
        """The parcel means of the frames, ``(n_frames, n_parcels)`` float64 in image
        units (0 for empty parcels); call it once every block went through."""
        if self._sums_volumes:
            sums = resample(self._volume_sums, self.grid)
        elif self._frame_sums:
            sums = np.stack(self._frame_sums)
        else:
            sums = np.zeros((0, self.atlas.n_parcels))
        means = sums * self._slope / self._divisor + self._base
        means[:, self.empty] = 0.0
        return means


def parcel_statistics(
    means: ParcelMeans,
    series: np.ndarray,
    ddof: int,
    stats_from: Sequence[Path],
    subject: str | None,
    *,
    mask: np.ndarray | None = None,
    voxel_stores: Sequence[Path] = (),
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Per-parcel mean and std: of the run's own series, or pooled from its training
    runs over the run's voxels (module docstring).

    Parameters
    ----------
    means : ParcelMeans
        The run's parcel means.
    series : ndarray
        ``means.series()``.
    ddof : int
        ``normalize.ddof``.
    stats_from : sequence of Path
        The training runs' parcel stores (empty: the run's own statistics).
    subject : str, optional
        For messages.
    mask : ndarray of bool, optional
        The run's mask (a held-out run's).
    voxel_stores : sequence of Path
        The training runs' voxel stores, in the order of ``stats_from``.

    Returns
    -------
    mean, std : ndarray (float64)
    sources : list of str
        The source files the statistics came from (empty for the run's own).

    Raises
    ------
    BidstrainError
        When a store of ``stats_from`` has other parcels than the run.
    """
    if not stats_from:
        mean = series.mean(axis=0)
        variance = ((series - mean) ** 2).sum(axis=0) / max(series.shape[0] - ddof, 1)
        return mean, np.sqrt(variance), []
    counts, pooled_means, variances, ddofs, sources = [], [], [], [], []
    for number, path in enumerate(stats_from):
        count, mean, std, meta = read_parcel_stats(path)
        if mean.size != series.shape[1]:
            raise BidstrainError(
                f"parcel store has {mean.size} parcels, the run {series.shape[1]}: rerun "
                "normalize for the subject",
                path=path,
                subject=subject,
            )
        variance = std**2
        other = (read_parcel_voxel_counts(path) != means.n_voxels) & ~means.empty
        if other.any():
            if mask is None or number >= len(voxel_stores):
                raise BidstrainError(
                    f"{int(other.sum())} parcels hold other voxels than the held-out run's, "
                    "and no voxel store of the training run was given to recompute them",
                    path=path,
                    subject=subject,
                )
            log.info(
                "sub-%s: %d parcels of %s hold other voxels than the held-out run's mask: "
                "their statistics come from %s over the held-out run's voxels",
                subject,
                int(other.sum()),
                path,
                voxel_stores[number],
            )
            mean[other], variance[other] = training_parcel_moments(
                voxel_stores[number], meta.source_path, means, mask, np.flatnonzero(other)
            )
        counts.append(count)
        pooled_means.append(mean)
        variances.append(variance)
        ddofs.append(meta.ddof)
        sources.extend(meta.stats_from)
    mean, variance = pool_moments(counts, pooled_means, variances, ddofs, ddof)
    return mean, np.sqrt(variance), sources


def training_parcel_moments(
    voxel_store: Path, source: str, means: ParcelMeans, mask: np.ndarray, parcels: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """A training run's parcel series over the held-out run's voxels, from its voxel
    store (values ``data * std + mean``: the image's, after the confound regression and
    the resampling in time, as its parcel means were taken), for the parcels (column
    numbers) ``parcels``: their mean and variance over time (the store's ``ddof``).

    Raises
    ------
    BidstrainError
        When the store is not of the run ``source`` (its parcel store's), or a voxel of
        ``mask`` is not in the store's mask.
    """
    dataset = open_store(voxel_store, use_dask=False)
    meta = store_meta(dataset)
    if meta.source_path != source:
        raise BidstrainError(
            f"this voxel store is of {meta.source_path}, its parcel store of {source}: "
            "rerun normalize for the subject",
            path=voxel_store,
        )
    stored = np.flatnonzero(dataset["mask"].values)
    voxels = np.flatnonzero(mask)
    columns = np.minimum(np.searchsorted(stored, voxels), max(stored.size - 1, 0))
    if stored.size == 0 or not np.array_equal(stored[columns], voxels):
        raise BidstrainError(
            "the held-out run's mask holds voxels outside this training store's mask "
            "(rerun normalize for the subject)",
            path=voxel_store,
        )
    chosen = np.isin(means.parcel_of_voxel, parcels)
    columns, labels = columns[chosen], np.searchsorted(parcels, means.parcel_of_voxel[chosen])
    scale = dataset["std"].values[columns].astype(np.float64)
    center = dataset["mean"].values[columns].astype(np.float64)
    sizes = np.bincount(labels, minlength=parcels.size).astype(np.float64)
    rows = []
    for start in range(0, dataset.sizes["time"], 64):  # 64 frames of the store at a time
        values = dataset["data"][start : start + 64].values[:, columns] * scale + center
        rows.extend(np.bincount(labels, weights=row, minlength=parcels.size) for row in values)
    series = np.stack(rows) / sizes
    return series.mean(axis=0), series.var(axis=0, ddof=meta.ddof)


def _tsv(path: Path, names: Sequence[str], rows: np.ndarray, missing: np.ndarray) -> None:
    lines = ["\t".join(names)]
    gone = np.flatnonzero(missing).tolist()
    for row in rows.tolist():  # Python floats: repr is the shortest exact decimal
        cells = list(map(repr, row))
        for column in gone:
            cells[column] = "n/a"
        lines.append("\t".join(cells))
    write_text_atomic(path, "\n".join(lines) + "\n")


def write_parcel_outputs(
    outputs: ParcelOutputs,
    means: ParcelMeans,
    frames: Mapping[str, np.ndarray],
    ddof: int,
    attrs: Mapping[str, Any],
    subject: str | None,
    *,
    mask: np.ndarray | None = None,
    voxel_stores: Sequence[Path] = (),
) -> None:
    """Z-score the parcel means and write the parcel store and both TSVs.

    ``frames`` are the voxel store's ``frame_time`` and ``frame_valid`` (the run's time
    grid, whose valid frames are the rows), kept in the parcel store so that its windows
    see the run's gaps read alone. ``attrs`` are the voxel store's (subject, entities,
    repetition times...); the parcel store's statistics attributes replace theirs. A
    held-out run gives its ``mask`` and its training runs' ``voxel_stores``
    (:func:`parcel_statistics`).
    """
    atlas, series = means.atlas, means.series()
    empty = means.empty
    if empty.all():
        raise BidstrainError(
            f"no parcel of atlas {atlas.name} has a voxel in the brain mask: the atlas "
            "and the run do not overlap (another space, or a wrong affine or mask)",
            path=attrs.get("source_path"),
            subject=subject,
        )
    if empty.any():
        log.warning(
            "sub-%s: %d parcels of atlas %s have no voxel in the mask of %s (coverage 0, "
            "0 in the parcel store): %s",
            subject,
            int(empty.sum()),
            atlas.name,
            attrs.get("source_path"),
            ", ".join(np.asarray(atlas.names)[empty]),
        )
    mean, std, sources = parcel_statistics(
        means, series, ddof, outputs.stats_from, subject, mask=mask, voxel_stores=voxel_stores
    )
    zero = (std < ZERO_STD) | empty
    scale = np.divide(1.0, std, out=np.zeros_like(std), where=~zero)
    zscored = (series - mean) * scale
    mean, std = np.where(empty, 0.0, mean), np.where(empty, 0.0, std)
    store_attrs = {
        **attrs,
        "stats_dim": "parcel",
        "stats_from": sources or list(attrs["stats_from"]),
        "heldout": bool(outputs.stats_from),
        "n_zero_variance": int((zero & ~empty).sum()),
        "atlas": atlas.name,
        **({"atlas_checksum": atlas.checksum} if atlas.checksum else {}),
        "parcel_names": list(atlas.names),
        "n_empty_parcels": int(empty.sum()),
    }
    write_parcel_store(
        outputs.store,
        data=zscored,
        mean=mean,
        std=std,
        parcels=atlas.indices,
        n_voxels=means.n_voxels,
        coverage=means.coverage,
        time=frames["frame_time"][frames["frame_valid"]],
        attrs=store_attrs,
        frames=frames,
    )
    _tsv(outputs.timeseries, atlas.names, series, empty)
    _tsv(outputs.coverage, atlas.names, means.coverage[None, :], np.zeros_like(empty))
