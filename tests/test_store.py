"""Unit tests of the store layout: typed metadata, grids, labels."""

from __future__ import annotations

import errno
import os
import re
import shutil
import socket
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import zarr
import zarr.codecs
from bidstrain.errors import BidstrainError
from bidstrain.io.grid import AFFINE_TOLERANCE, grid_mismatch
from bidstrain.io.shards import ShardStream
from bidstrain.io.store import (
    CONSOLIDATED,
    REQUIRED_ATTRS,
    Storage,
    StoreMeta,
    create_store,
    open_store,
    read_meta,
    store_meta,
)

PACKAGE = Path(__file__).resolve().parents[1] / "workflow" / "bidstrain"
ATTRS = {
    "modality": "bold",
    "subject": "01",
    "session": "2",
    "entities": {"sub": "01", "ses": "2", "task": "rest", "run": "1"},
    "source_path": "/data/sub-01_ses-2_task-rest_run-1_bold.nii.gz",
    "source_size": 1234,
    "repetition_time": 2.0,
    "ddof": 1,
    "n_zero_variance": 3,
    "n_nonfinite": 0,
    "stats_dim": "voxel",
    "stats_from": ["/data/sub-01_ses-2_task-rest_run-1_bold.nii.gz"],
    "heldout": False,
    "mask_source": "epi",
}


def count_files(path: str | Path) -> int:
    """Number of files in a store (what a filesystem's file quota counts)."""
    return sum(len(files) for _, _, files in os.walk(path))


def write_store(path: Path, attrs: dict, n_time: int = 5) -> Path:
    mask = np.zeros((4, 5, 3), dtype=bool)
    mask[1:3, 1:4, 1] = True
    n_voxel = int(mask.sum())
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    with create_store(path, mask=mask, affine=affine, time=np.arange(n_time) * 2.0) as writer:
        writer.write(0, np.arange(n_time * n_voxel, dtype=np.float32).reshape(n_time, n_voxel))
        writer.add_variable("mean", ("voxel",), np.zeros(n_voxel, dtype=np.float32))
        writer.add_variable("std", ("voxel",), np.ones(n_voxel, dtype=np.float32))
        writer.attrs.update(attrs)
    return path


def test_metadata_reads_the_same_from_a_path_and_from_an_open_store(tmp_path):
    path = write_store(tmp_path / "s.zarr", ATTRS)
    from_path, from_ds = read_meta(path), store_meta(open_store(path))
    for meta in (from_path, from_ds):
        assert meta.modality == "bold" and meta.subject == "01" and meta.session == "2"
        assert meta.repetition_time == 2.0 and meta.ddof == 1 and meta.n_zero_variance == 3
        assert meta.stats_from == (ATTRS["source_path"],) and meta.per_voxel
        assert not meta.heldout and not meta.is_average and meta.mask_source == "epi"
        np.testing.assert_array_equal(meta.affine, np.diag([2.0, 2.0, 2.0, 1.0]))
        assert meta.affine.dtype == np.float64
        assert meta.bidstrain_version is not None
    assert from_path.label() == "sub-01 ses-2 task-rest run-1 bold"
    assert from_path.label(full=False) == "sub-01 ses-2"


def test_optional_attributes_take_their_defaults_and_averages_are_labelled_so():
    required = {key: ATTRS[key] for key in REQUIRED_ATTRS if key != "affine"}
    meta = StoreMeta.from_attrs({**required, "affine": np.eye(4).tolist()})
    assert meta.session == "" and meta.entities == {} and meta.repetition_time is None
    assert meta.n_nonfinite == 0 and meta.heldout is False and meta.truncated == {}
    assert meta.label() == "sub-01 bold" and meta.label(full=False) == "sub-01"
    average = StoreMeta.from_attrs(
        {
            **required,
            "affine": np.eye(4).tolist(),
            "subject": "average",
            "source_path": ["a.zarr", "b.zarr"],
            "subjects": ["01", "02"],
            "entities": {"task": "rest"},
            "truncated": {"sub-01": 12},
        }
    )
    assert average.is_average and average.source_path == ("a.zarr", "b.zarr")
    assert average.label() == "average of sub-01,02 task-rest bold"
    assert average.truncated == {"sub-01": 12}


def test_a_store_missing_a_required_attribute_is_an_error_naming_it(tmp_path):
    with pytest.raises(BidstrainError, match=r"missing attributes \['ddof'\]"):
        StoreMeta.from_attrs(
            {**{k: v for k, v in ATTRS.items() if k != "ddof"}, "affine": np.eye(4)}, "x.zarr"
        )
    with pytest.raises(RuntimeError, match="never set"):
        write_store(tmp_path / "bad.zarr", {k: v for k, v in ATTRS.items() if k != "stats_dim"})
    assert not (tmp_path / "bad.zarr").exists()
    with pytest.raises(BidstrainError, match="store not found"):
        read_meta(tmp_path / "absent.zarr")


