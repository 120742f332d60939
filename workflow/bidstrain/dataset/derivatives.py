"""fMRIPrep and QSIPrep outputs as input: what a derivative dataset is, and which files to use.

Pure functions over a :class:`~bidstrain.dataset.bids.BidsIndex` that the plan calls:

- :func:`dataset_kind` reads ``dataset_description.json`` (``DatasetType: derivative``,
  ``GeneratedBy[0].Name``), and :func:`nested_derivatives_warning` notices a raw dataset
  that also holds an fMRIPrep or QSIPrep output under ``derivatives/``;
- :func:`parse_space` reads config ``space`` in fMRIPrep's ``--output-spaces`` syntax;
- :func:`select_preproc` keeps one ``space-<space>[_res-<res>]_desc-preproc_<suffix>``
  image per run, :func:`brain_mask` finds its ``desc-brain_mask`` and
  :func:`confounds_file` the ``desc-confounds_timeseries.tsv`` of a BOLD run.

fMRIPrep writes the anatomical reference without a ``space`` entity (it *is* the ``T1w``
space), so an anatomical image without one counts as ``space-T1w``; any other image
without one is in its native space, named ``native`` here.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from bidstrain.dataset.bids import BidsFile, BidsIndex, bids_name, bids_path
from bidstrain.dataset.masks import DEFAULT_MASKS, MASK_KEYS
from bidstrain.errors import BidstrainError

#: Pipelines recognized in ``GeneratedBy[0].Name`` (lower case) and their kind.
PIPELINES = {"fmriprep": "fmriprep", "qsiprep": "qsiprep"}
#: Entities that say where an image lies (the space and its modifiers), not which run it is.
SPACE_ENTITIES = ("space", "cohort", "res", "den")
#: Modifiers of a space accepted in config ``space`` (``Template:res-2``).
SPACE_MODIFIERS = ("cohort", "res", "den")
#: The space of an anatomical image that has no ``space`` entity.
ANATOMICAL_REFERENCE = "T1w"
#: The name given here to the space of any other image without a ``space`` entity.
NATIVE = "native"
#: fMRIPrep's confounds table, by version: ``timeseries`` from 20.0, ``regressors`` before.
CONFOUNDS_SUFFIXES = ("timeseries", "regressors")
#: The preprocessed images bidstrain reads, by suffix (the order of messages).
PREPROC_SUFFIXES = ("T1w", "bold", "dwi")
#: The ``desc`` of fMRIPrep's ICA-AROMA denoised BOLD, which nilearn's ``ica_aroma``
#: confounds strategy reads instead of ``desc-preproc``.
AROMA_DESC = "smoothAROMAnonaggr"


@dataclass(frozen=True)
class DatasetKind:
    """What a dataset is, from its ``dataset_description.json``.

    Attributes
    ----------
    kind : {"raw", "fmriprep", "qsiprep", "derivative"}
        ``derivative`` is any other pipeline's output.
    pipeline : str or None
        ``GeneratedBy[0].Name`` (or the older ``PipelineDescription.Name``) as written.
    version : str or None
        The pipeline's version, when given.
    """

    kind: str
    pipeline: str | None = None
    version: str | None = None

    @property
    def is_derivative(self) -> bool:
        """Whether the dataset is the output of a pipeline."""
        return self.kind != "raw"

    @property
    def ships_brain_masks(self) -> bool:
        """Whether the pipeline writes a ``desc-brain_mask`` next to every preprocessed
        image (fMRIPrep, QSIPrep): the default mask of its images."""
        return self.kind in PIPELINES.values()


def _description(path: Path) -> dict:
    fix = "(a BIDS dataset_description.json is a JSON object with Name and BIDSVersion)"
    try:
        text = path.read_text()
        description = json.loads(text) if text.strip() else None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BidstrainError(
            f"cannot read the dataset description: {error} {fix}", path=path
        ) from None
    if not isinstance(description, dict):
        what = "empty" if description is None else "not a JSON object"
        raise BidstrainError(f"the dataset description is {what} {fix}", path=path)
    return description


def dataset_kind(root: str | Path) -> DatasetKind:
    """Whether ``root`` is a raw dataset, an fMRIPrep or QSIPrep output, or another derivative.

    Parameters
    ----------
    root : str or Path
        Dataset root, holding ``dataset_description.json``.

    Returns
    -------
    DatasetKind

    Raises
    ------
    BidstrainError
        When the description is missing or not a JSON object.
    """
    path = Path(root) / "dataset_description.json"
    if not path.is_file():
        raise BidstrainError(
            "not a BIDS dataset: dataset_description.json is missing (set bids_dir to the "
            "dataset root)",
            path=root,
        )
    description = _description(path)
    generated_by = description.get("GeneratedBy") or []
    if isinstance(generated_by, list) and generated_by and isinstance(generated_by[0], dict):
        pipeline = generated_by[0]
    else:  # BIDS < 1.4 derivatives
        pipeline = description.get("PipelineDescription") or {}
    name = pipeline.get("Name") if isinstance(pipeline, dict) else None
    version = pipeline.get("Version") if isinstance(pipeline, dict) else None
    dataset_type = description.get("DatasetType")
    # DatasetType decides when given (a raw dataset may name the tools that made it in
    # GeneratedBy); without it, a pipeline's name marks a derivative (BIDS < 1.4).
    if dataset_type == "raw" or (dataset_type != "derivative" and name is None):
        return DatasetKind("raw")
    kind = PIPELINES.get(str(name).lower(), "derivative")
    return DatasetKind(kind, name, None if version is None else str(version))


def nested_derivatives_warning(root: str | Path) -> str | None:
    """A warning when a raw dataset also holds fMRIPrep or QSIPrep outputs in ``derivatives/``.

    Users often point ``bids_dir`` at the raw dataset and mean its ``derivatives/fmriprep``.

    Returns
    -------
    str or None
        The warning, naming the folders found, or None (a derivative dataset, or none found).
    """
    root = Path(root)
    if dataset_kind(root).is_derivative or not (root / "derivatives").is_dir():
        return None
    found = []
    for folder in sorted((root / "derivatives").iterdir()):
        description = folder / "dataset_description.json"
        if folder.is_dir() and description.is_file():
            try:
                kind = dataset_kind(folder).kind
            except BidstrainError:  # not a dataset bidstrain reads: nothing to warn about
                continue
            if kind in PIPELINES.values():
                found.append(f"{folder} ({kind})")
    if not found:
        return None
    return (
        f"bids_dir {root} is a raw dataset that also holds preprocessed outputs: "
        f"{', '.join(found)}; bidstrain uses the raw images. To train on the preprocessed "
        "ones, set bids_dir to that folder (and space to one of its output spaces)."
    )


@dataclass(frozen=True)
class Space:
    """An output space in fMRIPrep's ``--output-spaces`` syntax.

    Attributes
    ----------
    name : str
        The ``space`` entity (``MNI152NLin2009cAsym``, ``T1w``...).
    modifiers : tuple of (str, str)
        ``cohort``, ``res`` and ``den`` values, in the order given.
    """

    name: str
    modifiers: tuple[tuple[str, str], ...] = ()

    @property
    def entities(self) -> dict[str, str]:
        """The file-name entities of the space, for example ``{"space": ..., "res": "2"}``."""
        return {"space": self.name, **dict(self.modifiers)}

    def __str__(self) -> str:
        return ":".join([self.name, *(f"{key}-{value}" for key, value in self.modifiers)])


def parse_space(text: str | None) -> Space | None:
    """Read config ``space``: ``MNI152NLin2009cAsym:res-2``, ``T1w``...

    Parameters
    ----------
    text : str or None
        fMRIPrep's ``--output-spaces`` syntax: a space name, then optional
        ``:<key>-<value>`` modifiers with key ``res``, ``cohort`` or ``den``.

    Returns
    -------
    Space or None
        None when ``text`` is None.

    Raises
    ------
    BidstrainError
        For a malformed value.

    Examples
    --------
    >>> parse_space("MNI152NLin2009cAsym:res-2").entities
    {'space': 'MNI152NLin2009cAsym', 'res': '2'}
    """
    if text is None:
        return None
    name, *modifiers = str(text).split(":")
    pairs = []
    for modifier in modifiers:
        key, _, value = modifier.partition("-")
        if key not in SPACE_MODIFIERS or not value.isalnum():
            raise BidstrainError(
                f"config space {text!r}: {modifier!r} is not a modifier of the form "
                f"<key>-<label> with key one of {', '.join(SPACE_MODIFIERS)} (fMRIPrep's "
                "--output-spaces syntax, for example MNI152NLin2009cAsym:res-2)"
            )
        pairs.append((key, value))
    if not name.isalnum():
        raise BidstrainError(
            f"config space {text!r}: {name!r} is not a space label (letters and digits, for "
            "example MNI152NLin2009cAsym or T1w)"
        )
    return Space(name, tuple(pairs))


def image_space(image: BidsFile) -> Space:
    """The space an image lies in (see the module docstring for images without one)."""
    name = image.entities.get("space")
    if name is None:
        name = ANATOMICAL_REFERENCE if image.datatype == "anat" else NATIVE
    modifiers = tuple(
        (key, image.entities[key]) for key in SPACE_MODIFIERS if key in image.entities
    )
    return Space(name, modifiers)


def _matches(found: Space, wanted: Space) -> bool:
    """Whether an image in ``found`` is in ``wanted`` (modifiers not given match any)."""
    have = dict(found.modifiers)
    return found.name == wanted.name and all(
        have.get(key) == value for key, value in wanted.modifiers
    )


def _run_label(image: BidsFile, *, without: tuple[str, ...] = ()) -> str:
    """The run an image belongs to, whatever its space: its path without space entities
    (nor the entities ``without``)."""
    dropped = (*SPACE_ENTITIES, *without)
    entities = {k: v for k, v in image.entities.items() if k not in dropped}
    return bids_path(
        suffix=image.suffix, extension=image.extension, datatype=image.datatype, **entities
    )


def _drop_echoes_of_combined_runs(runs: dict[str, list[BidsFile]]) -> None:
    """Leave out of ``runs`` the echoes of a multi-echo run whose optimally combined series
    is there too: fMRIPrep's ``--me-output-echos`` writes each echo, in the run's native
    space only, beside the combined series in every output space; the combined series is
    the run."""
    for label, found in list(runs.items()):
        if "echo" in found[0].entities and _run_label(found[0], without=("echo",)) in runs:
            del runs[label]


def select_preproc(
    images: Iterable[BidsFile],
    space: Space | None,
    suffix: str,
    desc: str = "preproc",
    *,
    dataset: Iterable[BidsFile] = (),
) -> list[BidsFile]:
    """One ``[space-<space>_...]desc-<desc>_<suffix>`` image per run, in the chosen space.

    Parameters
    ----------
    images : iterable of BidsFile
        The images to choose from (:attr:`BidsIndex.images` or a selection of them).
    space : Space or None
        Config ``space``. None is allowed when every run has a single space, all the same.
    suffix : str
        ``bold``, ``T1w`` or ``dwi``.
    desc : str
        The ``desc`` entity: ``preproc``, or :data:`AROMA_DESC` for the ICA-AROMA
        outputs that nilearn's ``ica_aroma`` confounds strategy requires.
    dataset : iterable of BidsFile
        Every image of the dataset, read only for an error message: it lists the spaces
        of every modality (:func:`spaces_found`), so that a user choosing ``space`` for
        one modality sees what the others have.

    Returns
    -------
    list of BidsFile
        In the order given.

    Raises
    ------
    BidstrainError
        In one line, when no space is chosen and several are present, when some run
        lacks the chosen space, or when several images of a run match it (several
        resolutions): the message names a run concerned, how many there are, and lists
        the spaces found.
    """
    images = list(images)
    runs: dict[str, list[BidsFile]] = defaultdict(list)
    for image in images:
        if image.suffix == suffix and image.entities.get("desc") == desc:
            runs[_run_label(image)].append(image)
    _drop_echoes_of_combined_runs(runs)
    if space is None:
        if len({str(image_space(f)) for found in runs.values() for f in found}) > 1:
            raise BidstrainError(
                f"the {suffix} images are in several spaces and config space is not set; "
                f"{spaces_found([*images, *dataset])}; set config space to one of them "
                "(fMRIPrep's --output-spaces syntax, for example MNI152NLin2009cAsym:res-2)"
            )
        chosen = {f.path for candidates in runs.values() for f in candidates}
        return [f for f in images if f.path in chosen]
    chosen, missing, ambiguous = set(), [], []
    for run, candidates in sorted(runs.items()):
        matches = [f for f in candidates if _matches(image_space(f), space)]
        if len(matches) == 1:
            chosen.add(matches[0].path)
        else:
            spaces = ", ".join(sorted(str(image_space(f)) for f in matches or candidates))
            (ambiguous if matches else missing).append(f"{run} (has {spaces})")
    if missing or ambiguous:
        problem, runs_at_fault, fix = (
            (f"no {suffix} image in that space", missing, "set it to a space every run has")
            if missing
            else (
                f"several {suffix} images match it",
                ambiguous,
                f"add the modifier that tells them apart, for example {space}:res-2",
            )
        )
        others = f" and {len(runs_at_fault) - 1} more run(s)" if len(runs_at_fault) > 1 else ""
        raise BidstrainError(
            f"config space {space}: {problem} for {runs_at_fault[0]}{others}; "
            f"{spaces_found([*images, *dataset])}; {fix}"
        )
    return [f for f in images if f.path in chosen]


def spaces_found(images: Iterable[BidsFile]) -> str:
    """The spaces of the preprocessed T1w, BOLD and DWI images (``desc-preproc``, and
    ``desc-smoothAROMAnonaggr`` BOLD), by modality, for messages.

    Examples
    --------
    ``spaces found: T1w: MNI152NLin2009cAsym:res-2, T1w; bold: T1w;
    bold desc-smoothAROMAnonaggr: MNI152NLin6Asym``
    """
    spaces: dict[tuple[str, str], set[str]] = defaultdict(set)
    for image in images:
        spaces[(image.suffix, image.entities.get("desc"))].add(str(image_space(image)))
    labels = {
        (suffix, desc): suffix if desc == "preproc" else f"{suffix} desc-{desc}"
        for suffix in PREPROC_SUFFIXES
        for desc in ("preproc", AROMA_DESC)
    }
    listing = "; ".join(
        f"{label}: {', '.join(sorted(spaces[key]))}" for key, label in labels.items() if spaces[key]
    )
    return f"spaces found: {listing or 'none'}"


def brain_mask(index: BidsIndex, image: BidsFile) -> Path:
    """The brain mask of a derivative image: its ``desc-brain_mask`` (fMRIPrep, QSIPrep),
    or else its ``label-brain_mask`` (the other name BIDS gives it), in the same folder
    with the image's other entities.

    The default mask for fMRIPrep's and QSIPrep's outputs: the pipeline's own brain mask.

    Raises
    ------
    BidstrainError
        When the dataset has no such mask, naming the config key that chooses another.
    """
    entities = {k: v for k, v in image.entities.items() if k != "desc"}
    names = [{**entities, "desc": "brain"}, {**entities, "label": "brain"}]
    for wanted in names:
        prefix = bids_path(suffix="", datatype=image.datatype, **wanted)[:-1]
        try:
            return index.by_prefix(prefix, "mask").path
        except BidstrainError:
            continue
    name = bids_name(suffix="mask", extension=image.extension, **names[0])
    raise BidstrainError(
        f"no {name} next to the image (fMRIPrep and QSIPrep write one per image); set "
        f"config {MASK_KEYS[image.suffix]} to compute a mask ({DEFAULT_MASKS[image.suffix]}), "
        "to none, or to a path pattern of your masks",
        path=image.path,
        subject=image.subject,
    )


def confounds_file(image: BidsFile) -> Path:
    """fMRIPrep's confounds table of a BOLD run: ``..._desc-confounds_timeseries.tsv``.

    The table is per run, so it has no space entities; older fMRIPrep versions (before
    20.0) name it ``desc-confounds_regressors.tsv``.

    Raises
    ------
    BidstrainError
        When neither file exists next to the image.
    """
    entities = {k: v for k, v in image.entities.items() if k not in SPACE_ENTITIES}
    entities["desc"] = "confounds"
    names = [
        bids_name(suffix=suffix, extension=".tsv", **entities) for suffix in CONFOUNDS_SUFFIXES
    ]
    for name in names:
        if (image.path.parent / name).is_file():
            return image.path.parent / name
    raise BidstrainError(
        f"no confounds table {names[0]} next to the run (needed by config "
        "normalize.confounds.strategy)",
        path=image.path,
        subject=image.subject,
    )


def gradients(index: BidsIndex, image: BidsFile) -> Mapping[str, Path]:
    """The ``.bval`` and ``.bvec`` of a DWI image (QSIPrep writes them next to it).

    Raises
    ------
    BidstrainError
        When one of them is missing.
    """
    found = {}
    for extension in (".bval", ".bvec"):
        path = index.companion(image, extension)
        if path is None:
            raise BidstrainError(
                f"no {extension} for the DWI image", path=image.path, subject=image.subject
            )
        found[extension] = path
    return found
