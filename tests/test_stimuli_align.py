"""Alignment of stimulus features with a run: placement from each event's onset, the
haemodynamic delay against an independent float64 reference, training-run statistics."""

from __future__ import annotations

import dataclasses
import math
import re

import numpy as np
import pytest
from bidstrain.config import StimulusFeatureConfig
from bidstrain.dataset.bids import BidsIndex
from bidstrain.errors import BidstrainError
from bidstrain.io.store import read_feature_store
from bidstrain.stimuli.align import (
    FrameGrid,
    Presentation,
    StatsAccumulator,
    align_run,
    convolve_hrf,
    delay,
    place,
    seconds_without_stimulus,
    stack_delays,
)
from bidstrain.stimuli.audio import SILENCE
from bidstrain.stimuli.features import write_stimulus_store
from bidstrain.stimuli.index import StimulusIndex
from stimuli_support import SPEC, make_film_bids, truth


@pytest.fixture(scope="module")
def film_bids(tmp_path_factory):
    return make_film_bids(tmp_path_factory)


def _fine_reference(clips, times, width, step=1e-3):
    """Each frame's mean stimulus on a 1 ms grid, one frame at a time (float64)."""
    expected = np.zeros((times.size, clips[0].features.shape[1]))
    for j, start in enumerate(times):
        for t in np.arange(start, start + width, step) + step / 2:
            for clip in clips:
                since = t - clip.onset
                k = int(since // clip.bin_width)
                if 0 <= since < clip.duration and k < len(clip.features):
                    expected[j] += clip.features[k] * step / width
    return expected


@pytest.mark.parametrize("width", [2.0, 1.0, 3.0])
def test_features_are_the_mean_stimulus_of_each_frame(width):
    rng = np.random.default_rng(0)
    tr, n_volumes = 2.0, 25
    clips = [Presentation(1.0, 9.0, rng.normal(size=(5, 3)), tr),
             Presentation(21.3, 30.0, rng.normal(size=(12, 3)), tr)]  # fmt: skip
    grid = FrameGrid.volumes(round(n_volumes * tr / width), width)
    placed, covered = place(clips, grid)
    np.testing.assert_allclose(placed, _fine_reference(clips, grid.times, width), atol=1e-9)
    inside = sum(np.clip(np.minimum(grid.times + width, c.onset + c.duration)
                 - np.maximum(grid.times, c.onset), 0, None) for c in clips) / width  # fmt: skip
    np.testing.assert_allclose(covered, inside)


def test_a_transcripts_silence_after_its_last_word_is_stimulus():
    """A transcript's bins end at its last word; its event lasts on: the silence after the
    last word is no time without stimulus (as a film's silent scene is none)."""
    words = np.ones((3, 4))  # words up to 6 s
    placed, covered = place([Presentation(0.0, 20.0, words, 2.0)], FrameGrid.volumes(10, 2.0))
    np.testing.assert_array_equal(covered, np.ones(10))
    np.testing.assert_array_equal(placed[3:], 0.0)
    assert seconds_without_stimulus(covered, 2.0) == 0.0


def test_seconds_without_stimulus_are_rounded_to_the_microsecond():
    grid = FrameGrid.volumes(26, 0.7)  # frames of 0.7 s add up to 1e-14 s uncovered
    _, covered = place([Presentation(0.0, 20.0, np.ones((10, 1)), 2.0)], grid)
    assert seconds_without_stimulus(covered, grid.width) == 0.0
    _, late = place([Presentation(1.4, 20.0, np.ones((10, 1)), 2.0)], grid)
    assert seconds_without_stimulus(late, grid.width) == 1.4


def test_frames_aligned_with_the_bins_take_one_bin_each():
    features = np.arange(10.0).reshape(5, 2)
    placed, _ = place([Presentation(4.0, 10.0, features, 2.0)], FrameGrid.volumes(8, 2.0))
    np.testing.assert_array_equal(placed, np.vstack([np.zeros((2, 2)), features, [[0, 0]]]))


def test_a_stores_frames_are_found_on_its_grid():
    grid = FrameGrid.of_store(np.array([0.0, 1.5, 4.5]), np.arange(5) * 1.5, 1.5)
    np.testing.assert_array_equal(grid.kept, [True, True, False, True, False])
    average = FrameGrid.of_store(np.array([0.0, 2.0, 6.0]), None, 2.0)
    np.testing.assert_array_equal(average.kept, [True, True, False, True])
    with pytest.raises(ValueError, match="not frames"):
        FrameGrid.of_store(np.array([0.0, 1.0]), np.arange(3) * 2.0, 2.0)


def test_stacked_delays_are_shifted_copies():
    x = np.arange(12.0).reshape(6, 2)
    stacked = stack_delays(x, [0, 2])
    assert stacked.shape == (6, 4)
    np.testing.assert_array_equal(stacked[:, :2], x)
    np.testing.assert_array_equal(stacked[:, 2:], np.vstack([np.zeros((2, 2)), x[:4]]))
    np.testing.assert_array_equal(delay(x, 2.0, "delays", [1]), np.vstack([[0, 0], x[:5]]))


def _glover(t: np.ndarray) -> np.ndarray:
    """The Glover (1999) double gamma of nilearn's glover_hrf, in float64 numpy."""

    def gamma_pdf(shape, scale):
        logs = (
            (shape - 1) * np.log(np.maximum(t, 1e-300))
            - t / scale
            - math.lgamma(shape)
            - shape * math.log(scale)
        )
        return np.exp(logs)

    return gamma_pdf(6 / 0.9, 0.9) - 0.48 * gamma_pdf(12 / 0.9, 0.9)


def test_hrf_convolution_matches_a_continuous_time_reference():
    from nilearn.glm.first_level import compute_regressor

    rng = np.random.default_rng(1)
    tr, n = 1.5, 60
    x = rng.normal(size=n)
    # reference: x held for each TR, convolved on a 1 ms grid with the analytic response
    step = 0.001
    fine_t = np.arange(32000) * step
    response = _glover(fine_t)
    response /= response.sum()
    held = np.repeat(x, round(tr / step))
    reference = np.convolve(held, response)[: held.size : round(tr / step)]
    ours = convolve_hrf(x[:, None], tr)[:, 0]
    nilearn, _ = compute_regressor(
        np.vstack([np.arange(n) * tr, np.full(n, tr), x]), "glover", np.arange(n) * tr
    )
    scale = np.abs(reference).max()
    ours_error = np.abs(ours - reference).max() / scale
    nilearn_error = np.abs(nilearn[:, 0] - reference).max() / scale
    print(f"max error / max |response|: bidstrain {ours_error:.2e}, nilearn {nilearn_error:.2e}")
    # nilearn samples its response on a grid 0.1 % coarser than TR / 50, one step late:
    # both computations carry that 0.6 % (bidstrain reads nilearn's kernel), no more
    assert ours_error < 1e-2
    np.testing.assert_allclose(ours, nilearn[:, 0], atol=1e-9 * scale)


def test_zscore_statistics_come_from_the_training_runs_only():
    rng = np.random.default_rng(2)
    runs = {"a": rng.normal(3, 2, (40, 2)), "b": rng.normal(3, 2, (30, 2)),
            "held": rng.normal(100, 50, (20, 2))}  # fmt: skip
    runs["a"][:, 1] = runs["b"][:, 1] = 7.0  # a feature constant in training
    accumulator = StatsAccumulator()
    for name in ("a", "b"):  # the held-out run is not added
        accumulator.add(name, runs[name])
    stats = accumulator.stats()
    training = np.vstack([runs["a"], runs["b"]])
    np.testing.assert_allclose(stats.mean, training.mean(axis=0))
    assert stats.std[0] == pytest.approx(training[:, 0].std()) and stats.std[1] == 1.0
    np.testing.assert_allclose(stats.apply(runs["held"]), (runs["held"] - stats.mean) / stats.std)
    assert stats.training_runs == ("a", "b")
    with pytest.raises(BidstrainError, match="need at least one training run"):
        StatsAccumulator().stats()


def _align(run, stores, kind, method, delays=()):
    grid = FrameGrid.volumes(run.n_volumes, run.repetition_time)
    where = {"path": run.events_file, "subject": run.image.subject}
    return align_run(
        run.events, stores, kind, grid, method, delays, source_tr=run.repetition_time, where=where
    )[0]


def test_a_runs_film_features_follow_the_films_luminance(film_bids, tmp_path):
    index = StimulusIndex.build(BidsIndex.build(film_bids))
    stores = {}
    for path, stimulus in index.stimuli.items():
        out = tmp_path / f"{path.name}.zarr"
        write_stimulus_store(
            path, stimulus.repetition_time, StimulusFeatureConfig.defaults(video_size=(8, 6)), out
        )
        stores[path] = read_feature_store(out)
    run = index.runs["sub-03/func/sub-03_task-movie_run-1"]
    luminance = np.array(truth(film_bids)["luminance"])[:, None]
    hrf = _align(run, stores, "video", "hrf")
    np.testing.assert_allclose(
        hrf.mean(axis=1, keepdims=True), convolve_hrf(luminance, SPEC.repetition_time), atol=1.5
    )
    stacked = _align(run, stores, "audio", "delays", [2, 3])
    assert stacked.shape == (SPEC.n_bins, 2 * 40)
    words = _align(run, stores, "text", "delays", [0]).sum(axis=1)
    np.testing.assert_array_equal(words, [len(w) for w in truth(film_bids)["words"]])


def test_frames_without_stimulus_hold_silence_not_full_scale_sound(film_bids, tmp_path):
    """Audio is log10 of power: 0 would be full-scale sound in every band. Frames before
    the film, and the first frames of a delayed copy, hold silence (the log-mel floor);
    a frame half before the film the mean of silence and the film's first TR."""
    index = StimulusIndex.build(BidsIndex.build(film_bids))
    run = index.runs["sub-01/func/sub-01_task-movie_run-1"]
    (event,) = [e for e in run.events if e.stimulus.suffix == ".mp4"]
    out = tmp_path / "film.zarr"
    write_stimulus_store(event.stimulus, 2.0, StimulusFeatureConfig.defaults(), out)
    stores = {event.stimulus: read_feature_store(out)}
    sound = np.asarray(stores[event.stimulus].features["audio"], dtype=np.float64)
    grid = FrameGrid.volumes(run.n_volumes, 2.0)
    stacked, _ = align_run([event], stores, "audio", grid, "delays", [0, 2], source_tr=2.0)
    np.testing.assert_allclose(stacked[:, :40], sound[: run.n_volumes])  # no delay: the film
    assert np.all(stacked[:2, 40:] == SILENCE) and SILENCE == -10.0
    np.testing.assert_allclose(stacked[2:, 40:], sound[: run.n_volumes - 2])
    late = dataclasses.replace(event, onset=3.0)  # shown from the middle of frame 1
    placed, covered = align_run([late], stores, "audio", grid, "delays", [0], source_tr=2.0)
    assert np.all(placed[0] == SILENCE) and covered[:2].tolist() == [0.0, 0.5]
    np.testing.assert_allclose(placed[1], (SILENCE + sound[0]) / 2)
    video, _ = align_run([late], stores, "video", grid, "delays", [0], source_tr=2.0)
    assert np.all(video[0] == 0.0)  # no light


def test_features_of_another_tr_are_an_error_naming_the_run(film_bids, tmp_path):
    index = StimulusIndex.build(BidsIndex.build(film_bids))
    words = film_bids / "stimuli" / "film_words.tsv"
    write_stimulus_store(words, 1.0, StimulusFeatureConfig.defaults(), tmp_path / "w.zarr")
    run = index.runs["sub-01/func/sub-01_task-movie_run-1"]
    named = re.escape(str(words))  # the whole path: film_words.tsv may lie in two folders
    with pytest.raises(BidstrainError, match=r"sub-01: .*task-movie_events.tsv: the features "
                       rf"of {named} are per 1 s but the run.s TR is 2 s"):  # fmt: skip
        _align(run, {words: read_feature_store(tmp_path / "w.zarr")}, "text", "hrf")
    with pytest.raises(BidstrainError, match="no stimulus of this run has video features"):
        _align(run, {}, "video", "hrf")


def test_frames_left_out_of_the_store_are_left_out_after_the_delays(film_bids, tmp_path):
    """Delays shift along the whole frame grid; the frames the store dropped go after."""
    index = StimulusIndex.build(BidsIndex.build(film_bids))
    words = film_bids / "stimuli" / "film_words.tsv"
    write_stimulus_store(words, 2.0, StimulusFeatureConfig.defaults(), tmp_path / "w.zarr")
    stores = {words: read_feature_store(tmp_path / "w.zarr")}
    run = index.runs["sub-01/func/sub-01_task-movie_run-1"]
    full = FrameGrid.volumes(run.n_volumes, 2.0)
    kept = np.ones(run.n_volumes, dtype=bool)
    kept[[3, 4, 7]] = False
    dropped = FrameGrid(full.times, 2.0, kept)
    args = (run.events, stores, "text", "delays", [0, 1])
    whole, covered_whole = align_run(*args[:3], full, *args[3:], source_tr=2.0)
    some, covered = align_run(*args[:3], dropped, *args[3:], source_tr=2.0)
    np.testing.assert_array_equal(some, whole[kept])
    np.testing.assert_array_equal(covered, covered_whole[kept])
    counts = [len(w) for w in truth(film_bids)["words"]]
    n = whole.shape[1] // 2
    np.testing.assert_array_equal(some[:, n:].sum(axis=1), np.r_[0, counts[:-1]][kept])
