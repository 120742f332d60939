"""Cross-subject averaging of within-subject z-scored BOLD, one (task, run) at a time.

``python -m bidstrain.average --out AVERAGE.zarr SUBJECT_STORE ... [--parcels PARCEL_STORE
... --parcels-out PARCEL_AVERAGE.zarr]`` writes one store of
the same layout as the subject stores (:mod:`bidstrain.io.store`) holding, at every time point
and voxel, the mean over subjects of their z-scored data, plus:

``n_subjects (voxel)``
    subjects that cover the voxel (all of them with the default ``intersection`` mask);
attrs ``subjects``, ``sessions``
    the subject labels, and the sessions averaged for each subject;
attrs ``truncated``
    ``{subject: original volume count}`` of the subjects cut to the shortest run.

Sessions: a subject with several sessions of the same (task, run) is averaged over its
sessions first, so that it counts once: ``n_subjects`` always counts subjects.

Statistics: ``mean`` and ``std`` are the group means (over subjects, each first averaged
over its sessions) of the subjects' raw-scale statistics at each voxel. They describe the
typical raw signal level and spread behind the average; ``data * std + mean`` is a
group-typical raw-scale series, not the average of the raw series. The average itself has
per-voxel mean 0 when no run was truncated, and per-voxel std at most 1 (the mean of unit
variance series has variance at most 1): its std measures how much subjects agree.

Storage: the average is stored as the coarsest of its subject stores (``normalize.storage``,
the same for all of them in one workflow), so reduced-precision subject stores give a
reduced-precision average, and the checks know both roundings.

Two passes, one store open at a time, each store opened once per pass (per block):

1. **Headers**: the attributes, dimensions and mask of every store (no voxel data). Each
   store is checked against the first as it is read (grid, repetition time, ddof, task and
   run), and its mask folded into the group mask, so a bad store fails before any data is
   read. What is kept of a store is a few strings and numbers (:class:`SourceStore`).
2. **Data**: blocks of volumes whose float64 sum over the group voxels is at most
   ``block_bytes`` (:data:`BLOCK_BYTES`; a run of 300 volumes and 200,000 voxels takes 8
   blocks, the demo grid one). For each block, subject after subject (its sessions
   together), each store is opened, its mask read (unless it has as many voxels as the
   group mask, which it then is), its block of volumes read (a partial read of its
   ``data`` shard) and added to the running sum; the first block also sums the stores'
   ``mean``, ``std`` and coverage.

Memory is therefore a block's sum, one store's block and a few hundred bytes per store of
bookkeeping (what the output's attributes list anyway), whatever the number of subjects;
time grows linearly with them.

With a parcellation the same job also averages the runs' parcel stores
(:mod:`bidstrain.average.parcels`).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr
import zarr.errors

from bidstrain.errors import BidstrainError
from bidstrain.io.grid import AFFINE_TOLERANCE, grid_mismatch
from bidstrain.io.store import CONSOLIDATED, StoreMeta, chunk_volumes, create_store

log = logging.getLogger(__name__)

#: Size of the float64 block sum over all group voxels (volumes are added until it is reached).
BLOCK_BYTES = 64 * 2**20
#: The per-voxel statistics of a store averaged over subjects.
STATS = ("mean", "std")


@dataclass(frozen=True, slots=True)
class SourceStore:
    """What averaging keeps of one subject store between its passes (no voxel data, no
    mask: a few strings and numbers, so that 10,000 of them stay small)."""

    path: str
    subject: str
    session: str
    #: ``sub-01`` or ``sub-01 ses-2``: who a message is about.
    label: str
    n_time: int
    n_voxel: int


@dataclass(frozen=True)
class StoreHeader:
    """What the first pass reads of a store: its attributes, dimensions and mask."""

    path: str
    meta: StoreMeta
    n_time: int
    mask: np.ndarray

    @property
    def shape(self) -> tuple[int, ...]:
        """The store's grid shape (its mask's)."""
        return self.mask.shape

    def source(self) -> SourceStore:
        """What is kept of the store once its header is checked."""
        return SourceStore(
            path=self.path,
            subject=self.meta.subject,
            session=self.meta.session,
            label=self.meta.label(full=False),
            n_time=self.n_time,
            n_voxel=int(np.count_nonzero(self.mask)),
        )


def _open_group(path: str) -> zarr.Group:
    """A store's root group, read-only (metadata only: no array is read)."""
    try:
        return zarr.open_group(path, mode="r", zarr_format=3, use_consolidated=CONSOLIDATED)
    except (FileNotFoundError, zarr.errors.NodeNotFoundError):
        raise BidstrainError("store not found (run the normalize stage first)", path=path) from None


