"""The one place that knows the Zarr/xarray layout of a bidstrain store.

A store holds one image (a BOLD run, a T1w, a DWI series) or one cross-subject average,
masked to a brain mask and flattened to ``(time, voxel)``::

    data   (time, voxel)  float32 (or float16, see :class:`Storage`)   normalized values;
                          T1w has one time point
    mean   (voxel,) for BOLD, (time,) for T1w/DWI   float32   the statistics used
    std    same dims as mean                          float32
    mask   (x, y, z)      bool      the 3D mask; the voxels are its True entries in C order
    coords time (time) float64 acquisition time in seconds; DWI adds bval (time) and bvec
           (time, direction)

The voxel indices ``i, j, k`` (voxel) are not stored (they are ``np.nonzero(mask)``):
:func:`open_store` adds them as coordinates.

Attributes (``ds.attrs``) are read through :class:`StoreMeta` (:func:`store_meta` of an
open store, :func:`read_meta` of a path), never by key elsewhere: ``modality``,
``subject``, ``session``, ``entities`` (dict), ``affine`` (4x4 list), ``repetition_time``
(s, or None), ``source_path``, ``source_size`` (bytes), ``ddof``, ``n_zero_variance``,
``n_nonfinite``, ``stats_dim`` (``"voxel"`` or ``"time"``), ``stats_from`` (the source
files the statistics were fitted on), ``heldout``, ``mask_source``, ``source_dtype``,
``source_orientation``, ``storage`` (:class:`Storage`), ``confounds_strategy`` (the
confounds regressed out of a BOLD run: ``none`` when absent), ``source_repetition_time``
(the run's own TR; ``repetition_time`` is the store's, after resampling in time),
``time_method`` (``none``, or how the run was resampled:
:mod:`bidstrain.normalize.resample_time`), ``n_invalid_frames`` (frames left out because
their interpolation needed a dropped volume), ``bidstrain_version`` and ``checksum``
(:func:`store_checksum`); averages add
``subjects``, ``sessions``, ``truncated`` and ``mask_mode``. A store without the time
attributes reads as not resampled.

BOLD stores also hold ``frame_time`` and ``frame_valid`` (dim ``frame``): the onset of
every frame of the run's time grid, and whether it is in ``data`` (its ``time``
coordinate holds the valid frames' onsets: ``data`` has no row for a left-out frame).
Averages hold them too (the frames no subject is valid at are left out), with
``frame_subjects``: the subjects averaged at each frame (:mod:`bidstrain.average.frames`).

Parcel stores (:func:`write_parcel_store`, one per BOLD run and atlas) hold ``data``
(time, parcel) float32, z-scored per parcel, ``mean`` and ``std`` (parcel), the label
values as the ``parcel`` coordinate, ``n_voxels`` and ``coverage`` (parcel), with the
attributes above (``stats_dim: "parcel"``) plus ``atlas``, ``atlas_checksum`` (the
atlas files' :func:`~bidstrain.dataset.atlas.atlas_checksum`, which ``embed`` compares
with the model's), ``parcel_names`` and ``n_empty_parcels``; every array is one chunk.
A run's parcel store has the rows (and ``time``), ``frame_time`` and ``frame_valid`` of
its voxel store (one without ``frame_`` arrays reads as every frame valid); a parcel average
also holds them, with
``frame_subjects``, and records ``n_partial_parcels`` (parcels some
of its subjects' runs do not cover, averaged over the others). Their ``checksum`` is computed as a
voxel store's (below), so a rerun on unchanged data keeps a training run's identity.

The checksum (``xxh3-128:<hex>``) is of the store's content: every array's name, dtype,
shape and stored bytes, and the attributes but ``bidstrain_version``. It is computed while
the store is written (the ``data`` chunks as they stream), so two writes of the same
values give the same checksum whenever and by whichever version they ran, and a change of
any value, statistic or attribute gives another. XXH3's 128-bit hash (``xxhash``) finds
any accidental change as surely as a cryptographic one and is ten times faster than
sha256 (15 ms against 176 ms for the 276 MB of a 96x96x96x300 run, measured here): the
writer's thread, which a normalize job waits on, hashes every byte it writes. It is no
defence against a collision made on purpose, which a store's checksum never needed. The
normalize table lists it, and a training run is identified by it
(:mod:`bidstrain.train.checkpoint`).

Stores are Zarr v3 with consolidated metadata (the root ``zarr.json`` repeats every
array's metadata; :func:`consolidate`, the last step of every write), so that
``xarray.open_zarr(path)`` opens them as they are, without a warning. The workflow's own
reads pass ``consolidated=CONSOLIDATED`` (False: each array's own metadata, so a store
without consolidated metadata, or edited by hand, reads as it is). They are
written with zarr alone (``dimension_names`` and a CF ``coordinates`` attribute tell xarray
the layout), so a normalization job never imports xarray, pandas or dask.
Files: ``data`` is one Zarr v3 shard (one file, written as a stream by
:mod:`bidstrain.io.shards`) of inner chunks of whole volumes, about :data:`CHUNK_BYTES` each,
which the training loader reads one at a time; every other array is one chunk. A store is
therefore ``zarr.json`` plus ``.snakemake_timestamp/zarr.json`` plus two files per array:
12 for a T1w store (11 when its one volume's time is 0: zarr writes no chunk that holds
only the fill value), 16 for a BOLD run's (``frame_time``, ``frame_valid``), 22 for an
average (``n_subjects`` and the three ``frame_`` arrays), 16 for DWI (``bval``,
``bvec``), whatever the number of volumes. Float32 data is left
uncompressed (z-scored float32 compresses about 1.1x, so decode speed wins); reduced
precision (``normalize.storage``) stores float16, or float32 rounded to fewer mantissa
bits with numcodecs' BitRound and then zstd.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numcodecs
import numpy as np
import xxhash
import zarr
import zarr.codecs
import zarr.errors

from bidstrain import __version__
from bidstrain.errors import BidstrainError
from bidstrain.io.atomic import atomic_path
from bidstrain.io.shards import ShardStream

if TYPE_CHECKING:
    import xarray as xr

CONSOLIDATED = False
CHUNK_BYTES = 4 * 2**20
#: Zstandard level of reduced-precision data: level 1 compresses BitRound output about as
#: well as level 3 (0.48 against 0.46 of float32 at 7 bits kept) at twice the speed.
ZSTD_LEVEL = 1
#: Snakemake marks a finished ``directory()`` output by touching this entry inside it; an
#: empty Zarr group of that name serves, where a plain file would make zarr warn.
SNAKEMAKE_TIMESTAMP = ".snakemake_timestamp"
#: A standard deviation (raw units, as computed in float64 and as saved in ``std``) below
#: this marks a zero-variance voxel or volume: its z-scores are written as 0. nilearn's
#: threshold; the normalizers and the normalization check use this one value.
ZERO_STD = float(np.finfo(np.float64).eps)


@dataclass(frozen=True)
class Storage:
    """How ``data`` values are stored (config ``normalize.storage``).

    ``float32``
        Exact: the float32 z-scores, uncompressed (the default).
    ``float16``
        Half the bytes; 10 mantissa bits kept (relative error at most ``2**-11``), values
        up to 65504 in magnitude.
    ``bitround-N``
        float32 with all but ``N`` mantissa bits (1 to 22) rounded away by numcodecs'
        BitRound, then zstd: 7 bits store a z-scored run in about half the bytes. The
        rounding happens before zarr (BitRound's decoding is the identity), so the array's
        codecs are zstd alone, in the Zarr v3 specification: zarr warns about numcodecs
        codecs in v3 metadata on every open, and other implementations may not read them.
    """

    name: str
    dtype: np.dtype
    keepbits: int | None = None

    @classmethod
    def parse(cls, name: str) -> Storage:
        """The storage a config value names.

        Raises
        ------
        BidstrainError
            For a value that is none of the above.
        """
        if name in ("float32", "float16"):
            return cls(name, np.dtype(name))
        bits = name.removeprefix("bitround-")
        if bits != name and bits.isdigit() and 1 <= int(bits) <= 22:
            return cls(name, np.dtype("float32"), int(bits))
        raise BidstrainError(
            f"normalize.storage {name!r} is not float32, float16 or bitround-N with N from 1 to 22"
        )

    @property
    def relative_error(self) -> float:
        """Largest relative difference between a value and what the store holds of it."""
        if self.keepbits is not None:  # float32 rounding, then BitRound's
            return 2.0 ** -(self.keepbits + 1) + 2.0**-24
        return 2.0 ** -(np.finfo(self.dtype).nmant + 1)

    def compressors(self) -> list[zarr.codecs.ZstdCodec] | None:
        """The compressors of the ``data`` array."""
        return None if self.keepbits is None else [zarr.codecs.ZstdCodec(level=ZSTD_LEVEL)]

    def encode(self, values: np.ndarray) -> np.ndarray:
        """``values`` as stored: cast to :attr:`dtype`, C-contiguous, mantissas rounded."""
        with np.errstate(over="ignore"):  # float16 overflow: the writer reports it
            stored = np.ascontiguousarray(values, dtype=self.dtype)
        if self.keepbits is None:
            return stored
        rounded = numcodecs.BitRound(keepbits=self.keepbits).encode(stored)  # an integer view
        return rounded.view(self.dtype).reshape(stored.shape)


@dataclass(frozen=True, eq=False)
class StoreMeta:
    """The attributes of a store, typed (see the module docstring for their meaning).

    Build it with :func:`store_meta` (an open store), :func:`read_meta` (a path) or
    :meth:`from_attrs`. Fields without a default are required in every store.
    """

    modality: str
    subject: str
    source_path: str | tuple[str, ...]
    affine: np.ndarray
    ddof: int
    n_zero_variance: int
    stats_dim: str
    stats_from: tuple[str, ...]
    session: str = ""
    entities: Mapping[str, str] = field(default_factory=dict)
    repetition_time: float | None = None
    source_size: int = 0
    source_dtype: str | None = None
    source_orientation: str | None = None
    mask_source: str | None = None
    n_nonfinite: int = 0
    heldout: bool = False
    subjects: tuple[str, ...] = ()
    sessions: Mapping[str, list[str]] = field(default_factory=dict)
    truncated: Mapping[str, int] = field(default_factory=dict)
    mask_mode: str | None = None
    storage: str = "float32"
    confounds_strategy: str = "none"
    source_repetition_time: float | None = None
    time_method: str = "none"
    n_invalid_frames: int = 0
    bidstrain_version: str | None = None
    checksum: str | None = None

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, Any], path: str | Path | None = None) -> StoreMeta:
        """Typed view of a store's attribute mapping.

        Raises
        ------
        BidstrainError
            When a required attribute is missing, naming ``path``.
        """
        missing = [key for key in REQUIRED_ATTRS if key not in attrs]
        if missing:
            raise BidstrainError(f"incomplete store: missing attributes {missing}", path=path)
        values = {f.name: attrs[f.name] for f in fields(cls) if f.name in attrs}
        source = values["source_path"]
        tr = values.get("repetition_time")
        source_tr = values.get("source_repetition_time", tr)
        return cls(
            **{
                **values,
                "source_path": source if isinstance(source, str) else tuple(source),
                "affine": np.asarray(values["affine"], dtype=np.float64),
                "ddof": int(values["ddof"]),
                "n_zero_variance": int(values["n_zero_variance"]),
                "stats_from": tuple(values["stats_from"]),
                "session": values.get("session") or "",
                "entities": dict(values.get("entities") or {}),
                "repetition_time": None if tr is None else float(tr),
                "source_repetition_time": None if source_tr is None else float(source_tr),
                "n_invalid_frames": int(values.get("n_invalid_frames") or 0),
                "source_size": int(values.get("source_size") or 0),
                "n_nonfinite": int(values.get("n_nonfinite") or 0),
                "heldout": bool(values.get("heldout", False)),
                "subjects": tuple(values.get("subjects") or ()),
                "sessions": dict(values.get("sessions") or {}),
                "truncated": dict(values.get("truncated") or {}),
            }
        )

    @property
    def is_average(self) -> bool:
        """Whether the store is a cross-subject average (it lists its subjects)."""
        return bool(self.subjects)

    @property
    def precision(self) -> float:
        """Largest relative rounding error of a stored ``data`` value (:class:`Storage`)."""
        return Storage.parse(self.storage).relative_error

    @property
    def resampled(self) -> bool:
        """Whether the run was resampled in time (its frames are not its volumes)."""
        return self.time_method != "none"

    @property
    def per_voxel(self) -> bool:
        """Whether ``mean``/``std`` are per voxel (BOLD) rather than per volume."""
        return self.stats_dim == "voxel"

    def label(self, *, full: bool = True) -> str:
        """Who the store is about, for messages and figures.

        ``sub-01 ses-1 task-rest run-1 bold`` (``full``) or ``sub-01 ses-1``; an average is
        ``average of sub-01,02,03 ...``.
        """
        who = (
            ["average of sub-" + ",".join(self.subjects)]
            if self.is_average
            else [f"sub-{self.subject}"]
        )
        keys = ("ses", "task", "run") if full else ("ses",)
        entities = {"ses": self.session, **self.entities}
        who += [f"{key}-{entities[key]}" for key in keys if entities.get(key)]
        return " ".join([*who, self.modality] if full else who)


#: The attributes every store has: the fields of :class:`StoreMeta` without a default.
REQUIRED_ATTRS = tuple(
    f.name for f in fields(StoreMeta) if f.default is MISSING and f.default_factory is MISSING
)
#: Attributes outside the checksum: they say who wrote the store, not what it holds.
UNCHECKED_ATTRS = ("bidstrain_version", "checksum")
#: zarr's warning when it writes consolidated metadata to a v3 store (on every write).
CONSOLIDATION_WARNING = "Consolidated metadata is currently not part"


@dataclass(frozen=True)
class EmbeddingMeta:
    """The attributes of an embedding store (:mod:`bidstrain.embed`) that name the image."""

    modality: str
    subject: str
    session: str
    entities: Mapping[str, str]
    #: Whether its losses were counted as the model's training validation counted its
    #: own (the same ``loss_definition``; a store that records neither counts as such).
    losses_as_trained: bool = True

    @classmethod
    def of(cls, ds: xr.Dataset) -> EmbeddingMeta:
        """Typed view of an open embedding store's attributes."""
        attrs = ds.attrs
        return cls(
            modality=attrs["modality"],
            subject=attrs["subject"],
            session=attrs.get("session") or "",
            entities=dict(attrs.get("entities") or {}),
            losses_as_trained=attrs.get("loss_definition") == attrs.get("model_loss_definition"),
        )

    @property
    def label(self) -> str:
        """``sub-01 ses-1 task-rest run-2 bold``: the image, for figures."""
        entities = {"ses": self.session, **self.entities}
        parts = [f"sub-{self.subject}"]
        parts += [f"{key}-{entities[key]}" for key in ("ses", "task", "run") if entities.get(key)]
        return " ".join([*parts, self.modality])


def store_meta(ds: xr.Dataset) -> StoreMeta:
    """The typed attributes of an open store (:func:`open_store`)."""
    return StoreMeta.from_attrs(ds.attrs, ds.encoding.get("source"))


def read_meta(path: str | Path) -> StoreMeta:
    """The typed attributes of a store, read without xarray (its root metadata only).

    Raises
    ------
    BidstrainError
        When the store does not exist or lacks required attributes.
    """
    return group_meta(open_existing(path), path)


def group_meta(group: zarr.Group, path: str | Path) -> StoreMeta:
    """The typed attributes of a store's root group, opened already (:func:`open_existing`)."""
    return StoreMeta.from_attrs(group.attrs.asdict(), path)


def open_existing(
    path: str | Path, missing: str = "store not found (run the normalize stage first)"
) -> zarr.Group:
    """The store at ``path``, opened to read (metadata only: no array is read); a missing
    one is a :class:`BidstrainError` saying ``missing`` (what it is and which stage
    writes it)."""
    try:
        return zarr.open_group(path, mode="r", zarr_format=3, use_consolidated=CONSOLIDATED)
    except (FileNotFoundError, zarr.errors.NodeNotFoundError):
        raise BidstrainError(missing, path=path) from None


def read_dims(path: str | Path) -> tuple[int, int, tuple[int, ...]]:
    """``(volumes, masked voxels, grid shape)`` of a store, from its array metadata only;
    for a parcel store ``(frames, parcels, ())``."""
    group = zarr.open_group(path, mode="r", zarr_format=3, use_consolidated=CONSOLIDATED)
    n_time, n_voxel = group["data"].shape
    return n_time, n_voxel, tuple(group["mask"].shape) if "mask" in group else ()


def segments_of_valid(valid: np.ndarray) -> tuple[int, ...]:
    """Lengths of the runs of consecutive True entries of ``valid``, in order: the
    contiguous pieces of a BOLD store's ``data`` between left-out frames."""
    valid = np.asarray(valid, dtype=bool)
    edges = np.diff(np.concatenate([[0], valid.astype(np.int8), [0]]))
    return tuple(int(n) for n in np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1))


