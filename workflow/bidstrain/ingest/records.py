"""Ingestion: validate every image header of a subject (no voxel data read) and list it.

Each subject's normalize job (``python -m bidstrain.normalize``) first validates the
images it normalizes (:func:`ingest_images`, with config ``ingest``) and writes its
record ``results/ingest/sub-<label>.json`` (:func:`write_subject_record`);
``python -m bidstrain.ingest manifest ...`` joins the records, and the stores the jobs
wrote, into ``manifest.tsv``.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from bidstrain.config import IngestConfig
from bidstrain.dataset.bids import BidsFile, BidsIndex
from bidstrain.errors import BidstrainError
from bidstrain.io.atomic import write_text_atomic
from bidstrain.io.nifti_files import check_complete, check_voxel_type
from bidstrain.io.orientation import reorientation
from bidstrain.io.scans_table import read_tables

log = logging.getLogger(__name__)

MANIFEST_COLUMNS = (
    "subject session task run modality path n_volumes repetition_time shape dtype store checksum"
).split()
_TIME_UNIT_SECONDS = {"sec": 1.0, "msec": 1e-3, "usec": 1e-6}


def _header_tr(header: nib.Nifti1Header) -> float | None:
    zooms = header.get_zooms()
    if len(zooms) < 4 or not zooms[3] > 0:
        return None
    unit = header.get_xyzt_units()[1]
    return float(zooms[3]) * _TIME_UNIT_SECONDS.get(unit, 1.0)


def stated_repetition_time(header: nib.Nifti1Header, sidecar: Mapping[str, Any]) -> float | None:
    """The repetition time a BOLD run states, in seconds: its sidecar's positive
    ``RepetitionTime`` (the one ingest keeps when the two disagree), else its header's,
    converted from the header's time unit (a TR in ms is common); None when neither
    states one."""
    from_sidecar = sidecar.get("RepetitionTime")
    if isinstance(from_sidecar, int | float) and from_sidecar > 0:
        return float(from_sidecar)
    return _header_tr(header)


def _repetition_time(
    image: BidsFile,
    header: nib.Nifti1Header,
    sidecar: dict[str, Any],
    mismatch: str,
    tolerance: float,
) -> float:
    from_sidecar = sidecar.get("RepetitionTime")
    from_header = _header_tr(header)
    if from_sidecar is None and from_header is None:
        raise BidstrainError(
            "RepetitionTime is missing from the JSON sidecar (and its inherited ones) and "
            "from the NIfTI header; add it to the sidecar",
            path=image.path,
        )
    if from_sidecar is None:
        log.warning(
            "%s: no RepetitionTime in the sidecar; using the header's %.4g s",
            image.path,
            from_header,
        )
        return from_header
    if not isinstance(from_sidecar, int | float) or from_sidecar <= 0:
        raise BidstrainError(
            f"sidecar RepetitionTime {from_sidecar!r} is not a positive number", path=image.path
        )
    if from_header is not None and abs(from_header - from_sidecar) > tolerance:
        message = (
            f"RepetitionTime {from_sidecar} s in the sidecar disagrees with {from_header:.4g} s in "
            "the header (config ingest.repetition_time_mismatch: warn to accept the sidecar)"
        )
        if mismatch == "error":
            raise BidstrainError(message, path=image.path)
        log.warning("%s: %s", image.path, message)
    return float(from_sidecar)


def _read_gradients(image: BidsFile, index: BidsIndex, n_volumes: int) -> dict[str, Any]:
    paths = {ext: index.companion(image, ext) for ext in (".bval", ".bvec")}
    missing = [ext for ext, path in paths.items() if path is None]
    if missing:
        raise BidstrainError(f"DWI has no {' or '.join(missing)} file", path=image.path)
    tables = {}
    for ext, ndmin in ((".bval", 1), (".bvec", 2)):
        try:
            tables[ext] = np.loadtxt(paths[ext], ndmin=ndmin)
        except ValueError as error:
            raise BidstrainError(f"cannot parse gradient table: {error}", path=paths[ext]) from None
        if not np.isfinite(tables[ext]).all():
            raise BidstrainError(
                "gradient table holds a value that is not a finite number (NaN or inf)",
                path=paths[ext],
            )
    bvals, bvecs = tables[".bval"], tables[".bvec"]
    if bvecs.shape[0] != 3 and bvecs.shape[1] == 3:
        bvecs = bvecs.T
    lengths = {".bval": bvals.size, ".bvec": bvecs.shape[1]}
    for ext, length in lengths.items():
        if length != n_volumes:
            raise BidstrainError(
                f"{paths[ext].name} has {length} entries but the DWI has {n_volumes} volumes",
                path=paths[ext],
            )
    return {
        "bval": bvals.tolist(),
        "bvec": bvecs.tolist(),
        "bval_path": str(paths[".bval"]),
        "bvec_path": str(paths[".bvec"]),
    }


def inspect_image(
    image: BidsFile, index: BidsIndex, *, tr_mismatch: str = "error", tr_tolerance: float = 0.01
) -> dict[str, Any]:
    """Validate one image from its header and sidecars, without reading voxel data.

    Parameters
    ----------
    image : BidsFile
        The image (``T1w``, ``bold`` or ``dwi``).
    index : BidsIndex
        Index of its dataset, for sidecar and gradient-table inheritance.
    tr_mismatch : {"error", "warn"}
        What a sidecar/header repetition-time disagreement does.
    tr_tolerance : float
        Allowed disagreement in seconds.

    Returns
    -------
    dict
        The manifest record: subject, session, task, run, modality, path, n_volumes,
        repetition_time, shape, dtype, affine, orientation (the voxel axis codes of the
        file, such as ``LAS``), zooms, size, entities (and bval/bvec for DWI).

    Raises
    ------
    BidstrainError
        Naming the file and the problem.
    """
    path = image.path
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise BidstrainError(
            "the file is not there: a link to nothing (a DataLad dataset whose content was "
            "not fetched: `datalad get` it)"
            if path.is_symlink()
            else "the file is not there",
            path=path,
        ) from None
    if size == 0:
        raise BidstrainError("empty image file (0 bytes)", path=path)
    try:
        img = nib.load(path)
    except Exception as error:  # nibabel raises many types for unreadable files
        raise BidstrainError(f"not a readable NIfTI image: {error}", path=path) from None
    header = img.header
    check_voxel_type(header.get_data_dtype(), path)
    check_complete(path, img)
    shape = tuple(int(n) for n in img.shape)
    n_volumes = shape[3] if len(shape) == 4 else 1
    if image.suffix == "bold" and (len(shape) != 4 or n_volumes < 3):
        raise BidstrainError(
            f"BOLD must be 4D with at least 3 volumes, got shape {shape}", path=path
        )
    if image.suffix == "T1w" and not (len(shape) == 3 or (len(shape) == 4 and n_volumes == 1)):
        raise BidstrainError(
            f"T1w must be 3D (or 4D with one volume), got shape {shape}", path=path
        )
    if image.suffix == "dwi" and len(shape) != 4:
        raise BidstrainError(f"DWI must be 4D, got shape {shape}", path=path)
    if not np.isfinite(img.affine).all():
        raise BidstrainError("the affine has non-finite values", path=path)
    orientation = reorientation(img.affine, shape[:3], path=path).source_orientation
    record: dict[str, Any] = {
        "subject": image.subject,
        "session": image.session or "",
        "task": image.entities.get("task", ""),
        "run": image.entities.get("run", ""),
        "modality": image.suffix,
        "path": str(path),
        "n_volumes": n_volumes,
        "repetition_time": None,
        "shape": list(shape),
        "dtype": str(header.get_data_dtype()),
        "affine": img.affine.tolist(),
        "orientation": orientation,
        "zooms": [float(z) for z in header.get_zooms()],
        "size": size,
        "entities": dict(image.entities),
    }
    metadata = index.metadata(image)  # every sidecar parsed: one that is not JSON is named
    if image.suffix == "bold":
        record["repetition_time"] = _repetition_time(
            image, header, metadata, tr_mismatch, tr_tolerance
        )
    if image.suffix == "dwi":
        record.update(_read_gradients(image, index, n_volumes))
    return record


def ingest_images(
    bids_dir: str | Path,
    subject: str,
    paths: Sequence[str],
    *,
    tr_mismatch: str = "error",
    tr_tolerance: float = 0.01,
) -> dict[str, Any]:
    """Validate the given images of one subject: those its normalize job normalizes.

    The plan chose them (the derivative's space and ``desc-preproc`` image, one echo, one
    part), so an image the job does not use (another space's T1w, say) is neither read nor
    a reason to stop. Sidecars are inherited as the index finds them.

    Parameters
    ----------
    bids_dir : str or Path
        The dataset root the plan indexed.
    subject : str
        Subject label, without ``sub-``.
    paths : sequence of str
        The images, as the plan's index wrote their paths.
    tr_mismatch : {"error", "warn"}
        ``ingest.tr_mismatch``: what a sidecar/header repetition-time disagreement does.
    tr_tolerance : float
        ``ingest.tr_tolerance``: the disagreement allowed, in seconds.

    Returns
    -------
    dict
        ``{"subject": label, "images": [record, ...]}`` (see :func:`inspect_image`).

    Raises
    ------
    BidstrainError
        Listing every invalid image, or naming an image that is no longer in the dataset.
    """
    index = BidsIndex.build(bids_dir, participant_label=[subject])
    indexed = {str(image.path): image for image in index.images}
    gone = [path for path in paths if path not in indexed]
    if gone:
        raise BidstrainError(
            f"{len(gone)} planned image(s) no longer in the dataset (rerun snakemake to plan "
            "again): " + ", ".join(gone),
            subject=subject,
        )
    images = [indexed[path] for path in paths]
    return _validate(index, subject, images, tr_mismatch=tr_mismatch, tr_tolerance=tr_tolerance)


def _validate(
    index: BidsIndex,
    subject: str,
    images: Sequence[BidsFile],
    *,
    tr_mismatch: str,
    tr_tolerance: float,
) -> dict[str, Any]:
    """The subject's record: every image inspected, every problem listed at once."""
    records, problems = [], []
    for image in images:
        try:
            records.append(
                inspect_image(image, index, tr_mismatch=tr_mismatch, tr_tolerance=tr_tolerance)
            )
        except BidstrainError as error:
            problems.append(str(error))
    if problems:
        raise BidstrainError(
            f"{len(problems)} invalid image(s):\n  " + "\n  ".join(problems), subject=subject
        )
    return {"subject": subject, "images": records}


def read_manifest(path: str | Path) -> list[dict[str, str]]:
    """The rows of an ingest manifest (:func:`write_manifest`), every value as text
    (labels keep their leading zeros)."""
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


def write_manifest(
    records: Sequence[str | Path], tables: Sequence[str | Path], out: str | Path
) -> None:
    """Join the subjects' ingest records and normalize tables into one TSV, a row per
    image: its header's description, its store and the store's content checksum.

    Parameters
    ----------
    records : sequence of path
        The subjects' ingest records (``results/ingest/sub-<label>.json``).
    tables : sequence of path
        The same subjects' normalize tables, in the same order. Their ``checksum`` column
        makes the manifest change whenever a store's content changes, so that what takes
        the manifest as input (the checks, the averages) reruns then, and only then.
    out : path
        The manifest, written atomically.

    Raises
    ------
    BidstrainError
        When a table lists no store of an image of its subject's record.
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter="\t", lineterminator="\n")
    writer.writerow(MANIFEST_COLUMNS)
    for record_path, table in zip(records, tables, strict=True):
        record = json.loads(Path(record_path).read_text())
        stores = {row.source: row for row in read_tables([table])}
        for image in record["images"]:
            if image["path"] not in stores:
                raise BidstrainError(
                    f"lists no store of {image['path']} (its ingest record {record_path} "
                    "does): rerun the subject's normalize job",
                    path=table,
                    subject=record["subject"],
                )
            store = stores[image["path"]]
            row = {
                **image,
                "shape": "x".join(map(str, image["shape"])),
                "store": store.store,
                "checksum": store.checksum,
            }
            writer.writerow(["" if row[c] is None else row[c] for c in MANIFEST_COLUMNS])
    write_text_atomic(out, buffer.getvalue())


def write_subject_record(
    bids_dir: str | Path,
    subject: str,
    images: Sequence[str],
    settings: IngestConfig,
    out: str | Path,
) -> dict[str, Any]:
    """Validate one subject's images (:func:`ingest_images`) and write its record.

    Parameters
    ----------
    bids_dir : str or Path
        The dataset.
    subject : str
        The subject's label.
    images : sequence of str
        The images the job normalizes.
    settings : IngestConfig
        How repetition times are checked (config ``ingest``).
    out : str or Path
        The record to write (``results/ingest/sub-<label>.json``).

    Returns
    -------
    dict
        The record, written to ``out`` only when every image is valid.

    Raises
    ------
    BidstrainError
        Listing every invalid image of the subject (see :func:`ingest_images`).
    """
    result = ingest_images(
        bids_dir,
        subject,
        images,
        tr_mismatch=settings.repetition_time_mismatch,
        tr_tolerance=settings.repetition_time_tolerance,
    )
    write_text_atomic(out, json.dumps(result, indent=1))
    log.info("sub-%s: %d images valid", subject, len(result["images"]))
    return result
