"""Media files as editors and recorders write them: timestamps that start after 0, low
frame rates, sounds shorter than their films, and sounds of any rate and channels."""

from __future__ import annotations

import contextlib
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from bidstrain.config import StimulusFeatureConfig
from bidstrain.stimuli.audio import SILENCE, audio_features, band_centres
from bidstrain.stimuli.bins import bin_means
from bidstrain.stimuli.features import media_features
from bidstrain.stimuli.media import probe
from bidstrain.stimuli.video import video_features
from stimuli_support import Pipe

RATE = 16000


def _film(
    path: Path, frames: list[tuple[float, int]], start: float = 0.0, sound=None, piped=False
) -> Path:
    """A film of 32x32 grey frames (``(time, grey)``, lossless; MP4 or Matroska by the
    name's suffix), its timestamps ``start`` seconds late; with ``sound`` (samples at
    RATE) an AAC track from the same start. ``piped``: written as to a pipe (a Matroska
    file then declares no duration)."""
    with contextlib.ExitStack() as stack:
        target = Pipe(stack.enter_context(path.open("wb"))) if piped else str(path)
        fmt = "matroska" if path.suffix == ".mkv" else None
        container = stack.enter_context(av.open(target, "w", format=fmt))
        video = container.add_stream("libx264", rate=1000)
        video.width, video.height, video.pix_fmt = 32, 32, "yuv420p"
        video.codec_context.time_base = video.time_base = Fraction(1, 1000)
        video.options = {"crf": "0"}
        audio = None
        if sound is not None:
            audio = container.add_stream("aac", rate=RATE)
            audio.layout = "mono"
        for time, grey in frames:
            frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), grey, np.uint8), "rgb24")
            frame.pts = round((time + start) * 1000)
            container.mux(video.encode(frame))
        container.mux(video.encode())
        if audio is not None:
            samples = sound.astype(np.float32)
            for at in range(0, samples.size, 1024):
                chunk = av.AudioFrame.from_ndarray(samples[None, at : at + 1024], "flt", "mono")
                chunk.sample_rate, chunk.pts = RATE, at + round(start * RATE)
                chunk.time_base = Fraction(1, RATE)
                container.mux(audio.encode(chunk))
            container.mux(audio.encode())
    return path


def _sound(path: Path, rate: int, channels: int, seconds: float, hz: float) -> Path:
    """A WAV file of a tone of amplitude 0.3, the same in every channel."""
    layout = "stereo" if channels == 2 else "mono"
    t = np.arange(round(seconds * rate)) / rate
    samples = (0.3 * 32767 * np.sin(2 * np.pi * hz * t)).astype(np.int16)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("pcm_s16le", rate=rate)
        stream.layout = layout
        for at in range(0, samples.size, 1024):
            block = np.repeat(samples[None, at : at + 1024], channels, axis=0).T.reshape(1, -1)
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(block), "s16", layout)
            frame.sample_rate, frame.pts = rate, at
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def _tone(seconds: float, on: tuple[float, float], hz: float = 1000.0) -> np.ndarray:
    """``seconds`` of sound at RATE: a tone of ``hz`` from ``on[0]`` to ``on[1]``, silence
    elsewhere."""
    t = np.arange(round(seconds * RATE)) / RATE
    return np.where((t >= on[0]) & (t < on[1]), 0.3 * np.sin(2 * np.pi * hz * t), 0.0)


def test_a_film_whose_timestamps_start_late_counts_from_its_start(tmp_path):
    # 10 fps for 8 s, white from 4.0 to 4.5 s of the film; its timestamps start at 1.0 s
    frames = [(i / 10, 255 if 40 <= i < 45 else 0) for i in range(80)]
    plain = _film(tmp_path / "plain.mp4", frames, sound=_tone(8.0, (4.0, 5.0)))
    late = _film(tmp_path / "late.mp4", frames, start=1.0, sound=_tone(8.0, (4.0, 5.0)))
    with av.open(str(late)) as container:
        assert container.start_time >= 0.9 * av.time_base  # the file is as described
    for film in (plain, late):
        grey = [float(b.mean()) for b in video_features(film, 1.0, (8, 8), "grey")]
        assert len(grey) == 8
        np.testing.assert_allclose(grey[4], 255 / 2, atol=2.0)
        assert max(grey[:4] + grey[5:]) < 2.0
        loudness = np.array(list(audio_features(film, 1.0))).max(axis=1)
        assert loudness.argmax() == 4 and loudness[4] - np.delete(loudness, 4).max() > 2


