"""The model carries its preprocessing (``model.json``, :func:`load_model`), and
``bidstrain.embed`` applies it: identical images embed identically, an image at raw scale
is refused by the scale guard."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
import xarray as xr
from bidstrain.config import Config, TrainConfig, to_plain, validate_config
from bidstrain.errors import BidstrainError
from bidstrain.report.embed import embedding_figure
from bidstrain.train import load_model
from bidstrain.train.description import FORMAT
from bidstrain.train.expectation import expectation
from bidstrain.train.loop import train
from bidstrain.train.losses import DEFINITION
from train_support import tiny_stores, train_config, trainer_env, write_store

pytestmark = pytest.mark.integration

COUNTS = {"T1w": 2, "bold": 8}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny model trained on T1w and BOLD stores, and the settings it was trained with."""
    root = tmp_path_factory.mktemp("embed")
    stores = tiny_stores(root / "stores", COUNTS)
    config = train_config(epochs=1)
    out = root / "train"
    train(
        config,
        stores,
        {},
        model_out=out / "model.pt",
        metrics_out=out / "metrics.jsonl",
        checkpoint_dir=out / "checkpoints",
    )
    return {"root": root, "model": out / "model.pt", "config": config, "stores": stores}


def workflow_config(train: TrainConfig, **changes) -> Config:
    """A whole configuration whose train section is ``train`` with ``changes``."""
    config = validate_config({"bids_dir": "unused"})
    config["train"].update(to_plain(train), **changes)
    return Config.from_dict(config)


def run_embed(tmp_path, model, images, *, check=True):
    spec = tmp_path / "embed.json"
    settings = {"embed": {"batch_size": 3}, "max_scale_ratio": 100, "seed": 0}
    spec.write_text(json.dumps({"images": images, "settings": settings}))
    command = [
        sys.executable,
        "-m",
        "bidstrain.embed",
        "--model",
        str(model),
        "--spec",
        str(spec),
        "--out-table",
        str(tmp_path / "embeddings.tsv"),
    ]
    result = subprocess.run(command, capture_output=True, text=True, env=trainer_env())
    if check:
        assert result.returncode == 0, result.stderr
    return result


# ---- model.json and load_model -----------------------------------------------------------


def test_model_json_describes_the_inputs_and_matches_the_checkpoint(trained):
    description = json.loads(trained["model"].with_name("model.json").read_text())
    inside = torch.load(trained["model"], map_location="cpu", weights_only=True)["description"]
    assert description == inside
    assert description["format"] == FORMAT
    assert description["modalities"] == ["T1w", "bold"]
    assert description["input"]["bold"]["shape"] == [8, 8, 8]
    assert "crop" in description["input"]["bold"]["fit"]
    assert "RAS+" in description["input"]["T1w"]["orientation"]
    bold = description["normalization"]["bold"]
    assert bold["ddof"] == 1 and bold["stats_dim"] == "voxel"
    assert [s["store"] for s in bold["stores"]] == trained["stores"]["bold"]
    assert description["normalization"]["T1w"]["stats_dim"] == "time"
    assert description["scale"]["bold"]["mse_zero"] == pytest.approx(1.0, rel=0.3)
    assert description["train"]["lr"] == trained["config"].optimizer.lr
    assert description["torch_version"] == str(torch.__version__)
    assert len(description["config_hash"]) == 16
    assert description["loss_definition"] == DEFINITION


def test_load_model_round_trips_the_weights(trained):
    model, description = load_model(trained["model"], workflow_config(trained["config"]))
    saved = torch.load(trained["model"], map_location="cpu", weights_only=True)["model"]
    assert not model.training
    for name, value in model.state_dict().items():
        assert torch.equal(value, saved[name]), name
    volume = torch.randn(2, 1, 8, 8, 8)
    assert model.encode("bold", volume).shape == (2, description["train"]["embed_dim"])


def test_a_model_that_disagrees_with_the_config_is_refused_naming_the_difference(trained):
    changed = workflow_config(trained["config"], lr=0.5, embed_dim=32)
    with pytest.raises(BidstrainError) as error:
        load_model(trained["model"], changed)
    assert "train.lr" in str(error.value) and "0.5" in str(error.value)
    assert "train.embed_dim: 16 in the model, 32 in the config" in str(error.value)
    expected = expectation(workflow_config(trained["config"]))
    with pytest.raises(BidstrainError, match="normalize.ddof: 1 for the model's"):
        load_model(trained["model"], dataclasses.replace(expected, ddof=0))
    # as the embed job reads it from its file
    plain = expected.to_dict()
    plain["train"]["embed_dim"] = 32
    with pytest.raises(BidstrainError, match="train.embed_dim: 16 in the model, 32 in the"):
        load_model(trained["model"], plain)
    with pytest.raises(BidstrainError, match="not a model expectation"):
        load_model(trained["model"], {"train": {}})


