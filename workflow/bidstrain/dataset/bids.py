"""A fast BIDS index: one walk of the dataset, entities parsed by regex, no image opened.

The index is built at Snakemake parse time, so it must be cheap: it lists directories with
``os.scandir``, parses file names, and reads JSON sidecars only when asked for metadata.
It is also the only code that builds BIDS paths (:func:`bids_path`), for inputs and for
the workflow's outputs alike.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from bidstrain.errors import BidstrainError
from bidstrain.io.text_files import read_tsv, read_utf8
from bidstrain.modalities import MODALITIES

log = logging.getLogger(__name__)

#: Entity order of the BIDS specification (appendix "Entity table").
ENTITY_ORDER = (
    "sub ses sample task tracksys acq nuc voi ce trc stain rec dir run mod echo flip inv mt "
    "part proc hemi space split recording chunk seg res den label desc"
).split()
_ENTITY_RANK = {key: rank for rank, key in enumerate(ENTITY_ORDER)}
DATATYPES = frozenset("anat func dwi fmap perf eeg meg ieeg beh pet micr nirs motion mrs".split())
IMAGE_EXTENSIONS = (".nii.gz", ".nii")
SKIPPED_TOP_LEVEL = frozenset({"derivatives", "sourcedata", "code", "stimuli", "phenotype"})
#: Folders inside a subject never walked: field maps (bidstrain does not use them), and the
#: reports and logs of derivative datasets (fMRIPrep's ``figures/``, ``log/``).
SKIPPED_SUBJECT_FOLDERS = frozenset({"fmap", "figures", "log", "logs"})
TOP_LEVEL_FILES = frozenset(
    "dataset_description.json participants.tsv participants.json README README.md README.rst "
    "README.txt CHANGES LICENSE CITATION.cff genetic_info.json samples.tsv samples.json".split()
)
#: Top-level files that need no BIDS name (reports of derivative datasets, notes, tables).
FREE_TOP_LEVEL_EXTENSIONS = (".tsv", ".md", ".txt", ".html", ".cff", ".bib")
#: Suffix and extension of the events files (onsets of a run's stimuli), indexed with the
#: metadata files for their inheritance.
EVENTS = ("events", ".tsv")
#: Values of the ``part`` entity (complex-valued data).
PARTS = ("mag", "phase", "real", "imag")

_NAME = re.compile(
    r"^(?P<entities>(?:[a-zA-Z]+-[a-zA-Z0-9]+_)*)(?P<suffix>[a-zA-Z0-9]+)(?P<extension>(?:\.[a-zA-Z0-9]+)+)$"
)
_PAIR = re.compile(r"([a-zA-Z]+)-([a-zA-Z0-9]+)_")


def parse_name(name: str) -> tuple[dict[str, str], str, str] | None:
    """Split a BIDS file name into entities, suffix and extension.

    Parameters
    ----------
    name : str
        A file name such as ``sub-01_ses-1_task-rest_run-2_bold.nii.gz``.

    Returns
    -------
    tuple or None
        ``(entities, suffix, extension)`` with entities in file-name order, or None when the
        name is not of the BIDS form ``key-value_..._suffix.ext``.
    """
    match = _NAME.match(name)
    if not match:
        return None
    entities = dict(_PAIR.findall(match["entities"]))
    return entities, match["suffix"], match["extension"]


def bids_path(
    root: str | Path = "",
    *,
    suffix: str,
    extension: str = "",
    datatype: str | None = None,
    **entities: str | None,
) -> str:
    """Build a BIDS path ``root/sub-X/[ses-Y/]datatype/sub-X_[ses-Y_]..._suffix.ext``.

    Entities are ordered as in the BIDS specification; unknown ones follow, in the order
    given, before the suffix. Entities that are None or empty are left out, so optional
    ones (``ses``, ``run``) can be passed straight from an index record. Values may be
    Snakemake wildcards such as ``"{subject}"``.

    Parameters
    ----------
    root : str or Path
        Dataset or output root.
    suffix : str
        BIDS suffix (``bold``, ``T1w``, ``dwi``, ``mask``...).
    extension : str
        Extension with its leading dot (``.nii.gz``, ``.zarr``, ``.json``).
    datatype : str, optional
        Datatype folder (``func``, ``anat``, ``dwi``); none when omitted.
    **entities : str or None
        Entities by their short key (``sub``, ``ses``, ``task``, ``run``, ``desc``...).

    Returns
    -------
    str
        The path.

    Examples
    --------
    >>> bids_path("results", datatype="func", sub="01", task="rest", run="1",
    ...           desc="zscore", suffix="bold", extension=".zarr")
    'results/sub-01/func/sub-01_task-rest_run-1_desc-zscore_bold.zarr'
    """
    present = {key: value for key, value in entities.items() if value not in (None, "")}
    if "sub" not in present:
        raise ValueError("bids_path needs the 'sub' entity")
    name = bids_name(suffix=suffix, extension=extension, **present)
    folders = [f"sub-{present['sub']}"]
    if "ses" in present:
        folders.append(f"ses-{present['ses']}")
    if datatype:
        folders.append(datatype)
    return os.path.join(str(root), *folders, name) if str(root) else os.path.join(*folders, name)


def bids_name(*, suffix: str, extension: str = "", **entities: str | None) -> str:
    """A BIDS file name ``key-value_..._suffix.ext``, entities in specification order.

    Entities that are None or empty are left out; unknown ones follow the known ones in
    the order given. Unlike :func:`bids_path` no ``sub`` is needed (group-level outputs
    such as ``task-rest_desc-average_bold.zarr``).

    Examples
    --------
    >>> bids_name(run="1", task="rest", suffix="bold", extension=".zarr")
    'task-rest_run-1_bold.zarr'
    """
    present = {key: value for key, value in entities.items() if value not in (None, "")}
    ordered = sorted(present, key=lambda key: _ENTITY_RANK.get(key, len(_ENTITY_RANK)))
    return "_".join([f"{key}-{present[key]}" for key in ordered] + [suffix]) + extension


@dataclass(frozen=True)
class BidsFile:
    """One file of the dataset, parsed from its path (nothing is opened)."""

    path: Path
    entities: Mapping[str, str]
    datatype: str | None
    suffix: str
    extension: str

    @property
    def subject(self) -> str:
        """Subject label without ``sub-``."""
        return self.entities["sub"]

    @property
    def session(self) -> str | None:
        """Session label without ``ses-``, or None."""
        return self.entities.get("ses")

    @cached_property
    def prefix(self) -> str:
        """Path relative to the dataset root without ``_<suffix><ext>``.

        For example ``sub-01/ses-1/func/sub-01_ses-1_task-rest_run-1``; the workflow uses it
        as the ``{prefix}`` wildcard of per-image rules.
        """
        return bids_path(suffix="", datatype=self.datatype, **self.entities)[:-1]


def _glob_regex(pattern: str) -> str:
    """A gitignore glob (``*``, ``?``, ``[...]``, ``**``) as a regular expression."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[" and "]" in pattern[i + 2 :]:
            end = pattern.index("]", i + 2)
            members = pattern[i + 1 : end]
            out.append("[" + ("^" + members[1:] if members.startswith("!") else members) + "]")
            i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return "".join(out)


