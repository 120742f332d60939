"""`snakemake stimuli` on the naturalistic demo: one job per stimulus file, and what
reruns it."""

from __future__ import annotations

import numpy as np
import pytest
import yaml
from bidstrain import paths
from bidstrain.io.store import read_feature_store
from conftest import REPO, run_snakemake
from stimuli_support import SPEC, make_film_bids, truth

pytestmark = pytest.mark.integration


def _snakemake(root, workdir, *args, **stimuli):
    """``snakemake`` with the repository's config, BOLD only and ``stimuli`` enabled
    (nested booleans and numbers need a config file: ``--config`` passes them as text)."""
    extra = workdir.parent / f"{workdir.name}.yaml"
    extra.write_text(
        yaml.safe_dump({"modalities": ["bold"], "stimuli": {"enabled": True, **stimuli}})
    )
    configs = [str(REPO / "config" / "config.yaml"), str(extra)]
    return run_snakemake(workdir, *args, "--configfile", *configs, config={"bids_dir": root})


@pytest.fixture(scope="module")
def featured(tmp_path_factory):
    root = make_film_bids(tmp_path_factory)
    workdir = tmp_path_factory.mktemp("stimuli_run")
    _snakemake(root, workdir, "stimuli")
    return root, workdir


def test_each_stimulus_file_gets_one_store(featured):
    root, workdir = featured
    film = read_feature_store(workdir / paths.stimulus_features("stimuli/film.mp4"))
    assert film.meta.kinds == ("video", "audio") and film.meta.shapes["video"] == (48, 64)
    luminance = film.features["video"].mean(axis=1)
    assert np.abs(luminance - truth(root)["luminance"]).max() < 1.5
    words = read_feature_store(workdir / paths.stimulus_features("stimuli/film_words.tsv"))
    counts = words.features["text"].sum(axis=1)
    np.testing.assert_array_equal(counts, [len(w) for w in truth(root)["words"]][: counts.size])
    assert film.meta.repetition_time == words.meta.repetition_time == SPEC.repetition_time


def test_a_delay_change_reruns_nothing_and_a_text_key_only_the_transcript(featured):
    root, workdir = featured
    delay = _snakemake(root, workdir, "-n", "stimuli", delay_method="hrf")
    assert "stimulus_features" not in delay.stdout
    text = _snakemake(root, workdir, "-n", "stimuli", text_n_features=64)
    planned = [line.split("=", 1)[1] for line in text.stdout.splitlines() if "stimulus=" in line]
    assert planned == ["stimuli/film_words.tsv"]


@pytest.mark.slow  # two snakemake runs and a dry run: about 11 s
def test_a_changed_word_vector_table_reruns_the_transcript_job(tmp_path_factory):
    root = make_film_bids(tmp_path_factory)
    workdir = tmp_path_factory.mktemp("vectors_run")
    vectors = workdir / "vectors.tsv"
    vectors.write_text("dog\t1\t0\ncat\t0\t1\n")
    settings = {"text_method": "embeddings", "text_embeddings": str(vectors)}
    store = paths.stimulus_features("stimuli/film_words.tsv")
    _snakemake(root, workdir, store, **settings)
    assert "stimulus_features" not in _snakemake(root, workdir, "-n", store, **settings).stdout
    vectors.write_text("dog\t1\t0\ncat\t0\t2\n")
    rerun = _snakemake(root, workdir, "-n", store, **settings).stdout
    planned = [line.split("=", 1)[1] for line in rerun.splitlines() if "stimulus=" in line]
    assert planned == ["stimuli/film_words.tsv"]
