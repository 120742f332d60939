"""Validation of a whole dataset before any compute: every problem at once.

``snakemake validate`` (rule in ``workflow/rules/validate.smk``) runs one job that reads
the header and sidecars of every image the plan normalizes, with the checks each
normalize job runs first (:func:`bidstrain.ingest.records.inspect_image`), but never
their voxel data; with a parcellation it also reads the atlas onto the grid of every BOLD
run, as the normalize jobs will (:func:`validate_atlas`: once per label image and grid).
It writes one report of every problem: a TSV (:data:`COLUMNS`) and a readable text. The
job fails when any problem is an error, after writing the report.
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import astuple, dataclass
from pathlib import Path

import numpy as np

from bidstrain.dataset import atlas as atlas_module
from bidstrain.dataset.atlas import AtlasFiles, load_atlas
from bidstrain.dataset.bids import BidsFile, BidsIndex
from bidstrain.errors import BidstrainError
from bidstrain.ingest import records
from bidstrain.io.atomic import write_text_atomic
from bidstrain.io.orientation import Reorientation, reorientation

#: The columns of the TSV report, one row per problem.
COLUMNS = ("severity", "subject", "file", "problem", "fix")


@dataclass(frozen=True)
class Problem:
    """One problem of one image.

    Attributes
    ----------
    severity : {"error", "warning"}
        An error stops the subject's normalize job; a warning does not.
    subject : str
        Subject label, without ``sub-``; empty for a dataset-level file (a sidecar every
        image below its folder inherits), listed once whatever the images it breaks.
    file : str
        The file the problem is in (the image, or its sidecar or gradient table).
    problem : str
        What is wrong.
    fix : str
        What to change or set so that the run goes through.
    """

    severity: str
    subject: str
    file: str
    problem: str
    fix: str


def _leave_out(subject: str) -> str:
    return (
        f'fix the file, or leave the subject out: exclude_participant_label: ["{subject}"] '
        "in the study's config"
    )


class _Warnings(logging.Handler):
    """Collects the warnings :func:`records.inspect_image` (or the atlas reader) logs."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextmanager
def _collect_warnings(log: logging.Logger = records.log) -> Iterator[_Warnings]:
    handler = _Warnings()
    log.addHandler(handler)
    try:
        yield handler
    finally:
        log.removeHandler(handler)


def validate_images(
    bids_dir: str | Path,
    images: Sequence[str],
    *,
    tr_mismatch: str = "error",
    tr_tolerance: float = 0.01,
    atlas: AtlasFiles | None = None,
) -> list[Problem]:
    """Check every image's header and sidecars, and list every problem.

    Parameters
    ----------
    bids_dir : str or Path
        The dataset root the plan indexed.
    images : sequence of str
        The images, as the plan's index wrote their paths.
    tr_mismatch : {"error", "warn"}
        What a sidecar/header repetition-time disagreement is (``ingest.*``).
    tr_tolerance : float
        Allowed disagreement in seconds.
    atlas : AtlasFiles, optional
        The parcellation the normalize jobs read onto every BOLD run
        (:func:`validate_atlas`).

    Returns
    -------
    list of Problem
        In the order of ``images``, then the atlas's, then the files the index left out
        (a name that is not BIDS, an image whose extension or suffix is in the wrong
        case: warnings); empty when every image is valid.
    """
    index = BidsIndex.build(bids_dir)
    indexed = {str(image.path): image for image in index.images}
    problems = []
    inherited: dict[tuple[str, str], list[str]] = {}  # (file, problem): subjects, in order
    readable = []  # the images whose header passed and their RAS+ grids, for the atlas
    for path in images:
        image = indexed.get(path)
        if image is None:
            problems.append(
                Problem(
                    "error",
                    _subject_of(path),
                    path,
                    "planned image no longer in the dataset",
                    "rerun snakemake to plan again",
                )
            )
            continue
        with _collect_warnings() as warnings:
            try:
                record = records.inspect_image(
                    image, index, tr_mismatch=tr_mismatch, tr_tolerance=tr_tolerance
                )
            except BidstrainError as error:
                where = str(error.path or path)
                if not _subject_of(where):  # a dataset-level file every image below inherits
                    inherited.setdefault((where, error.message), []).append(image.subject)
                    continue
                problems.append(
                    Problem("error", image.subject, where, error.message, _leave_out(image.subject))
                )
            else:
                grid = reorientation(np.asarray(record["affine"]), record["shape"][:3])
                readable.append((image, grid))
        problems += [
            Problem("warning", image.subject, path, message.removeprefix(f"{path}: "), "")
            for message in warnings.messages
        ]
    if atlas is not None:
        problems += validate_atlas(atlas, readable, bids_dir)
    problems += [
        Problem("warning", _subject_of(path), path, why, "rename the file to its BIDS name")
        for path, why in index.problems
    ]
    for (where, message), subjects in inherited.items():
        problems.append(
            Problem(
                "error",
                "",
                where,
                f"{message} (inherited by {len(subjects)} image(s) of "
                f"{len(set(subjects))} subject(s))",
                "fix the file: every image below its folder inherits it",
            )
        )
    return problems


