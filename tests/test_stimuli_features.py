"""Per-TR stimulus features: what the decoders find is what the demo film holds, decoded
as a stream."""

from __future__ import annotations

import itertools
import re
from collections import Counter
from fractions import Fraction
from types import SimpleNamespace

import av
import numpy as np
import pytest
from bidstrain.config import StimulusFeatureConfig
from bidstrain.demo import naturalistic
from bidstrain.errors import BidstrainError
from bidstrain.io.store import read_feature_store
from bidstrain.stimuli import audio, video
from bidstrain.stimuli.__main__ import main
from bidstrain.stimuli.audio import audio_features, band_centres, mel_filterbank
from bidstrain.stimuli.bins import bin_means
from bidstrain.stimuli.features import text_features
from bidstrain.stimuli.media import open_media, probe
from bidstrain.stimuli.text import (
    Word,
    hashed_bag,
    mean_vectors,
    read_embeddings,
    read_words,
    spoken_words,
    words_per_bin,
)
from bidstrain.stimuli.video import video_features
from conftest import run_bench
from stimuli_support import SPEC, cut_faststart, make_film_bids, truth

TR = SPEC.repetition_time


@pytest.fixture(scope="module")
def film_bids(tmp_path_factory):
    return make_film_bids(tmp_path_factory)


def test_video_luminance_per_tr_is_the_films(film_bids):
    bins = list(video_features(film_bids / "stimuli" / "film.mp4", TR, (32, 24), "grey"))
    expected = np.array(truth(film_bids)["luminance"])
    assert len(bins) == SPEC.n_bins and bins[0].shape == (24, 32)
    # H.264 in limited-range YUV: within one grey level of the frames encoded
    assert np.abs(np.array([b.mean() for b in bins]) - expected).max() < 1.5


def test_rgb_frames_keep_three_equal_channels(film_bids):
    bins = list(video_features(film_bids / "stimuli" / "film.mp4", TR, (16, 12), "rgb"))
    assert bins[0].shape == (12, 16, 3)
    channels = np.array([b.mean(axis=(0, 1)) for b in bins])
    assert np.abs(channels - channels.mean(axis=1, keepdims=True)).max() < 1.0
    assert np.abs(channels[:, 0] - truth(film_bids)["luminance"]).max() < 3.0


def test_audio_peak_mel_band_is_the_tone_of_each_tr(film_bids):
    bins = np.array(list(audio_features(film_bids / "stimuli" / "film.mp4", TR, n_mels=40)))
    expected = truth(film_bids)["tone_band"]
    assert bins.shape[1] == 40
    np.testing.assert_array_equal(bins[: SPEC.n_bins].argmax(axis=1), expected)


def test_mel_filters_peak_at_their_centres():
    rate, n_fft = 16000, 4096
    filters = mel_filterbank(rate, n_fft, 20)
    peaks = np.fft.rfftfreq(n_fft, 1 / rate)[filters.argmax(axis=1)]
    assert np.abs(peaks - band_centres(rate, 20)).max() <= rate / n_fft
    assert filters.max() <= 1.0 and (filters >= 0).all()


def test_hashed_words_count_the_transcript(film_bids):
    words = read_words(film_bids / "stimuli" / "film_words.tsv")
    bins = words_per_bin(words, TR, SPEC.n_bins)
    assert bins == truth(film_bids)["words"]
    bag = hashed_bag(bins, 64)
    np.testing.assert_array_equal(bag.sum(axis=1), [len(b) for b in bins])
    # one word, one column, whatever the bin
    column = {w: hashed_bag([[w]], 64).argmax() for w in {w for b in bins for w in b}}
    for k, b in enumerate(bins):
        expected = np.zeros(64)
        for w, n in Counter(b).items():
            expected[column[w]] += n
        np.testing.assert_array_equal(bag[k], expected)


def test_word_vectors_average_the_known_words_and_count_the_rest(tmp_path):
    path = tmp_path / "vectors.tsv"
    path.write_text("dog\t1\t0\ncat\t0\t2\nthe\t-1\t-1\n")
    vectors = read_embeddings(path)
    features, unknown = mean_vectors([["dog", "cat", "runs"], [], ["the", "runs", "a"]], vectors)
    np.testing.assert_allclose(features, [[0.5, 1.0], [0.0, 0.0], [-1.0, -1.0]])
    assert unknown == Counter({"runs": 2, "a": 1})
    path.write_text("dog\t1\t0\ncat\t0\n")
    with pytest.raises(
        BidstrainError, match="vectors.tsv.*line 2: .*'cat' has length 1, the first"
    ):
        read_embeddings(path)


