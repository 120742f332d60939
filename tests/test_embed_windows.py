"""embed with a model of BOLD windows: one embedding per non-overlapping window of a run,
and a store at another repetition time than the model's refused, naming both."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr
import zarr
from bidstrain.io.store import consolidate
from bidstrain.train.description import FORMAT, describe
from bidstrain.train.expectation import Preparation, preparation_of
from bidstrain.train.model import build_module
from test_embed import run_embed
from train_support import train_config, write_store

pytestmark = pytest.mark.integration

WINDOW, N_TIME, TR = 4, 10, 2.0


def bold_store(path, tr: float) -> str:
    """A BOLD store of ``N_TIME`` frames whose attributes say it is at ``tr``."""
    store = write_store(path, modality="bold", n_time=N_TIME, seed=3)
    zarr.open_group(store, mode="r+").attrs.update(repetition_time=tr, time_method="none")
    consolidate(store)
    return store


def windows_model(tmp_path, tr: float):
    """A model of voxel windows (untrained) saved as training saves one, with its
    description."""
    store = bold_store(tmp_path / "train.zarr", tr)
    config = train_config(window=WINDOW, patch_frames=2)
    torch.manual_seed(0)
    module = build_module(config, ["bold"])
    about = describe(module, config, {"bold": [store]}, config_hash="0" * 16, step=0)
    path = tmp_path / "model.pt"
    torch.save({"model": module.state_dict(), "description": about}, path)
    return path, about


def test_model_json_records_how_bold_was_prepared(tmp_path):
    _, about = windows_model(tmp_path, TR)
    assert about["format"] == FORMAT
    prepared = preparation_of(about)
    assert prepared == Preparation(TR, "none", WINDOW, WINDOW, 2, "voxels")
    old = {key: value for key, value in about.items() if key != "preparation"}
    assert preparation_of(old).window == 1


def test_embed_gives_one_embedding_per_non_overlapping_window(tmp_path):
    model, _ = windows_model(tmp_path, TR)
    store = bold_store(tmp_path / "new.zarr", TR)
    out = tmp_path / "new_desc-embedding_bold.zarr"
    run_embed(tmp_path, model, [{"modality": "bold", "store": store, "out": str(out)}])
    embedded = xr.open_zarr(out).load()
    assert embedded["embedding"].shape == (N_TIME // WINDOW, train_config().model.embed_dim)
    np.testing.assert_array_equal(embedded["time"].values, [0.0, float(WINDOW)])
    assert np.isfinite(embedded["loss"].values).all()
    assert not np.allclose(embedded["embedding"].values[0], embedded["embedding"].values[1])


def test_embed_refuses_stores_at_another_repetition_time(tmp_path):
    model, _ = windows_model(tmp_path, 0.8)
    store = bold_store(tmp_path / "new.zarr", TR)
    out = tmp_path / "new_desc-embedding_bold.zarr"
    images = [{"modality": "bold", "store": store, "out": str(out)}]
    result = run_embed(tmp_path, model, images, check=False)
    assert result.returncode != 0
    assert "model trained on TR 0.8 s windows of 4 frames; these stores are at TR 2.0 s" in (
        result.stderr
    )
    assert not out.exists()
