"""Unit tests of the store layout: typed metadata, grids, labels."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from bidstrain.errors import BidstrainError
from bidstrain.grid import AFFINE_TOLERANCE, grid_mismatch
from bidstrain.store import (
    REQUIRED_ATTRS,
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