def read_segments(path: str | Path) -> tuple[int, ...]:
    """Lengths of the contiguous pieces of a store's ``data`` (frames never separated by
    a left-out frame), from its small ``frame_valid`` array; one piece of every volume for
    a store without one (T1w, DWI)."""
    group = zarr.open_group(path, mode="r", zarr_format=3, use_consolidated=CONSOLIDATED)
    if "frame_valid" in group:
        return segments_of_valid(group["frame_valid"][...])
    n_time = int(group["data"].shape[0])
    return (n_time,) if n_time else ()


def consolidate(path: str | Path) -> None:
    """Write the consolidated metadata of the store at ``path`` into its root ``zarr.json``.

    The last step of every write of a store (and of any later change of its metadata):
    ``xarray.open_zarr(path)`` reads it, and warns when a store has none. zarr's warning
    that consolidation is not part of the v3 specification is silenced here: the store
    keeps every array's own metadata too, which other readers use.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=CONSOLIDATION_WARNING)
        zarr.consolidate_metadata(str(path), zarr_format=3)


def store_checksum(path: str | Path) -> str | None:
    """The content checksum of a store of any kind (its ``checksum`` attribute), read from
    its root metadata only; None for a store without one.

    Raises
    ------
    BidstrainError
        When the store does not exist.
    """
    return open_existing(path, "store not found").attrs.get("checksum")


def new_checksum() -> xxhash.xxh3_128:
    """An empty store checksum: :func:`hash_array` adds the arrays, :func:`finish_checksum`
    the attributes."""
    return xxhash.xxh3_128()


def hash_array(digest: xxhash.xxh3_128, name: str, values: np.ndarray) -> None:
    """Add an array's name, dtype, shape and bytes to a store's checksum."""
    values = np.ascontiguousarray(values)
    digest.update(f"{name} {values.dtype.str} {values.shape}\n".encode())
    digest.update(values.data)


def finish_checksum(digest: xxhash.xxh3_128, attrs: Mapping[str, Any]) -> str:
    """Add the attributes but :data:`UNCHECKED_ATTRS` to ``digest``; the ``checksum``
    attribute (``xxh3-128:<hex>``)."""
    checked = {k: v for k, v in attrs.items() if k not in UNCHECKED_ATTRS}
    digest.update(json.dumps(checked, sort_keys=True, default=str).encode())
    return "xxh3-128:" + digest.hexdigest()


def chunk_volumes(n_time: int, n_voxel: int, chunk_bytes: int = CHUNK_BYTES) -> int:
    """Number of volumes per chunk so that a ``(volumes, n_voxel)`` float32 chunk is about
    ``chunk_bytes``, between 1 and ``n_time``."""
    return int(np.clip(chunk_bytes // max(4 * n_voxel, 1), 1, max(n_time, 1)))


def mask_coords(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Voxel indices ``(i, j, k)`` of a 3D boolean mask, in C order (the store's voxel order)."""
    return tuple(idx.astype(np.int32) for idx in np.nonzero(mask))


