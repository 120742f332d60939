"""Command line: validate and normalize one subject's images (a job of rule
``normalize_subject``).

::

    python -m bidstrain.normalize --bids-dir bids --subject 01 \\
        --ingest results/ingest/sub-01.json --spec '[{"modality": "bold", "image": ...,
        "store": ..., "mask": "epi", "stats_from": []}, ...]' --ddof 1 \\
        --out-table results/normalized/sub-01/sub-01_scans.tsv

First the job validates the header of every image of ``--spec``
(:func:`bidstrain.ingest.records.ingest_images`: the images the plan chose, in the derivative's
space, of one echo and part) and writes the subject's ingest record (``--ingest``); an
invalid image stops it there, with an error naming the subject, the file and the
problem, before any store is written. Then it normalizes the images of ``--spec``, in
that order (the plan puts held-out runs after the runs whose stores give their
statistics). With
``--confounds-strategy`` other than ``none`` (and ``--confounds-options``, a JSON object
of nilearn's options), each BOLD image's entry names its fMRIPrep confounds table
(``"confounds": ...``), whose confounds are regressed out first
(:mod:`~bidstrain.normalize.confounds`). ``--time-tr`` and ``--time-method`` resample BOLD
runs in time (:mod:`~bidstrain.normalize.resample_time`); with ``--parcellation`` each
BOLD entry names its parcel outputs (``"parcels": {"store", "timeseries", "coverage",
"stats_from"}``, :mod:`~bidstrain.normalize.parcels`).

Each store is written atomically; the table, the job's last output, is written last, so a
failed job leaves no output that looks complete. An error names the image.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

from bidstrain.dataset.atlas import AtlasFiles, check_space, load_atlas
from bidstrain.errors import BidstrainError, run_cli
from bidstrain.ingest.records import add_subject_arguments, write_subject_record
from bidstrain.io.scans_table import StoreRow, write_table
from bidstrain.io.store import StoreMeta, read_dims
from bidstrain.normalize.bold import normalize_bold
from bidstrain.normalize.confounds import STRATEGIES, RunConfounds, load_run_confounds
from bidstrain.normalize.heldout import normalize_with_stats
from bidstrain.normalize.image import ImageInfo, Options
from bidstrain.normalize.nifti_stream import read_layout
from bidstrain.normalize.parcels import ParcelOutputs
from bidstrain.normalize.passes import ParcelJob
from bidstrain.normalize.resample_time import METHODS
from bidstrain.normalize.volumes import normalize_volumes

log = logging.getLogger("bidstrain.normalize")


def run_confounds(
    spec: Mapping[str, Any],
    info: ImageInfo,
    strategy: str,
    nilearn_options: Mapping[str, Any],
    ddof: int,
) -> RunConfounds | None:
    """The confounds of a BOLD image of ``--spec``, or None (no regression, or not BOLD).

    Raises
    ------
    BidstrainError
        When a strategy is set and the entry names no confounds table.
    """
    if strategy == "none" or spec["modality"] != "bold":
        return None
    image = spec["image"]
    if not spec.get("confounds"):
        raise BidstrainError(
            f"confounds strategy {strategy!r} but no confounds table for this run "
            "(config normalize.confounds needs an fMRIPrep output as bids_dir)",
            path=image,
            subject=info.subject,
        )
    n_volumes = read_layout(image, info.subject).n_volumes
    return load_run_confounds(
        image, spec["confounds"], strategy, nilearn_options, n_volumes, ddof, info.subject
    )


def parcel_job(
    spec: Mapping[str, Any], info: ImageInfo, atlas: AtlasFiles | None
) -> ParcelJob | None:
    """The parcel outputs of a BOLD image of ``--spec`` with the atlas on its grid, or None
    (no ``--parcellation``, or not BOLD).

    Raises
    ------
    BidstrainError
        When the run is not in the atlas's space, or the atlas cannot be read.
    """
    if atlas is None or "parcels" not in spec:
        return None
    image = spec["image"]
    check_space(atlas, info.entities.get("space"), image=image, subject=info.subject)
    layout = read_layout(image, info.subject)
    on_grid = load_atlas(atlas, layout.shape, layout.affine, image=image, subject=info.subject)
    return ParcelJob(on_grid, ParcelOutputs.from_json(spec["parcels"]))


def normalize_image(
    spec: Mapping[str, Any],
    ingest: Mapping[str, Any],
    options: Options,
    confounds_strategy: str = "none",
    confounds_options: Mapping[str, Any] | None = None,
    atlas: AtlasFiles | None = None,
) -> StoreRow:
    """Normalize one image of a job's ``--spec`` into its store.

    Parameters
    ----------
    spec : mapping
        ``modality`` (``bold``, ``T1w``, ``dwi``), ``image``, ``store``, ``mask``
        (keyword or file) and ``stats_from`` (stores whose pooled statistics a held-out
        run is normalized with; empty for its own).
    ingest : mapping
        The subject's ingest record (:func:`bidstrain.ingest.write_subject_record`).
    options : Options
        Settings shared by the job's images (the mask is taken from ``spec``).
    confounds_strategy : str
        Config ``normalize.confounds.strategy``; BOLD entries then name their
        ``confounds`` table.
    confounds_options : mapping, optional
        Config ``normalize.confounds.options`` (nilearn's keyword arguments).
    atlas : AtlasFiles, optional
        Config ``parcellation``: BOLD entries then name their ``parcels`` outputs.

    Returns
    -------
    StoreRow
        The store's row of the job's table.
    """
    modality, image, store = spec["modality"], spec["image"], spec["store"]
    stats_from = spec["stats_from"]
    options = dataclasses.replace(options, mask=spec["mask"])
    info = ImageInfo.from_ingest(ingest, image)
    started = time.perf_counter()
    confounds = run_confounds(spec, info, confounds_strategy, confounds_options or {}, options.ddof)
    parcels = parcel_job(spec, info, atlas)
    if stats_from:
        attrs = normalize_with_stats(image, stats_from, store, info, options, confounds, parcels)
    elif modality == "bold":
        attrs = normalize_bold(image, store, info, options, confounds, parcels)
    else:
        attrs = normalize_volumes(image, store, info, options)
    meta = StoreMeta.from_attrs(attrs, store)
    log.info(
        "%s -> %s in %.1f s: %d zero-variance, %d non-finite, statistics from %s",
        image,
        store,
        time.perf_counter() - started,
        meta.n_zero_variance,
        meta.n_nonfinite,
        ", ".join(meta.stats_from),
    )
    volumes, voxels, grid = read_dims(store)
    written = datetime.datetime.now(datetime.UTC).isoformat()
    return StoreRow(
        store, modality, image, bool(stats_from), volumes, voxels, grid, tuple(stats_from), written
    )


def _repetition_time(text: str) -> float | None:
    if text == "native":
        return None
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("expected native or seconds") from None
    if not value > 0:
        raise argparse.ArgumentTypeError("a repetition time must be positive")
    return value


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"not JSON: {error}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("expected a JSON object")
    return value


def main(argv: Sequence[str] | None = None) -> None:
    """Validate the subject's images, write its ingest record, normalize the images of
    ``--spec`` and write the job's table."""
    parser = argparse.ArgumentParser(prog="python -m bidstrain.normalize")
    add_subject_arguments(parser)
    parser.add_argument("--spec", required=True, help="the job's images, as JSON")
    parser.add_argument("--out-table", required=True, help="the table to write (*.tsv)")
    parser.add_argument("--ddof", type=int, default=Options.ddof)
    parser.add_argument("--nonfinite", choices=["error", "mask"], default=Options.nonfinite)
    parser.add_argument("--block-volumes", type=int, default=Options.block_volumes)
    parser.add_argument(
        "--storage", default=Options.storage, help="float32, float16 or bitround-N (N bits kept)"
    )
    parser.add_argument(
        "--confounds-strategy",
        choices=STRATEGIES,
        default="none",
        help="nilearn denoise strategy regressed out of BOLD runs (none: no regression)",
    )
    parser.add_argument(
        "--confounds-options",
        type=_json_object,
        default={},
        help="nilearn load_confounds_strategy options, as a JSON object",
    )
    parser.add_argument(
        "--time-tr",
        type=_repetition_time,
        default=None,
        help="repetition time in seconds to resample BOLD runs to, or native (the default)",
    )
    parser.add_argument("--time-method", choices=METHODS, default=Options.time_method)
    parser.add_argument(
        "--parcellation",
        type=_json_object,
        default=None,
        help="the atlas (name, image, labels, space) as a JSON object; none by default",
    )
    args = parser.parse_args(argv)
    options = Options(
        ddof=args.ddof,
        nonfinite=args.nonfinite,
        block_volumes=args.block_volumes,
        storage=args.storage,
        target_tr=args.time_tr,
        time_method=args.time_method,
    )
    atlas = None if args.parcellation is None else AtlasFiles.from_json(args.parcellation)
    specs = json.loads(args.spec)
    ingest = write_subject_record(args, [spec["image"] for spec in specs])
    rows = [
        normalize_image(
            spec, ingest, options, args.confounds_strategy, args.confounds_options, atlas
        )
        for spec in specs
    ]
    write_table(rows, args.out_table)


if __name__ == "__main__":
    run_cli(main)