def validate_atlas(
    atlas: AtlasFiles, images: Sequence[tuple[BidsFile, Reorientation]], bids_dir: str | Path
) -> list[Problem]:
    """Read the atlas onto the grid of every BOLD run of ``images`` (each with its RAS+
    grid, its store's) as its normalize job will (:func:`~bidstrain.dataset.atlas.
    load_atlas`), once per label image and grid: a damaged label image or table,
    negative labels, a label image that misses the run are errors; labels the table
    lacks and a grid to resample to are warnings. A problem of the one atlas every run
    reads is the dataset's (no subject), of a label image per run the subject's.
    """
    problems = []
    seen: set[tuple] = set()
    for image, grid in images:
        if image.suffix != "bold":
            continue
        subject = image.subject if atlas.per_run else ""
        fix = (
            _leave_out(image.subject)
            if atlas.per_run
            else "fix the atlas, or choose another in config parcellation"
        )
        try:
            files = atlas.for_run(image.entities, bids_dir)
        except BidstrainError as error:
            where = str(error.path or image.path)
            problems.append(Problem("error", subject, where, error.message, fix))
            continue
        key = (files.image, grid.shape, grid.affine.tobytes())
        if key in seen:
            continue
        seen.add(key)
        found = []
        with _collect_warnings(atlas_module.log) as warnings:
            try:
                load_atlas(files, grid.shape, grid.affine, image=image.path, subject=image.subject)
            except BidstrainError as error:
                where = str(error.path or files.image)
                found.append(Problem("error", subject, where, error.message, fix))
        found += [
            Problem("warning", subject, str(files.image), message, "")
            for message in warnings.messages
        ]
        # a damaged atlas says the same on every grid: once
        problems += [problem for problem in found if problem not in problems]
    return problems


def _subject_of(path: str) -> str:
    """The subject label of a BIDS path (``sub-<label>`` folder), or ``""``."""
    for part in Path(path).parts:
        if part.startswith("sub-"):
            return part.removeprefix("sub-")
    return ""


def _where(problems: Sequence[Problem]) -> str:
    """Where ``problems`` are: ``3 subject(s)``, ``the dataset's shared files`` (problems
    without a subject), or both."""
    subjects = {p.subject for p in problems}
    named = f"{len(subjects - {''})} subject(s)"
    if "" not in subjects:
        return named
    shared = "the dataset's shared files"
    return f"{named} and {shared}" if len(subjects) > 1 else shared


def report_text(problems: Sequence[Problem], n_images: int) -> str:
    """The readable report: a count, then each subject's problems.

    Parameters
    ----------
    problems : sequence of Problem
        What :func:`validate_images` found.
    n_images : int
        How many images were checked.
    """
    errors = [p for p in problems if p.severity == "error"]
    subjects = dict.fromkeys(p.subject for p in problems)
    lines = [
        f"{n_images} image(s) checked: {len(errors)} error(s), "
        f"{len(problems) - len(errors)} warning(s) in {_where(problems)}"
    ]
    for subject in subjects:
        lines.append(f"\nsub-{subject}:" if subject else "\ndataset (shared files):")
        for problem in (p for p in problems if p.subject == subject):
            lines.append(f"  {problem.severity}: {problem.file}: {problem.problem}")
            if problem.fix:
                lines.append(f"    fix: {problem.fix}")
    return "\n".join(lines) + "\n"


def write_report(
    problems: Sequence[Problem], n_images: int, tsv: str | Path, text: str | Path
) -> str:
    """Write the TSV (:data:`COLUMNS`) and the text report, each atomically.

    Returns
    -------
    str
        The text report.
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter="\t", lineterminator="\n")
    writer.writerow(COLUMNS)
    writer.writerows(astuple(problem) for problem in problems)
    write_text_atomic(tsv, buffer.getvalue())
    readable = report_text(problems, n_images)
    write_text_atomic(text, readable)
    return readable


def validate(
    bids_dir: str | Path,
    images: Sequence[str],
    *,
    tsv: str | Path,
    text: str | Path,
    tr_mismatch: str = "error",
    tr_tolerance: float = 0.01,
    atlas: AtlasFiles | None = None,
) -> list[Problem]:
    """Validate the images, write the report and fail when any problem is an error.

    Parameters
    ----------
    bids_dir, images, tr_mismatch, tr_tolerance, atlas
        As :func:`validate_images`.
    tsv, text : path
        The two reports (:func:`write_report`).

    Returns
    -------
    list of Problem
        The problems (warnings only: else it raises).

    Raises
    ------
    BidstrainError
        When any problem is an error, naming the count and the text report.
    """
    problems = validate_images(
        bids_dir, images, tr_mismatch=tr_mismatch, tr_tolerance=tr_tolerance, atlas=atlas
    )
    print(write_report(problems, len(images), tsv, text), end="")
    errors = [p for p in problems if p.severity == "error"]
    if errors:
        raise BidstrainError(
            f"{len(errors)} error(s) in {_where(errors)}; every one is listed in {text} (and {tsv})"
        )
    return problems
