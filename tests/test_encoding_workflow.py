"""`snakemake encoding` on the naturalistic demo: the model trained on the averages'
aligned stimulus stores, its metrics beside the baselines, model.json, the figures and
the predicted BOLD of every average."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from bidstrain import paths
from bidstrain.encoding.apply import apply_to_stores
from bidstrain.encoding.stores import data_from_stores, read_inputs
from bidstrain.errors import BidstrainError
from bidstrain.io.store import open_store
from conftest import REPO, run_snakemake
from stimuli_support import make_film_bids

pytestmark = [pytest.mark.integration, pytest.mark.slow]  # the workflow to the encoding model

EXPERIMENT = "demo"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    film = make_film_bids(tmp_path_factory)
    workdir = tmp_path_factory.mktemp("encoding")
    config = {
        "modalities": ["bold"],
        "normalize": {"mask": "none", "heldout": {"run": ["2"]}},
        "stimuli": {"enabled": True, "delays": [1, 2, 3, 4], "video_size": [8, 6]},
        # a model grid the 8 x 6 x 4 grid fills: the checks before encoding fail a padded one
        "train": {"shapes": {"bold": [8, 8, 8]}, "patch_size": 4},
        "encoding": {"enabled": True, "epochs": 300, "checkpoint_every": 100},
    }
    extra = workdir.parent / f"{workdir.name}.yaml"
    extra.write_text(yaml.safe_dump(config))
    configs = [str(REPO / "config" / "config.yaml"), str(extra)]
    run_snakemake(workdir, "encoding", "--configfile", *configs, config={"bids_dir": film})
    return workdir


def _out(workdir, name):
    return workdir / paths.encoding_output(EXPERIMENT, name)


def test_model_json_records_features_and_target(workdir):
    model = json.loads(_out(workdir, "model.json").read_text())
    features = model["features"]
    assert features["kinds"] == ["video", "audio", "text"]
    assert features["delays"] == [1, 2, 3, 4] and features["method"] == "delays"
    assert features["repetition_time"] == 2.0
    assert features["statistics"]["training_runs"] == [paths.average_store_at("task-movie_run-1")]
    columns = features["columns"]
    assert sum(columns.values()) == model["n_features"]
    assert all(columns[k] == 4 * features["sizes"][k] for k in features["kinds"])
    assert model["target"]["training_runs"] == ["task-movie_run-1"]
    assert model["target"]["heldout_runs"] == ["task-movie_run-2"]


def test_metrics_hold_the_model_and_both_baselines(workdir):
    metrics = json.loads(_out(workdir, "metrics.json").read_text())
    assert set(metrics["predictions"]) == {"model", "ridge", "mean"}
    assert metrics["predictions"]["mean"]["mean_correlation"] is None
    assert metrics["predictions"]["mean"]["mean_r2"] <= 0.0
    header, *rows = [
        line.split("\t") for line in _out(workdir, "metrics.tsv").read_text().splitlines()
    ]
    assert header[0] == "voxel" and "ridge_correlation" in header
    # the circular-shift test for the predictions that vary in time
    assert header[-2:] == ["model_p", "ridge_p"] and "mean_p" not in header
    tested = sum(row[-2] != "n/a" for row in rows)
    assert metrics["predictions"]["model"]["tested_targets"] == tested > 0
    assert metrics["chance"]["rotations"] == metrics["heldout_time_points"] - 1


def test_predictions_are_stores_on_the_average_mask(workdir):
    average = open_store(workdir / paths.average_store_at("task-movie_run-2"), use_dask=False)
    predicted = open_store(
        workdir / paths.encoding_prediction(EXPERIMENT, "task-movie_run-2"), use_dask=False
    )
    np.testing.assert_array_equal(predicted["mask"].values, average["mask"].values)
    assert predicted["data"].shape == average["data"].shape
    with np.load(_out(workdir, "heldout.npz")) as held:
        np.testing.assert_allclose(predicted["data"].values, held["model"], atol=1e-4)


def test_figures_are_written(workdir):
    for name in ("encoding_timecourses.png", "encoding_correlation_map.png"):
        assert _out(workdir, name).stat().st_size > 10_000


def test_missing_kinds_and_parts_are_named(workdir):
    inputs = read_inputs(workdir / paths.plan_encoding_inputs(EXPERIMENT))
    assert sorted(inputs) == ["task-movie_run-1", "task-movie_run-2"]
    without_text = {
        name: {k: str(workdir / v) for k, v in stores.items() if k != "text"}
        for name, stores in inputs.items()
    }
    with pytest.raises(BidstrainError, match=r"average task-movie_run-1 has no aligned \['text'\]"):
        data_from_stores(without_text, ["video", "text"], "voxels")
    training_only = {"task-movie_run-1": without_text["task-movie_run-1"]}
    with pytest.raises(BidstrainError, match="no held-out average"):
        data_from_stores(training_only, ["video"], "voxels")
    with pytest.raises(BidstrainError, match="parcels"):
        data_from_stores(without_text, ["video"], "parcels")


def test_stores_given_as_another_kind_are_refused(workdir, tmp_path, monkeypatch):
    monkeypatch.chdir(workdir)
    stores = read_inputs(paths.plan_encoding_inputs(EXPERIMENT))["task-movie_run-2"]
    swapped = {**stores, "video": stores["audio"], "audio": stores["video"]}
    out = tmp_path / "predicted.zarr"
    model = paths.encoding_output(EXPERIMENT, "model.pt")
    with pytest.raises(BidstrainError, match="run's video features, but the store holds audio"):
        apply_to_stores(model, stores["bold"], swapped, out)
    assert not out.exists()
    apply_to_stores(model, stores["bold"], stores, out)
    assert out.is_dir()
