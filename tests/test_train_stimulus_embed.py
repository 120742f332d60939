"""model.json's record of the stimulus features (train.stimuli) and embed's refusal of
aligned stores prepared differently."""

from __future__ import annotations

import numpy as np
import pytest
from bidstrain.embed.apply import check_stimuli
from bidstrain.errors import BidstrainError
from bidstrain.io.store import read_aligned_store, write_aligned_store
from bidstrain.train.description import stimulus_preparation
from bidstrain.train.expectation import Preparation
from train_support import write_aligned, write_store


def _variant(source: str, path, **changes) -> str:
    """A copy of the aligned store ``source`` with attributes or arrays changed."""
    store = read_aligned_store(source)
    arrays = {**store.arrays, **{k: v for k, v in changes.items() if k in store.arrays}}
    attrs = {**store.attrs, **{k: v for k, v in changes.items() if k not in store.arrays}}
    write_aligned_store(path, store.features, store.time, arrays, attrs)
    return str(path)


@pytest.fixture
def trained(tmp_path):
    bold = write_store(tmp_path / "bold.zarr", modality="bold", n_time=6)
    features = np.random.default_rng(0).standard_normal((6, 3))
    video = write_aligned(tmp_path / "video.zarr", features, "video", bold)
    record = stimulus_preparation({"video": [video, video]})
    prepared = Preparation(2.0, "none", 2, 2, 1, "voxels", stimuli=record)
    return bold, video, {"preparation": prepared.to_json()}


def test_model_json_records_each_kinds_settings_and_statistics(trained):
    _, video, description = trained
    (record,) = description["preparation"]["stimuli"].values()
    assert record["features"] == 3 and record["delays"] == [2, 3]
    assert record["decoder"] == {"units": "z"} and record["normalized"] is True
    (stats,) = record["statistics"]  # the same store twice: one statistics
    assert stats["mean"] == [0.0] * 3 and stats["std"] == [1.0] * 3


def test_embed_accepts_the_same_preparation(trained):
    bold, video, description = trained
    check_stimuli(bold, {"video": video}, description)
    check_stimuli(bold, {"audio": video}, description)  # a kind the model lacks: unused


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"delays": [0, 2]}, r"video delays: \[2, 3\] in the model, \[0, 2\] in these stores"),
        ({"decoder": {"units": "0-255"}}, r"video decoder: \{'units': 'z'\} in the model"),
        ({"normalized": False}, r"video normalized: True in the model, False"),
        (
            {"mean": np.full(3, 0.5), "training_runs": ["other"]},
            r"video features z-scored with the statistics of \['other'\], the model's with",
        ),
    ],
)
def test_embed_refuses_features_prepared_differently(trained, tmp_path, changes, named):
    bold, video, description = trained
    other = _variant(video, tmp_path / "other.zarr", **changes)
    with pytest.raises(BidstrainError, match=named) as error:
        check_stimuli(bold, {"video": other}, description)
    assert "other.zarr" in str(error.value) and "sub-01" in str(error.value)


def test_stores_of_one_kind_prepared_differently_cannot_train_one_model(trained, tmp_path):
    _, video, _ = trained
    other = _variant(video, tmp_path / "other.zarr", delay_method="hrf")
    with pytest.raises(BidstrainError, match=r"video features prepared differently .*delay_method"):
        stimulus_preparation({"video": [video, other]})