def test_glove_words_with_spaces_and_repeated_words_keep_the_first_vector(tmp_path, caplog):
    path = tmp_path / "glove.840B.txt"
    # GloVe 840B: cased words by frequency, some tokens holding spaces
    path.write_text(". . . 0.4 0.5\ndog 1 0\nDog 3 3\nfoo\u00a0bar 7 8\ndog 9 9\n1999 2 2\n")
    with caplog.at_level("INFO", logger="bidstrain.stimuli.text"):
        vectors = read_embeddings(path)
    assert sorted(vectors) == [". . .", "1999", "dog", "foo\u00a0bar"]
    np.testing.assert_array_equal(vectors["dog"], [1.0, 0.0])
    np.testing.assert_array_equal(vectors[". . ."], [0.4, 0.5])
    assert "2 words repeat an earlier word" in caplog.text


def test_word_vectors_are_read_as_glove_and_word2vec_write_them(tmp_path):
    path = tmp_path / "vectors.txt"
    path.write_text("2 3\ndog 1 0 0.5\nCat 0 2 -1e-3\n\n")
    vectors = read_embeddings(path)
    assert sorted(vectors) == ["cat", "dog"]
    np.testing.assert_array_equal(vectors["cat"], [0.0, 2.0, -1e-3])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("dog\t1\t0\ncat\n", "line 2: the vector of 'cat' has no value"),
        ("dog\t1\tnan\n", "line 1: the vector of 'dog' holds a value that is not a number"),
        ("dog\t1\tzero\n", "line 1: the vector of 'dog' holds a value that is not a number"),
        ("\n\n", "no word vector"),
        ("dog 1 0\ncaf\xe9 1 1\n", "line 2: byte 0xe9 is not UTF-8 text"),
        (
            "the 1 2 3\nfoo 4 5 6 7\n",
            "line 2: the vector of 'foo 4' has length 4, the first vector 3",
        ),
    ],
)
def test_bad_word_vectors_are_named_by_line(tmp_path, text, message):
    path = tmp_path / "vectors.tsv"
    path.write_bytes(text.encode("latin-1"))
    with pytest.raises(BidstrainError, match=f"vectors.tsv.*{message}"):
        read_embeddings(path)


def test_a_transcript_without_words_or_without_known_words_is_refused(film_bids, tmp_path):
    transcript = tmp_path / "words.tsv"
    transcript.write_text("onset\tduration\tword\n0.5\t0.3\tn/a\n1.0\t0.3\t\n")
    settings = StimulusFeatureConfig.defaults()
    with pytest.raises(BidstrainError, match="words.tsv.*the transcript holds no word"):
        text_features(transcript, TR, settings)
    vectors = tmp_path / "vectors.tsv"
    vectors.write_text("zebra\t1\t0\n")
    settings = StimulusFeatureConfig.defaults(
        text_method="embeddings", text_embeddings=str(vectors)
    )
    film_words = film_bids / "stimuli" / "film_words.tsv"
    with pytest.raises(BidstrainError, match="no word of the transcript has a vector in .*vectors"):
        text_features(film_words, TR, settings)


def test_a_runs_own_transcript_names_its_subject_and_a_vector_table_says_it_is_shared(
    tmp_path,
):
    events = tmp_path / "sub-02_task-movie_run-1_events.tsv"
    events.write_text("onset\tduration\tword\n0.5\t0.3\thello\n")
    vectors = tmp_path / "vectors.tsv"
    vectors.write_text("zebra\t1\t0\n")
    settings = StimulusFeatureConfig.defaults(
        text_method="embeddings", text_embeddings=str(vectors)
    )
    with pytest.raises(BidstrainError, match=r"^sub-02: .*events.tsv: no word of the transcript"):
        text_features(events, TR, settings)
    vectors.write_text("zebra\t1\t0\nhello\t1\n")
    shared = r"line 2: .*\(stimuli.text_embeddings: the word vectors of every subject's transcripts"
    with pytest.raises(BidstrainError, match=rf"^{tmp_path}/vectors.tsv: {shared}"):
        text_features(events, TR, settings)