@dataclass(frozen=True)
class BidsIgnore:
    """The patterns of a dataset's ``.bidsignore``, with gitignore semantics.

    A pattern without a ``/`` (other than a trailing one) matches a file or folder name at
    any depth; one with a ``/`` is relative to the dataset root. A trailing ``/`` matches
    folders only, ``**`` any number of folders, ``!`` re-includes; the last matching
    pattern wins. Everything inside an ignored folder is ignored.
    """

    rules: tuple[tuple[re.Pattern, bool, bool], ...]  # (regex, negated, folders only)

    @classmethod
    def read(cls, root: str | Path) -> BidsIgnore:
        """The patterns of ``root/.bidsignore`` (none when the file does not exist)."""
        path = Path(root) / ".bidsignore"
        lines = read_utf8(path).splitlines() if path.is_file() else []
        rules = []
        for line in lines:
            pattern = line.strip()
            if not pattern or pattern.startswith("#"):
                continue
            negated = pattern.startswith("!")
            pattern = pattern.removeprefix("!")
            folders_only = pattern.endswith("/")
            pattern = pattern.rstrip("/")
            anchored = "/" in pattern
            regex = _glob_regex(pattern.lstrip("/"))
            rules.append(
                (re.compile(regex if anchored else "(?:.*/)?" + regex), negated, folders_only)
            )
        return cls(tuple(rules))

    def __bool__(self) -> bool:
        return bool(self.rules)

    def ignores(self, relative: str, *, is_dir: bool) -> bool:
        """Whether a path relative to the dataset root (``/``-separated) is ignored."""
        ignored = False
        for regex, negated, folders_only in self.rules:
            if (is_dir or not folders_only) and regex.fullmatch(relative):
                ignored = not negated
        return ignored


#: The suffixes the workflow reads, by their lower-case spelling.
_SUFFIXES = {modality.lower(): modality for modality in MODALITIES}


