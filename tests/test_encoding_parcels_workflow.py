"""`snakemake encoding` with ``encoding.target: parcels`` on the naturalistic demo and its
slab atlas: the model maps the stimulus to the parcel averages, its held-out correlation
per parcel is far above the same model's on a stimulus scrambled in time, and the
figures and the predicted parcel series are written."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml
import zarr
from bidstrain import paths
from bidstrain.config import load_section
from bidstrain.demo.naturalistic import (
    ATLAS_IMAGE,
    ATLAS_NAME,
    NaturalisticSpec,
    make_naturalistic_demo,
    voxel_weights,
)
from bidstrain.encoding.__main__ import run
from bidstrain.encoding.data import EncodingData, save_data
from bidstrain.encoding.evaluate import ridge_baseline, score, shift_null
from bidstrain.encoding.stores import data_from_stores, read_inputs
from bidstrain.errors import BidstrainError
from bidstrain.stimuli.align import convolve_hrf
from conftest import REPO, run_snakemake

pytestmark = [pytest.mark.integration, pytest.mark.slow]  # a workflow to the encoding

EXPERIMENT = "demo"
#: Long enough for 60 held-out frames (59 rotations in the chance test).
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
        # a model grid the 8 x 6 x 4 grid fills: the checks before encoding fail a padded one
        "train": {"shapes": {"bold": [8, 8, 8]}, "patch_size": 4},
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
    chance = json.loads((tmp_path / "out" / "metrics.json").read_text())["predictions"]["model"]
    print(
        f"held-out r per responsive parcel: model {correlation[RESPONSIVE].round(3)}, "
        f"scrambled {control[RESPONSIVE].round(3)}, chance {chance}"
    )
    assert (correlation[RESPONSIVE] > 0.8).all(), correlation
    p = np.genfromtxt(_out(workdir, "metrics.tsv"), names=True, delimiter="\t")["model_p"]
    assert p[RESPONSIVE] == pytest.approx(1 / 60, rel=1e-5), p  # beats all 59 rotations
    assert abs(control[RESPONSIVE].mean()) < chance["median_null_r95"], control
    assert (correlation[RESPONSIVE] - control[RESPONSIVE] > 0.5).all()
    # one scrambled stimulus is one draw of the null: the test's level over 200 draws
    # (RidgeCV on the same arrays), as the workflow's parcels have it
    rejected, any_significant = [], []
    for seed in range(200):
        draw = np.random.default_rng(seed)
        ridge = ridge_baseline(
            data.train_x[draw.permutation(len(data.train_x))],
            data.train_y,
            data.heldout_x[draw.permutation(len(data.heldout_x))],
            load_section("encoding", {}).ridge_alphas,
        )
        null = shift_null(ridge.predicted, data.heldout_y)
        rejected.append(null.p <= 0.05)
        any_significant.append(null.summary()["significant_targets"] > 0)
    print(f"p <= 0.05: {np.mean(rejected):.3f}; any parcel significant: {np.mean(any_significant)}")
    assert 0.025 <= np.mean(rejected) <= 0.075
    assert np.mean(any_significant) <= 0.05


def test_through_the_pipeline_the_model_nears_the_noise_ceiling_and_ridge(workdir):
    """Features decoded from the film, its sound and its transcript, aligned and delayed
    by the workflow: the held-out correlation over the responsive parcels comes within
    0.1 of the noise ceiling (the correlation of the true noise-free parcel response with
    the measured average) and at most 0.05 below ridge's on the same features."""
    config = yaml.safe_load((workdir.parent / f"{workdir.name}.yaml").read_text())
    root = Path(config["parcellation"]["path"]).parents[1]  # <film>/code/atlas...
    truth = json.loads((root / "code" / "naturalistic_truth.json").read_text())
    design = np.stack(
        [truth["luminance"], np.log2(truth["tone_frequency"]), [len(w) for w in truth["words"]]],
        axis=1,
    )
    design = (design - design.mean(axis=0)) / design.std(axis=0)
    response = convolve_hrf(design, SPEC.repetition_time)  # (time, column)
    atlas = np.asarray(nib.load(root / ATLAS_IMAGE).dataobj)
    weights = voxel_weights(SPEC).reshape(3, -1)
    signal = np.stack(
        [response @ weights[:, atlas.ravel() == label].mean(axis=1) for label in range(1, 9)],
        axis=1,
    )
    with np.load(_out(workdir, "heldout.npz")) as held:
        measured = held["measured"].astype(np.float64)
    ceiling = score(signal[: len(measured)], measured).correlation[RESPONSIVE]
    table = np.genfromtxt(_out(workdir, "metrics.tsv"), names=True, delimiter="\t",
                          missing_values="n/a")  # fmt: skip
    model = np.asarray(table["model_correlation"])[RESPONSIVE]
    ridge = np.asarray(table["ridge_correlation"])[RESPONSIVE]
    print(f"ceiling {ceiling.round(3)}\nmodel {model.round(3)}\nridge {ridge.round(3)}")
    assert ceiling.mean() - model.mean() < 0.1, (ceiling, model)
    assert ridge.mean() - model.mean() <= 0.05, (ridge, model)


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
