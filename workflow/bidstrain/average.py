"""Cross-subject averaging of within-subject z-scored BOLD, one (task, run) at a time.

``python -m bidstrain.average --out AVERAGE.zarr SUBJECT_STORE ...`` writes one store of
the same layout as the subject stores (:mod:`bidstrain.store`) holding, at every time point
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

Memory: the job streams blocks of volumes; for each block it reads one subject store at a
time and adds it to the block's sum, so peak memory is about three blocks of
:data:`BLOCK_BYTES` whatever the number of subjects and the run length.
"""

from __future__ import annotations

import argparse
import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xarray as xr

from bidstrain.errors import BidstrainError, run_cli
from bidstrain.grid import AFFINE_TOLERANCE, grid_mismatch
from bidstrain.store import StoreMeta, chunk_volumes, create_store, open_store, store_meta

log = logging.getLogger(__name__)

#: Size of the float64 block sum over all group voxels (volumes are added until it is reached).
BLOCK_BYTES = 64 * 2**20


@dataclass(frozen=True)
class SourceStore:
    """What averaging needs to know about one subject store (no voxel data)."""

    path: Path
    meta: StoreMeta
    n_time: int
    shape: tuple[int, int, int]

    @property
    def subject(self) -> str:
        return self.meta.subject

    @property
    def label(self) -> str:
        """``sub-01`` or ``sub-01 ses-2``: who a message is about."""
        return self.meta.label(full=False)


def _describe(path: Path) -> tuple[SourceStore, np.ndarray]:
    """What averaging needs to know about a store, and its mask."""
    ds = open_store(path)
    meta = store_meta(ds)
    if meta.modality != "bold" or not meta.per_voxel:
        raise BidstrainError(
            f"only BOLD stores with per-voxel statistics can be averaged, got modality "
            f"{meta.modality!r} with stats_dim {meta.stats_dim!r}",
            path=path,
            subject=meta.subject,
        )
    return SourceStore(
        path=path,
        meta=meta,
        n_time=int(ds.sizes["time"]),
        shape=tuple(int(n) for n in ds.mask.shape),
    ), ds.mask.values.astype(bool)


