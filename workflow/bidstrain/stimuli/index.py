"""The stimuli of each BOLD run: read from the run's ``events.tsv`` (BIDS inheritance),
checked against the files under ``stimuli/`` and the run's length, listed once per file.

An event presents a stimulus when its ``stim_file`` column names a file under the dataset's
``stimuli/`` folder: a film or a sound (:data:`~bidstrain.stimuli.media.MEDIA_EXTENSIONS`)
or a transcript (``.srt``, ``.tsv``). An events file with a ``word`` column is itself a
transcript of its run.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import nibabel as nib

from bidstrain.dataset.bids import BidsFile, BidsIndex
from bidstrain.errors import BidstrainError
from bidstrain.ingest.records import stated_repetition_time
from bidstrain.io.text_files import read_tsv
from bidstrain.stimuli.media import MEDIA_EXTENSIONS, MediaInfo, probe
from bidstrain.stimuli.text import TEXT_EXTENSIONS, Word, read_words, table_words

STIMULI_FOLDER = "stimuli"


@dataclass(frozen=True)
class Event:
    """One presentation of a stimulus file in a run (seconds from the run's start)."""

    stimulus: Path
    onset: float
    duration: float  # ``n/a`` in the events file: a film's length; a transcript's: the run's rest
    words_digest: str | None = None  # a transcript in the events file itself: its words'

    @property
    def identity(self) -> str:
        """What makes two presentations one stimulus: the same file, or for the words of
        an events file (each subject's events file is a file of its own), the same words
        at the same onsets."""
        return f"words {self.words_digest}" if self.words_digest else str(self.stimulus)


def words_digest(words: Iterable[Word]) -> str:
    """A short hash of a transcript's words and their onsets."""
    text = "".join(f"{word.onset!r}\t{word.text}\n" for word in words)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class RunStimuli:
    """A BOLD run, its length and the stimuli it presented."""

    image: BidsFile
    events_file: Path
    repetition_time: float
    n_volumes: int
    events: tuple[Event, ...]

    @property
    def length(self) -> float:
        """Seconds of the run: volumes x TR."""
        return self.n_volumes * self.repetition_time


@dataclass(frozen=True)
class Stimulus:
    """A stimulus file and every run that presented it."""

    path: Path
    kind: str  # "media" or "text"
    duration: float | None  # a media file's, from its header; None for transcripts
    repetition_time: float  # the width of its feature bins: its runs' TR, or time.tr
    users: tuple[tuple[str, str], ...]  # (subject, run prefix)
    kinds: tuple[str, ...] = ()  # the features it has: video and/or audio, or text


@dataclass(frozen=True)
class StimulusIndex:
    """The stimuli of a dataset's BOLD runs: by run, and each file once with its users."""

    runs: dict[str, RunStimuli]
    stimuli: dict[Path, Stimulus]

    @classmethod
    def build(
        cls,
        bids: BidsIndex,
        runs: Iterable[BidsFile] | None = None,
        tolerance: float = 2.0,
        common_tr: float | None = None,
        raw: BidsIndex | None = None,
    ) -> StimulusIndex:
        """Index the stimuli of ``runs`` (every BOLD run of ``bids`` by default).

        Parameters
        ----------
        bids : BidsIndex
            The dataset.
        runs : iterable of BidsFile, optional
            BOLD runs; runs without an events file, or whose events name no stimulus,
            are left out.
        tolerance : float
            Seconds a stimulus may end before or after its run, or differ from its event's
            ``duration`` (``stimuli.length_tolerance``).
        common_tr : float, optional
            ``time.tr``: the runs' frames after resampling, and so the width of every
            stimulus's feature bins (None: the TR of the runs that presented it).
        raw : BidsIndex, optional
            ``stimuli.raw_dir``: the raw dataset holding the events files and
            ``stimuli/`` of a derivative's runs (:func:`raw_counterpart`); None: ``bids``.

        Raises
        ------
        BidstrainError
            Naming the events file and subject: a ``stim_file`` missing from ``stimuli/``
            or outside it, or holding a brace (a Snakemake wildcard); an unreadable or
            truncated media file; an event whose duration differs from its film's; a
            stimulus that ends before or after its run (by how many seconds); a
            transcript with words after its run's end; a stimulus shared by runs of
            different TRs without ``common_tr``.
        """
        media: dict[Path, MediaInfo] = {}
        transcripts: dict[Path, list[Word]] = {}
        indexed: dict[str, RunStimuli] = {}
        source = raw or bids
        for image in bids.select("bold") if runs is None else runs:
            events_file = source.events(raw_counterpart(image, bids.root, source.root))
            if events_file is None:
                continue
            sidecar = bids.metadata(image)
            run = _run_stimuli(
                source.root, image, sidecar, events_file, media, transcripts, tolerance
            )
            if run.events:
                indexed[image.prefix] = run
        return cls(indexed, _by_stimulus(indexed, media, common_tr))


def raw_counterpart(image: BidsFile, root: Path, raw_root: Path) -> BidsFile:
    """``image`` (a run of the dataset at ``root``) placed at the same folder of the raw
    dataset at ``raw_root``, where its events file is found by its entities (a
    derivative's extra entities, ``space``, ``desc``..., match no events file's)."""
    if raw_root == root:
        return image
    folder = raw_root / image.path.parent.relative_to(root)
    return replace(image, path=folder / image.path.name)


def _read_events(path: Path, subject: str) -> list[dict[str, str]]:
    rows = read_tsv(path, subject=subject)[1]
    if rows and not {"onset", "duration"} <= set(rows[0]):
        raise BidstrainError(
            f"an events file needs 'onset' and 'duration' columns; it has {sorted(rows[0])}",
            path=path,
            subject=subject,
        )
    return rows


def _seconds(
    row: dict[str, str], key: str, line: int, path: Path, subject: str, optional: bool = False
) -> float | None:
    """The value of column ``key``; ``n/a`` is None where ``optional`` (BIDS allows it for
    an unknown ``duration``)."""
    if optional and row[key] == "n/a":
        return None
    try:
        value = float(row[key])
    except (TypeError, ValueError):
        value = math.nan
    if not math.isfinite(value):
        raise BidstrainError(
            f"line {line}: {key} {row[key]!r} is not a number", path=path, subject=subject
        )
    return value


def _run_stimuli(
    root: Path,
    image: BidsFile,
    sidecar: Mapping[str, Any],
    events_file: Path,
    media: dict[Path, MediaInfo],
    transcripts: dict[Path, list[Word]],
    tolerance: float,
) -> RunStimuli:
    subject = image.subject
    tr, n_volumes = _run_timing(image, sidecar)
    rows = _read_events(events_file, subject)
    events, ends, words = [], [], []
    for line, row in enumerate(rows, start=2):
        name = (row.get("stim_file") or "").strip()
        if name in ("", "n/a"):
            continue
        stimulus = _stimulus_file(root, name, line, events_file, subject)
        onset = _seconds(row, "onset", line, events_file, subject)
        duration = _seconds(row, "duration", line, events_file, subject, optional=True)
        if duration is not None and duration <= 0:
            raise BidstrainError(
                f"line {line}: the event of {name!r} lasts {row['duration']} s: a stimulus "
                "event lasts as long as its file is shown or heard (n/a: the media file's "
                "length, or the rest of the run for a transcript)",
                path=events_file,
                subject=subject,
            )
        if stimulus.suffix.lower() in MEDIA_EXTENSIONS:
            if stimulus not in media:
                media[stimulus] = probe(stimulus, subject)
            length = media[stimulus].duration
            if duration is None:
                duration = length
            elif abs(duration - length) > tolerance:
                raise BidstrainError(
                    f"line {line}: the event of {name!r} lasts {duration:.2f} s but the file "
                    f"lasts {length:.2f} s (the event is {_by(duration - length)})",
                    path=events_file,
                    subject=subject,
                )
            ends.append((onset + length, name))
        elif stimulus.suffix.lower() in TEXT_EXTENSIONS:
            if stimulus not in transcripts:
                transcripts[stimulus] = _transcript_words(stimulus, line, events_file, subject)
            words.append((onset, name, transcripts[stimulus]))
            if duration is None:
                duration = max(n_volumes * tr - onset, 0.0)
        else:
            raise BidstrainError(
                f"line {line}: stim_file {name!r} is neither media "
                f"({' '.join(sorted(MEDIA_EXTENSIONS))}) nor a transcript (.srt, .tsv)",
                path=events_file,
                subject=subject,
            )
        events.append(Event(stimulus, onset, duration))
    has_words = bool(rows) and "word" in rows[0]
    spoken = table_words(rows, events_file, subject=subject) if has_words else []
    if spoken:  # a word column of n/a alone presents no words
        events.append(Event(events_file, 0.0, n_volumes * tr, words_digest(spoken)))
        words.append((0.0, events_file.name, spoken))
    run = RunStimuli(image, events_file, tr, n_volumes, tuple(events))
    _check_words_within(run, words, tolerance)
    _check_media_end(run, ends, tolerance)
    return run


def _run_timing(image: BidsFile, sidecar: Mapping[str, Any]) -> tuple[float, int]:
    """A BOLD run's repetition time (sidecar, else header) and number of volumes."""
    header = nib.load(image.path).header
    if len(header.get_data_shape()) != 4:
        raise BidstrainError("BOLD run is not 4D", path=image.path, subject=image.subject)
    tr = stated_repetition_time(header, sidecar)
    if tr is None:
        raise BidstrainError(
            "no RepetitionTime in the sidecar (or its inherited ones) nor in the NIfTI "
            "header: its stimuli cannot be placed on its volumes",
            path=image.path,
            subject=image.subject,
        )
    return tr, int(header.get_data_shape()[3])


def _stimulus_file(root: Path, name: str, line: int, events_file: Path, subject: str) -> Path:
    """The file an events file's ``stim_file`` names (line ``line``): one that exists
    under the dataset's stimuli folder, its path normalized (``x/../film.mp4`` and
    ``./film.mp4`` are ``film.mp4``), so that each file is one stimulus however it is
    spelled."""
    if "{" in name or "}" in name:
        raise BidstrainError(
            f"line {line}: stim_file {name!r} holds a brace, which Snakemake reads as a "
            "wildcard in the paths of the stimulus's feature job: rename the file without "
            "braces ({ }), and its stim_file",
            path=events_file,
            subject=subject,
        )
    # the path as written, not where its links lead (DataLad's files link into .git/annex)
    relative = Path(os.path.normpath(name))
    if relative.is_absolute() or relative.parts[:1] == ("..",):
        raise BidstrainError(
            f"line {line}: stim_file {name!r} lies outside the dataset's "
            f"{STIMULI_FOLDER}/ folder: name a file under it, relative to it",
            path=events_file,
            subject=subject,
        )
    stimulus = root / STIMULI_FOLDER / relative
    if not stimulus.is_file():
        raise BidstrainError(
            f"line {line}: stim_file {name!r} is not in the dataset's {STIMULI_FOLDER}/ "
            f"folder ({stimulus} is missing)",
            path=events_file,
            subject=subject,
        )
    return stimulus


def _transcript_words(path: Path, line: int, events_file: Path, subject: str) -> list[Word]:
    """The words of the transcript an events file's ``stim_file`` names (line ``line``).
    One without a word is refused: a transcript named as a stimulus is there for its
    words (a silent film needs none), so an empty one is a wrong file or a failed export,
    and its feature job would have nothing to compute."""
    words = read_words(path, subject=subject)
    if not words:
        raise BidstrainError(
            f"the transcript holds no word (stim_file of line {line} of {events_file}): "
            "give it its words (onset and word columns, or subtitle cues), or leave it out "
            "of the events file",
            path=path,
            subject=subject,
        )
    return words


def _check_media_end(run: RunStimuli, ends: list[tuple[float, str]], tolerance: float) -> None:
    """Raise when the last media file's end (``ends``: each file's end in seconds, and its
    name) is more than ``tolerance`` seconds from the run's end."""
    if not ends:
        return
    end, name = max(ends)
    if abs(end - run.length) > tolerance:
        raise BidstrainError(
            f"the stimuli end at {end:.2f} s ({name!r}) but the run {run.image.path.name} "
            f"lasts {run.length:.2f} s ({run.n_volumes} volumes x TR "
            f"{run.repetition_time:g} s): the stimulus is {_by(end - run.length)} than the run",
            path=run.events_file,
            subject=run.image.subject,
        )


def _check_words_within(
    run: RunStimuli, transcripts: list[tuple[float, str, list[Word]]], tolerance: float
) -> None:
    """Raise when a transcript's last word comes more than ``tolerance`` seconds after the
    run's end (onsets in milliseconds, or a transcript of another stimulus)."""
    for onset, name, words in transcripts:
        last = onset + max((word.onset for word in words), default=0.0)
        if last - run.length > tolerance:
            raise BidstrainError(
                f"the last word of {name!r} comes at {last:.2f} s, but the run "
                f"{run.image.path.name} lasts {run.length:.2f} s ({run.n_volumes} volumes x "
                f"TR {run.repetition_time:g} s): are its onsets in seconds?",
                path=run.events_file,
                subject=run.image.subject,
            )


def _by(difference: float) -> str:
    return f"{abs(difference):.2f} s {'longer' if difference > 0 else 'shorter'}"


#: How many runs of each TR an error names before counting the rest.
NAMED_RUNS = 3


def _runs_by_tr(runs: list[RunStimuli], trs: list[float]) -> str:
    """The BOLD files of ``runs`` at each of ``trs``: the first :data:`NAMED_RUNS` of each
    by name, then how many more."""
    listed = []
    for tr in trs:
        names = sorted(run.image.path.name for run in runs if run.repetition_time == tr)
        more = f" and {len(names) - NAMED_RUNS} more" if len(names) > NAMED_RUNS else ""
        listed.append(f"{tr:g} s: {', '.join(names[:NAMED_RUNS])}{more}")
    return "; ".join(listed)


def _by_stimulus(
    runs: dict[str, RunStimuli], media: dict[Path, MediaInfo], common_tr: float | None
) -> dict[Path, Stimulus]:
    users: dict[Path, list[RunStimuli]] = defaultdict(list)
    for run in runs.values():
        for path in dict.fromkeys(event.stimulus for event in run.events):
            users[path].append(run)
    stimuli = {}
    for path, runs_of in sorted(users.items()):
        trs = [common_tr] if common_tr else sorted({run.repetition_time for run in runs_of})
        if len(trs) > 1:
            raise BidstrainError(
                f"runs of different TRs ({', '.join(f'{tr:g} s' for tr in trs)}) present "
                f"this stimulus ({_runs_by_tr(runs_of, trs)}); its features are computed "
                "per TR of one length (set time.tr to put the runs on one grid)",
                path=path,
            )
        info = media.get(path)
        kinds = ("video",) * info.has_video + ("audio",) * info.has_audio if info else ("text",)
        stimuli[path] = Stimulus(
            path,
            "media" if info else "text",
            info.duration if info else None,
            trs[0],
            tuple((run.image.subject, run.image.prefix) for run in runs_of),
            kinds,
        )
    return stimuli