def test_no_module_reads_store_attributes_by_key():
    """Attributes are read through StoreMeta: a raw ``attrs[...]`` or ``attrs.get(`` read
    anywhere else would bypass the typed layout."""
    raw_read = re.compile(r"\.attrs(\[|\.get\()")
    offenders = [
        f"{path.relative_to(PACKAGE)}:{number}"
        for path in PACKAGE.rglob("*.py")
        if path.name != "store.py"
        for number, line in enumerate(path.read_text().splitlines(), start=1)
        if raw_read.search(line)
    ]
    assert offenders == []


def test_grid_mismatch_names_the_shape_or_the_affine_difference():
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    assert grid_mismatch((4, 5, 3), affine, (4, 5, 3), affine + AFFINE_TOLERANCE / 2) is None
    assert grid_mismatch((4, 5, 3), affine, (4, 5, 4), affine) == (
        "shape (4, 5, 3) against grid (4, 5, 4)"
    )
    assert grid_mismatch((4, 5, 3, 2), affine, (4, 5, 3), affine) is not None
    shifted = affine.copy()
    shifted[0, 3] = 0.5
    assert grid_mismatch((4, 5, 3), shifted, (4, 5, 3), affine) == (
        f"another affine (largest difference 0.5 > {AFFINE_TOLERANCE})"
    )
    assert grid_mismatch((4, 5, 3), shifted, (4, 5, 3), affine, atol=1.0) is None
    nan = affine.copy()
    nan[0, 0] = np.nan
    assert grid_mismatch((4, 5, 3), nan, (4, 5, 3), affine) is not None


# ---- sharded layout, storage precision, full disks ----------------------------------


def bold_store(path: Path, n_time: int, *, shape=(20, 20, 20), **kwargs) -> Path:
    """A BOLD store over the whole grid, written in blocks of 7 volumes."""
    mask = np.ones(shape, dtype=bool)
    n_voxel = mask.size
    rng = np.random.default_rng(n_time)
    with create_store(
        path, mask=mask, affine=np.eye(4), time=np.arange(n_time) * 2.0, **kwargs
    ) as writer:
        for start in range(0, n_time, 7):
            block = rng.standard_normal((min(7, n_time - start), n_voxel), dtype=np.float32)
            writer.write(start, block)
        writer.add_variable("mean", ("voxel",), np.full(n_voxel, 100.0, dtype=np.float32))
        writer.add_variable("std", ("voxel",), np.full(n_voxel, 5.0, dtype=np.float32))
        writer.attrs.update(ATTRS)
    return path


def test_a_store_is_twelve_files_whatever_its_length(tmp_path):
    """One shard per array: the count is fixed by the arrays (a 96x96x96x300 run is 12
    files, not 135), here with 1-volume chunks so that 600 volumes are 600 chunks."""
    short = bold_store(tmp_path / "short.zarr", 20, chunk=1)
    long = bold_store(tmp_path / "long.zarr", 600, chunk=1, shape=(6, 6, 6))
    default = bold_store(tmp_path / "default.zarr", 300)  # 4 MB chunks: 128 of them
    assert count_files(short) == count_files(long) == count_files(default) == 12
    assert sorted(p.name for p in (default / "data").rglob("*") if p.is_file()) == [
        "0",
        "zarr.json",
    ]


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_the_streamed_shard_is_the_shard_zarr_writes(tmp_path, dtype):
    """Byte for byte: uncompressed chunks written as they are, compressed ones encoded
    by zarr."""
    values = np.random.default_rng(0).standard_normal((23, 50)).astype(dtype)
    for compressors in (None, [zarr.codecs.ZstdCodec(level=1)]):
        arrays = []
        for name in ("zarr", "stream"):
            array = zarr.create_array(
                tmp_path / f"{name}-{compressors is None}",
                shape=values.shape,
                chunks=(4, 50),
                shards=(12, 50),
                dtype=dtype,
                fill_value=np.nan,
                compressors=compressors,
                zarr_format=3,
            )
            arrays.append(array)
        arrays[0][...] = values
        stream = ShardStream(tmp_path / f"stream-{compressors is None}", arrays[1])
        assert stream._raw == (compressors is None)
        padded = np.concatenate([values, np.full((1, 50), np.nan, dtype=dtype)])
        for start in range(0, 24, 4):
            stream.append(padded[start : start + 4])
        stream.close()
        for shard in ("c/0/0", "c/1/0"):
            written = [(Path(a.store.root) / shard).read_bytes() for a in arrays]
            assert written[0] == written[1]
        np.testing.assert_array_equal(zarr.open_array(arrays[1].store, mode="r")[...], values)


