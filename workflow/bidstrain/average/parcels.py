"""Cross-subject averages of parcel time series, one (task, run) at a time.

The parcel stores of one (task, run) (:func:`bidstrain.io.store.write_parcel_store`, one per
subject run) are averaged as :mod:`bidstrain.average.cohort` averages the voxel stores:
a subject's sessions are averaged first, so that it counts once; runs of different lengths
fail, or with ``average.truncate`` are cut to the shortest (named in a warning); then, at
each frame of the runs' time grid, the mean over the subjects valid there of the z-scored
series (:mod:`bidstrain.average.frames`). A parcel store holds the rows of its run's voxel
store, the valid frames, without the grid: the grid and validity come from the voxel
store of the same run (given beside it, in the same order), and the parcel store's
``time`` must be that store's valid frames' onsets. The average records ``frame_time``,
``frame_valid`` and ``frame_subjects`` as the voxel average does, so that windows see its
segments. A parcel with no voxel in a run's mask (empty in that run: 0 in its store) is
left out of that run's contribution: each parcel of each frame is the mean over the
subjects valid there whose run covers it, 0 where none does (counted in the average's
``n_empty_parcels``; parcels empty for some subjects are named in a warning and counted
in ``n_partial_parcels``).
``mean`` and ``std`` are the means of the covering subjects' values, ``n_voxels`` and
``coverage`` those of all subjects (as for voxels: the typical raw level behind the
average, not the average's own statistics; ``n_voxels`` rounded to a count). The stores
are small (frames x parcels), so they are read whole.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import zarr

from bidstrain.average.cohort import (
    SourceStore,
    average_attrs,
    check_repetition_time,
    common_length,
    valid_frames,
)
from bidstrain.average.frames import ONSET_TOLERANCE, FrameGrid
from bidstrain.errors import BidstrainError
from bidstrain.io.store import (
    CONSOLIDATED,
    open_existing,
    parcel_meta,
    read_meta,
    read_parcel_attrs,
    write_parcel_store,
)

log = logging.getLogger(__name__)

#: The per-parcel arrays averaged over subjects beside ``data``.
PER_PARCEL = ("mean", "std", "n_voxels", "coverage")


def _read(path: str, voxel_store: str) -> tuple[SourceStore, dict[str, np.ndarray]]:
    """A parcel store's header and arrays (float64), with the frame grid of its run's
    voxel store.

    Raises
    ------
    BidstrainError
        When it is missing or not a parcel store, or its frames are not the valid frames
        of ``voxel_store``.
    """
    meta = parcel_meta(path)
    group = zarr.open_group(path, mode="r", zarr_format=3, use_consolidated=CONSOLIDATED)
    arrays = {
        name: np.asarray(group[name][...], dtype=np.float64)
        for name in ("data", "time", "parcel", *PER_PARCEL)
    }
    frames = FrameGrid.read(open_existing(voxel_store), voxel_store)
    onsets = frames.times[frames.valid]
    tolerance = ONSET_TOLERANCE * (meta.repetition_time or 1.0)
    if (
        onsets.shape != arrays["time"].shape
        or np.abs(onsets - arrays["time"]).max(initial=0.0) > tolerance
    ):
        raise BidstrainError(
            f"its {arrays['time'].size} frames are not the {onsets.size} valid frames of its "
            f"run's voxel store {voxel_store} (rerun the normalize job of sub-{meta.subject})",
            path=path,
            subject=meta.subject,
        )
    arrays["frame_time"] = frames.times
    source = SourceStore(
        path=path,
        subject=meta.subject,
        session=meta.session,
        label=meta.label(full=False),
        n_time=arrays["data"].shape[0],
        n_voxel=arrays["data"].shape[1],
        n_frames=frames.n_frames,
        valid=frames.packed(),
    )
    return source, arrays


def _covered(arrays: dict[str, np.ndarray]) -> np.ndarray:
    """The parcels with a voxel in the run's mask (the others hold 0 in its store)."""
    return arrays["n_voxels"] > 0


def _frame_mean(
    subjects: Sequence[Sequence[tuple[SourceStore, dict[str, np.ndarray]]]],
    valid: np.ndarray,
) -> np.ndarray:
    """The series of the average at the frames ``valid`` of its grid: at each frame and
    parcel the mean over the subjects valid there whose runs cover the parcel of the mean
    over those sessions; 0 where no subject's run covers it."""
    n_frames = valid.size
    n_parcels = subjects[0][0][1]["data"].shape[1]
    total = np.zeros((n_frames, n_parcels))
    count = np.zeros((n_frames, n_parcels), dtype=np.int64)
    for sessions in subjects:
        own = np.zeros((n_frames, n_parcels))
        hits = np.zeros((n_frames, n_parcels), dtype=np.int64)
        for source, arrays in sessions:
            frames = source.frame_valid(n_frames)
            own[frames] += arrays["data"][: int(frames.sum())]
            hits += frames[:, None] & _covered(arrays)[None, :]
        present = hits > 0
        total[present] += own[present] / hits[present]
        count += present
    mean = np.divide(total, count, out=np.zeros_like(total), where=count > 0)
    return mean[valid]


