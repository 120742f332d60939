"""The one place that knows the Zarr/xarray layout of a bidstrain store.

A store holds one image (a BOLD run, a T1w, a DWI series) or one cross-subject average,
masked to a brain mask and flattened to ``(time, voxel)``::

    data   (time, voxel)  float32   normalized values; T1w has one time point
    mean   (voxel,) for BOLD, (time,) for T1w/DWI   float32   the statistics used
    std    same dims as mean                          float32
    mask   (x, y, z)      bool      the 3D mask; voxel n sits at (i[n], j[n], k[n])
    coords i, j, k (voxel) int32; time (time) float64 acquisition time in seconds;
           DWI adds bval (time) and bvec (time, direction)

Attributes (``ds.attrs``) are read through :class:`StoreMeta` (:func:`store_meta` of an
open store, :func:`read_meta` of a path), never by key elsewhere: ``modality``,
``subject``, ``session``, ``entities`` (dict), ``affine`` (4x4 list), ``repetition_time``
(s, or None), ``source_path``, ``source_size`` (bytes), ``ddof``, ``n_zero_variance``,
``n_nonfinite``, ``stats_dim`` (``"voxel"`` or ``"time"``), ``stats_from`` (the source
files the statistics were fitted on), ``heldout``, ``mask_source``, ``source_dtype``,
``source_orientation`` and ``bidstrain_version``; averages add ``subjects``,
``sessions``, ``truncated`` and ``mask_mode``.

Stores are Zarr v3 without consolidated metadata (consolidation is not part of the v3
spec and makes xarray warn); every read passes ``consolidated=CONSOLIDATED``. They are
written with zarr alone (``dimension_names`` and a CF ``coordinates`` attribute tell xarray
the layout), so a normalization job never imports xarray, pandas or dask.
Data is chunked as a block of volumes by all voxels, about :data:`CHUNK_BYTES` each, and
left uncompressed: z-scored float32 compresses about 1.1x, so decode speed wins.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import zarr

from bidstrain import __version__
from bidstrain.atomic import atomic_path
from bidstrain.errors import BidstrainError

if TYPE_CHECKING:
    import xarray as xr

CONSOLIDATED = False
CHUNK_BYTES = 4 * 2**20
#: Snakemake marks a finished ``directory()`` output by touching this entry inside it; an
#: empty Zarr group of that name serves, where a plain file would make zarr warn.
SNAKEMAKE_TIMESTAMP = ".snakemake_timestamp"
#: A standard deviation (raw units, as computed in float64 and as saved in ``std``) below
#: this marks a zero-variance voxel or volume: its z-scores are written as 0. nilearn's
#: threshold; the normalizers and the normalization check use this one value.
ZERO_STD = float(np.finfo(np.float64).eps)


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
    bidstrain_version: str | None = None

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
    try:
        group = zarr.open_group(path, mode="r", zarr_format=3, use_consolidated=CONSOLIDATED)
    except FileNotFoundError:
        raise BidstrainError("store not found (run the normalize stage first)", path=path) from None
    return StoreMeta.from_attrs(group.attrs.asdict(), path)


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
    values = np.asarray(values)
    array = group.create_array(
        name,
        shape=values.shape,
        dtype=values.dtype,
        dimension_names=list(dims),
        compressors=None,
        **kwargs,
    )
    array[...] = values


class StoreWriter:
    """Fill the ``data`` array of a store being created by :func:`create_store`."""

    def __init__(self, root: Path, n_time: int, n_voxel: int, chunk: int, coord_names: list[str]):
        self.root = root
        self.n_time = n_time
        self._group = zarr.open_group(root, mode="r+")
        self._coordinates = " ".join(coord_names)
        self._data = self._group.create_array(
            "data",
            shape=(n_time, n_voxel),
            chunks=(chunk, n_voxel),
            dtype="float32",
            dimension_names=["time", "voxel"],
            fill_value=np.nan,
            compressors=None,
            attributes={"coordinates": self._coordinates},
        )
        self._written = np.zeros(n_time, dtype=bool)
        self._variables: dict[str, tuple[tuple[str, ...], np.ndarray]] = {}
        self.attrs: dict[str, Any] = {}

    def write(self, start: int, block: np.ndarray) -> None:
        """Write ``block`` (volumes x voxels) at time index ``start``."""
        stop = start + block.shape[0]
        self._data[start:stop] = block.astype(np.float32, copy=False)
        self._written[start:stop] = True

    def add_variable(self, name: str, dims: tuple[str, ...], values: np.ndarray) -> None:
        """Add a variable (``mean``, ``std``, ``n_subjects``, ...) written when the store closes."""
        self._variables[name] = (dims, np.asarray(values))

    def _close(self) -> None:
        if not self._written.all():
            missing = np.flatnonzero(~self._written)
            raise RuntimeError(
                f"store {self.root}: volumes {missing[:5].tolist()}... never written"
            )
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
        self._group.attrs.update({**self.attrs, "bidstrain_version": __version__})
        zarr.open_group(self.root / SNAKEMAKE_TIMESTAMP, mode="w")


@contextmanager
def create_store(
    path: str | Path,
    *,
    mask: np.ndarray,
    affine: np.ndarray,
    time: np.ndarray,
    time_coords: Mapping[str, tuple[tuple[str, ...], np.ndarray]] | None = None,
    chunk: int | None = None,
) -> Iterator[StoreWriter]:
    """Create a store atomically: it appears at ``path`` only when the block succeeds.

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
        Volumes per chunk; by default about :data:`CHUNK_BYTES` per chunk.

    Yields
    ------
    StoreWriter
        Call ``write`` for every block of volumes, ``add_variable`` for ``mean`` and ``std``
        (and any extra variable) and fill ``attrs`` with :data:`REQUIRED_ATTRS`.
    """
    mask = np.asarray(mask, dtype=bool)
    i, j, k = mask_coords(mask)
    time = np.asarray(time, dtype=np.float64)
    coords = {
        "i": (("voxel",), i),
        "j": (("voxel",), j),
        "k": (("voxel",), k),
        "time": (("time",), time),
    }
    coords.update(time_coords or {})
    affine = np.asarray(affine, dtype=float).tolist()
    with atomic_path(path) as tmp:
        group = zarr.open_group(tmp, mode="w", zarr_format=3)
        group.attrs["affine"] = affine
        _write_array(group, "mask", ("x", "y", "z"), mask)
        for name, (dims, values) in coords.items():
            _write_array(group, name, dims, values)
        writer = StoreWriter(
            tmp, time.size, i.size, chunk or chunk_volumes(time.size, i.size), list(coords)
        )
        writer.attrs["affine"] = affine
        yield writer
        writer._close()


def open_store(path: str | Path, *, use_dask: bool = True) -> xr.Dataset:
    """Open a store lazily with xarray.

    Parameters
    ----------
    path : str or Path
        The store.
    use_dask : bool
        Back variables with dask arrays (the default). False reads go straight to Zarr,
        with no task graph per read: faster for many small reads of one store at a time.

    Raises
    ------
    BidstrainError
        When the store does not exist or lacks the variables and attributes of the layout.
    """
    import xarray as xr  # imported here: writers need only zarr

    path = Path(path)
    if not path.is_dir():
        raise BidstrainError("store not found (run the normalize stage first)", path=path)
    ds = xr.open_zarr(path, consolidated=CONSOLIDATED, **({} if use_dask else {"chunks": None}))
    missing = [v for v in ("data", "mean", "std", "mask") if v not in ds.variables]
    missing += [a for a in REQUIRED_ATTRS if a not in ds.attrs]
    if missing:
        raise BidstrainError(f"incomplete store: missing {missing}", path=path)
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
