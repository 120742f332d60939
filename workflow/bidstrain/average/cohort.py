"""Cross-subject averaging of within-subject z-scored BOLD, one (task, run) at a time.

``python -m bidstrain.average --out AVERAGE.zarr SUBJECT_STORE ... [--parcels PARCEL_STORE
... --parcels-out PARCEL_AVERAGE.zarr]`` writes one store of
the same layout as the subject stores (:mod:`bidstrain.io.store`) holding, at every time point
and voxel, the mean over subjects of their z-scored data, plus:

``n_subjects (voxel)``
    subjects that cover the voxel (all of them with the default ``intersection`` mask);
``frame_time``, ``frame_valid``, ``frame_subjects (frame)``
    the time grid of the subjects' runs, which of its frames are in ``data``, and how many
    subjects each frame averages (:mod:`bidstrain.average.frames`);
attrs ``subjects``, ``sessions``
    the subject labels, and the sessions averaged for each subject;
attrs ``truncated``
    ``{subject: original frame count}`` of the subjects cut to the shortest run;
attrs ``n_invalid_frames``, ``min_subjects``
    frames of the grid left out of ``data`` (fewer than ``min_subjects`` valid subjects).

Frames: the subjects' stores hold only the valid frames of their time grid (frames next
to the volumes a sample mask drops are left out by the normalize job), so subjects are
matched by frame time, not by row: each frame of the average is the mean over the
subjects valid at that frame (:mod:`bidstrain.average.frames`). With the ``union`` mask a
voxel at a valid frame where none of the subjects covering it is valid is 0 (the mean of
z-scores).

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

1. **Headers**: the attributes, dimensions, mask and frame grid of every store (no voxel
   data). Each store is checked against the first as it is read (grid, repetition time,
   frame times, ddof, task and run), and its mask folded into the group mask, so a bad
   store fails before any data is read. What is kept of a store is a few strings and
   numbers and one bit per frame (:class:`SourceStore`).
2. **Data**: blocks of frames whose float64 sum and int32 count over the group voxels
   take at most ``block_bytes`` (:data:`BLOCK_BYTES`; a run of 300 frames and 200,000
   voxels takes 12 blocks, the demo grid one). For each block, subject after subject (its
   sessions together), each store is opened, its mask read (unless it has as many voxels
   as the group mask, which it then is), the rows of its valid frames in the block read
   (a partial read of its ``data`` shard) and added to the running sum and count; the
   first block also sums the stores' ``mean``, ``std`` and coverage.

Memory is therefore a block's sum and count, one store's block and a few hundred bytes
per store of bookkeeping (what the output's attributes list anyway), whatever the number
of subjects; time grows linearly with them.

With a parcellation the same job also averages the runs' parcel stores
(:mod:`bidstrain.average.parcels`).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr
import zarr.errors

from bidstrain.average.frames import FrameGrid, frames_mismatch, rows_of, subject_valid, unpack
from bidstrain.errors import BidstrainError
from bidstrain.io.grid import AFFINE_TOLERANCE, grid_mismatch
from bidstrain.io.store import (
    StoreMeta,
    chunk_volumes,
    create_store,
    group_meta,
    open_existing,
)

log = logging.getLogger(__name__)

#: Size of the float64 block sum and its int32 count over all group voxels (frames are
#: added until it is reached).
BLOCK_BYTES = 64 * 2**20
#: Bytes of the block sum and count per frame and voxel.
BYTES_PER_VALUE = 8 + 4
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
    #: Rows of ``data`` (its valid frames).
    n_time: int
    n_voxel: int
    #: Frames of its time grid, and which are valid (:meth:`FrameGrid.packed`).
    n_frames: int
    valid: bytes

    def frame_valid(self, n_frames: int) -> np.ndarray:
        """Which of the first ``n_frames`` frames of its grid are in ``data``."""
        return unpack(self.valid, n_frames)


@dataclass(frozen=True)
class StoreHeader:
    """What the first pass reads of a store: its attributes, dimensions, mask and frames."""

    path: str
    meta: StoreMeta
    n_time: int
    mask: np.ndarray
    frames: FrameGrid

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
            n_frames=self.frames.n_frames,
            valid=self.frames.packed(),
        )


def _array(group: zarr.Group, name: str, path: str) -> zarr.Array:
    """One array of a store; a store without it is incomplete."""
    try:
        return group[name]
    except KeyError:
        raise BidstrainError(f"incomplete store: missing {name!r}", path=path) from None


def read_header(path: str | Path) -> StoreHeader:
    """The header of a subject store, opened once: attributes, row count, mask and frame
    grid.

    Raises
    ------
    BidstrainError
        When the store is missing or incomplete, or is not BOLD with per-voxel statistics.
    """
    path = str(path)
    group = open_existing(path)
    meta = group_meta(group, path)
    if meta.modality != "bold" or not meta.per_voxel:
        raise BidstrainError(
            f"only BOLD stores with per-voxel statistics can be averaged, got modality "
            f"{meta.modality!r} with stats_dim {meta.stats_dim!r}",
            path=path,
            subject=meta.subject,
        )
    n_time = int(_array(group, "data", path).shape[0])
    mask = np.asarray(_array(group, "mask", path)[...], dtype=bool)
    _array(group, "time", path)  # a store without its time axis is incomplete
    frames = FrameGrid.read(group, path)
    return StoreHeader(path=path, meta=meta, n_time=n_time, mask=mask, frames=frames)


def check_repetition_time(
    meta: StoreMeta, reference: StoreMeta, tr_tolerance: float, path: str | Path
) -> None:
    """Raise unless the store ``path`` (``meta``) has the ``reference`` store's repetition
    time, within ``tr_tolerance`` seconds (``average.repetition_time_tolerance``).

    Raises
    ------
    BidstrainError
        Naming the store, its subject, both TRs and the config key.
    """
    if (meta.repetition_time is None) != (reference.repetition_time is None) or (
        meta.repetition_time is not None
        and abs(meta.repetition_time - reference.repetition_time) > tr_tolerance
    ):
        raise BidstrainError(
            f"repetition time {meta.repetition_time} s differs from sub-{reference.subject}'s "
            f"{reference.repetition_time} s (config average.repetition_time_tolerance: "
            f"{tr_tolerance}); time points cannot be averaged across different TRs",
            path=path,
            subject=meta.subject,
        )


def check_compatible(
    header: StoreHeader,
    reference: StoreHeader,
    *,
    affine_tolerance: float,
    tr_tolerance: float,
) -> None:
    """Raise unless ``header`` shares the ``reference`` store's grid, repetition time, frame
    times (over their common length), ddof, task and run.

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
    check_repetition_time(meta, ref, tr_tolerance, header.path)
    frames = frames_mismatch(
        header.frames,
        reference.frames,
        repetition_time=ref.repetition_time or 1.0,
        tr_tolerance=tr_tolerance,
    )
    if frames:
        raise BidstrainError(
            f"its time grid is not sub-{ref.subject}'s ({reference.path}): {frames}; frames "
            "are averaged across subjects by their onsets, which must match",
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
    """Number of frames of the average's time grid: the common length of the runs' grids,
    or the shortest if ``truncate``.

    Raises
    ------
    BidstrainError
        When runs differ in length and ``truncate`` is False, listing the lengths.
    """
    lengths = {src.n_frames for src in sources}
    shortest = min(lengths)
    if len(lengths) == 1:
        return shortest
    listing = ", ".join(f"{s.label}: {s.n_frames}" for s in sources)
    if not truncate:
        raise BidstrainError(
            f"runs differ in length ({listing} frames); time points cannot be matched "
            "across subjects (set average.truncate: true to cut them to the shortest, "
            f"{shortest} frames, or exclude the short runs)",
            path=sources[0].path,
        )
    cut = ", ".join(
        f"{s.label} ({s.n_frames} -> {shortest})" for s in sources if s.n_frames > shortest
    )
    log.warning("average.truncate: cutting runs to %d frames: %s", shortest, cut)
    return shortest


def frame_subjects(subjects: Sequence[Sequence[SourceStore]], n_frames: int) -> np.ndarray:
    """How many of ``subjects`` (each a list of its sessions' stores) are valid at each of
    the first ``n_frames`` frames (a subject is valid where one of its sessions is)."""
    counts = np.zeros(n_frames, dtype=np.int32)
    for sessions in subjects:
        counts += subject_valid([src.valid for src in sessions], n_frames)
    return counts


def valid_frames(
    subjects: Sequence[Sequence[SourceStore]], n_frames: int, min_subjects: int, out: str | Path
) -> tuple[np.ndarray, np.ndarray]:
    """How many ``subjects`` are valid at each frame (:func:`frame_subjects`), and which
    frames the average ``out`` keeps: those valid in at least ``min_subjects``.

    Raises
    ------
    BidstrainError
        When no frame is.
    """
    per_frame = frame_subjects(subjects, n_frames)
    valid = per_frame >= min_subjects
    if not valid.any():
        raise BidstrainError(
            f"no frame is valid in {min_subjects} of the {len(subjects)} subjects (at most "
            f"{int(per_frame.max(initial=0))}); lower average.min_subjects",
            path=out,
        )
    return per_frame, valid


def average_attrs(
    reference: StoreMeta,
    sources: Sequence[SourceStore],
    n_frames: int,
    valid: np.ndarray,
    min_subjects: int,
) -> dict[str, Any]:
    """The attributes every average store has (voxels and parcels): what was averaged (its
    subjects, sessions and sources, the frames kept) and the time and statistics settings
    of its first store, ``reference``."""
    subjects = sorted({src.subject for src in sources})
    return {
        "modality": "bold",
        "subject": "average",
        "session": "",
        "entities": {k: v for k, v in reference.entities.items() if k in ("task", "run")},
        "subjects": subjects,
        "sessions": {s: [src.session for src in sources if src.subject == s] for s in subjects},
        "truncated": {src.label: src.n_frames for src in sources if src.n_frames > n_frames},
        "source_path": [src.path for src in sources],
        "stats_from": [src.path for src in sources],
        "repetition_time": reference.repetition_time,
        "source_repetition_time": reference.source_repetition_time,
        "time_method": reference.time_method,
        "confounds_strategy": reference.confounds_strategy,
        "ddof": reference.ddof,
        "n_invalid_frames": int((~valid).sum()),
        "min_subjects": min_subjects,
    }


@dataclass
class Cohort:
    """What the first pass learns of all the stores together."""

    sources: list[SourceStore]
    #: The first store's header: the grid, TR and entities every other store matches.
    reference: StoreHeader
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
    reference = read_header(stores[0])
    cohort = Cohort(
        sources=[reference.source()],
        reference=reference,
        group_mask=reference.mask.copy(),
        storage=reference.meta.storage,
        source_size=reference.meta.source_size,
    )
    precision = reference.meta.precision
    for path in stores[1:]:
        header = read_header(path)
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
    """``(start, stop)`` of the blocks of frames whose float64 sum and int32 count over
    ``n_voxel`` voxels take at most ``block_bytes`` (at least one frame), whole multiples
    of ``chunk`` frames when a block holds a chunk or more (so compressed chunks are
    decoded about once)."""
    volumes = max(1, block_bytes // (BYTES_PER_VALUE * n_voxel))
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
        """The average of frames ``start:stop`` over ``subjects`` (each a list of its
        sessions' stores), each frame and voxel over the subjects valid there (0 where
        none is), float64, shape (frames, group voxels). The block that starts at 0 also
        sums the statistics and counts the subjects covering each voxel."""
        first = start == 0
        shape = (stop - start, self.n_subjects.size)
        total = np.zeros(shape, dtype=np.float64)
        count = np.zeros(shape, dtype=np.int32)
        for sessions in subjects:
            self._add_subject(total, count, sessions, start, stop, with_stats=first)
        np.divide(total, count, out=total, where=count > 0)
        return total

    def _add_subject(
        self,
        total: np.ndarray,
        count: np.ndarray,
        sessions: Sequence[SourceStore],
        start: int,
        stop: int,
        *,
        with_stats: bool,
    ) -> None:
        """Add one subject, the mean over its sessions valid at each frame, to ``total``
        (and one to ``count`` where it is valid; to the statistics)."""
        single = len(sessions) == 1  # then straight into the sums, with no copy
        target, hits = (total, count) if single else (np.zeros_like(total), np.zeros_like(count))
        stat_target = (
            self.stat_sums
            if single
            else {name: np.zeros_like(self.stat_sums[name]) for name in STATS}
        )
        covers = np.zeros(self.n_subjects.size, dtype=np.int32)
        for src in sessions:
            index, frames, values, stats = self._read(src, start, stop, with_stats=with_stats)
            at = _cells(frames, index, stop - start)
            target[at] += values
            hits[at] += 1
            covers[index] += 1
            for name, value in stats.items():
                stat_target[name][index] += value
        if not single:
            valid = hits > 0
            total[valid] += target[valid] / hits[valid]
            count += valid
        covered = covers > 0
        if with_stats:
            self.n_subjects += covered
            for name in STATS if not single else ():
                self.stat_sums[name][covered] += stat_target[name][covered] / covers[covered]

    def _read(
        self, src: SourceStore, start: int, stop: int, *, with_stats: bool
    ) -> tuple[np.ndarray | slice, np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        """One store opened once: the group index of the voxels of the group it covers, the
        positions within ``start:stop`` of its valid frames there, their rows of ``data``
        on those voxels, and (``with_stats``) its ``mean`` and ``std`` there.

        A store with as many voxels as the group has the group's mask (the group mask is the
        intersection or the union of the stores'): its mask is not read, and its voxels are
        the group's, in order (the index is a slice)."""
        group = open_existing(src.path)
        if src.n_voxel == self.n_subjects.size:
            index, keep = slice(None), slice(None)
        else:
            index = self.lookup[np.asarray(_array(group, "mask", src.path)[...], dtype=bool)]
            keep = index >= 0
            index = index[keep]
        first, last, frames = rows_of(src.frame_valid(stop), start, stop)
        data = _array(group, "data", src.path)[first:last][:, keep]
        stats = {name: _array(group, name, src.path)[...][keep] for name in STATS if with_stats}
        return index, frames, data, stats


def _cells(frames: np.ndarray, voxels: np.ndarray | slice, n_frames: int) -> tuple:
    """The index of a block at ``frames`` x ``voxels`` (slices where they are whole, so
    that the common case of every frame valid adds without a gather)."""
    rows = slice(None) if frames.size == n_frames else frames
    if isinstance(rows, slice) or isinstance(voxels, slice):
        return rows, voxels
    return np.ix_(rows, voxels)


def average_stores(
    stores: Sequence[str | Path],
    out: str | Path,
    *,
    mask: str = "intersection",
    truncate: bool = False,
    min_subjects: int = 1,
    affine_tolerance: float = AFFINE_TOLERANCE,
    tr_tolerance: float = 1e-3,
    block_bytes: int = BLOCK_BYTES,
) -> Path:
    """Average within-subject z-scored BOLD stores across subjects at each frame.

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
    min_subjects : int
        Frames valid in fewer subjects are left out of the average (``frame_valid``).
    affine_tolerance : float
        Largest allowed absolute difference between store affines
        (:func:`bidstrain.io.grid.grid_mismatch`).
    tr_tolerance : float
        Largest allowed difference between repetition times, in seconds.
    block_bytes : int
        Size of the float64 sum and int32 count of one block of frames (the memory bound).

    Returns
    -------
    Path
        ``out``.

    Raises
    ------
    BidstrainError
        When stores differ in grid, repetition time, frame times, ddof, task or length,
        the mask intersection is empty, or no frame has ``min_subjects`` valid subjects.
    """
    if not stores:
        raise BidstrainError("no subject store to average", path=out)
    cohort = read_cohort(
        stores, mask=mask, affine_tolerance=affine_tolerance, tr_tolerance=tr_tolerance
    )
    sources = cohort.sources
    n_frames = common_length(sources, truncate=truncate)
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
    per_frame, valid = valid_frames([by_subject[s] for s in subjects], n_frames, min_subjects, out)
    frame_time = cohort.reference.frames.times[:n_frames]

    sums = BlockSum(cohort.group_mask)
    n_voxel = sums.n_subjects.size
    n_rows = int(valid.sum())
    chunk = chunk_volumes(n_rows, n_voxel)
    data_sum = np.zeros(n_voxel, dtype=np.float64)
    data_sumsq = np.zeros(n_voxel, dtype=np.float64)
    ref = cohort.reference.meta
    with create_store(
        out,
        mask=cohort.group_mask,
        affine=ref.affine,
        time=frame_time[valid],
        chunk=chunk,
        storage=cohort.storage,
    ) as writer:
        row = 0
        for start, stop in block_ranges(n_frames, n_voxel, chunk, block_bytes):
            block = sums.block([by_subject[s] for s in subjects], start, stop)[valid[start:stop]]
            writer.write(row, block)
            row += block.shape[0]
            data_sum += block.sum(axis=0)
            data_sumsq += np.square(block).sum(axis=0)
            del block
        variance = data_sumsq / n_rows - np.square(data_sum / n_rows)
        for name in STATS:
            mean = sums.stat_sums[name] / sums.n_subjects
            writer.add_variable(name, ("voxel",), mean.astype(np.float32))
        writer.add_variable("n_subjects", ("voxel",), sums.n_subjects)
        writer.add_variable("frame_time", ("frame",), frame_time)
        writer.add_variable("frame_valid", ("frame",), valid)
        writer.add_variable("frame_subjects", ("frame",), per_frame)
        writer.attrs.update(
            average_attrs(ref, sources, n_frames, valid, min_subjects),
            source_size=cohort.source_size,
            n_zero_variance=int((variance <= 0).sum()),
            n_nonfinite=0,
            stats_dim="voxel",
            mask_mode=mask,
        )
    log.info(
        "averaged %d subjects (%d stores), %d of %d frames x %d voxels -> %s",
        len(subjects),
        len(sources),
        n_rows,
        n_frames,
        n_voxel,
        out,
    )
    return Path(out)