def _array(group: zarr.Group, name: str, path: str) -> zarr.Array:
    """One array of a store; a store without it is incomplete."""
    try:
        return group[name]
    except KeyError:
        raise BidstrainError(f"incomplete store: missing {name!r}", path=path) from None


def read_header(path: str | Path, *, with_time: bool = False) -> tuple[StoreHeader, np.ndarray]:
    """The header of a subject store, opened once: attributes, volume count and mask, and
    its ``time`` coordinate when ``with_time`` (an empty array otherwise).

    Raises
    ------
    BidstrainError
        When the store is missing or incomplete, or is not BOLD with per-voxel statistics.
    """
    path = str(path)
    group = _open_group(path)
    meta = StoreMeta.from_attrs(group.attrs.asdict(), path)
    if meta.modality != "bold" or not meta.per_voxel:
        raise BidstrainError(
            f"only BOLD stores with per-voxel statistics can be averaged, got modality "
            f"{meta.modality!r} with stats_dim {meta.stats_dim!r}",
            path=path,
            subject=meta.subject,
        )
    n_time = int(_array(group, "data", path).shape[0])
    mask = np.asarray(_array(group, "mask", path)[...], dtype=bool)
    time = _array(group, "time", path)[...] if with_time else np.empty(0, dtype=np.float64)
    return StoreHeader(path=path, meta=meta, n_time=n_time, mask=mask), time


def check_compatible(
    header: StoreHeader,
    reference: StoreHeader,
    *,
    affine_tolerance: float,
    tr_tolerance: float,
) -> None:
    """Raise unless ``header`` shares the ``reference`` store's grid, repetition time, ddof,
    task and run.

    Raises
    ------
    BidstrainError
        Naming the subject and store that differ, the numbers, and the config key to change.
    """
    ref, meta = reference.meta, header.meta
    where = {"path": header.path, "subject": meta.subject}
    mismatch = grid_mismatch(
        header.shape, meta.affine, reference.shape, ref.affine, atol=affine_tolerance
    )
    if mismatch:
        raise BidstrainError(
            f"not on the grid of sub-{ref.subject}'s store {reference.path}: {mismatch} (config "
            f"average.affine_tolerance: {affine_tolerance}); subjects must share the voxel "
            "grid to be averaged (resample them to one template, or set average.mode: "
            "per_subject)",
            **where,
        )
    if (meta.repetition_time is None) != (ref.repetition_time is None) or (
        meta.repetition_time is not None
        and abs(meta.repetition_time - ref.repetition_time) > tr_tolerance
    ):
        raise BidstrainError(
            f"repetition time {meta.repetition_time} s differs from sub-{ref.subject}'s "
            f"{ref.repetition_time} s (config average.repetition_time_tolerance: "
            f"{tr_tolerance}); time points cannot be averaged across different TRs",
            **where,
        )
    if meta.ddof != ref.ddof:
        raise BidstrainError(
            f"normalized with ddof {meta.ddof}, sub-{ref.subject} with {ref.ddof}; "
            "renormalize all subjects with one normalize.ddof",
            **where,
        )
    for key in ("task", "run"):
        if meta.entities.get(key) != ref.entities.get(key):
            raise BidstrainError(
                f"{key} {meta.entities.get(key)!r} differs from sub-{ref.subject}'s "
                f"{ref.entities.get(key)!r}: only one (task, run) is averaged per store",
                **where,
            )


def common_length(sources: Sequence[SourceStore], *, truncate: bool) -> int:
    """Number of volumes of the average: the common run length, or the shortest if ``truncate``.

    Raises
    ------
    BidstrainError
        When runs differ in length and ``truncate`` is False, listing the lengths.
    """
    lengths = {src.n_time for src in sources}
    shortest = min(lengths)
    if len(lengths) == 1:
        return shortest
    listing = ", ".join(f"{s.label}: {s.n_time}" for s in sources)
    if not truncate:
        raise BidstrainError(
            f"runs differ in length ({listing} volumes); time points cannot be matched "
            "across subjects (set average.truncate: true to cut them to the shortest, "
            f"{shortest} volumes, or exclude the short runs)",
            path=sources[0].path,
        )
    cut = ", ".join(f"{s.label} ({s.n_time} -> {shortest})" for s in sources if s.n_time > shortest)
    log.warning("average.truncate: cutting runs to %d volumes: %s", shortest, cut)
    return shortest


@dataclass
class Cohort:
    """What the first pass learns of all the stores together."""

    sources: list[SourceStore]
    #: The first store's header: the grid, TR and entities every other store matches.
    reference: StoreHeader
    #: The first store's acquisition times.
    time: np.ndarray
    #: Intersection or union of the stores' masks.
    group_mask: np.ndarray
    #: The coarsest ``storage`` of the stores (:class:`bidstrain.io.store.Storage`).
    storage: str
    source_size: int