@pytest.mark.parametrize("piped", [False, True])
def test_a_matroska_film_cut_from_a_longer_one_is_as_long_as_its_frames(tmp_path, piped):
    # Matroska declares no stream length, and its duration counts from timestamp 0: a
    # film cut from 5 s to 10 s declares 10 s (or nothing, written to a pipe)
    frames = [(i / 10, 255 if 20 <= i < 25 else 0) for i in range(50)]
    film = _film(tmp_path / "cut.mkv", frames, start=5.0, piped=piped)
    assert probe(film).duration == pytest.approx(5.0, abs=0.11)
    features, _ = media_features(film, 1.0, StimulusFeatureConfig.defaults())
    grey = features["video"].reshape(5, -1).mean(axis=1)
    np.testing.assert_allclose(grey, [0, 0, 255 / 2, 0, 0], atol=2.0)


def test_rows_with_a_duration_count_in_every_bin_they_overlap():
    # values 1, 2, 3 shown for 1.5 s each from 0 s (the last until 4.5 s), bins of 1 s
    blocks = [(np.array([1.5 * k]), np.array([[k + 1.0]]), np.array([3]), np.array([1.5]))
              for k in range(3)]  # fmt: skip
    means = np.concatenate(list(bin_means(blocks, 1.0)))
    np.testing.assert_allclose(means, [1.0, 1.5, 2.0, 3.0, 3.0])


def test_a_slow_film_is_averaged_over_each_tr_it_is_on_screen_in(tmp_path):
    # a slide show: grey 60, 70, 80... each shown for 1.5 s; TR 1 s
    frames = [(1.5 * k, 60 + 10 * k) for k in range(6)]
    film = _film(tmp_path / "slides.mp4", frames)
    grey = [float(b.mean()) for b in video_features(film, 1.0, (8, 8), "grey")]
    # bin 4 (4 to 5 s): half of slide 2 (80, until 4.5 s), half of slide 3 (90)
    np.testing.assert_allclose(grey[:6], [60, 65, 70, 80, 85, 90], atol=1.5)


def test_a_sound_shorter_than_its_film_ends_in_silence(tmp_path):
    frames = [(i / 10, 100) for i in range(60)]  # 6 s of picture, 3 s of sound
    film = _film(tmp_path / "short_sound.mp4", frames, sound=_tone(3.0, (0.0, 3.0)))
    features, _ = media_features(film, 1.0, StimulusFeatureConfig.defaults())
    assert features["video"].shape[0] == features["audio"].shape[0] == 6
    assert features["audio"][:3].max() > -3  # the tone
    np.testing.assert_array_equal(features["audio"][4:], SILENCE)


@pytest.mark.parametrize(("rate", "channels"), [(48000, 1), (48000, 2), (22050, 1), (16000, 1)])
def test_a_tone_has_the_same_features_whatever_the_rate_and_channels(tmp_path, rate, channels):
    hz = band_centres(RATE, 40)[20]
    reference = np.array(list(audio_features(_sound(tmp_path / "ref.wav", RATE, 1, 3.0, hz), 1.0)))
    sound = _sound(tmp_path / f"tone_{rate}_{channels}.wav", rate, channels, 3.0, hz)
    bins = np.array(list(audio_features(sound, 1.0)))
    assert (bins.argmax(axis=1) == 20).all()
    np.testing.assert_allclose(bins[:, 20], reference[:, 20], atol=0.05)
    # a full-scale-1 sine's mean square is 0.5: a tone of amplitude 0.3, 0.045, most of
    # it in its band (the band takes the one-sided half of the spectrum)
    assert -2.0 < bins[1, 20] < np.log10(0.045)
