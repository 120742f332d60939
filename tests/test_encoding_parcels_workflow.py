"""`snakemake encoding` with ``encoding.target: parcels`` on the naturalistic demo and its
slab atlas: the model maps the stimulus to the parcel averages, its held-out correlation
per parcel is far above the same model's on a stimulus scrambled in time, and the
figures and the predicted parcel series are written."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
import zarr
from bidstrain import paths
from bidstrain.demo.naturalistic import (
    ATLAS_IMAGE,
    ATLAS_NAME,
    NaturalisticSpec,
    make_naturalistic_demo,
)
from bidstrain.encoding.__main__ import run
from bidstrain.encoding.data import EncodingData, save_data
from bidstrain.encoding.evaluate import chance_bound
from bidstrain.encoding.stores import data_from_stores, read_inputs
from bidstrain.errors import BidstrainError
from conftest import REPO, run_snakemake

pytestmark = [pytest.mark.integration, pytest.mark.slow]  # a workflow to the encoding

EXPERIMENT = "demo"
#: Long enough for 60 held-out frames: chance |r| < 4 / sqrt(60) = 0.52.
SPEC = NaturalisticSpec(duration=120.0)
#: Parcels 1-6 lie in the slabs the design drives; 7-8 in the one it does not.
RESPONSIVE = np.arange(8) < 6


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    film = make_naturalistic_demo(tmp_path_factory.mktemp("naturalistic"), SPEC)
    workdir = tmp_path_factory.mktemp("encoding-parcels")
    config = {
        "modalities": ["bold"],
        "normalize": {"mask": "none", "heldout": {"run": ["2"]}},
        "parcellation": {"name": ATLAS_NAME, "path": str(film / ATLAS_IMAGE), "space": "native"},
        "stimuli": {"enabled": True, "delays": [1, 2, 3, 4], "video_size": [8, 6]},
        "encoding": {
            "enabled": True,
            "target": "parcels",
            "epochs": 300,
            "checkpoint_every": 100,
        },
    }
    extra = workdir.parent / f"{workdir.name}.yaml"
    extra.write_text(yaml.safe_dump(config))
    configs = [str(REPO / "config" / "config.yaml"), str(extra)]
    run_snakemake(workdir, "encoding", "--configfile", *configs, config={"bids_dir": film})
    return workdir


def _out(workdir, name):
    return workdir / paths.encoding_output(EXPERIMENT, name)


def _correlations(table_path) -> np.ndarray:
    table = np.genfromtxt(table_path, names=True, delimiter="\t", missing_values="n/a")
    return np.asarray(table["model_correlation"], np.float64)


def test_the_model_of_parcels_beats_a_scrambled_stimulus_by_far(workdir, tmp_path, monkeypatch):
    model = json.loads(_out(workdir, "model.json").read_text())
    target = model["target"]
    assert target["kind"] == "parcels" and target["atlas"] == ATLAS_NAME
    assert target["parcels"] == list(range(1, 9)) and model["n_targets"] == 8
    header = _out(workdir, "metrics.tsv").read_text().splitlines()[0].split("\t")
    assert header[:2] == ["parcel", "name"]
    correlation = _correlations(_out(workdir, "metrics.tsv"))
    # the same data, the stimulus scrambled in time (training and held-out frames)
    monkeypatch.chdir(workdir)
    data = data_from_stores(
        read_inputs(paths.plan_encoding_inputs(EXPERIMENT)), model["features"]["kinds"], "parcels"
    )
    rng = np.random.default_rng(7)
    scrambled = EncodingData(
        train_x=data.train_x[rng.permutation(len(data.train_x))],
        train_y=data.train_y,
        heldout_x=data.heldout_x[rng.permutation(len(data.heldout_x))],
        heldout_y=data.heldout_y,
        features=data.features,
        target=data.target,
    )
    save_data(scrambled, tmp_path / "data.npz")
    settings = tmp_path / "settings.json"
    settings.write_text(json.dumps({"encoding": {"epochs": 300, "target": "parcels"}, "seed": 3}))
    run(settings, tmp_path / "data.npz", tmp_path / "out", 1)
    control = _correlations(tmp_path / "out" / "metrics.tsv")
    bound = chance_bound(len(data.heldout_y))
    print(
        f"held-out r per responsive parcel: model {correlation[RESPONSIVE].round(3)}, "
        f"scrambled {control[RESPONSIVE].round(3)}, chance bound {bound:.2f}"
    )
    assert (correlation[RESPONSIVE] > 0.8).all(), correlation
    assert abs(control[RESPONSIVE].mean()) < bound, control
    assert (correlation[RESPONSIVE] - control[RESPONSIVE] > 0.5).all()


def test_predicted_parcel_series_and_figures_are_written(workdir):
    average = zarr.open_group(
        workdir / paths.average_parcel_store_at("task-movie_run-2", ATLAS_NAME), mode="r"
    )
    predicted = zarr.open_group(
        workdir / paths.encoding_prediction(EXPERIMENT, "task-movie_run-2"), mode="r"
    )
    np.testing.assert_array_equal(predicted["parcel"][...], average["parcel"][...])
    np.testing.assert_array_equal(predicted["time"][...], average["time"][...])
    assert predicted.attrs["atlas"] == ATLAS_NAME and predicted.attrs["stats_dim"] == "parcel"
    with np.load(_out(workdir, "heldout.npz")) as held:
        np.testing.assert_allclose(predicted["data"][...], held["model"], atol=1e-4)
        np.testing.assert_allclose(held["measured"], average["data"][...], atol=1e-6)
    for name in ("encoding_timecourses.png", "encoding_correlation_map.png"):
        assert _out(workdir, name).stat().st_size > 10_000


def test_a_voxel_store_is_refused_as_a_parcel_target(workdir, monkeypatch):
    monkeypatch.chdir(workdir)
    inputs = read_inputs(paths.plan_encoding_inputs(EXPERIMENT))
    voxels = {
        name: {**stores, "bold": paths.average_store_at(name)} for name, stores in inputs.items()
    }
    with pytest.raises(BidstrainError, match="encoding.target is parcels but the store is a voxel"):
        data_from_stores(voxels, ["video"], "parcels")