def _wrong_case(suffix: str, extension: str) -> str:
    """Why an image name is not read for its case (BIDS names are case-sensitive): an
    extension other than ``.nii.gz``/``.nii`` in other letters, or a suffix this workflow
    reads (:data:`bidstrain.modalities.MODALITIES`) in other letters; ``""`` otherwise."""
    if extension not in IMAGE_EXTENSIONS:
        return f"the extension {extension!r} must be written {extension.lower()!r}"
    if suffix not in _SUFFIXES.values() and suffix.lower() in _SUFFIXES:
        return f"the suffix {suffix!r} must be written {_SUFFIXES[suffix.lower()]!r}"
    return ""


@dataclass
class BidsIndex:
    """Every image and metadata file of a BIDS dataset, from one directory walk.

    Build it with :meth:`BidsIndex.build`. ``subjects`` are the labels kept by the
    participant filters, sorted; ``problems`` the files left out, each ``(path, why)``: a
    name that is not BIDS, or an image whose extension or suffix is in the wrong case;
    ``ignore`` the dataset's ``.bidsignore`` patterns (matching files and folders are not
    indexed). Field maps and the ``figures/`` and ``log/`` folders of derivative datasets
    are not indexed either (:data:`SKIPPED_SUBJECT_FOLDERS`).
    """

    root: Path
    images: list[BidsFile]
    #: JSON, bval, bvec and events files by (folder, suffix, extension): their entities and
    #: path.
    #: Strings, not Paths: the index is built at every parse, and pathlib is its main cost.
    metadata_files: dict[tuple[str, str, str], list[tuple[dict[str, str], str]]]
    participants_tsv: list[str]
    subjects: list[str]
    problems: list[tuple[str, str]] = field(default_factory=list)
    ignore: BidsIgnore = field(default_factory=lambda: BidsIgnore(()))

    @classmethod
    def build(
        cls,
        root: str | Path,
        participant_label: Iterable[str] = (),
        exclude_participant_label: Iterable[str] = (),
    ) -> BidsIndex:
        """Walk ``root`` once and index it.

        Parameters
        ----------
        root : str or Path
            Dataset root; must hold ``dataset_description.json``.
        participant_label : iterable of str
            Subjects to keep (without ``sub-``); all when empty.
        exclude_participant_label : iterable of str
            Subjects to drop.

        Raises
        ------
        BidstrainError
            When ``root`` does not exist, is not a BIDS dataset, or a participant to keep or
            to drop has no folder.
        """
        root = Path(root).absolute()
        if not root.is_dir():
            raise BidstrainError("bids_dir does not exist or is not a directory", path=root)
        if not (root / "dataset_description.json").is_file():
            raise BidstrainError(
                "not a BIDS dataset: dataset_description.json is missing (set bids_dir to "
                "the dataset root)",
                path=root,
            )
        wanted, excluded = set(participant_label), set(exclude_participant_label)
        ignore = BidsIgnore.read(root)
        all_subjects = sorted(
            entry.name[4:]
            for entry in os.scandir(root)
            if entry.is_dir()
            and entry.name.startswith("sub-")
            and not ignore.ignores(entry.name, is_dir=True)
        )
        for key, named in (("participant_label", wanted), ("exclude_participant_label", excluded)):
            absent = sorted(named - set(all_subjects))
            if absent:  # a typo would otherwise keep or drop nobody, silently
                raise BidstrainError(
                    f"{key} names subjects with no folder: {', '.join(absent)} "
                    f"(present: {', '.join(all_subjects) or 'none'})",
                    path=root,
                )
        subjects = [s for s in all_subjects if (not wanted or s in wanted) and s not in excluded]
        index = cls(root, [], defaultdict(list), _participants(root), subjects, ignore=ignore)
        index._scan_top_level()
        for subject in subjects:
            index._walk(os.path.join(root, f"sub-{subject}"), datatype=None)
        index.images.sort(key=lambda f: str(f.path))
        for path, why in index.problems:
            log.warning("%s: %s", path, why)
        for subject in sorted(set(index.participants_tsv) - set(all_subjects)):
            log.warning(
                "participants.tsv lists sub-%s but the dataset has no folder for it", subject
            )
        return index

    def _scan_top_level(self) -> None:
        for entry in os.scandir(self.root):
            if entry.name.startswith(".") or entry.name in SKIPPED_TOP_LEVEL:
                continue
            if (
                entry.is_file()
                and entry.name not in TOP_LEVEL_FILES
                and not self.ignore.ignores(entry.name, is_dir=False)
            ):
                self._add(str(self.root), entry.name, datatype=None, top_level=True)

    def _walk(self, folder: str, datatype: str | None) -> None:
        for entry in os.scandir(folder):
            name = entry.name
            if name.startswith("."):
                continue
            is_dir = entry.is_dir()
            if self.ignore and self.ignore.ignores(self._relative(entry.path), is_dir=is_dir):
                continue
            if is_dir and name not in SKIPPED_SUBJECT_FOLDERS:
                self._walk(entry.path, name if name in DATATYPES else datatype)
            elif not is_dir:
                self._add(folder, name, datatype)

    def _relative(self, path: str) -> str:
        return Path(path).relative_to(self.root).as_posix()

    def _add(self, folder: str, name: str, datatype: str | None, top_level: bool = False) -> None:
        parsed = parse_name(name)
        path = os.path.join(folder, name)
        if parsed is None or (not top_level and "sub" not in parsed[0]):
            if not top_level or not name.endswith(FREE_TOP_LEVEL_EXTENSIONS):
                self.problems.append((path, "not a BIDS file name; ignored"))
            return
        entities, suffix, extension = parsed
        if extension.lower() in IMAGE_EXTENSIONS and not top_level:
            wrong_case = _wrong_case(suffix, extension)
            if wrong_case:
                self.problems.append((path, f"{wrong_case}; ignored"))
                return
            self.images.append(BidsFile(Path(path), entities, datatype, suffix, extension))
        elif extension in (".json", ".bval", ".bvec") or (suffix, extension) == EVENTS:
            self.metadata_files[(folder, suffix, extension)].append((entities, path))

    def select(
        self,
        suffix: str | None = None,
        *,
        subject: str | None = None,
        task: Iterable[str] = (),
        **entities: Iterable[str],
    ) -> list[BidsFile]:
        """Images matching a suffix, a subject, and entity values (any of each list).

        Parameters
        ----------
        suffix : str, optional
            ``T1w``, ``bold``, ``dwi``...
        subject : str, optional
            Subject label.
        task : iterable of str
            Tasks to keep (all when empty).
        **entities : iterable of str
            Other entities to filter on, each a list of accepted values.
        """
        filters = {key: set(values) for key, values in {"task": task, **entities}.items() if values}
        return [
            f
            for f in self.images
            if (suffix is None or f.suffix == suffix)
            and (subject is None or f.subject == subject)
            and all(f.entities.get(key) in values for key, values in filters.items())
        ]

    @cached_property
    def _by_prefix(self) -> dict[tuple[str, str], BidsFile]:
        return {(f.prefix, f.suffix): f for f in self.images}

    def by_prefix(self, prefix: str, suffix: str) -> BidsFile:
        """The image whose :attr:`BidsFile.prefix` and suffix are given (a rule's wildcard)."""
        try:
            return self._by_prefix[(prefix, suffix)]
        except KeyError:
            raise BidstrainError(f"no {suffix} image for {prefix!r}", path=self.root) from None

    def _inherited(self, image: BidsFile, extension: str, suffix: str | None = None) -> list[Path]:
        """Metadata files that apply to ``image``, least specific first (inheritance principle);
        of ``image``'s suffix unless ``suffix`` is given."""
        found: list[Path] = []
        root = str(self.root)
        under_root = os.path.join(root, "")  # with its trailing separator, "/" included
        folder = os.path.dirname(image.path)
        while True:
            level = [
                (len(entities), path)
                for entities, path in self.metadata_files.get(
                    (folder, suffix or image.suffix, extension), []
                )
                if all(image.entities.get(key) == value for key, value in entities.items())
            ]
            found = [Path(path) for _, path in sorted(level, key=lambda item: item[0])] + found
            if folder == root or not folder.startswith(under_root):
                return found
            folder = os.path.dirname(folder)

    def metadata(self, image: BidsFile) -> dict[str, Any]:
        """JSON sidecar metadata of ``image``, merged by the inheritance principle.

        Raises
        ------
        BidstrainError
            When a sidecar is not valid JSON.
        """
        merged: dict[str, Any] = {}
        for path in self._inherited(image, ".json"):
            try:
                merged.update(json.loads(path.read_text()))
            except (json.JSONDecodeError, UnicodeDecodeError) as error:
                raise BidstrainError(
                    f"sidecar is not valid JSON: {error}", path=path, subject=image.subject
                ) from None
        return merged

    def datatypes(self, subject: str) -> set[str]:
        """The datatype folders (``anat``, ``func``, ``eeg``...) of a subject, sessions
        included; read from the disk at each call (the index keeps images only)."""
        found, folders = set(), [os.path.join(self.root, f"sub-{subject}")]
        while folders:
            for entry in os.scandir(folders.pop()):
                if entry.is_dir() and entry.name in DATATYPES:
                    found.add(entry.name)
                elif entry.is_dir() and entry.name.startswith("ses-"):
                    folders.append(entry.path)
        return found

    def events(self, image: BidsFile) -> Path | None:
        """The ``*_events.tsv`` that applies to ``image`` (a BOLD run), or None.

        By the inheritance principle the most specific file wins, from the run's folder up
        to a top-level ``task-<task>_events.tsv`` shared by every subject.
        """
        candidates = self._inherited(image, EVENTS[1], EVENTS[0])
        return candidates[-1] if candidates else None

    def companion(self, image: BidsFile, extension: str) -> Path | None:
        """The most specific ``.bval`` or ``.bvec`` that applies to ``image``, or None."""
        candidates = self._inherited(image, extension)
        return candidates[-1] if candidates else None