def test_a_word_without_a_numeric_onset_is_named(tmp_path):
    path = tmp_path / "words.tsv"
    for onset in ("nan", "inf", "soon"):
        path.write_text(f"onset\tword\n0.5\thello\n{onset}\tthere\n")
        with pytest.raises(BidstrainError, match=f"line 3: onset '{onset}' of word 'there'"):
            read_words(path)


def test_a_word_keeps_the_punctuation_inside_it(tmp_path):
    path = tmp_path / "words.tsv"
    rows = ["don\u2019t", "U.S.", "well-known", "1,000", '"Hello,"', "end.", "\u2014"]
    path.write_text("onset\tword\n" + "".join(f"{i}\t{w}\n" for i, w in enumerate(rows)))
    words = read_words(path)
    assert [w.text for w in words] == ["don't", "u.s.", "well-known", "1,000", "hello", "end"]
    assert [len(b) for b in words_per_bin(words, 1.0)] == [1, 1, 1, 1, 1, 1]
    subtitle = tmp_path / "film.srt"
    subtitle.write_text(
        "1\n00:00:00,000 --> 00:00:02,000\nDon\u2019t go \u2014 it\u2019s U.S. soil.\n"
    )
    assert [w.text for w in read_words(subtitle)] == ["don't", "go", "it's", "u.s.", "soil"]
    # punctuation of other scripts; a script without spaces is cut at its punctuation
    arabic = "\u0645\u0631\u062d\u0628\u0627"
    assert spoken_words(f"\u201eHallo\u201c {arabic}\u060c Great!\U0001f44d") == [
        "hallo", arabic, "great"]  # fmt: skip
    assert spoken_words("\u4f60\u597d\uff0c\u4e16\u754c\u3002") == ["\u4f60\u597d", "\u4e16\u754c"]


def test_subtitles_spread_their_words_over_the_cue(tmp_path):
    path = tmp_path / "film.srt"
    path.write_text(
        "1\n00:00:01,000 --> 00:00:03,000\n<i>Hello</i> {\\an8}there,\n"
        '<font color="#ff0">friend!</font>\n\n'
        "2\n00:00:04,500 --> 00:00:05,000\nBye\n"
    )
    words = read_words(path)
    assert read_words(path.rename(tmp_path / "FILM.SRT")) == words
    assert words == [
        Word(1.0, "hello"),
        Word(1 + 2 / 3, "there"),
        Word(1 + 4 / 3, "friend"),
        Word(4.5, "bye"),
    ]
    assert words_per_bin(words, 2.0) == [["hello", "there"], ["friend"], ["bye"]]


def test_bins_are_yielded_from_an_endless_stream():
    def endless():  # one value per 0.5 s, forever: nothing may wait for its end
        for index in itertools.count():
            yield np.array([index * 0.5]), np.array([[float(index)]])

    first = list(itertools.islice(bin_means(endless(), 2.0), 3))
    np.testing.assert_array_equal(np.concatenate(first), [1.5, 5.5, 9.5])


def test_a_variable_frame_rate_film_averages_what_was_on_screen(tmp_path):
    # each 2 s: a white frame shown for 1.9 s, then ten black frames 10 ms apart
    path = tmp_path / "vfr.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=100)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        stream.codec_context.time_base = stream.time_base = Fraction(1, 1000)
        stream.options = {"crf": "0"}
        shown = [(2000 * k + at, grey) for k in range(3) for at, grey in [(0, 255)] + [
            (1900 + 10 * i, 0) for i in range(10)]]  # fmt: skip
        for ms, grey in shown:
            frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), grey, np.uint8), "rgb24")
            frame.pts = ms
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    means = [float(b.mean()) for b in video_features(path, 2.0, (8, 8), "grey")]
    np.testing.assert_allclose(means, [255 * 1.9 / 2] * 3, atol=1.5)  # 23.2 frame by frame


def test_video_decoder_yields_a_tr_after_decoding_only_its_frames(film_bids, monkeypatch):
    decoded = []
    original = video.decoded_frames

    def counting(*args, **kwargs):
        for item in original(*args, **kwargs):
            decoded.append(item[0][0])
            yield item

    monkeypatch.setattr(video, "decoded_frames", counting)
    stream = video_features(film_bids / "stimuli" / "film.mp4", TR, (8, 6), "grey")
    next(stream)
    # the first TR's frames, and the one frame that opened the second TR
    assert len(decoded) == SPEC.fps * TR + 1
    stream.close()


