"""Command line: validate and normalize one subject's images (a job of rule
``normalize_subject``).

::

    python -m bidstrain.normalize --settings results/plan/normalize.json --subject 01 \\
        --spec results/plan/normalize/sub-01.json --ingest results/ingest/sub-01.json \\
        --out-table results/normalized/sub-01/sub-01_scans.tsv

``--settings`` is a JSON file the plan writes, shared by every normalize job:
``{"bids_dir": ..., "ingest": {...}, "normalize": {...}}``, the config sections in the
schema's shape (:class:`bidstrain.config.NormalizeJobConfig`; keys left out take their
schema defaults). ``--spec`` is the subject's JSON file, also the plan's: a list of
``{"modality": "bold", "image": ..., "store": ..., "mask": "epi", "stats_from": []}``.

First the job validates the header of every image of ``--spec``
(:func:`bidstrain.ingest.records.ingest_images`: the images the plan chose, in the derivative's
space, of one echo and part) and writes the subject's ingest record (``--ingest``); an
invalid image stops it there, with an error naming the subject, the file and the
problem, before any store is written. Then it reads and checks every BOLD image's
confounds table and label image (:func:`image_inputs`), so that a bad one also stops it
before any store is written. Then it normalizes the images of ``--spec``, in
that order (the plan puts held-out runs after the runs whose stores give their
statistics). With ``normalize.confounds.strategy`` other than ``none`` (and its
``options``, nilearn's keyword arguments), each BOLD image's entry names its fMRIPrep
confounds table
(``"confounds": ...``), whose confounds are regressed out first
(:mod:`~bidstrain.normalize.confounds`). The settings' ``time`` section resamples BOLD
runs in time (:mod:`~bidstrain.normalize.resample_time`); with an ``atlas`` each
BOLD entry names its parcel outputs (``"parcels": {"store", "timeseries", "coverage",
"stats_from"}``, :mod:`~bidstrain.normalize.parcels`; with a label image per run, also
its ``"atlas_image"``).

Each store is written atomically; the table, the job's last output, is written last, so a
failed job leaves no output that looks complete. An error names the image.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bidstrain.config import NormalizeJobConfig
from bidstrain.dataset.atlas import AtlasFiles, atlas_checksum, check_space, load_atlas
from bidstrain.errors import BidstrainError, run_cli
from bidstrain.ingest.records import write_subject_record
from bidstrain.io.scans_table import StoreRow, write_table
from bidstrain.io.store import StoreMeta, read_dims, read_segments, store_checksum
from bidstrain.normalize.bold import normalize_bold
from bidstrain.normalize.confounds import RunConfounds, load_run_confounds
from bidstrain.normalize.heldout import normalize_with_stats
from bidstrain.normalize.image import ImageInfo, Options
from bidstrain.normalize.memory import fix_mmap_threshold
from bidstrain.normalize.nifti_stream import read_layout
from bidstrain.normalize.parcels import ParcelOutputs
from bidstrain.normalize.passes import ParcelJob
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
    spec: Mapping[str, Any], info: ImageInfo, atlas: AtlasFiles | None, checksum: str | None
) -> ParcelJob | None:
    """The parcel outputs of a BOLD image of ``--spec`` with the atlas on its grid (with a
    label image per run, the run's: ``atlas_image`` of its ``parcels``), or None (no atlas
    in the settings, or not BOLD). ``checksum`` is the atlas's
    (:func:`~bidstrain.dataset.atlas.atlas_checksum`, of the pattern and table for a label
    image per run), which the parcel store records.

    Raises
    ------
    BidstrainError
        When the run is not in the atlas's space, or the atlas (the run's label image)
        is missing or cannot be read.
    """
    if atlas is None or "parcels" not in spec:
        return None
    image = spec["image"]
    check_space(atlas, info.entities.get("space"), image=image, subject=info.subject)
    if atlas.per_run:  # the run's own label image, from the pattern
        own = Path(spec["parcels"]["atlas_image"])
        if not own.is_file():
            raise BidstrainError(
                f"the run's label image of config parcellation.path {str(atlas.image)!r} is "
                f"missing: {own}",
                path=image,
                subject=info.subject,
            )
        atlas = AtlasFiles(atlas.name, own, atlas.labels, atlas.space)
    layout = read_layout(image, info.subject)
    on_grid = load_atlas(atlas, layout.shape, layout.affine, image=image, subject=info.subject)
    on_grid = dataclasses.replace(on_grid, checksum=checksum)
    return ParcelJob(on_grid, ParcelOutputs.from_json(spec["parcels"]))


@dataclass(frozen=True)
class ImageInputs:
    """What an image of ``--spec`` takes besides its voxels: read and checked for every
    image of the job before any store is written (:func:`image_inputs`)."""

    info: ImageInfo
    options: Options
    confounds: RunConfounds | None
    parcels: ParcelJob | None


def image_inputs(
    spec: Mapping[str, Any],
    ingest: Mapping[str, Any],
    settings: NormalizeJobConfig,
    atlas: AtlasFiles | None = None,
    checksum: str | None = None,
) -> ImageInputs:
    """The header record, options, confounds and atlas on its grid of one image of
    ``--spec``.

    Parameters
    ----------
    spec : mapping
        The image's entry (see :func:`normalize_image`).
    ingest : mapping
        The subject's ingest record (:func:`bidstrain.ingest.records.write_subject_record`).
    settings : NormalizeJobConfig
        The job's settings.
    atlas : AtlasFiles, optional
        The atlas of config ``parcellation``: BOLD entries then name their ``parcels``
        outputs.
    checksum : str, optional
        The atlas's checksum (computed once per job).

    Raises
    ------
    BidstrainError
        When the run's confounds table or label image is missing or unusable.
    """
    normalize = settings.normalize
    info = ImageInfo.from_ingest(ingest, spec["image"])
    options = Options.from_config(normalize, settings.time, mask=spec["mask"])
    confounds = run_confounds(
        spec, info, normalize.confounds.strategy, normalize.confounds.options, options.ddof
    )
    return ImageInputs(info, options, confounds, parcel_job(spec, info, atlas, checksum))


def normalize_image(spec: Mapping[str, Any], inputs: ImageInputs) -> StoreRow:
    """Normalize one image of a job's ``--spec`` into its store.

    Parameters
    ----------
    spec : mapping
        ``modality`` (``bold``, ``T1w``, ``dwi``), ``image``, ``store``, ``mask``
        (keyword or file) and ``stats_from`` (stores whose pooled statistics a held-out
        run is normalized with; empty for its own).
    inputs : ImageInputs
        The image's header record, options (the job's settings, with the image's mask),
        confounds and parcels (:func:`image_inputs`).

    Returns
    -------
    StoreRow
        The store's row of the job's table.
    """
    modality, image, store = spec["modality"], spec["image"], spec["store"]
    stats_from = spec["stats_from"]
    info, options = inputs.info, inputs.options
    confounds, parcels = inputs.confounds, inputs.parcels
    started = time.perf_counter()
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
    checksum = store_checksum(store)
    return StoreRow(
        store,
        modality,
        image,
        bool(stats_from),
        volumes,
        voxels,
        grid,
        tuple(stats_from),
        checksum,
        segments=read_segments(store) if modality == "bold" else None,
        invalid_frames=meta.n_invalid_frames if modality == "bold" else None,
        parcels=str(parcels.outputs.store) if parcels is not None else "",
    )


def read_json(path: str | Path, what: str) -> Any:
    """The content of one of the job's JSON files (``what`` names it in an error)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise BidstrainError(f"cannot read the {what}: {error}", path=path) from None


