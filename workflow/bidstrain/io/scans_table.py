"""The table a subject's normalize job writes, ``sub-<label>_scans.tsv`` in the subject's
folder of ``results/normalized``: one row per store, what later stages read without
opening the stores.

Columns: ``filename`` (the store, relative to the table's folder, as in a BIDS
``scans.tsv``), ``modality``, ``source`` (the NIfTI), ``heldout`` (true/false),
``volumes``, ``voxels`` (masked), ``grid`` (``XxYxZ``), ``stats_from`` (stores whose
statistics a held-out run took, ``;``-separated), ``checksum`` (the store's content
checksum, :func:`bidstrain.io.store.store_checksum`), ``segments`` (BOLD: the lengths of the
runs of consecutive valid frames in ``data``, ``;``-separated, :func:`bidstrain.io.store.
read_segments`; empty for other modalities), ``invalid_frames`` (BOLD: frames of the run's
time grid left out of ``data`` by the time resampling, the store's ``n_invalid_frames``) and
``parcels`` (the run's parcel store, relative as ``filename``, or empty). Tables written
before the last three columns existed read with ``segments`` None (unknown: read from the
store), ``invalid_frames`` None and no parcel store.

The table is the job's output, and
Snakemake skips a rerun of a job whose small input file kept its checksum: a rewrite of
the stores with other content makes a new table, so what reads them reruns, while a
rewrite of the same content (a forced rerun on unchanged data) leaves the table as it was
and reruns nothing downstream.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from bidstrain.io.atomic import write_text_atomic

COLUMNS = (
    "filename",
    "modality",
    "source",
    "heldout",
    "volumes",
    "voxels",
    "grid",
    "stats_from",
    "checksum",
    "segments",
    "invalid_frames",
    "parcels",
)


@dataclass(frozen=True)
class StoreRow:
    """One store of a normalize job (``store`` as the workflow names it)."""

    store: str
    modality: str
    source: str
    heldout: bool
    volumes: int
    voxels: int
    grid: tuple[int, ...]
    stats_from: tuple[str, ...]
    checksum: str
    #: lengths of the runs of consecutive valid frames (BOLD), None when unknown
    segments: tuple[int, ...] | None = None
    #: the run's parcel store (config ``parcellation``), empty without one
    parcels: str = ""
    #: frames left out by the time resampling (BOLD), None when unknown
    invalid_frames: int | None = None


def write_table(rows: Iterable[StoreRow], out: str | Path) -> None:
    """Write the table atomically: the job's output appears once every store is written."""
    folder = os.path.dirname(str(out))
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter="\t", lineterminator="\n")
    writer.writerow(COLUMNS)
    for row in rows:
        writer.writerow(
            [
                os.path.relpath(row.store, folder),
                row.modality,
                row.source,
                str(row.heldout).lower(),
                row.volumes,
                row.voxels,
                "x".join(map(str, row.grid)),
                ";".join(row.stats_from),
                row.checksum,
                "" if row.segments is None else ";".join(map(str, row.segments)),
                "" if row.invalid_frames is None else row.invalid_frames,
                os.path.relpath(row.parcels, folder) if row.parcels else "",
            ]
        )
    write_text_atomic(out, buffer.getvalue())


def read_tables(paths: Sequence[str | Path]) -> list[StoreRow]:
    """The rows of normalize tables, in order, stores named as the workflow names them."""
    rows = []
    for path in paths:
        folder = os.path.dirname(str(path))
        with open(path, newline="") as handle:
            for row in csv.DictReader(handle, delimiter="\t"):
                rows.append(
                    StoreRow(
                        store=os.path.normpath(os.path.join(folder, row["filename"])),
                        modality=row["modality"],
                        source=row["source"],
                        heldout=row["heldout"] == "true",
                        volumes=int(row["volumes"]),
                        voxels=int(row["voxels"]),
                        grid=tuple(int(n) for n in row["grid"].split("x")),
                        stats_from=tuple(filter(None, row["stats_from"].split(";"))),
                        checksum=row["checksum"],
                        segments=_segments(row.get("segments")),
                        invalid_frames=int(row["invalid_frames"])
                        if row.get("invalid_frames")
                        else None,
                        parcels=os.path.normpath(os.path.join(folder, row["parcels"]))
                        if row.get("parcels")
                        else "",
                    )
                )
    return rows


def _segments(value: str | None) -> tuple[int, ...] | None:
    """The ``segments`` column: None when absent or empty (an older table, or not BOLD)."""
    if not value:
        return None
    return tuple(int(n) for n in value.split(";"))