def test_audio_decoder_yields_a_tr_after_decoding_about_a_tr(film_bids, monkeypatch):
    seen = []
    original = audio.mono_samples

    def counting(*args, **kwargs):
        for time, samples in original(*args, **kwargs):
            seen.append(time + samples.size / SPEC.sample_rate)
            yield time, samples

    monkeypatch.setattr(audio, "mono_samples", counting)
    stream = audio_features(film_bids / "stimuli" / "film.mp4", TR)
    next(stream)
    assert TR < seen[-1] < TR + 0.2  # one AAC frame (64 ms) past the first TR, not the film
    stream.close()


def test_audio_frames_are_decoded_one_at_a_time(film_bids):
    decoded = []
    with open_media(film_bids / "stimuli" / "film.mp4") as container:

        def counting(stream):
            for frame in container.decode(stream):
                decoded.append(frame.time)
                yield frame

        stream = container.streams.audio[0]
        samples = audio.mono_samples(SimpleNamespace(decode=counting), stream, stream.rate)
        next(samples)
        next(samples)
    assert 2 <= len(decoded) <= 3  # the resampler may hold a frame back, not the film


def test_audio_chunks_are_joined_in_order_with_their_first_start_time():
    chunks = [(0.0, np.arange(3.0)), (0.3, np.arange(3.0, 6.0)), (0.6, np.arange(6.0, 8.0))]
    blocks = list(audio.joined(iter(chunks), sample_rate=10, seconds=0.5))
    assert [start for start, _ in blocks] == [0.0, 0.6]
    np.testing.assert_array_equal(blocks[0][1], np.arange(6.0))  # 0.6 s: at least 0.5 s
    np.testing.assert_array_equal(blocks[1][1], [6.0, 7.0])  # the rest, shorter


def test_cli_writes_one_store_per_stimulus_with_the_raw_scale(film_bids, tmp_path):
    out = tmp_path / "film.zarr"
    main(["--stimulus", str(film_bids / "stimuli" / "film.mp4"), "--tr", str(TR),
          "--out", str(out), "--video-size", "16", "12", "--audio-n-mels", "40"])  # fmt: skip
    store = read_feature_store(out)
    assert store.meta.kinds == ("video", "audio")
    assert store.meta.shapes["video"] == (12, 16) and "0 to 255" in store.meta.units["video"]
    assert store.features["video"].shape == (SPEC.n_bins, 16 * 12)
    np.testing.assert_allclose(store.time, np.arange(SPEC.n_bins) * TR)
    for kind in store.meta.kinds:
        values = store.features[kind].astype(np.float64)
        np.testing.assert_allclose(store.raw_mean[kind], values.mean(axis=0), rtol=1e-6)
        np.testing.assert_allclose(store.raw_std[kind], values.std(axis=0), rtol=1e-5, atol=1e-5)
    text = tmp_path / "words.zarr"
    main(["--stimulus", str(film_bids / "stimuli" / "film_words.tsv"), "--tr", str(TR),
          "--out", str(text), "--text-n-features", "32"])  # fmt: skip
    counts = read_feature_store(text).features["text"].sum(axis=1)
    expected = [len(w) for w in truth(film_bids)["words"]]
    np.testing.assert_array_equal(counts, expected[: counts.size])


