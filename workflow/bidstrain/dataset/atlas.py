"""Atlases: a label image and its label table, in a template space, found offline.

Config ``parcellation`` names the atlas either as a BIDS atlas dataset (a folder holding
``tpl-<space>/anat/tpl-<space>[_res-<r>]_atlas-<name>[_desc-<d>]_dseg.nii.gz`` and the
``_dseg.tsv`` beside it; or, as TemplateFlow lays them out, the same files in
``tpl-<space>/`` with one table for every resolution, named without the ``res-``
entity) or as a label image and a table.
The table is a TSV with the columns ``index`` (the label value in the image) and
``name``, as a BIDS ``_dseg.tsv``; label 0 is the background. Nothing is downloaded.

:func:`find_atlas` resolves the files at parse time (paths only);
:func:`check_space` compares the atlas's space with a BOLD run's (its ``space-`` entity):
parcels only mean something in the space they were drawn in. A label image drawn on the
runs' own grid (runs without a ``space-`` entity that share one grid, as the
naturalistic demo's) says so with ``parcellation.space: native`` (:data:`NATIVE`); label
images drawn on each run's own grid (a segmentation brought into each subject's BOLD
space) are given as a path pattern with the placeholders of the mask patterns
(``{bids_dir}``, ``{subject}``, ``{session}``, any BIDS entity key:
:func:`bidstrain.dataset.masks.resolve_pattern`), space ``native``, and one label table
for all (:meth:`AtlasFiles.for_run`).
:func:`load_atlas` reads the atlas onto a run's grid, resampling by nearest neighbour
(with a warning) when the grid differs within the same space.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import re
import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from bidstrain.config import ParcellationConfig
from bidstrain.dataset.masks import resolve_pattern
from bidstrain.errors import BidstrainError, relative_to_study
from bidstrain.io.grid import grid_mismatch
from bidstrain.io.text_files import read_tsv

#: ``parcellation.space`` of a label image drawn on the runs' own grid (no ``space-``).
NATIVE = "native"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AtlasFiles:
    """Where an atlas is: its name, label image (or, with ``per_run``, the path pattern of
    each run's label image), label table and template space."""

    name: str
    image: Path
    labels: Path
    space: str
    per_run: bool = False

    def to_json(self) -> dict[str, str | bool]:
        """The plain form a normalize job's command line carries."""
        return {
            "name": self.name,
            "image": str(self.image),
            "labels": str(self.labels),
            "space": self.space,
            "per_run": self.per_run,
        }

    @classmethod
    def from_json(cls, value: dict[str, str]) -> AtlasFiles:
        """Inverse of :meth:`to_json`."""
        return cls(
            value["name"],
            Path(value["image"]),
            Path(value["labels"]),
            value["space"],
            bool(value.get("per_run", False)),
        )

    def for_run(self, entities: dict[str, str], bids_dir: str | Path) -> AtlasFiles:
        """The atlas of one run: with :attr:`per_run`, its label image (the pattern filled
        with the run's entities); otherwise this atlas.

        Raises
        ------
        BidstrainError
            When the pattern names an entity the run does not have.
        """
        if not self.per_run:
            return self
        image = resolve_pattern(str(self.image), entities, bids_dir, "parcellation.path")
        return AtlasFiles(self.name, Path(image), self.labels, self.space)


def _table_of(image: Path) -> Path:
    """``x_dseg.nii.gz`` -> ``x_dseg.tsv``."""
    name = image.name
    for extension in (".nii.gz", ".nii"):
        if name.endswith(extension):
            return image.with_name(name[: -len(extension)] + ".tsv")
    return image.with_suffix(".tsv")


def find_atlas(config: ParcellationConfig) -> AtlasFiles:
    """The atlas files config ``parcellation`` names.

    Raises
    ------
    BidstrainError
        When a file is missing, the dataset holds no (or several) matching atlas images,
        or a label image comes without its space.
    """
    if config.name is None or config.path is None:
        raise BidstrainError("config parcellation: name and path are both needed")
    path = Path(config.path)
    if "{" in config.path:
        return _per_run_atlas(config)
    if path.is_dir():
        image = _dataset_image(path, config)
        labels = _table_of(image)
        if not labels.is_file():  # TemplateFlow: one table for every resolution
            labels = labels.with_name(re.sub(r"_res-[a-zA-Z0-9]+", "", labels.name))
        space = image.name.split("_")[0].removeprefix("tpl-")
    else:
        if config.space is None:
            raise BidstrainError(
                "config parcellation.space is needed with a label image (the template space "
                "it was drawn in, for example MNI152NLin2009cAsym)",
                path=path,
            )
        image = path
        labels = Path(config.labels) if config.labels else _table_of(path)
        space = config.space
    _require(image, "label image")
    _require(labels, "label table")
    return AtlasFiles(config.name, image, labels, space)


def _require(file: Path, what: str) -> None:
    """Raise unless the atlas's ``what`` (``label image``, ``label table``) is a file."""
    if not file.is_file():
        raise BidstrainError(
            f"config parcellation: the atlas {what} is missing{relative_to_study(file)}",
            path=file,
        )


def _per_run_atlas(config: ParcellationConfig) -> AtlasFiles:
    """The atlas of a path pattern: a label image per run, on that run's own grid, with one
    label table for all (each run's image is checked by its normalize job). Space
    :data:`NATIVE` (or none): each image lies in its run's space, whatever it is (a raw
    run's own, or fMRIPrep's ``T1w``); a named space: the runs must be in it."""
    if config.labels is None:
        raise BidstrainError(
            f"config parcellation.path {config.path!r} is a pattern (a label image per run): "
            "set parcellation.labels to the label table they share"
        )
    labels = Path(config.labels)
    _require(labels, "label table")
    space = config.space or NATIVE
    return AtlasFiles(config.name, Path(config.path), labels, space, per_run=True)


#: The config ``parcellation`` key that selects each entity of an atlas image's name.
_CONFIG_KEYS = {"tpl": "space", "atlas": "name", "res": "resolution", "desc": "desc"}
#: Atlas images an error lists at most.
_LISTED = 10


def _atlas_images(root: Path, space: str = "*", name: str = "*") -> list[Path]:
    """The ``tpl-<space>_*atlas-<name>_*dseg.nii[.gz]`` of a BIDS atlas dataset, in
    ``tpl-<space>/anat/`` or, as TemplateFlow, ``tpl-<space>/``; sorted."""
    pattern = f"tpl-{space}_*atlas-{name}_*dseg.nii*"
    return sorted([*root.glob(f"tpl-{space}/anat/{pattern}"), *root.glob(f"tpl-{space}/{pattern}")])


def _dataset_image(root: Path, config: ParcellationConfig) -> Path:
    """The one atlas image of a BIDS atlas dataset (:func:`_atlas_images`) of the
    configured name, space, resolution and desc; entity values compare as written
    (resolution ``02`` is not ``2``)."""
    found = _atlas_images(root, config.space or "*", config.name)
    for key, value in (("res", config.resolution), ("desc", config.desc)):
        if value is not None:
            found = [f for f in found if f"_{key}-{value}_" in f.name]
    if len(found) != 1:
        listing = ", ".join(f.name for f in found) or _what_exists(root, config.name)
        raise BidstrainError(
            f"config parcellation: {len(found)} atlas images match name {config.name!r}, "
            f"space {config.space!r}, resolution {config.resolution!r}, desc "
            f"{config.desc!r} in this dataset (found: {listing}); set parcellation.space, "
            "parcellation.resolution and parcellation.desc to choose one",
            path=root,
        )
    return found[0]


def _what_exists(root: Path, name: str) -> str:
    """For an error that no atlas image matches: the dataset's images of atlas ``name``
    (else all its atlas images), each with the config values its entities need."""
    images = _atlas_images(root, name=name) or _atlas_images(root)
    if not images:
        return "none; the dataset holds no atlas image tpl-<space>/[anat/]tpl-*_dseg.nii[.gz]"
    listed = [f"{image.name} ({_config_values(image)})" for image in images[:_LISTED]]
    more = f" and {len(images) - _LISTED} more" if len(images) > _LISTED else ""
    return f"none; the dataset holds {', '.join(listed)}{more}"


def _config_values(image: Path) -> str:
    """The config ``parcellation`` values that select an atlas image, by its entities:
    ``space 'MNI152NLin2009cAsym', name 'demo', resolution '2'``."""
    entities = (part.split("-", 1) for part in image.name.split("_")[:-1] if "-" in part)
    return ", ".join(
        f"{_CONFIG_KEYS[key]} {value!r}" for key, value in entities if key in _CONFIG_KEYS
    )


def check_space(
    atlas: AtlasFiles, bold_space: str | None, *, image: str | Path, subject: str | None
) -> None:
    """Raise unless a BOLD run in ``bold_space`` (its ``space-`` entity; None for a run
    without one, in its native space) lies in the atlas's space (:data:`NATIVE` for a run
    without one). Label images per run in space :data:`NATIVE` lie in their runs' spaces,
    whatever they are."""
    if atlas.per_run and atlas.space == NATIVE:
        return
    if (bold_space or NATIVE) != atlas.space:
        have = f"space {bold_space}" if bold_space else "its native space (no space- entity)"
        raise BidstrainError(
            f"the BOLD run is in {have} but the atlas {atlas.name} ({atlas.image}) is in "
            f"space {atlas.space}: parcels apply only in the space they were drawn in "
            "(set config space to the atlas's, or choose an atlas in the run's space)",
            path=image,
            subject=subject,
        )


@dataclass(frozen=True)
class Atlas:
    """An atlas on a run's grid.

    Attributes
    ----------
    name : str
        The atlas name (the outputs' ``seg-`` entity).
    indices : ndarray of int, shape (n_parcels,)
        The label value of each parcel, in the table's order.
    names : tuple of str
        The parcels' names, distinct (:func:`distinct_names`).
    parcel : ndarray of int, shape (x, y, z)
        The parcel (position in :attr:`indices`) of each voxel of the grid; -1 outside
        every parcel (the background, and labels the table does not list).
    checksum : str or None
        :func:`atlas_checksum` of the atlas files (what ``model.json`` records), recorded
        by the parcel stores.
    """

    name: str
    indices: np.ndarray
    names: tuple[str, ...]
    parcel: np.ndarray
    checksum: str | None = None

    @property
    def n_parcels(self) -> int:
        """Parcels of the table."""
        return int(self.indices.size)


def read_label_table(path: Path) -> tuple[np.ndarray, tuple[str, ...]]:
    """The ``index`` and ``name`` columns of a label table (background 0 left out), the
    names made distinct (:func:`distinct_names`, with a warning naming those renamed).

    Raises
    ------
    BidstrainError
        When a column is missing, an index is not an integer, is negative or repeats, or
        the table lists no label besides the background.
    """
    columns, rows = read_tsv(path)
    if not {"index", "name"} <= set(columns):
        raise BidstrainError("an atlas label table needs the columns index and name", path=path)
    indices = np.zeros(len(rows), dtype=np.int64)
    for line, row in enumerate(rows, start=2):
        try:
            indices[line - 2] = int(row["index"])
        except (TypeError, ValueError):
            raise BidstrainError(
                f"line {line}: label index {row['index']!r} is not an integer", path=path
            ) from None
    values, counts = np.unique(indices, return_counts=True)
    if (counts > 1).any():
        raise BidstrainError(
            f"the label table lists index {', '.join(map(str, values[counts > 1]))} more than once",
            path=path,
        )
    if (indices < 0).any():
        raise BidstrainError(
            f"label index {', '.join(map(str, indices[indices < 0]))} is negative: label "
            "values are positive integers (0 is the background)",
            path=path,
        )
    keep = indices != 0
    if not keep.any():
        raise BidstrainError("the label table lists no label besides the background 0", path=path)
    names = [row["name"] for row, k in zip(rows, keep, strict=True) if k]
    distinct = distinct_names(names, indices[keep])
    renamed = [f"{old} -> {new}" for old, new in zip(names, distinct, strict=True) if old != new]
    if renamed:
        _warn_once(
            f"{path}: names given to several labels are made distinct with the label "
            f"value, in the parcel TSVs' columns and the parcel stores: {', '.join(renamed)}"
        )
    return indices[keep], distinct


def distinct_names(names: Sequence[str], indices: np.ndarray) -> tuple[str, ...]:
    """Parcel names that can be column names: a name given to several labels becomes
    ``<name>_<index>`` (its label value) in each of them, until no two names are equal.

    Parameters
    ----------
    names : sequence of str
        The label table's names.
    indices : ndarray of int
        The label value of each name (distinct).

    Returns
    -------
    tuple of str
        ``names``, the repeated ones renamed: ``a, b, a`` of labels 1, 2, 3 give ``a_1,
        b, a_3``.
    """
    names = list(names)
    while True:  # a renamed name ends in its own label: a clash left is with a table's name
        counts = Counter(names)
        if max(counts.values()) == 1:
            return tuple(names)
        names = [
            f"{name}_{index}" if counts[name] > 1 else name
            for name, index in zip(names, indices, strict=True)
        ]


def load_atlas(
    atlas: AtlasFiles,
    shape: tuple[int, int, int],
    affine: np.ndarray,
    *,
    image: str | Path,
    subject: str | None = None,
) -> Atlas:
    """Read an atlas onto a run's grid.

    Parameters
    ----------
    atlas : AtlasFiles
        From :func:`find_atlas`, its space checked (:func:`check_space`).
    shape, affine
        The run's grid (its store's: RAS+ voxel order).
    image, subject
        The run, for messages.

    Returns
    -------
    Atlas
        On the grid: the label image itself when it is on that grid (in any voxel order),
        else resampled by nearest neighbour, with a warning naming both grids.

    Raises
    ------
    BidstrainError
        When the label image cannot be read (a truncated or corrupt file), or is not a 3D
        image of non-negative integer labels.
    """
    indices, names = read_label_table(atlas.labels)
    voxels, labels_affine = read_label_image(atlas.image, subject)
    labels = _integer_labels(voxels, atlas.image, subject)
    parcel = parcel_of_labels(labels, indices)
    _warn_unlisted(labels[(parcel < 0) & (labels > 0)], atlas)
    mismatch = grid_mismatch(labels.shape, labels_affine, shape, affine)
    if mismatch:
        log.warning(
            "sub-%s: atlas %s (%s) is not on the grid of %s (%s): resampled by nearest neighbour",
            subject,
            atlas.name,
            atlas.image,
            image,
            mismatch,
        )
        parcel = nearest_labels(parcel, labels_affine, shape, affine, outside=-1)
    if (parcel < 0).all():
        raise BidstrainError(
            f"no parcel of atlas {atlas.name} ({atlas.image}) falls on the grid of {image}: "
            "the label image and the run do not overlap in world coordinates (another "
            "space, or a wrong affine)",
            path=atlas.image,
            subject=subject,
        )
    return Atlas(atlas.name, indices, names, parcel)


def read_label_image(path: Path, subject: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The voxels of a label image, in RAS+ voxel order, and its affine.

    Parameters
    ----------
    path : Path
        The label image (``.nii`` or ``.nii.gz``).
    subject : str, optional
        For messages.

    Returns
    -------
    voxels : ndarray
        As stored (the checks of integer labels are :func:`load_atlas`'s).
    affine : ndarray, shape (4, 4)
        Of that voxel order.

    Raises
    ------
    BidstrainError
        Naming the file and ``subject``, when it is not an image, or its voxel data are
        cut short or corrupt (a truncated or damaged copy).
    """
    try:
        img = nib.as_closest_canonical(nib.load(path))  # reads the voxels unless RAS+
        return np.asarray(img.dataobj), img.affine
    except (EOFError, OSError, zlib.error) as error:  # the file cut short or damaged
        reason = " ".join(str(error).split())  # nibabel's can span lines
        raise BidstrainError(
            f"the label image cannot be read ({reason}): the file is truncated or corrupt "
            "(cut short, or damaged gzip data); re-copy or re-export it",
            path=path,
            subject=subject,
        ) from None
    except Exception as error:  # nibabel raises many types for files that are no image
        raise BidstrainError(
            f"not a readable label image: {error}", path=path, subject=subject
        ) from None


def _integer_labels(voxels: np.ndarray, path: Path, subject: str | None) -> np.ndarray:
    """The voxels of a label image as int64 labels, 3D.

    A negative label is an error, not a label to leave out: a label table lists none
    (:func:`read_label_table`), and one in an image most often betrays labels above the
    range of its signed voxel type (over 32767 in int16), which wrap to negative values.
    """
    if voxels.ndim == 4 and voxels.shape[3] == 1:
        voxels = voxels[..., 0]
    if voxels.ndim != 3 or not np.allclose(voxels, np.round(voxels), rtol=0.0, atol=1e-4):
        raise BidstrainError(
            "a label image must be 3D with integer labels", path=path, subject=subject
        )
    labels = np.round(voxels).astype(np.int64)
    negative, counts = np.unique(labels[labels < 0], return_counts=True)
    if negative.size:
        raise BidstrainError(
            f"negative labels {_some(negative)} ({int(counts.sum())} voxels): labels are "
            "non-negative integers, 0 the background (labels above the range of the "
            "image's signed voxel type wrap to negative values: save it with a type that "
            "holds them, such as uint16 or int32)",
            path=path,
            subject=subject,
        )
    return labels


def _some(values: np.ndarray, most: int = 20) -> str:
    """The first ``most`` of ``values``, for a message."""
    return ", ".join(map(str, values[:most])) + (" ..." if values.size > most else "")


def parcel_of_labels(labels: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """The parcel of each voxel of a label image, found among the sorted label values:
    time and memory grow with the voxels and the number of labels, never with the label
    values (an Allen atlas's reach 614454277).

    Parameters
    ----------
    labels : ndarray of int
        The label image.
    indices : ndarray of int, shape (n_parcels,)
        The label value of each parcel (:func:`read_label_table`: distinct, none 0).

    Returns
    -------
    ndarray of int64, the shape of ``labels``
        The parcel (position in ``indices``) of each voxel; -1 for the background 0 and
        for labels ``indices`` does not list.
    """
    order = np.argsort(indices)
    values = indices[order]
    position = np.minimum(np.searchsorted(values, labels), values.size - 1)
    return np.where(values[position] == labels, order[position], -1)


def _warn_unlisted(unlisted: np.ndarray, atlas: AtlasFiles) -> None:
    """Warn about the labels of the image that its table does not list (``unlisted``, one
    per voxel): their voxels belong to no parcel."""
    present, counts = np.unique(unlisted, return_counts=True)
    if present.size:
        _warn_once(
            f"atlas {atlas.name}: labels {_some(present)} of {atlas.image} "
            f"({int(counts.sum())} voxels) are not in its table {atlas.labels}: those "
            "voxels belong to no parcel"
        )


@functools.cache
def _warn_once(message: str) -> None:
    """Log ``message`` as a warning, once per process: a normalize job reads its atlas
    for each of its runs, and what it says of the atlas it says once."""
    log.warning(message)


def nearest_labels(
    labels: np.ndarray,
    labels_affine: np.ndarray,
    shape: tuple[int, int, int],
    affine: np.ndarray,
    *,
    outside: int = 0,
) -> np.ndarray:
    """The label of the nearest voxel of ``labels`` at each voxel centre of a grid.

    Parameters
    ----------
    labels : ndarray of int, shape (i, j, k)
        A label image (or its parcel numbers).
    labels_affine : ndarray, shape (4, 4)
        Its affine.
    shape, affine
        The grid.
    outside : int
        The value of the grid's voxels outside the label image.

    Returns
    -------
    ndarray, shape ``shape``, the dtype of ``labels``
    """
    ijk = np.indices(shape, dtype=np.float64).reshape(3, -1)
    world = affine[:3, :3] @ ijk + affine[:3, 3:4]
    inverse = np.linalg.inv(labels_affine)
    source = np.rint(inverse[:3, :3] @ world + inverse[:3, 3:4]).astype(np.int64)
    inside = np.all((source >= 0) & (source < np.array(labels.shape)[:, None]), axis=0)
    out = np.full(ijk.shape[1], outside, dtype=labels.dtype)
    out[inside] = labels[tuple(source[:, inside])]
    return out.reshape(shape)


def atlas_checksum(atlas: AtlasFiles) -> str:
    """The sha256 of the atlas's label image followed by its label table: what names the
    parcellation a model was trained on, whatever the files are called. For a label image
    per run (:attr:`AtlasFiles.per_run`), the path pattern stands for the images."""
    digest = hashlib.sha256()
    if atlas.per_run:
        digest.update(str(atlas.image).encode())
    for path in (atlas.labels,) if atlas.per_run else (atlas.image, atlas.labels):
        with open(path, "rb") as file:
            for block in iter(lambda: file.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()