def test_stores_read_back_through_xarray_and_open_store_in_every_storage(tmp_path):
    values = None
    for storage in ("float32", "float16", "bitround-7"):
        path = bold_store(tmp_path / f"{storage}.zarr", 30, shape=(5, 6, 4), storage=storage)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            plain = xr.open_zarr(path, consolidated=CONSOLIDATED)
            ds = open_store(path)
        exact = values if values is not None else plain.data.values
        values = exact
        stored = plain.data.values.astype(np.float64)
        bound = Storage.parse(storage).relative_error * np.abs(exact)
        assert (np.abs(stored - exact) <= bound).all()
        if storage != "float32":
            assert (np.abs(stored - exact) > bound / 4).any()  # the bound is tight
        meta = read_meta(path)
        assert meta.storage == storage and meta.precision == Storage.parse(storage).relative_error
        grid = np.nonzero(ds.mask.values)
        for axis, index in zip("ijk", grid, strict=True):
            np.testing.assert_array_equal(ds[axis].values, index)
        assert ds.data.chunks[0][0] == zarr.open_array(path / "data").chunks[0]


def test_storage_names_and_writes_out_of_order_or_beyond_float16(tmp_path):
    assert Storage.parse("bitround-7").keepbits == 7
    assert Storage.parse("float16").relative_error == 2.0**-11
    for bad in ("float64", "bitround-0", "bitround-23", "bitround-x"):
        with pytest.raises(BidstrainError, match="normalize.storage"):
            Storage.parse(bad)
    mask = np.ones((2, 2, 2), dtype=bool)
    with pytest.raises(RuntimeError, match="blocks must come in time order"):
        with create_store(
            tmp_path / "a.zarr", mask=mask, affine=np.eye(4), time=np.arange(4.0)
        ) as w:
            w.write(2, np.zeros((2, 8)))
    with pytest.raises(BidstrainError, match="do not fit float16"):
        with create_store(
            tmp_path / "b.zarr", mask=mask, affine=np.eye(4), time=np.arange(4.0), storage="float16"
        ) as w:
            w.write(0, np.full((4, 8), 1e5))
    assert list(tmp_path.iterdir()) == []


def test_a_full_filesystem_leaves_no_store_and_says_how_much_is_free(tmp_path):
    """A real 2 MiB tmpfs (the tests run as root): a 5 MB store cannot fit; the previous
    store stays, and nothing else is left."""
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], check=True)
    try:
        previous = bold_store(mount / "r.zarr", 10, shape=(5, 6, 4))
        before = xr.open_zarr(previous, consolidated=CONSOLIDATED).load()
        free = shutil.disk_usage(mount).free
        with pytest.raises(BidstrainError) as error:
            bold_store(mount / "r.zarr", 160)  # 8000 voxels x 160 volumes x 4 bytes
        message = str(error.value)
        assert message.startswith(f"{mount / 'r.zarr'}: no space left on the device")
        assert f"{free} bytes" in message and "free on the filesystem" in message
        assert [p.name for p in mount.iterdir()] == ["r.zarr"]
        xr.testing.assert_identical(xr.open_zarr(previous, consolidated=CONSOLIDATED), before)
        assert shutil.disk_usage(mount).free == free
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_an_injected_quota_error_is_reported_the_same_way(tmp_path, monkeypatch):
    """Where no tmpfs can be mounted: the shard write fails with EDQUOT half-way."""
    calls = []
    original = ShardStream.append

    def append(self, chunk):
        calls.append(1)
        if len(calls) == 3:
            raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT))
        original(self, chunk)

    monkeypatch.setattr(ShardStream, "append", append)
    with pytest.raises(BidstrainError, match=r"no space left on the device \(Disk quota"):
        bold_store(tmp_path / "r.zarr", 10, chunk=1)
    assert list(tmp_path.iterdir()) == []


def test_a_write_removes_what_killed_writers_on_this_host_left_and_nothing_else(tmp_path):
    from bidstrain.io.atomic import atomic_path

    final = tmp_path / "table.tsv"
    host = socket.gethostname()
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True, check=True)  # fmt: skip
    gone = int(finished.stdout)  # a process that has exited: its pid is free
    stale = tmp_path / f".table.tsv.tmp-{host}-{gone}"
    stale.mkdir()
    living = tmp_path / f".table.tsv.tmp-{host}-{os.getppid()}"  # a writer still running
    elsewhere = tmp_path / f".table.tsv.tmp-otherhost-{gone}"  # another node's writer
    longer = tmp_path / f".table.tsv.tmp-{host}-1-{gone}"  # node <host>-1's writer
    for path in (living, elsewhere, longer):
        path.write_text("")
    with atomic_path(final) as tmp:
        tmp.write_text("a\n")
    assert final.read_text() == "a\n"
    assert not stale.exists() and living.exists() and elsewhere.exists() and longer.exists()