def _participants(root: Path) -> list[str]:
    path = root / "participants.tsv"
    if not path.is_file():
        return []
    return [
        row["participant_id"].removeprefix("sub-")
        for row in read_tsv(path, lenient=True)[1]
        if row.get("participant_id")
    ]


def select_part(images: Iterable[BidsFile], part: str | None = None) -> list[BidsFile]:
    """The images of one ``part`` of complex-valued data (config ``part``).

    Parameters
    ----------
    images : iterable of BidsFile
        Images, for example from :meth:`BidsIndex.select`.
    part : {None, "mag", "phase", "real", "imag"}
        None or ``"mag"``: images without a ``part`` entity (magnitude, as every image
        without one is) and ``part-mag`` ones; otherwise only ``part-<part>`` images. So
        ``part-phase`` images are ignored unless asked for.

    Returns
    -------
    list of BidsFile
        In the order given.
    """
    if part not in (None, *PARTS):
        raise ValueError(f"part must be None or one of {PARTS}, got {part!r}")
    wanted = part or "mag"
    return [f for f in images if f.entities.get("part", "mag") == wanted]


def select_echo(images: Iterable[BidsFile], echo: int | None = None) -> list[BidsFile]:
    """One echo of each multi-echo acquisition (config ``echo``); single-echo images pass.

    Images that differ only in their ``echo`` entity are the echoes of one acquisition.

    Parameters
    ----------
    images : iterable of BidsFile
        Images, for example from :meth:`BidsIndex.select`.
    echo : int, optional
        The echo to keep (the ``echo-<index>`` value, 1 for the first). None keeps the
        images of acquisitions that have a single echo, and is an error for those with
        several.

    Returns
    -------
    list of BidsFile
        In the order given.

    Raises
    ------
    BidstrainError
        When ``echo`` is None and an acquisition has several echoes, or an acquisition
        lacks echo ``echo``: one line naming one such acquisition, how many there are,
        and the echoes found.
    """
    images = list(images)
    echoes: dict[tuple, dict[int, BidsFile]] = defaultdict(dict)
    for f in images:
        if "echo" in f.entities:
            rest = tuple(sorted((k, v) for k, v in f.entities.items() if k != "echo"))
            key = (f.path.parent, rest, f.suffix, f.extension)
            echoes[key][_echo_index(f)] = f
    faulty, found_echoes, dropped = [], set(), set()
    for found in echoes.values():
        keep = echo if echo is not None else (next(iter(found)) if len(found) == 1 else None)
        if keep not in found:
            faulty.append(found[min(found)])
            found_echoes.update(found)
        dropped.update(f.path for index, f in found.items() if index != keep)
    if faulty:
        first = faulty[0]
        name = bids_path(
            suffix=first.suffix,
            extension=first.extension,
            datatype=first.datatype,
            **{**first.entities, "echo": "*"},
        )
        others = f" and {len(faulty) - 1} more acquisition(s)" if len(faulty) > 1 else ""
        problem = "several echoes and config echo is not set" if echo is None else f"no echo-{echo}"
        raise BidstrainError(
            f"multi-echo images: {problem} for {name}{others}; echoes found: "
            f"{', '.join(map(str, sorted(found_echoes)))}; set config echo to the echo to use "
            "(1 for the first)",
            subject=first.subject if len({f.subject for f in faulty}) == 1 else None,
        )
    return [f for f in images if f.path not in dropped] if dropped else images


def _echo_index(image: BidsFile) -> int:
    value = image.entities["echo"]
    if not value.isdigit():
        raise BidstrainError(
            f"echo-{value}: the echo entity must be an index (1, 2, ...)",
            path=image.path,
            subject=image.subject,
        )
    return int(value)