def average_parcel_stores(
    stores: Sequence[str | Path],
    out: str | Path,
    *,
    voxel_stores: Sequence[str | Path],
    truncate: bool = False,
    min_subjects: int = 1,
    tr_tolerance: float = 1e-3,
) -> Path:
    """Average the parcel stores of one (task, run) across subjects (module docstring).

    Parameters
    ----------
    stores : sequence of str or Path
        Parcel stores of the subjects' runs; a subject may appear with several sessions.
    out : str or Path
        The average parcel store (written atomically).
    voxel_stores : sequence of str or Path
        The voxel stores of the same runs, in the same order: their frame grids.
    truncate : bool
        ``average.truncate``: cut runs of different lengths to the shortest.
    min_subjects : int
        ``average.min_subjects``: frames valid in fewer subjects are left out.
    tr_tolerance : float
        ``average.repetition_time_tolerance``: the largest difference of repetition
        times averaged together, in seconds, as for the voxel stores.

    Returns
    -------
    Path
        ``out``.

    Raises
    ------
    BidstrainError
        When a store is not a parcel store or not on its voxel store's frames, the stores
        have other parcels (another atlas) or repetition times, their lengths differ
        without ``truncate``, or no frame has ``min_subjects`` valid subjects.
    """
    if not stores:
        raise BidstrainError("no parcel store to average", path=out)
    if len(voxel_stores) != len(stores):
        raise BidstrainError(
            f"{len(stores)} parcel stores for {len(voxel_stores)} voxel stores: each parcel "
            "store needs the voxel store of its run",
            path=out,
        )
    read = [
        _read(str(path), str(voxels)) for path, voxels in zip(stores, voxel_stores, strict=True)
    ]
    sources = [source for source, _ in read]
    first_source, first = read[0]
    reference = read_meta(first_source.path)
    for source, arrays in read[1:]:
        if not np.array_equal(arrays["parcel"], first["parcel"]):
            raise BidstrainError(
                f"its parcels differ from those of {first_source.path} (another atlas?)",
                path=source.path,
                subject=source.subject,
            )
        check_repetition_time(read_meta(source.path), reference, tr_tolerance, source.path)
    n_frames = common_length(sources, truncate=truncate)
    by_subject: dict[str, list[tuple[SourceStore, dict[str, np.ndarray]]]] = defaultdict(list)
    for source, arrays in read:
        by_subject[source.subject].append((source, arrays))
    subjects = sorted(by_subject)
    per_frame, valid = valid_frames(
        [[source for source, _ in by_subject[s]] for s in subjects], n_frames, min_subjects, out
    )

    groups = [by_subject[s] for s in subjects]
    covered_by = np.sum([np.any([_covered(a) for _, a in group], 0) for group in groups], 0)
    empty = covered_by == 0
    partly = (covered_by > 0) & (covered_by < len(subjects))
    names = np.asarray(read_parcel_attrs(first_source.path)["parcel_names"])
    if partly.any():
        log.warning(
            "%s: %d parcels have no voxel in the mask of some subjects' runs and are averaged "
            "over the others: %s",
            out,
            int(partly.sum()),
            ", ".join(f"{n} ({c} of {len(subjects)})" for n, c in zip(
                names[partly], covered_by[partly], strict=True)),
        )  # fmt: skip

    frame_time = first["frame_time"][:n_frames]
    attrs = {
        **average_attrs(reference, sources, n_frames, valid, min_subjects),
        "affine": np.asarray(reference.affine).tolist(),
        "n_zero_variance": 0,
        "stats_dim": "parcel",
        **read_parcel_attrs(first_source.path),
        "n_empty_parcels": int(empty.sum()),
        "n_partial_parcels": int(partly.sum()),
    }
    write_parcel_store(
        out,
        data=_frame_mean(groups, valid),
        mean=_subject_mean(groups, "mean", covering=True),
        std=_subject_mean(groups, "std", covering=True),
        parcels=first["parcel"].astype(np.int64),
        n_voxels=np.rint(_subject_mean(groups, "n_voxels")),
        coverage=_subject_mean(groups, "coverage"),
        time=frame_time[valid],
        attrs=attrs,
        frames={"frame_time": frame_time, "frame_valid": valid, "frame_subjects": per_frame},
    )
    log.info(
        "averaged the parcels of %d subjects (%d stores), %d of %d frames x %d parcels -> %s",
        len(subjects),
        len(sources),
        int(valid.sum()),
        n_frames,
        first["data"].shape[1],
        out,
    )
    return Path(out)


def _subject_mean(
    groups: Sequence[Sequence[tuple[SourceStore, dict[str, np.ndarray]]]],
    name: str,
    covering: bool = False,
) -> np.ndarray:
    """Mean over subjects (``groups``: each subject's stores) of the mean of array ``name``
    over each subject's sessions (with ``covering``, per parcel over the sessions whose
    runs cover it; 0 where none)."""
    per_subject, weights = [], []
    for group in groups:
        values = np.array([a[name] for _, a in group], dtype=np.float64)
        weight = np.array(
            [_covered(a) if covering else np.ones(values.shape[1], bool) for _, a in group]
        )
        sessions = weight.sum(axis=0)
        per_subject.append(np.divide((values * weight).sum(0), np.maximum(sessions, 1)))
        weights.append(sessions > 0)
    covered = np.sum(weights, axis=0)
    total = np.sum(np.array(per_subject) * np.array(weights), axis=0)
    return np.divide(total, covered, out=np.zeros_like(total), where=covered > 0)