# ---- embed -------------------------------------------------------------------------------


def test_identical_images_have_identical_embeddings(trained, tmp_path):
    original = trained["stores"]["bold"][0]
    copy = tmp_path / "copy.zarr"
    shutil.copytree(original, copy)
    images = [
        {
            "modality": "bold",
            "store": original,
            "out": str(tmp_path / "a_desc-embedding_bold.zarr"),
        },
        {
            "modality": "bold",
            "store": str(copy),
            "out": str(tmp_path / "b_desc-embedding_bold.zarr"),
        },
        {
            "modality": "T1w",
            "store": trained["stores"]["T1w"][0],
            "out": str(tmp_path / "t_desc-embedding_T1w.zarr"),
        },
    ]
    run_embed(tmp_path, trained["model"], images)
    with warnings.catch_warnings():  # opened as users open them, with no warning
        warnings.simplefilter("error")
        a, b = (xr.open_zarr(image["out"]).load() for image in images[:2])
    assert a["embedding"].dims == ("time", "feature")
    assert a["embedding"].shape == (COUNTS["bold"], trained["config"].model.embed_dim)
    np.testing.assert_array_equal(a["embedding"].values, b["embedding"].values)
    np.testing.assert_array_equal(a["loss"].values, b["loss"].values)
    assert np.isfinite(a["loss"].values).all()
    # loss var: each batch of 3 (embed.batch_size) samples has a baseline of 1 on average
    baseline = a["baseline"].values
    batches = [baseline[start : start + 3].mean() for start in range(0, baseline.size, 3)]
    np.testing.assert_allclose(batches, 1.0, atol=1e-4)
    assert a.attrs["source_store"] == original and a.attrs["modality"] == "bold"
    # Different volumes embed differently.
    assert not np.allclose(a["embedding"].values[0], a["embedding"].values[1])
    table = (tmp_path / "embeddings.tsv").read_text().splitlines()
    assert len(table) == 4 and table[0].startswith("modality\tstore\tembedding\tstimuli\tvolumes")


def test_a_model_trained_under_another_loss_definition_is_not_compared(trained, tmp_path):
    """A model from before the losses counted only values with data records no
    definition: its embeddings are written, the job says their losses do not compare with
    the training's validation, and the figure leaves the training's lines out."""
    saved = torch.load(trained["model"], weights_only=False)
    del saved["description"]["loss_definition"]
    older = tmp_path / "older.pt"
    torch.save(saved, older)
    out = tmp_path / "b_desc-embedding_bold.zarr"
    images = [{"modality": "bold", "store": trained["stores"]["bold"][0], "out": str(out)}]
    result = run_embed(tmp_path, older, images)
    assert (
        f"trained under loss definition 1, this job counts its losses under definition "
        f"{DEFINITION}" in result.stderr
    )
    store = xr.open_zarr(out).load()
    assert store.attrs["model_loss_definition"] == 1
    assert store.attrs["loss_definition"] == DEFINITION
    summary = {"modalities": {"bold": {"ratio": 0.5}}}
    labels = embedding_figure([store], summary, "demo").axes[1].get_legend_handles_labels()[1]
    assert not any(label.startswith("training's validation bold") for label in labels)
    assert any("training's validation not drawn" in label for label in labels)
    current = run_embed(tmp_path, trained["model"], images)
    assert "loss definition" not in current.stderr
    store = xr.open_zarr(out).load()
    labels = embedding_figure([store], summary, "demo").axes[1].get_legend_handles_labels()[1]
    assert any(label.startswith("training's validation bold (0.50)") for label in labels)


def test_an_image_at_raw_scale_is_refused_by_the_scale_guard(trained, tmp_path):
    raw = write_store(tmp_path / "raw.zarr", modality="bold", n_time=4, seed=3, scale=5000.0)
    out = tmp_path / "raw_desc-embedding_bold.zarr"
    result = run_embed(
        tmp_path,
        trained["model"],
        [{"modality": "bold", "store": raw, "out": str(out)}],
        check=False,
    )
    assert result.returncode == 1
    assert "another scale than the model's training data" in result.stderr
    assert "checks.max_scale_ratio 100" in result.stderr
    assert "raw.zarr" in result.stderr and "sub-01" in result.stderr
    assert not out.exists()
