"""Cross-subject averages of parcel time series, one (task, run) at a time.

The parcel stores of one (task, run) (:func:`bidstrain.io.store.write_parcel_store`, one per
subject run) are averaged as :mod:`bidstrain.average.cohort` averages the voxel stores:
a subject's sessions are averaged first, so that it counts once; runs of different lengths
fail, or with ``average.truncate`` are cut to the shortest (named in a warning); then the
mean over subjects of the z-scored series, frame by frame. ``mean``, ``std``, ``n_voxels``
and ``coverage`` are the same means of the subjects' values (as for voxels: the typical
raw level behind the average, not the average's own statistics; ``n_voxels`` rounded to
a count). The stores are small
(frames x parcels), so they are read whole.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import zarr

from bidstrain.average.cohort import SourceStore, common_length
from bidstrain.errors import BidstrainError
from bidstrain.io.store import CONSOLIDATED, read_meta, read_parcel_attrs, write_parcel_store

log = logging.getLogger(__name__)

#: The per-parcel arrays averaged over subjects beside ``data``.
PER_PARCEL = ("mean", "std", "n_voxels", "coverage")
#: Attributes of the parcellation, the same in every store of one atlas.


def _read(path: str) -> tuple[SourceStore, dict[str, np.ndarray]]:
    """A parcel store's header and arrays (float64).

    Raises
    ------
    BidstrainError
        When it is missing or not a parcel store.
    """
    meta = read_meta(path)
    if meta.stats_dim != "parcel":
        raise BidstrainError(f"not a parcel store (stats_dim {meta.stats_dim!r})", path=path)
    group = zarr.open_group(path, mode="r", zarr_format=3, use_consolidated=CONSOLIDATED)
    arrays = {
        name: np.asarray(group[name][...], dtype=np.float64)
        for name in ("data", "time", "parcel", *PER_PARCEL)
    }
    source = SourceStore(
        path=path,
        subject=meta.subject,
        session=meta.session,
        label=meta.label(full=False),
        n_time=arrays["data"].shape[0],
        n_voxel=arrays["data"].shape[1],
    )
    return source, arrays


def average_parcel_stores(
    stores: Sequence[str | Path], out: str | Path, *, truncate: bool = False
) -> Path:
    """Average the parcel stores of one (task, run) across subjects (module docstring).

    Parameters
    ----------
    stores : sequence of str or Path
        Parcel stores of the subjects' runs; a subject may appear with several sessions.
    out : str or Path
        The average parcel store (written atomically).
    truncate : bool
        ``average.truncate``: cut runs of different lengths to the shortest.

    Returns
    -------
    Path
        ``out``.

    Raises
    ------
    BidstrainError
        When a store is not a parcel store, the stores have other parcels (another atlas)
        or repetition times, or their lengths differ without ``truncate``.
    """
    if not stores:
        raise BidstrainError("no parcel store to average", path=out)
    read = [_read(str(path)) for path in stores]
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
        if read_meta(source.path).repetition_time != reference.repetition_time:
            raise BidstrainError(
                f"its repetition time differs from that of {first_source.path}",
                path=source.path,
                subject=source.subject,
            )
    n_time = common_length(sources, truncate=truncate)
    by_subject: dict[str, list[dict[str, np.ndarray]]] = defaultdict(list)
    for source, arrays in read:
        by_subject[source.subject].append(arrays)
    subjects = sorted(by_subject)

    def subject_mean(name: str) -> np.ndarray:
        """Mean over subjects of the mean over each subject's sessions."""
        per_subject = [
            np.mean([a[name][:n_time] if name == "data" else a[name] for a in by_subject[s]], 0)
            for s in subjects
        ]
        return np.mean(per_subject, axis=0)

    attrs = {
        "modality": "bold",
        "subject": "average",
        "session": "",
        "entities": {k: v for k, v in reference.entities.items() if k in ("task", "run")},
        "affine": np.asarray(reference.affine).tolist(),
        "subjects": subjects,
        "sessions": {s: [src.session for src in sources if src.subject == s] for s in subjects},
        "truncated": {src.label: src.n_time for src in sources if src.n_time > n_time},
        "source_path": [src.path for src in sources],
        "repetition_time": reference.repetition_time,
        "ddof": reference.ddof,
        "n_zero_variance": 0,
        "stats_dim": "parcel",
        "stats_from": [src.path for src in sources],
        "time_method": reference.time_method,
        "source_repetition_time": reference.source_repetition_time,
    }
    attrs.update(read_parcel_attrs(first_source.path))
    write_parcel_store(
        out,
        data=subject_mean("data"),
        mean=subject_mean("mean"),
        std=subject_mean("std"),
        parcels=first["parcel"].astype(np.int64),
        n_voxels=np.rint(subject_mean("n_voxels")),
        coverage=subject_mean("coverage"),
        time=first["time"][:n_time],
        attrs=attrs,
    )
    log.info(
        "averaged the parcels of %d subjects (%d stores), %d frames x %d parcels -> %s",
        len(subjects),
        len(sources),
        n_time,
        first["data"].shape[1],
        out,
    )
    return Path(out)
