"""A fast BIDS index: one walk of the dataset, entities parsed by regex, no image opened.

The index is built at Snakemake parse time, so it must be cheap: it lists directories with
``os.scandir``, parses file names, and reads JSON sidecars only when asked for metadata.
It is also the only code that builds BIDS paths (:func:`bids_path`), for inputs and for
the workflow's outputs alike.
"""

from __future__ import annotations

import csv
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

log = logging.getLogger(__name__)

#: Entity order of the BIDS specification (appendix "Entity table").
ENTITY_ORDER = (
    "sub ses sample task tracksys acq nuc voi ce trc stain rec dir run mod echo flip inv mt "
    "part proc hemi space split recording chunk seg res den label desc"
).split()
DATATYPES = frozenset("anat func dwi fmap perf eeg meg ieeg beh pet micr nirs motion mrs".split())
#: Suffix of each modality bidstrain trains on, and the datatype folder it lives in.
MODALITY_DATATYPE = {"T1w": "anat", "bold": "func", "dwi": "dwi"}
IMAGE_EXTENSIONS = (".nii.gz", ".nii")
SKIPPED_TOP_LEVEL = frozenset({"derivatives", "sourcedata", "code", "stimuli", "phenotype"})
TOP_LEVEL_FILES = frozenset(
    "dataset_description.json participants.tsv participants.json README README.md README.rst "
    "README.txt CHANGES LICENSE genetic_info.json samples.tsv samples.json".split()
)

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
    known = [key for key in ENTITY_ORDER if key in present]
    ordered = known + [key for key in present if key not in ENTITY_ORDER]
    name = "_".join([f"{key}-{present[key]}" for key in ordered] + [suffix]) + extension
    folders = [f"sub-{present['sub']}"]
    if "ses" in present:
        folders.append(f"ses-{present['ses']}")
    if datatype:
        folders.append(datatype)
    return os.path.join(str(root), *folders, name) if str(root) else os.path.join(*folders, name)


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


@dataclass
class BidsIndex:
    """Every image and metadata file of a BIDS dataset, from one directory walk.

    Build it with :meth:`BidsIndex.build`. ``subjects`` are the labels kept by the
    participant filters, sorted; ``problems`` the files that could not be parsed.
    """

    root: Path
    images: list[BidsFile]
    metadata_files: dict[tuple[Path, str, str], list[tuple[dict[str, str], Path]]]
    participants_tsv: list[str]
    subjects: list[str]
    problems: list[str] = field(default_factory=list)

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
            When ``root`` does not exist, is not a BIDS dataset, or a requested participant
            is absent.
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
        all_subjects = sorted(
            entry.name[4:]
            for entry in os.scandir(root)
            if entry.is_dir() and entry.name.startswith("sub-")
        )
        absent = sorted(wanted - set(all_subjects))
        if absent:
            raise BidstrainError(
                f"participant_label names subjects with no folder: {', '.join(absent)} "
                f"(present: {', '.join(all_subjects) or 'none'})",
                path=root,
            )
        subjects = [s for s in all_subjects if (not wanted or s in wanted) and s not in excluded]
        index = cls(root, [], defaultdict(list), _participants(root), subjects)
        index._scan_top_level()
        for subject in subjects:
            index._walk(root / f"sub-{subject}", datatype=None)
        index.images.sort(key=lambda f: str(f.path))
        for problem in index.problems:
            log.warning(problem)
        for subject in sorted(set(index.participants_tsv) - set(all_subjects)):
            log.warning(
                "participants.tsv lists sub-%s but the dataset has no folder for it", subject
            )
        return index

    def _scan_top_level(self) -> None:
        for entry in os.scandir(self.root):
            if entry.name.startswith(".") or entry.name in SKIPPED_TOP_LEVEL:
                continue
            if entry.is_file() and entry.name not in TOP_LEVEL_FILES:
                self._add(Path(entry.path), datatype=None, top_level=True)

    def _walk(self, folder: Path, datatype: str | None) -> None:
        for entry in os.scandir(folder):
            if entry.name.startswith("."):
                continue
            if entry.is_dir():
                inner = entry.name if entry.name in DATATYPES else datatype
                self._walk(Path(entry.path), inner)
            else:
                self._add(Path(entry.path), datatype)

    def _add(self, path: Path, datatype: str | None, top_level: bool = False) -> None:
        parsed = parse_name(path.name)
        if parsed is None or (not top_level and "sub" not in parsed[0]):
            if not path.name.endswith((".tsv", ".md", ".txt")) or not top_level:
                self.problems.append(f"{path}: not a BIDS file name; ignored")
            return
        entities, suffix, extension = parsed
        if extension in IMAGE_EXTENSIONS and not top_level:
            self.images.append(BidsFile(path, entities, datatype, suffix, extension))
        elif extension in (".json", ".bval", ".bvec"):
            self.metadata_files[(path.parent, suffix, extension)].append((entities, path))

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

    def _inherited(self, image: BidsFile, extension: str) -> list[Path]:
        """Metadata files that apply to ``image``, least specific first (inheritance principle)."""
        found = []
        folder = image.path.parent
        while True:
            level = [
                (len(entities), path)
                for entities, path in self.metadata_files.get((folder, image.suffix, extension), [])
                if all(image.entities.get(key) == value for key, value in entities.items())
            ]
            found = [path for _, path in sorted(level, key=lambda item: item[0])] + found
            if folder == self.root or self.root not in folder.parents:
                return found
            folder = folder.parent

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

    def companion(self, image: BidsFile, extension: str) -> Path | None:
        """The most specific ``.bval`` or ``.bvec`` that applies to ``image``, or None."""
        candidates = self._inherited(image, extension)
        return candidates[-1] if candidates else None


def _participants(root: Path) -> list[str]:
    path = root / "participants.tsv"
    if not path.is_file():
        return []
    with path.open(newline="") as handle:
        rows = csv.DictReader(handle, delimiter="\t")
        return [
            row["participant_id"].removeprefix("sub-") for row in rows if row.get("participant_id")
        ]
