"""embed with a model of BOLD windows: one embedding per non-overlapping window of a run,
never across a frame left out (a run shorter than a window gives a store of no sample,
with a warning, and a report bar saying so), a store at another repetition time than
the model's refused, naming both, and a model of ``train.stimuli`` given each window's
stimulus features."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr
import zarr
from bidstrain.config import ModelExpectation
from bidstrain.embed.apply import check_preparation
from bidstrain.embed.samples import samples
from bidstrain.errors import BidstrainError
from bidstrain.io.store import consolidate, open_store, to_grid
from bidstrain.report.embed import embedding_figure
from bidstrain.train.description import FORMAT, STIMULUS_FIT, describe, load_model
from bidstrain.train.expectation import Preparation, differences, preparation_of
from bidstrain.train.model import build_module
from bidstrain.train.resample import fit_to_shape
from bidstrain.train.validity import split
from test_average_parcels import parcel_store
from test_embed import run_embed
from train_support import train_config, write_aligned, write_store

pytestmark = pytest.mark.integration

WINDOW, N_TIME, TR = 4, 10, 2.0


def bold_store(path, tr: float) -> str:
    """A BOLD store of ``N_TIME`` frames whose attributes say it is at ``tr``."""
    store = write_store(path, modality="bold", n_time=N_TIME, seed=3)
    zarr.open_group(store, mode="r+").attrs.update(repetition_time=tr, time_method="none")
    consolidate(store)
    return store


def windows_model(tmp_path, tr: float, video: int = 0, **train):
    """A model of voxel windows (untrained) saved as training saves one, with its
    description; with ``video`` features of ``train.stimuli: [video]``, trained on an
    aligned store written beside its BOLD store (``video.zarr``); ``train``: other keys."""
    store = bold_store(tmp_path / "train.zarr", tr)
    stimuli = {"video": video} if video else {}
    config = train_config(window=WINDOW, patch_frames=2, stimuli=list(stimuli), **train)
    torch.manual_seed(0)
    module = build_module(config, ["bold"], stimuli=stimuli)
    aligned = None
    if video:
        features = np.random.default_rng(5).standard_normal((N_TIME, video))
        aligned = {"video": [write_aligned(tmp_path / "video.zarr", features, "video", store)]}
    about = describe(
        module, config, {"bold": [store]}, config_hash="0" * 16, step=0, stimuli=aligned
    )
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


def test_embed_windows_never_cross_a_left_out_frame(tmp_path):
    """Frame 5 of an 11-frame grid is left out: the run's 10 rows are two segments of 5,
    so the windows of 4 start at rows 0 and 5 (times 0 and 6), not at row 4."""
    model, _ = windows_model(tmp_path, TR)
    store = bold_store(tmp_path / "new.zarr", TR)
    valid = np.arange(N_TIME + 1) != 5
    group = zarr.open_group(store, mode="r+")
    group["time"][...] = np.flatnonzero(valid).astype(np.float64)
    for name, values in (("frame_time", np.arange(N_TIME + 1.0)), ("frame_valid", valid)):
        group.create_array(name, data=values, dimension_names=("frame",))
    consolidate(store)
    out = tmp_path / "new_desc-embedding_bold.zarr"
    run_embed(tmp_path, model, [{"modality": "bold", "store": store, "out": str(out)}])
    embedded = xr.open_zarr(out).load()
    np.testing.assert_array_equal(embedded["time"].values, [0.0, 6.0])
    assert np.isfinite(embedded["loss"].values).all()


def test_a_run_shorter_than_a_window_gives_a_store_of_no_sample(tmp_path):
    model, _ = windows_model(tmp_path, TR)
    long = bold_store(tmp_path / "long.zarr", TR)
    short = write_store(tmp_path / "short.zarr", modality="bold", n_time=WINDOW - 1, seed=4)
    zarr.open_group(short, mode="r+").attrs.update(repetition_time=TR, time_method="none")
    consolidate(short)
    images = [
        {"modality": "bold", "store": store, "out": str(tmp_path / f"{name}_embedding.zarr")}
        for name, store in (("long", long), ("short", short))
    ]
    result = run_embed(tmp_path, model, images)
    assert f"no whole window of {WINDOW} frames between gaps (frames in segments [3])" in (
        result.stderr
    )
    stores = [xr.open_zarr(image["out"]).load() for image in images]
    assert stores[1]["embedding"].shape == (0, train_config().model.embed_dim)
    assert stores[0]["embedding"].shape[0] == N_TIME // WINDOW
    figure = embedding_figure(stores, None, "demo")
    labels = [label.get_text() for label in figure.axes[1].get_yticklabels()]
    assert labels[1].endswith("(no sample)") and not labels[0].endswith("(no sample)")


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


def test_embed_refuses_parcels_of_another_atlas_of_the_same_name(tmp_path):
    store, _, _ = parcel_store(tmp_path / "p.zarr", "01", "1", 12, seed=1)
    n_parcels = len(zarr.open_group(store, mode="r").attrs["parcel_names"])
    group = zarr.open_group(store, mode="r+")
    group.attrs.update(atlas_checksum="b" * 64)
    consolidate(store)
    trained = Preparation(0.8, "none", 4, 4, 2, "parcels", "toy", "a" * 64, n_parcels)
    with pytest.raises(BidstrainError, match=r"parcellation 'toy' \(sha256 a{64}\); these "
                       r"stores on 'toy' \(sha256 b{64}\)"):  # fmt: skip
        check_preparation(store, {"preparation": trained.to_json()})
    group.attrs.update(atlas_checksum="a" * 64)
    consolidate(store)
    check_preparation(store, {"preparation": trained.to_json()})


def test_runs_already_at_the_target_tr_match_any_time_method():
    def lines(prepared: Preparation, tr, method):
        description = {
            "modalities": ["bold"],
            "preparation": prepared.to_json(),
            "train": {},
            "normalization": {},
        }
        expected = ModelExpectation({}, ("bold",), 1, {"bold": "epi"}, "none", tr, method)
        return differences(description, expected)

    at_source = Preparation(2.0, "none", 4, 4, 2, "voxels")  # time.tr 2.0 on runs at 2.0
    assert lines(at_source, 2.0, "pchip") == []
    assert lines(at_source, 0.8, "pchip") == [
        "time.tr: the model was trained on TR 2.0 s, the config resamples to 0.8 s"
    ]
    resampled = Preparation(0.8, "pchip", 4, 4, 2, "voxels")
    assert lines(resampled, 0.8, "pchip") == []
    assert lines(resampled, 0.8, "linear") == [
        "time.method: 'pchip' in the model, 'linear' in the config"
    ]


def test_a_model_of_stimuli_embeds_each_window_with_its_features(tmp_path):
    model, _ = windows_model(tmp_path, TR, video=3)
    store = bold_store(tmp_path / "new.zarr", TR)
    training = str(tmp_path / "train.zarr")  # whose statistics z-scored the features
    rng = np.random.default_rng(6)
    films = [
        write_aligned(tmp_path / f"film{i}.zarr", rng.standard_normal((N_TIME, 3)), "video",
                      training)
        for i in range(2)
    ]  # fmt: skip
    images = [
        {"modality": "bold", "store": store, "out": str(tmp_path / f"new{i}_embedding.zarr"),
         "stimuli": stimuli}
        for i, stimuli in enumerate([{"video": films[0]}, {"video": films[1]}, {}])
    ]  # fmt: skip
    result = run_embed(tmp_path, model, images)
    embedded = [xr.open_zarr(image["out"]).load() for image in images]
    table = pd.read_csv(tmp_path / "embeddings.tsv", sep="\t", keep_default_na=False)
    assert table["stimuli"].tolist() == ["video", "video", ""]
    assert [e.attrs["stimuli"] for e in embedded] == [["video"], ["video"], []]
    assert "no aligned video stimulus store" in result.stderr  # the last image
    # the tokens of each window's own features change its embedding and its loss
    first, second, alone = (e["embedding"].values for e in embedded)
    assert not np.allclose(first, second) and not np.allclose(first, alone)
    assert not np.allclose(embedded[0]["loss"].values, embedded[1]["loss"].values)
    # the BOLD tokens alone, pooled as a model without stimuli pools them
    module, _ = load_model(model, None, device=torch.device("cpu"))
    config = train_config(window=WINDOW, patch_frames=2, stimuli=["video"]).model
    (_, _, read), *_ = samples(store, "bold", config, 3)
    windows = read["bold"]
    # with the store's voxels on the model's grid, which the losses count
    _, valid = split(read)
    with open_store(store) as ds:
        voxels = to_grid(ds, np.ones(ds.sizes["voxel"]))
    holds_data = fit_to_shape(voxels, config.shapes["bold"]) > 0
    assert valid["bold"].shape == (len(windows), 1, *config.shapes["bold"])
    assert (valid["bold"] == torch.from_numpy(holds_data)).all()
    assert 0 < holds_data.sum() < holds_data.size  # the mask, and padding around it
    with torch.no_grad():
        want = module.encoder(module.embed["bold"](windows)).mean(dim=1)
    np.testing.assert_allclose(alone, want.numpy(), rtol=1e-5, atol=1e-6)


def test_embed_refuses_features_without_one_row_per_frame(tmp_path):
    model, _ = windows_model(tmp_path, TR, video=3)
    store = bold_store(tmp_path / "new.zarr", TR)
    features = np.zeros((N_TIME - 2, 3))
    film = write_aligned(tmp_path / "film.zarr", features, "video", str(tmp_path / "train.zarr"))
    out = tmp_path / "new_desc-embedding_bold.zarr"
    image = {"modality": "bold", "store": store, "out": str(out), "stimuli": {"video": film}}
    result = run_embed(tmp_path, model, [image], check=False)
    assert result.returncode != 0 and not out.exists()
    assert f"{N_TIME - 2} rows of features for the {N_TIME} frames of the BOLD store" in (
        result.stderr
    )


def test_model_json_records_the_tokens_of_each_stimulus_kind(tmp_path):
    path, about = windows_model(tmp_path, TR, video=5, patch_features=3)
    assert about["input"]["video"] == {
        "features": 5,
        "window": WINDOW,
        "patch_frames": 2,
        "token_features": 3,  # 2 tokens of 3 features, the last one zero-padded
        "fit": STIMULUS_FIT,
    }
    assert about["train"]["patch_features"] == 3
    module, _ = load_model(path, None)
    assert module.embed["video"].n_tokens == 2 * WINDOW // 2


def test_a_model_json_without_patch_features_has_a_token_per_feature(tmp_path):
    path, about = windows_model(tmp_path, TR, video=5, patch_features=1)
    saved = torch.load(path, weights_only=False)
    del saved["description"]["train"]["patch_features"]
    torch.save(saved, path)
    module, _ = load_model(path, None)  # not the default of 256 features a token
    assert module.embed["video"].n_tokens == 5 * WINDOW // 2