def check_compatible(
    sources: Sequence[SourceStore], *, affine_tolerance: float, tr_tolerance: float
) -> None:
    """Raise unless every store shares the first one's grid, repetition time, ddof and task.

    Raises
    ------
    BidstrainError
        Naming the subject and store that differ, the numbers, and the config key to change.
    """
    ref = sources[0].meta
    ref_path = sources[0].path
    for src in sources[1:]:
        where = {"path": src.path, "subject": src.subject}
        meta = src.meta
        mismatch = grid_mismatch(
            src.shape, meta.affine, sources[0].shape, ref.affine, atol=affine_tolerance
        )
        if mismatch:
            raise BidstrainError(
                f"not on the grid of sub-{ref.subject}'s store {ref_path}: {mismatch} (config "
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


def _open_for_reading(path: Path) -> xr.Dataset:
    """A store (validated by :func:`_describe`) opened without dask: reads go straight to
    Zarr, with no task graph per read and no dask caches growing with the number of stores."""
    return open_store(path, use_dask=False)


def _group_index(ds: xr.Dataset, lookup: np.ndarray) -> np.ndarray:
    """Group voxel index of each of the store's voxels (-1 outside the group mask)."""
    return lookup[ds.i.values, ds.j.values, ds.k.values]


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
        (:func:`bidstrain.grid.grid_mismatch`).
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
    # One store at a time: its description, and its mask folded into the group mask.
    combine = np.logical_and if mask == "intersection" else np.logical_or
    sources, group = [], None
    for path in stores:
        source, store_mask = _describe(Path(path))
        sources.append(source)
        if group is not None and store_mask.shape == group.shape:
            combine(group, store_mask, out=group)
        elif group is None:
            group = store_mask
    check_compatible(sources, affine_tolerance=affine_tolerance, tr_tolerance=tr_tolerance)
    n_time = common_length(sources, truncate=truncate)
    by_subject: dict[str, list[SourceStore]] = defaultdict(list)
    for src in sources:
        by_subject[src.subject].append(src)
    subjects = sorted(by_subject)

    if not group.any():
        counts = ", ".join(
            f"sub-{s.subject}: {int(_open_for_reading(s.path).mask.sum())}" for s in sources
        )
        raise BidstrainError(
            f"the intersection of the subjects' masks is empty (mask voxels {counts}); "
            "check their registration, or set average.mask: union",
            path=out,
        )
    n_voxel = int(group.sum())
    lookup = np.full(group.shape, -1, dtype=np.int64)
    lookup[group] = np.arange(n_voxel)

    # Per-voxel statistics and coverage, one subject (and its sessions) at a time.
    n_subjects = np.zeros(n_voxel, dtype=np.int32)
    stat_sums = {name: np.zeros(n_voxel, dtype=np.float64) for name in ("mean", "std")}
    for subject in subjects:
        sub_sums = {name: np.zeros(n_voxel, dtype=np.float64) for name in stat_sums}
        sub_count = np.zeros(n_voxel, dtype=np.int32)
        for src in by_subject[subject]:
            ds = _open_for_reading(src.path)
            index = _group_index(ds, lookup)
            keep = index >= 0
            for name in stat_sums:
                sub_sums[name][index[keep]] += ds[name].values[keep]
            sub_count[index[keep]] += 1
        covered = sub_count > 0
        n_subjects += covered
        for name in stat_sums:
            stat_sums[name][covered] += sub_sums[name][covered] / sub_count[covered]

    first = _open_for_reading(sources[0].path)
    chunk = chunk_volumes(n_time, n_voxel)
    block = chunk * max(1, block_bytes // (8 * chunk * n_voxel))
    data_sum = np.zeros(n_voxel, dtype=np.float64)
    data_sumsq = np.zeros(n_voxel, dtype=np.float64)
    truncated = {src.label: src.n_time for src in sources if src.n_time > n_time}
    storage = max((src.meta for src in sources), key=lambda meta: meta.precision).storage
    with create_store(
        out,
        mask=group,
        affine=sources[0].meta.affine,
        time=first.time.values[:n_time],
        chunk=chunk,
        storage=storage,
    ) as writer:
        for start in range(0, n_time, block):
            stop = min(start + block, n_time)
            total = np.zeros((stop - start, n_voxel), dtype=np.float64)
            for subject in subjects:
                _add_subject_block(total, by_subject[subject], lookup, start, stop)
            total /= n_subjects
            writer.write(start, total)
            data_sum += total.sum(axis=0)
            data_sumsq += np.square(total).sum(axis=0)
            del total
        variance = data_sumsq / n_time - np.square(data_sum / n_time)
        writer.add_variable("mean", ("voxel",), (stat_sums["mean"] / n_subjects).astype(np.float32))
        writer.add_variable("std", ("voxel",), (stat_sums["std"] / n_subjects).astype(np.float32))
        writer.add_variable("n_subjects", ("voxel",), n_subjects)
        entities = {k: v for k, v in sources[0].meta.entities.items() if k in ("task", "run")}
        writer.attrs.update(
            modality="bold",
            subject="average",
            session="",
            entities=entities,
            subjects=subjects,
            sessions={s: [src.meta.session for src in by_subject[s]] for s in subjects},
            truncated=truncated,
            source_path=[str(src.path) for src in sources],
            source_size=sum(src.meta.source_size for src in sources),
            repetition_time=sources[0].meta.repetition_time,
            ddof=sources[0].meta.ddof,
            n_zero_variance=int((variance <= 0).sum()),
            n_nonfinite=0,
            stats_dim="voxel",
            stats_from=[str(src.path) for src in sources],
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


def _add_subject_block(
    total: np.ndarray, sessions: Sequence[SourceStore], lookup: np.ndarray, start: int, stop: int
) -> None:
    """Add one subject's volumes ``start:stop`` (mean over its sessions) to ``total``."""
    if len(sessions) == 1:
        ds = _open_for_reading(sessions[0].path)
        index = _group_index(ds, lookup)
        keep = index >= 0
        total[:, index[keep]] += ds.data[start:stop].values[:, keep]
        return
    subject_sum = np.zeros_like(total)
    count = np.zeros(total.shape[1], dtype=np.int32)
    for src in sessions:
        ds = _open_for_reading(src.path)
        index = _group_index(ds, lookup)
        keep = index >= 0
        subject_sum[:, index[keep]] += ds.data[start:stop].values[:, keep]
        count[index[keep]] += 1
    covered = count > 0
    total[:, covered] += subject_sum[:, covered] / count[covered]


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: ``python -m bidstrain.average --out OUT.zarr STORE [STORE ...]``
    (``@FILE`` reads arguments from FILE, one a line)."""
    parser = argparse.ArgumentParser(
        prog="python -m bidstrain.average",
        description=__doc__.splitlines()[0],
        fromfile_prefix_chars="@",
    )
    parser.add_argument("stores", nargs="+", help="subject stores of one (task, run)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--mask", choices=["intersection", "union"], required=True)
    parser.add_argument("--truncate", action="store_true")
    parser.add_argument("--affine-tolerance", type=float, required=True)
    parser.add_argument("--tr-tolerance", type=float, required=True)
    args = parser.parse_args(argv)
    average_stores(
        args.stores,
        args.out,
        mask=args.mask,
        truncate=args.truncate,
        affine_tolerance=args.affine_tolerance,
        tr_tolerance=args.tr_tolerance,
    )


if __name__ == "__main__":
    run_cli(main)