def read_settings(path: str | Path) -> NormalizeJobConfig:
    """The typed content of the job's ``--settings`` file.

    Raises
    ------
    BidstrainError
        Naming the file, when it is unreadable or a setting is missing or wrong.
    """
    try:
        return NormalizeJobConfig.from_dict(read_json(path, "normalize settings"))
    except BidstrainError as error:
        raise BidstrainError(error.message, path=path) from None


def main(argv: Sequence[str] | None = None) -> None:
    """Validate the subject's images, write its ingest record, normalize the images of
    ``--spec`` and write the job's table."""
    parser = argparse.ArgumentParser(prog="python -m bidstrain.normalize")
    parser.add_argument("--settings", required=True, help="JSON file: the jobs' settings")
    parser.add_argument("--subject", required=True)
    parser.add_argument("--spec", required=True, help="JSON file: the subject's images")
    parser.add_argument("--ingest", required=True, help="the subject's ingest record to write")
    parser.add_argument("--out-table", required=True, help="the table to write (*.tsv)")
    args = parser.parse_args(argv)
    fix_mmap_threshold()  # freed volumes leave the job's resident memory at once
    settings = read_settings(args.settings)
    specs = read_json(args.spec, "job's images")
    images = [spec["image"] for spec in specs]
    ingest = write_subject_record(
        settings.bids_dir, args.subject, images, settings.ingest, args.ingest
    )
    atlas = None if settings.atlas is None else AtlasFiles.from_json(settings.atlas)
    checksum = None if atlas is None else atlas_checksum(atlas)
    # every confounds table and label image checked before the first store is written
    inputs = [image_inputs(spec, ingest, settings, atlas, checksum) for spec in specs]
    rows = [normalize_image(spec, own) for spec, own in zip(specs, inputs, strict=True)]
    write_table(rows, args.out_table)


if __name__ == "__main__":
    run_cli(main)
