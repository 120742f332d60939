"""The plan of the stimuli stage: one feature job per stimulus file, only when enabled."""

from __future__ import annotations

import pytest
from bidstrain import paths
from bidstrain.dataset.bids import BidsIndex
from bidstrain.errors import BidstrainError
from bidstrain.plan import Plan
from stimuli_support import copy_dataset, make_film_bids
from test_plan import typed_config


@pytest.fixture(scope="module")
def film_bids(tmp_path_factory):
    return make_film_bids(tmp_path_factory)


def _plan(root, **stimuli):
    config = typed_config(root, modalities=["bold"], stimuli=stimuli)
    return Plan.build(config, BidsIndex.build(root))


def test_one_feature_store_per_stimulus_file_whatever_the_runs(film_bids):
    plan = _plan(film_bids, enabled=True)
    assert plan.stimulus_names == ["stimuli/film.mp4", "stimuli/film_words.tsv"]
    assert plan.stimulus_stores == [
        paths.stimulus_features("stimuli/film.mp4"),
        paths.stimulus_features("stimuli/film_words.tsv"),
    ]
    assert plan.stimulus_arguments("stimuli/film.mp4") == (
        "--tr 2.0 --video-size 64 48 --video-colour grey --audio-n-mels 40 "
        "--audio-window 0.025 --audio-hop 0.01"
    )
    assert plan.stimulus_arguments("stimuli/film_words.tsv") == (
        "--tr 2.0 --text-method hashing --text-embeddings '' --text-n-features 256"
    )
    assert len(plan.stimuli.runs) == 6


def test_disabled_stimuli_plan_nothing_and_read_no_film(film_bids, tmp_path):
    root = copy_dataset(film_bids, tmp_path)
    (root / "stimuli" / "film.mp4").unlink()
    plan = _plan(root)
    assert plan.stimuli is None and plan.stimulus_stores == []
    with pytest.raises(BidstrainError, match=r"sub-01: .*stim_file 'film.mp4' is not in"):
        _plan(root, enabled=True)