def read_cohort(
    stores: Sequence[str | Path], *, mask: str, affine_tolerance: float, tr_tolerance: float
) -> Cohort:
    """First pass: read every store's header, one store at a time, checking it against the
    first and folding its mask into the group mask (``mask``: intersection or union).

    Raises
    ------
    BidstrainError
        For the first store that is missing, incomplete, not BOLD, or differs from the first.
    """
    combine = np.logical_and if mask == "intersection" else np.logical_or
    reference, time = read_header(stores[0], with_time=True)
    cohort = Cohort(
        sources=[reference.source()],
        reference=reference,
        time=time,
        group_mask=reference.mask.copy(),
        storage=reference.meta.storage,
        source_size=reference.meta.source_size,
    )
    precision = reference.meta.precision
    for path in stores[1:]:
        header, _ = read_header(path)
        check_compatible(
            header, reference, affine_tolerance=affine_tolerance, tr_tolerance=tr_tolerance
        )
        combine(cohort.group_mask, header.mask, out=cohort.group_mask)
        cohort.sources.append(header.source())
        cohort.source_size += header.meta.source_size
        if header.meta.precision > precision:
            cohort.storage, precision = header.meta.storage, header.meta.precision
    return cohort


def block_ranges(n_time: int, n_voxel: int, chunk: int, block_bytes: int) -> list[tuple[int, int]]:
    """``(start, stop)`` of the blocks of volumes whose float64 sum over ``n_voxel`` voxels
    is at most ``block_bytes`` (at least one volume), whole multiples of ``chunk`` volumes
    when a block holds a chunk or more (so compressed chunks are decoded once)."""
    volumes = max(1, block_bytes // (8 * n_voxel))
    if volumes >= chunk:
        volumes -= volumes % chunk
    return [(start, min(start + volumes, n_time)) for start in range(0, n_time, volumes)]


class BlockSum:
    """Second pass: the running sums over subjects on the group voxels.

    Parameters
    ----------
    group_mask : ndarray of bool, shape (x, y, z)
        The voxels of the average.
    """

    def __init__(self, group_mask: np.ndarray):
        n_voxel = int(np.count_nonzero(group_mask))
        self.lookup = np.full(group_mask.shape, -1, dtype=np.int64)
        self.lookup[group_mask] = np.arange(n_voxel)
        self.n_subjects = np.zeros(n_voxel, dtype=np.int32)
        self.stat_sums = {name: np.zeros(n_voxel, dtype=np.float64) for name in STATS}

    def block(self, subjects: Sequence[Sequence[SourceStore]], start: int, stop: int) -> np.ndarray:
        """The average of volumes ``start:stop`` over ``subjects`` (each a list of its
        sessions' stores), float64, shape (volumes, group voxels). The block that starts at
        0 also sums the statistics and counts the subjects covering each voxel."""
        first = start == 0
        total = np.zeros((stop - start, self.n_subjects.size), dtype=np.float64)
        for sessions in subjects:
            self._add_subject(total, sessions, start, stop, with_stats=first)
        total /= self.n_subjects
        return total

    def _add_subject(
        self,
        total: np.ndarray,
        sessions: Sequence[SourceStore],
        start: int,
        stop: int,
        *,
        with_stats: bool,
    ) -> None:
        """Add one subject, the mean over its sessions, to ``total`` (and to the statistics)."""
        single = len(sessions) == 1  # then straight into the sums, with no copy
        target = total if single else np.zeros_like(total)
        stat_target = (
            self.stat_sums
            if single
            else {name: np.zeros_like(self.stat_sums[name]) for name in STATS}
        )
        count = np.zeros(self.n_subjects.size, dtype=np.int32)
        for src in sessions:
            index, values, stats = self._read(src, start, stop, with_stats=with_stats)
            target[:, index] += values
            count[index] += 1
            for name, value in stats.items():
                stat_target[name][index] += value
        covered = count > 0
        if not single:
            total[:, covered] += target[:, covered] / count[covered]
        if with_stats:
            self.n_subjects += covered
            for name in STATS if not single else ():
                self.stat_sums[name][covered] += stat_target[name][covered] / count[covered]

    def _read(
        self, src: SourceStore, start: int, stop: int, *, with_stats: bool
    ) -> tuple[np.ndarray | slice, np.ndarray, dict[str, np.ndarray]]:
        """One store opened once: the group index of the voxels of the group it covers, its
        volumes ``start:stop`` there, and (``with_stats``) its ``mean`` and ``std`` there.

        A store with as many voxels as the group has the group's mask (the group mask is the
        intersection or the union of the stores'): its mask is not read, and its voxels are
        the group's, in order (the index is a slice)."""
        group = _open_group(src.path)
        if src.n_voxel == self.n_subjects.size:
            index, keep = slice(None), slice(None)
        else:
            index = self.lookup[np.asarray(_array(group, "mask", src.path)[...], dtype=bool)]
            keep = index >= 0
            index = index[keep]
        data = _array(group, "data", src.path)[start:stop][:, keep]
        stats = {name: _array(group, name, src.path)[...][keep] for name in STATS if with_stats}
        return index, data, stats


def average_stores(
    stores: Sequence[str | Path],
    out: str | Path,
    *,
    mask: str = "intersection",
    truncate: bool = False,
    affine_tolerance: float = AFFINE_TOLERANCE,
    tr_tolerance: float = 1e-3,
    block_bytes: int = BLOCK_BYTES,
) -> Path:
    """Average within-subject z-scored BOLD stores across subjects at each time point.

    Parameters
    ----------
    stores : sequence of str or Path
        Subject stores of one (task, run); a subject may appear with several sessions.
    out : str or Path
        The average store to write (atomically).
    mask : {"intersection", "union"}
        Voxels kept: those every store covers, or those any store covers (each voxel then
        averages the subjects that cover it; ``n_subjects`` says how many).
    truncate : bool
        Cut runs of different lengths to the shortest (with a warning naming who was cut)
        instead of failing.
    affine_tolerance : float
        Largest allowed absolute difference between store affines
        (:func:`bidstrain.io.grid.grid_mismatch`).
    tr_tolerance : float
        Largest allowed difference between repetition times, in seconds.
    block_bytes : int
        Size of the float64 sum of one block of volumes (the memory bound).

    Returns
    -------
    Path
        ``out``.

    Raises
    ------
    BidstrainError
        When stores differ in grid, repetition time, ddof, task or length, or the mask
        intersection is empty.
    """
    if not stores:
        raise BidstrainError("no subject store to average", path=out)
    cohort = read_cohort(
        stores, mask=mask, affine_tolerance=affine_tolerance, tr_tolerance=tr_tolerance
    )
    sources = cohort.sources
    n_time = common_length(sources, truncate=truncate)
    if not cohort.group_mask.any():
        counts = ", ".join(f"sub-{s.subject}: {s.n_voxel}" for s in sources)
        raise BidstrainError(
            f"the intersection of the subjects' masks is empty (mask voxels {counts}); "
            "check their registration, or set average.mask: union",
            path=out,
        )
    by_subject: dict[str, list[SourceStore]] = defaultdict(list)
    for src in sources:
        by_subject[src.subject].append(src)
    subjects = sorted(by_subject)

    sums = BlockSum(cohort.group_mask)
    n_voxel = sums.n_subjects.size
    chunk = chunk_volumes(n_time, n_voxel)
    data_sum = np.zeros(n_voxel, dtype=np.float64)
    data_sumsq = np.zeros(n_voxel, dtype=np.float64)
    ref = cohort.reference.meta
    with create_store(
        out,
        mask=cohort.group_mask,
        affine=ref.affine,
        time=cohort.time[:n_time],
        chunk=chunk,
        storage=cohort.storage,
    ) as writer:
        for start, stop in block_ranges(n_time, n_voxel, chunk, block_bytes):
            block = sums.block([by_subject[s] for s in subjects], start, stop)
            writer.write(start, block)
            data_sum += block.sum(axis=0)
            data_sumsq += np.square(block).sum(axis=0)
            del block
        variance = data_sumsq / n_time - np.square(data_sum / n_time)
        for name in STATS:
            mean = sums.stat_sums[name] / sums.n_subjects
            writer.add_variable(name, ("voxel",), mean.astype(np.float32))
        writer.add_variable("n_subjects", ("voxel",), sums.n_subjects)
        writer.attrs.update(
            modality="bold",
            subject="average",
            session="",
            entities={k: v for k, v in ref.entities.items() if k in ("task", "run")},
            subjects=subjects,
            sessions={s: [src.session for src in by_subject[s]] for s in subjects},
            truncated={src.label: src.n_time for src in sources if src.n_time > n_time},
            source_path=[src.path for src in sources],
            source_size=cohort.source_size,
            repetition_time=ref.repetition_time,
            ddof=ref.ddof,
            n_zero_variance=int((variance <= 0).sum()),
            n_nonfinite=0,
            stats_dim="voxel",
            stats_from=[src.path for src in sources],
            mask_mode=mask,
        )
    log.info(
        "averaged %d subjects (%d stores), %d volumes x %d voxels -> %s",
        len(subjects),
        len(sources),
        n_time,
        n_voxel,
        out,
    )
    return Path(out)