def _write_array(
    group: zarr.Group, name: str, dims: tuple[str, ...], values: np.ndarray, **kwargs
) -> None:
    """A small array written as one chunk (one file)."""
    values = np.asarray(values)
    array = group.create_array(
        name,
        shape=values.shape,
        chunks=tuple(max(n, 1) for n in values.shape),
        dtype=values.dtype,
        dimension_names=list(dims),
        compressors=None,
        **kwargs,
    )
    array[...] = values


class StoreWriter:
    """Fill the ``data`` array of a store being created by :func:`create_store`.

    Blocks of volumes come in time order; they are cut into inner chunks and streamed
    into the one shard file (:class:`bidstrain.io.shards.ShardStream`), with at most one
    partial chunk held back.
    """

    def __init__(
        self,
        root: Path,
        n_time: int,
        n_voxel: int,
        chunk: int,
        coord_names: list[str],
        storage: Storage,
    ):
        self.root = root
        self.n_time = n_time
        self.storage = storage
        self._group = zarr.open_group(root, mode="r+")
        self._coordinates = " ".join(coord_names)
        n_chunks = -(-n_time // chunk)
        data = self._group.create_array(
            "data",
            shape=(n_time, n_voxel),
            chunks=(chunk, n_voxel),
            shards=(n_chunks * chunk, n_voxel),
            dtype=storage.dtype,
            dimension_names=["time", "voxel"],
            fill_value=np.nan,
            attributes={"coordinates": self._coordinates},
            compressors=storage.compressors(),
        )
        self._stream = ShardStream(root / "data", data)
        self._pending = np.full((chunk, n_voxel), np.nan, dtype=storage.dtype)
        self._n_pending = 0
        self._next = 0
        self._variables: dict[str, tuple[tuple[str, ...], np.ndarray]] = {}
        self.attrs: dict[str, Any] = {"storage": storage.name}
        self._digest = new_checksum()

    def _hash_array(self, name: str, values: np.ndarray) -> None:
        """Add an array's name, dtype, shape and bytes to the checksum."""
        hash_array(self._digest, name, values)

    def _append(self, chunk: np.ndarray) -> None:
        """Append one inner chunk of ``data`` (as stored) to the shard and the checksum."""
        self._digest.update(np.ascontiguousarray(chunk).data)
        self._stream.append(chunk)

    def write(self, start: int, block: np.ndarray) -> None:
        """Write ``block`` (volumes x voxels) at time index ``start``, the volume after the
        last one written.

        Raises
        ------
        BidstrainError
            When a value does not fit the storage type (float16 beyond 65504).
        """
        if start != self._next or start + block.shape[0] > self.n_time:
            raise RuntimeError(
                f"store {self.root}: volumes {start}-{start + block.shape[0] - 1} written "
                f"after {self._next} of {self.n_time}; blocks must come in time order"
            )
        stored = self.storage.encode(block)
        if self.storage.dtype == np.float16 and (np.isinf(stored) & ~np.isinf(block)).any():
            raise BidstrainError(
                f"values up to {float(np.nanmax(np.abs(block))):.4g} in volumes "
                f"{start}-{start + block.shape[0] - 1} do not fit float16 (65504 at most); "
                "set normalize.storage to float32 or bitround-N",
                path=self.root,
            )
        chunk, rows = self._pending.shape[0], 0
        while rows < stored.shape[0]:
            take = min(chunk - self._n_pending, stored.shape[0] - rows)
            if take == chunk:  # a whole chunk, and nothing pending: no copy
                self._append(stored[rows : rows + chunk])
            else:
                self._pending[self._n_pending : self._n_pending + take] = stored[rows : rows + take]
                self._n_pending += take
                if self._n_pending == chunk:
                    self._flush()
            rows += take
        self._next += stored.shape[0]

    def _flush(self) -> None:
        self._pending[self._n_pending :] = np.nan  # the fill value past the last volume
        self._append(self._pending)
        self._n_pending = 0

    def add_variable(self, name: str, dims: tuple[str, ...], values: np.ndarray) -> None:
        """Add a variable (``mean``, ``std``, ``n_subjects``, ...) written when the store closes."""
        self._variables[name] = (dims, np.asarray(values))

    def _close(self) -> None:
        if self._next != self.n_time:
            raise RuntimeError(
                f"store {self.root}: volumes {self._next}-{self.n_time - 1} never written"
            )
        if self._n_pending:
            self._flush()
        self._stream.close()
        for name in ("mean", "std"):
            if name not in self._variables:
                raise RuntimeError(f"store {self.root}: variable {name!r} never written")
        missing_attrs = [key for key in REQUIRED_ATTRS if key not in self.attrs]
        if missing_attrs:
            raise RuntimeError(f"store {self.root}: attributes {missing_attrs} never set")
        StoreMeta.from_attrs(self.attrs)  # what readers will parse must parse now
        for name, (dims, values) in self._variables.items():
            _write_array(
                self._group, name, dims, values, attributes={"coordinates": self._coordinates}
            )
            self._hash_array(name, values)
        checksum = finish_checksum(self._digest, self.attrs)
        self._group.attrs.update(
            {**self.attrs, "bidstrain_version": __version__, "checksum": checksum}
        )
        zarr.open_group(self.root / SNAKEMAKE_TIMESTAMP, mode="w")
        consolidate(self.root)


@contextmanager
def create_store(
    path: str | Path,
    *,
    mask: np.ndarray,
    affine: np.ndarray,
    time: np.ndarray,
    time_coords: Mapping[str, tuple[tuple[str, ...], np.ndarray]] | None = None,
    chunk: int | None = None,
    storage: str = "float32",
) -> Iterator[StoreWriter]:
    """Create a store atomically: it appears at ``path`` only when the block succeeds.

    A write that runs out of disk space leaves no store (nor a temporary) behind and raises
    a :class:`~bidstrain.errors.BidstrainError` naming the store and the free space
    (:func:`bidstrain.io.atomic.atomic_path`).

    Parameters
    ----------
    path : str or Path
        Final store path (``*.zarr``). An existing store there is replaced only on success.
    mask : ndarray of bool, shape (x, y, z)
        Mask whose True voxels (in C order) are the store's voxels.
    affine : ndarray, shape (4, 4)
        Voxel-to-world affine of the grid.
    time : ndarray, shape (n_time,)
        Acquisition time of each volume in seconds.
    time_coords : mapping, optional
        Extra coordinates ``name -> (dims, values)`` along ``time`` (DWI ``bval``, ``bvec``).
    chunk : int, optional
        Volumes per inner chunk; by default about :data:`CHUNK_BYTES` per chunk.
    storage : str
        How ``data`` is stored (:class:`Storage`); recorded as the ``storage`` attribute.

    Yields
    ------
    StoreWriter
        Call ``write`` for every block of volumes in time order, ``add_variable`` for
        ``mean`` and ``std`` (and any extra variable) and fill ``attrs`` with
        :data:`REQUIRED_ATTRS`.
    """
    mask = np.asarray(mask, dtype=bool)
    n_voxel = int(mask.sum())
    time = np.asarray(time, dtype=np.float64)
    coords = {"time": (("time",), time), **(time_coords or {})}
    affine = np.asarray(affine, dtype=float).tolist()
    parsed = Storage.parse(storage)
    with atomic_path(path) as tmp:
        group = zarr.open_group(tmp, mode="w", zarr_format=3)
        group.attrs["affine"] = affine
        _write_array(group, "mask", ("x", "y", "z"), mask)
        for name, (dims, values) in coords.items():
            _write_array(group, name, dims, values)
        writer = StoreWriter(
            tmp,
            time.size,
            n_voxel,
            chunk or chunk_volumes(time.size, n_voxel),
            list(coords),
            parsed,
        )
        writer.attrs["affine"] = affine
        writer._hash_array("mask", mask)
        for name, (_, values) in coords.items():
            writer._hash_array(name, values)
        try:
            yield writer
            writer._close()
        finally:
            writer._stream.abort()


def open_store(path: str | Path, *, use_dask: bool = True) -> xr.Dataset:
    """Open a store lazily with xarray, with the voxel coordinates ``i, j, k`` added.

    Parameters
    ----------
    path : str or Path
        The store.
    use_dask : bool
        Back variables with dask arrays (the default), one dask chunk per inner chunk of
        ``data``. False reads go straight to Zarr, with no task graph per read: faster for
        many small reads of one store at a time.

    Raises
    ------
    BidstrainError
        When the store does not exist or lacks the variables and attributes of the layout.
    """
    import xarray as xr  # imported here: writers need only zarr

    path = Path(path)
    if not path.is_dir():
        raise BidstrainError("store not found (run the normalize stage first)", path=path)
    # Dask chunks follow the inner chunks, not the shard (the whole run in one task).
    chunks = {"time": zarr.open_array(path / "data", mode="r").chunks[0]} if use_dask else None
    ds = xr.open_zarr(path, consolidated=CONSOLIDATED, chunks=chunks)
    missing = [v for v in ("data", "mean", "std", "mask") if v not in ds.variables]
    missing += [a for a in REQUIRED_ATTRS if a not in ds.attrs]
    if missing:
        raise BidstrainError(f"incomplete store: missing {missing}", path=path)
    i, j, k = mask_coords(ds["mask"].values)
    return ds.assign_coords(i=("voxel", i), j=("voxel", j), k=("voxel", k))


def parcel_meta(path: str | Path) -> StoreMeta:
    """The attributes of a parcel store.

    Raises
    ------
    BidstrainError
        When the store does not exist or is not a parcel store.
    """
    meta = read_meta(path)
    if meta.stats_dim != "parcel":
        raise BidstrainError(f"not a parcel store (stats_dim {meta.stats_dim!r})", path=path)
    return meta


def open_parcel_store(path: str | Path) -> xr.Dataset:
    """Open a parcel store (layout: module docstring) with xarray, its arrays read from
    Zarr as they are indexed (no dask).

    Raises
    ------
    BidstrainError
        When the store does not exist or is not a parcel store.
    """
    import xarray as xr

    parcel_meta(path)
    ds = xr.open_zarr(path, consolidated=CONSOLIDATED, chunks=None)
    missing = [v for v in ("data", "mean", "std", "parcel") if v not in ds.variables]
    if missing:
        raise BidstrainError(f"incomplete parcel store: missing {missing}", path=path)
    return ds


def to_grid(ds: xr.Dataset, values: np.ndarray, fill: float = 0.0) -> np.ndarray:
    """Put voxel values back on the 3D grid of the store's mask.

    Parameters
    ----------
    ds : xarray.Dataset
        An open store.
    values : ndarray, shape (..., n_voxel)
        Values in the store's voxel order; leading dimensions are kept.
    fill : float
        Value outside the mask.

    Returns
    -------
    ndarray, shape (..., x, y, z)
    """
    values = np.asarray(values)
    grid = np.full(values.shape[:-1] + ds.mask.shape, fill, dtype=values.dtype)
    grid[..., ds.i.values, ds.j.values, ds.k.values] = values
    return grid


#: The attributes only a parcel store has (beside :class:`StoreMeta`'s).
PARCEL_ATTRS = (
    "atlas",
    "atlas_checksum",
    "parcel_names",
    "n_empty_parcels",
    "n_partial_parcels",
)


def read_parcel_attrs(path: str | Path) -> dict[str, Any]:
    """A parcel store's own attributes (:data:`PARCEL_ATTRS`: the atlas, the parcel
    names, the empty parcels), those it holds."""
    group = zarr.open_group(path, mode="r", zarr_format=3, use_consolidated=CONSOLIDATED)
    return {key: group.attrs[key] for key in PARCEL_ATTRS if key in group.attrs}


def write_parcel_store(
    path: str | Path,
    *,
    data: np.ndarray,
    mean: np.ndarray,
    std: np.ndarray,
    parcels: np.ndarray,
    n_voxels: np.ndarray,
    coverage: np.ndarray,
    time: np.ndarray,
    attrs: Mapping[str, Any],
    frames: Mapping[str, np.ndarray] | None = None,
) -> None:
    """Write a parcel store atomically (layout: module docstring).

    Parameters
    ----------
    path : str or Path
        The store (``*.zarr``); replaced only on success.
    data : ndarray, shape (n_time, n_parcels)
        Z-scored parcel time series (stored as float32).
    mean, std : ndarray, shape (n_parcels,)
        The statistics they were z-scored with.
    parcels : ndarray of int, shape (n_parcels,)
        The label value of each parcel.
    n_voxels, coverage : ndarray, shape (n_parcels,)
        Voxels of each parcel in the run's mask, and their fraction of the parcel.
    time : ndarray, shape (n_time,)
        Onset of each frame in seconds.
    attrs : mapping
        :data:`REQUIRED_ATTRS` and the parcel attributes.
    frames : mapping of str to ndarray, shape (n_frames,), optional
        Arrays along the run's time grid (dim ``frame``): ``frame_time`` and
        ``frame_valid``, and an average's ``frame_subjects``.
    """
    missing = [key for key in REQUIRED_ATTRS if key not in attrs]
    if missing:
        raise RuntimeError(f"parcel store {path}: attributes {missing} never set")
    StoreMeta.from_attrs(attrs)
    coords = {"coordinates": "time parcel"}
    arrays = (
        ("time", ("time",), np.asarray(time, dtype=np.float64), None),
        ("parcel", ("parcel",), np.asarray(parcels, dtype=np.int32), None),
        ("data", ("time", "parcel"), np.asarray(data, np.float32), coords),
        ("mean", ("parcel",), np.asarray(mean, np.float32), coords),
        ("std", ("parcel",), np.asarray(std, np.float32), coords),
        ("n_voxels", ("parcel",), np.asarray(n_voxels, np.int64), coords),
        ("coverage", ("parcel",), np.asarray(coverage, np.float64), coords),
        *((name, ("frame",), np.asarray(values), None) for name, values in (frames or {}).items()),
    )
    write_small_store(path, arrays, attrs)


def write_small_store(
    path: str | Path,
    arrays: Sequence[tuple[str, tuple[str, ...], np.ndarray, Mapping[str, Any] | None]],
    attrs: Mapping[str, Any],
) -> None:
    """Write a store of small arrays (one chunk each) atomically, with its ``checksum``
    and ``bidstrain_version`` attributes (module docstring).

    Parameters
    ----------
    path : str or Path
        The store (``*.zarr``); replaced only on success.
    arrays : sequence of (name, dims, values, attributes)
        Each array, its dimension names and its zarr attributes (or None).
    attrs : mapping
        The store's attributes (JSON-serializable).
    """
    digest = new_checksum()
    with atomic_path(path) as tmp:
        group = zarr.open_group(tmp, mode="w", zarr_format=3)
        for name, dims, values, attributes in arrays:
            _write_array(group, name, dims, values, attributes=attributes)
            hash_array(digest, name, values)
        checksum = finish_checksum(digest, attrs)
        group.attrs.update({**attrs, "bidstrain_version": __version__, "checksum": checksum})
        zarr.open_group(tmp / SNAKEMAKE_TIMESTAMP, mode="w")
        consolidate(tmp)


def read_parcel_stats(path: str | Path) -> tuple[int, np.ndarray, np.ndarray, StoreMeta]:
    """``(frames, mean, std, meta)`` of a parcel store, read with zarr alone.

    Raises
    ------
    BidstrainError
        When the store does not exist or is not a parcel store.
    """
    meta = parcel_meta(path)
    group = zarr.open_group(path, mode="r", zarr_format=3, use_consolidated=CONSOLIDATED)
    mean = np.asarray(group["mean"][...], dtype=np.float64)
    return int(group["data"].shape[0]), mean, np.asarray(group["std"][...], np.float64), meta


def read_parcel_voxel_counts(path: str | Path) -> np.ndarray:
    """``n_voxels`` of a parcel store: each parcel's voxels in its run's mask."""
    group = open_existing(path, "parcel store not found (run the normalize stage first)")
    return np.asarray(group["n_voxels"][...], dtype=np.int64)


# ---- Feature stores: per-TR features of one stimulus file (bidstrain.stimuli) -----------
#
# A feature store holds the features of one stimulus file (a film, a sound, a transcript)
# in bins of one repetition time on the stimulus's own clock (bin k covers
# [k * TR, (k + 1) * TR) seconds from the stimulus's start)::
#
#     <kind>            (time, <kind>_feature)  float32  raw features of a kind: video,
#                                                        audio, text
#     <kind>_raw_mean   (<kind>_feature,)       float64  their mean over the bins (raw scale)
#     <kind>_raw_std    (<kind>_feature,)       float64  their standard deviation (ddof 0)
#     time              (time,)                 float64  start of each bin in seconds
#
# Attributes (read through FeatureMeta): ``stimulus`` (the file), ``source_size`` (bytes),
# ``repetition_time``, ``kinds``, ``units`` (kind -> what one raw value means),
# ``shapes`` (kind -> the shape of one bin's features before flattening, e.g. a frame's
# height, width, channels), ``notes`` (kind -> free text, e.g. unknown words) and
# ``bidstrain_version``. The features are stored raw: z-scoring uses statistics of the
# training runs (bidstrain.stimuli.align), never of the held-out ones.


@dataclass(frozen=True)
class FeatureMeta:
    """The attributes of a feature store (see the comment above :class:`FeatureMeta`)."""

    stimulus: str
    repetition_time: float
    kinds: tuple[str, ...]
    units: Mapping[str, str]
    shapes: Mapping[str, tuple[int, ...]]
    source_size: int = 0
    notes: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class FeatureStore:
    """A feature store read into memory (:func:`read_feature_store`)."""

    meta: FeatureMeta
    time: np.ndarray
    features: Mapping[str, np.ndarray]
    raw_mean: Mapping[str, np.ndarray]
    raw_std: Mapping[str, np.ndarray]


def write_feature_store(
    path: str | Path, meta: FeatureMeta, features: Mapping[str, np.ndarray]
) -> None:
    """Write the per-TR features of one stimulus file atomically.

    Parameters
    ----------
    path : str or Path
        The store (``*.zarr``); an existing one is replaced only on success.
    meta : FeatureMeta
        Its attributes; ``meta.kinds`` must be the keys of ``features``.
    features : mapping of str to ndarray, shape (time, ...)
        Raw features of each kind, one row per bin; every kind has the same number of
        bins. Rows are flattened to one feature axis (``meta.shapes`` keeps their shape).
    """
    if tuple(features) != tuple(meta.kinds):
        raise ValueError(f"features {list(features)} differ from meta.kinds {meta.kinds}")
    n_bins = {values.shape[0] for values in features.values()}
    if len(n_bins) > 1:
        raise ValueError(f"feature kinds have different numbers of bins: {n_bins}")
    (n_time,) = n_bins or {0}
    arrays = [("time", ("time",), np.arange(n_time, dtype=np.float64) * meta.repetition_time, None)]
    for kind, values in features.items():
        flat = np.asarray(values, dtype=np.float64).reshape(n_time, -1)
        dims = (f"{kind}_feature",)
        arrays += [
            (kind, ("time", *dims), flat.astype(np.float32), None),
            (f"{kind}_raw_mean", dims, flat.mean(axis=0), None),
            (f"{kind}_raw_std", dims, flat.std(axis=0), None),
        ]
    attrs = {
        "stimulus": meta.stimulus,
        "source_size": int(meta.source_size),
        "repetition_time": float(meta.repetition_time),
        "kinds": list(meta.kinds),
        "units": dict(meta.units),
        "shapes": {kind: list(shape) for kind, shape in meta.shapes.items()},
        "notes": dict(meta.notes),
    }
    write_small_store(path, arrays, attrs)


def read_feature_store(path: str | Path) -> FeatureStore:
    """Read a feature store written by :func:`write_feature_store`.

    Raises
    ------
    BidstrainError
        When the store does not exist or lacks an attribute or array of the layout.
    """
    group = open_existing(path, "feature store not found (run the stimuli stage first)")
    attrs = group.attrs.asdict()
    try:
        meta = FeatureMeta(
            stimulus=attrs["stimulus"],
            repetition_time=float(attrs["repetition_time"]),
            kinds=tuple(attrs["kinds"]),
            units=dict(attrs["units"]),
            shapes={kind: tuple(shape) for kind, shape in attrs["shapes"].items()},
            source_size=int(attrs.get("source_size", 0)),
            notes=dict(attrs.get("notes") or {}),
        )
        arrays = {name: group[name][...] for name in group.array_keys()}
        return FeatureStore(
            meta=meta,
            time=arrays["time"],
            features={kind: arrays[kind] for kind in meta.kinds},
            raw_mean={kind: arrays[f"{kind}_raw_mean"] for kind in meta.kinds},
            raw_std={kind: arrays[f"{kind}_raw_std"] for kind in meta.kinds},
        )
    except KeyError as error:
        raise BidstrainError(f"incomplete feature store: missing {error}", path=path) from None


def read_frames(path: str | Path) -> tuple[np.ndarray, np.ndarray | None, StoreMeta]:
    """``(time, frame_time, meta)`` of a BOLD or average store, read with zarr alone:
    the onsets of the frames in ``data``, and of every frame of the run's time grid
    (None where the store has no ``frame_time``).

    Raises
    ------
    BidstrainError
        When the store does not exist or lacks ``time``.
    """
    meta = read_meta(path)
    group = zarr.open_group(path, mode="r", zarr_format=3, use_consolidated=CONSOLIDATED)
    if "time" not in group:
        raise BidstrainError("store without a time axis", path=path)
    frames = group["frame_time"][...] if "frame_time" in group else None
    return np.asarray(group["time"][...], dtype=np.float64), frames, meta


# ---- Aligned stores: one kind of stimulus features on one BOLD run's frames -------------
#
# An aligned store (bidstrain.stimuli.alignment) holds the features of one kind (video,
# audio, text) of the stimuli a run (or a cross-subject average) presented, on the frames
# of its BOLD store, one row per frame of ``data`` (the same ``time`` coordinate)::
#
#     features     (time, feature)  float32  delayed features, z-scored with the training
#                                            runs' statistics (raw with normalize false)
#     time         (time,)          float64  onset of each frame in seconds (the BOLD's)
#     delay        (feature,)       int64    the delay of each column in frames (0 with
#                                            the hrf method)
#     source_feature (feature,)     int64    the column of the feature store it comes from
#     mean, std    (feature,)       float64  training statistics (std 1 where constant)
#     constant     (feature,)       bool     constant over every training run
#     raw_mean, raw_std, raw_min, raw_max (feature,)  float64  this run's raw scale
#
# Attributes: ``kind``, ``normalized``, ``delay_method``, ``delays``, ``repetition_time``
# (the BOLD store's), ``source_repetition_time`` (the feature bins'), ``bold_store``,
# ``subjects``, ``heldout``, ``training_runs`` (the BOLD stores whose features gave the
# statistics), ``stimuli`` (list of {stimulus, onset, duration}), ``decoder`` (the
# feature keys of the kind, units and shape of one bin), ``run_seconds``,
# ``seconds_without_stimulus`` and ``bidstrain_version``.

ALIGNED_ARRAYS = (
    "delay",
    "source_feature",
    "mean",
    "std",
    "constant",
    "raw_mean",
    "raw_std",
    "raw_min",
    "raw_max",
)


@dataclass(frozen=True)
class AlignedStore:
    """An aligned store read into memory (:func:`read_aligned_store`); ``arrays`` holds
    :data:`ALIGNED_ARRAYS` by name."""

    features: np.ndarray
    time: np.ndarray
    arrays: Mapping[str, np.ndarray]
    attrs: Mapping[str, Any]

    @property
    def kind(self) -> str:
        """``video``, ``audio`` or ``text``."""
        return self.attrs["kind"]

    @property
    def label(self) -> str:
        """The run or average the features are aligned to."""
        return self.attrs["label"]

    @property
    def bold_store(self) -> str:
        """The BOLD store whose frames the rows follow."""
        return self.attrs["bold_store"]

    @property
    def normalized(self) -> bool:
        """Whether the features are z-scored (``stimuli.normalize``)."""
        return bool(self.attrs["normalized"])

    @property
    def delay_method(self) -> str:
        """``delays`` (stacked delayed copies) or ``hrf`` (``stimuli.delay_method``)."""
        return self.attrs["delay_method"]

    @property
    def heldout(self) -> bool:
        """Whether the run is held out (it uses the training runs' statistics)."""
        return bool(self.attrs["heldout"])

    @property
    def repetition_time(self) -> float:
        """Seconds between the rows (the BOLD store's TR)."""
        return float(self.attrs["repetition_time"])

    @property
    def decoder(self) -> Mapping[str, Any]:
        """The feature job's decoder settings (``units`` among them)."""
        return self.attrs["decoder"]

    @property
    def training_runs(self) -> list[str]:
        """The runs the z-score statistics come from."""
        return list(self.attrs["training_runs"])


def write_aligned_store(
    path: str | Path,
    features: np.ndarray,
    time: np.ndarray,
    arrays: Mapping[str, np.ndarray],
    attrs: Mapping[str, Any],
) -> None:
    """Write an aligned store atomically (layout: the comment above :class:`AlignedStore`).

    Parameters
    ----------
    path : str or Path
        The store (``*.zarr``); replaced only on success.
    features : ndarray, shape (n_time, n_features)
        Stored as float32.
    time : ndarray, shape (n_time,)
        The BOLD store's frame onsets.
    arrays : mapping of str to ndarray, shape (n_features,)
        Every name of :data:`ALIGNED_ARRAYS`.
    attrs : mapping
        JSON-serializable attributes, ``kind`` among them.
    """
    missing = [name for name in ALIGNED_ARRAYS if name not in arrays]
    if missing or "kind" not in attrs:
        raise ValueError(f"aligned store {path}: missing {missing or ['kind']}")
    stored = [
        ("time", ("time",), np.asarray(time, dtype=np.float64), None),
        (
            "features",
            ("time", "feature"),
            np.asarray(features, dtype=np.float32),
            {"coordinates": "time"},
        ),
        *((name, ("feature",), np.asarray(arrays[name]), None) for name in ALIGNED_ARRAYS),
    ]
    write_small_store(path, stored, attrs)


def read_aligned_store(path: str | Path) -> AlignedStore:
    """Read an aligned store written by :func:`write_aligned_store`.

    Raises
    ------
    BidstrainError
        When the store does not exist or lacks an array of the layout.
    """
    group = open_existing(path, "aligned stimulus store not found (run the stimuli stage first)")
    try:
        return AlignedStore(
            features=group["features"][...],
            time=group["time"][...],
            arrays={name: group[name][...] for name in ALIGNED_ARRAYS},
            attrs=group.attrs.asdict(),
        )
    except KeyError as error:
        raise BidstrainError(f"incomplete aligned store: missing {error}", path=path) from None