def test_a_film_cut_short_is_an_error_naming_it(film_bids, tmp_path):
    film = (film_bids / "stimuli" / "film.mp4").read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(film[: len(film) // 2])
    with pytest.raises(BidstrainError, match=r"cut\.mp4: unreadable media file"):
        next(video_features(cut, TR))


def test_a_streamable_film_cut_short_says_how_much_decodes(film_bids, tmp_path):
    cut = cut_faststart(film_bids / "stimuli" / "film.mp4", tmp_path / "cut.mp4")
    with pytest.raises(BidstrainError, match=r"cut\.mp4: truncated media file: its video stream "
                       r"decodes to \d+\.\d\d s of the 20\.00 s its header declares"):  # fmt: skip
        list(video_features(cut, TR))


def test_a_tr_without_frames_holds_the_previous_mean():
    blocks = [
        (np.array([0.5, 1.5]), np.array([[1.0], [3.0]])),
        (np.array([6.5]), np.array([[9.0]])),
    ]
    np.testing.assert_array_equal(np.concatenate(list(bin_means(blocks, 2.0))), [2, 2, 2, 9])
    late = [(np.array([4.5]), np.array([[5.0]]))]  # nothing before: black
    np.testing.assert_array_equal(np.concatenate(list(bin_means(late, 2.0))), [0, 0, 5])


def test_cli_word_vectors_note_the_unknown_words(film_bids, tmp_path):
    vectors = tmp_path / "vectors.tsv"
    vectors.write_text("dog\t1\t0\t0\ncat\t0\t1\t0\nthe\t0\t0\t1\n")
    out = tmp_path / "words.zarr"
    transcript = str(film_bids / "stimuli" / "film_words.tsv")
    main(["--stimulus", transcript, "--tr", str(TR), "--out", str(out),
          "--text-method", "embeddings", f"--text-embeddings={vectors}"])  # fmt: skip
    store = read_feature_store(out)
    words = truth(film_bids)["words"]
    known = ("dog", "cat", "the")
    n_unknown = sum(w not in known for tr_words in words for w in tr_words)
    assert store.features["text"].shape[1] == 3
    assert store.meta.notes["text"].startswith(f"{n_unknown} of {sum(map(len, words))} words")
    for k, tr_words in enumerate(words[: store.features["text"].shape[0]]):
        rows = [np.eye(3)[known.index(w)] for w in tr_words if w in known]
        expected = np.mean(rows, axis=0) if rows else np.zeros(3)
        np.testing.assert_allclose(store.features["text"][k], expected, atol=1e-7)


def test_the_demo_command_writes_a_film_of_the_duration_asked_and_refuses_a_partial_tr(
    tmp_path, capsys
):
    naturalistic.main([str(tmp_path / "short"), "--subjects", "1", "--duration", "8"])
    root = tmp_path / "short"
    assert probe(root / "stimuli" / "film.mp4").duration == pytest.approx(8.0, abs=0.1)
    assert len(truth(root)["luminance"]) == 4
    for duration, message in [
        ("9", "--duration 9: not a whole, positive number of TRs (2 s)"),
        ("60.0004", "--duration 60.0004: not a whole, positive number of TRs (2 s)"),
        ("nan", "--duration nan: not a whole, positive number of TRs (2 s)"),
        ("2", "the film's 1 TR(s) leave its luminance, log2 tone frequency, word count the"),
    ]:
        with pytest.raises(SystemExit) as stopped:
            naturalistic.main([str(tmp_path / "refused"), "--duration", duration])
        assert stopped.value.code == 2
        assert message in capsys.readouterr().err
        assert not (tmp_path / "refused" / "dataset_description.json").exists()


def test_the_media_benches_give_the_same_features_as_their_peers(tmp_path):
    """bench_audio and bench_video time bidstrain against a user's version: they must
    compare the same features (the video bench exits non-zero where they differ)."""
    sound = run_bench("bench_audio.py", "--seconds", "6", "--repeats", "1", cwd=tmp_path)
    assert sound.returncode == 0, sound.stderr
    difference = float(re.search(r"over the first 3: (\S+)", sound.stdout).group(1))
    assert difference < 1e-12
    assert re.search(r"^media: (6\.0\d|5\.9\d) s$", sound.stdout, re.M)  # the file's own length
    assert re.search(r"^\| ours \| [\d.]+ \| [\d.]+ \| [\d.]+x \| \d+ \|$", sound.stdout, re.M)
    film = run_bench("bench_video.py", "--seconds", "4", "--repeats", "1", cwd=tmp_path)
    assert film.returncode == 0, film.stderr
    assert "ours and peer-resized: identical features (SHA-256)" in film.stdout
    assert "TRs: {'ours': 2, 'peer-resized': 2, 'peer-full': 2, 'floor': 0}" in film.stdout


def test_a_missing_word_table_says_where_a_relative_path_was_looked_for(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(BidstrainError, match=r"^vectors/glove.txt: word embeddings file not") as e:
        read_embeddings("vectors/glove.txt")
    assert f"read from the study folder, {tmp_path}:" in str(e.value)
