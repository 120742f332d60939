"""`snakemake align_stimuli` on the naturalistic demo: every run's features on its BOLD
store's frames (subject runs and averages), delayed, z-scored with the training runs'
statistics, at the native TR and after resampling to a common TR."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from bidstrain import paths
from bidstrain.io.store import open_store, read_aligned_store, read_feature_store
from bidstrain.stimuli.align import DEFINITION
from conftest import REPO, run_snakemake
from stimuli_support import make_film_bids, truth

pytestmark = pytest.mark.integration

RUNS = [f"sub-{s}/func/sub-{s}_task-movie_run-{r}" for s in ("01", "02", "03") for r in "12"]
DELAYS = [0, 2]


def align(root, workdir, *targets, check=True, **sections):
    """``snakemake`` with BOLD only, every volume kept (the demo's 8 x 6 x 4 grid has no
    brain for an EPI mask), run 2 held out and ``sections`` merged in."""
    config = {
        "modalities": ["bold"],
        "normalize": {"mask": "none", "heldout": {"run": ["2"]}},
        "stimuli": {"enabled": True, "delays": DELAYS, "video_size": [8, 6]},
        # a model grid the 8 x 6 x 4 grid fills (the initial-loss check fails a mostly
        # padded one)
        "train": {"shapes": {"bold": [8, 8, 8]}, "patch_size": 4},
    }
    for key, values in sections.items():
        config[key] = {**config.get(key, {}), **values}
    extra = workdir.parent / f"{workdir.name}.yaml"
    extra.write_text(yaml.safe_dump(config))
    configs = [str(REPO / "config" / "config.yaml"), str(extra)]
    targets = targets or ("align_stimuli",)
    return run_snakemake(
        workdir, *targets, "--configfile", *configs, config={"bids_dir": root}, check=check
    )


def run_store(workdir, run, kind):
    prefix = run.rsplit("/", 1)[1]
    path = f"{paths.STIMULI_ALIGNED}/{run.rsplit('/', 1)[0]}/{prefix}_desc-{kind}_stimulus.zarr"
    return read_aligned_store(workdir / path)


def raw(store):
    """The raw features back from the z-scored ones and the statistics saved."""
    return store.features.astype(np.float64) * store.arrays["std"] + store.arrays["mean"]


@pytest.fixture(scope="module")
def film(tmp_path_factory):
    return make_film_bids(tmp_path_factory)


@pytest.fixture(scope="module")
def native(film, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("align_native")
    align(film, workdir)
    return workdir


def shifted(values, delay):
    values = np.asarray(values, dtype=np.float64)
    return np.concatenate([np.zeros(delay), values[: values.size - delay]])


def test_aligned_features_match_the_films_truth_after_the_delays(film, native):
    known = truth(film)
    for run in RUNS:
        video, audio, text = (run_store(native, run, kind) for kind in ("video", "audio", "text"))
        bold = open_store(native / f"results/normalized/{run}_desc-zscore_bold.zarr")
        np.testing.assert_array_equal(video.time, bold.time.values)
        for store in (video, audio, text):
            assert store.features.shape[0] == bold.sizes["time"]
        n_pixels, n_words = 8 * 6, 256
        for column, lag in enumerate(DELAYS):
            luminance = raw(video)[:, column * n_pixels : (column + 1) * n_pixels].mean(axis=1)
            # H.264 at crf 10 rounds each pixel by about one grey level
            np.testing.assert_allclose(luminance, shifted(known["luminance"], lag), atol=1.5)
            mels = raw(audio)[:, column * 40 : (column + 1) * 40]
            heard = mels.argmax(axis=1)[lag:]
            np.testing.assert_array_equal(heard, known["tone_band"][: heard.size])
            counts = raw(text)[:, column * n_words : (column + 1) * n_words].sum(axis=1)
            words = [len(w) for w in known["words"]]
            np.testing.assert_allclose(counts, shifted(words, lag), atol=1e-4)
        assert video.attrs["seconds_without_stimulus"] == 0.0
        assert video.attrs["decoder"]["video_size"] == [8, 6]
        assert audio.attrs["alignment_definition"] == DEFINITION
        assert [s.attrs["absent"] for s in (video, audio, text)] == [0.0, -10.0, 0.0]
        # before the film reaches the copy delayed by 2: silence, not 0 (loud)
        np.testing.assert_allclose(raw(audio)[: DELAYS[1], 40:80], -10.0, atol=1e-6)
        np.testing.assert_array_equal(video.arrays["delay"], np.repeat(DELAYS, n_pixels))


def test_a_spec_of_another_alignment_definition_is_refused():
    from bidstrain.errors import BidstrainError
    from bidstrain.stimuli.alignment import align_all

    with pytest.raises(BidstrainError, match="planned for alignment definition 1, this job"):
        align_all({"stimuli": {}, "targets": []})  # a plan written before the definition


def test_held_out_runs_use_the_training_runs_statistics(film, native):
    """The statistics are those of the three run-1 stores, computed here in float64 from
    the feature store and the delays alone; run 2 is z-scored with them."""
    film_store = read_feature_store(native / paths.stimulus_features("stimuli/film.mp4"))
    video = film_store.features["video"].astype(np.float64)
    one_run = np.concatenate([np.vstack([np.zeros((d, video.shape[1])), video[: len(video) - d]])
                              for d in DELAYS], axis=1)  # fmt: skip
    training = np.vstack([one_run] * 3)
    mean, std = training.mean(axis=0), training.std(axis=0)
    std[std == 0] = 1.0
    held = run_store(native, RUNS[1], "video")
    assert held.attrs["heldout"] and held.attrs["training_runs"] == [
        f"results/normalized/{run}_desc-zscore_bold.zarr" for run in RUNS[::2]
    ]
    np.testing.assert_allclose(held.arrays["mean"], mean, rtol=1e-9)
    np.testing.assert_allclose(held.arrays["std"], std, rtol=1e-9)
    np.testing.assert_allclose(held.features, (one_run - mean) / std, atol=1e-5)
    trained = run_store(native, RUNS[0], "video")
    np.testing.assert_array_equal(trained.arrays["std"], held.arrays["std"])
    z = trained.features.astype(np.float64)
    varying = ~trained.arrays["constant"]
    np.testing.assert_allclose(z.mean(axis=0)[varying], 0.0, atol=1e-5)
    np.testing.assert_allclose(z.std(axis=0)[varying], 1.0, atol=1e-5)


def test_each_average_gets_its_stimulus_and_the_plan_lists_it(native):
    average = native / paths.aligned_average_stimulus("task-movie_run-1", "text")
    store = read_aligned_store(average)
    assert store.attrs["subjects"] == ["01", "02", "03"] and not store.attrs["heldout"]
    assert store.attrs["training_runs"] == [paths.average_store_at("task-movie_run-1")]
    held = read_aligned_store(native / paths.aligned_average_stimulus("task-movie_run-2", "text"))
    assert held.attrs["heldout"]
    np.testing.assert_array_equal(held.arrays["mean"], store.arrays["mean"])
    spec = json.loads((native / paths.PLAN_ALIGN_SPEC).read_text())
    assert len(spec["targets"]) == 8


@pytest.mark.slow
def test_resampled_runs_get_features_on_their_frames(film, tmp_path):
    """time.tr 1.0 from the demo's 2 s: the film's features are binned per 1 s, so each
    frame takes its own second of the film (the demo's luminance changes every 2 s);
    frames the resampling left out are left out here too; normalize false keeps the raw
    scale."""
    workdir = tmp_path / "align_resampled"
    workdir.mkdir()
    align(film, workdir, time={"tr": 1.0, "method": "linear"}, stimuli={"normalize": False})
    film_store = read_feature_store(workdir / paths.stimulus_features("stimuli/film.mp4"))
    assert film_store.meta.repetition_time == 1.0
    np.testing.assert_array_equal(film_store.time, np.arange(film_store.time.size) * 1.0)
    known = np.asarray(truth(film)["luminance"])
    for run in RUNS[:2]:
        store = run_store(workdir, run, "video")
        bold = open_store(workdir / f"results/normalized/{run}_desc-zscore_bold.zarr")
        np.testing.assert_array_equal(store.time, bold.time.values)
        assert store.attrs["repetition_time"] == 1.0 and not store.attrs["normalized"]
        frames = np.floor(store.time / 2.0).astype(int)
        luminance = store.features[:, : 8 * 6].mean(axis=1)
        np.testing.assert_allclose(luminance, known[frames], atol=1.5)
        # delay 2 counts frames of the store's TR: 2 s, one bin of the film
        late = store.features[:, 8 * 6 :].mean(axis=1)
        np.testing.assert_allclose(late[2:], known[frames[:-2]], atol=1.5)
        assert store.arrays["raw_max"].max() > 150.0


def test_the_report_draws_each_averages_stimulus_beside_its_bold(film, native):
    figure = paths.stimulus_figure("task-movie_run-1")
    align(film, native, figure)
    png = (native / figure).read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000
