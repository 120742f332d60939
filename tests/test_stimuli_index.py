"""The stimulus index: each run's stimuli from its events.tsv (BIDS inheritance), each
file listed once with its users, and every bad input an error naming file and subject."""

from __future__ import annotations

import json
import os

import av
import nibabel as nib
import numpy as np
import pytest
from bidstrain.dataset.bids import BidsIndex
from bidstrain.demo.naturalistic import NaturalisticSpec, encode_film, film_truth
from bidstrain.errors import BidstrainError
from bidstrain.stimuli.index import StimulusIndex
from stimuli_support import SPEC, Pipe, copy_dataset, cut_faststart, make_film_bids

RUN_EVENTS = "sub-02/func/sub-02_task-movie_run-1_events.tsv"


@pytest.fixture(scope="module")
def film_bids(tmp_path_factory):
    return make_film_bids(tmp_path_factory)


def _index(root, tolerance=2.0):
    return StimulusIndex.build(BidsIndex.build(root), tolerance=tolerance)


def _events(root, *rows, columns="onset\tduration\tstim_file"):
    (root / RUN_EVENTS).write_text("\n".join([columns, *rows]) + "\n")


def test_each_stimulus_file_is_listed_once_with_its_users(film_bids):
    index = _index(film_bids)
    assert len(index.runs) == 6
    film, words = film_bids / "stimuli" / "film.mp4", film_bids / "stimuli" / "film_words.tsv"
    assert list(index.stimuli) == [film, words]
    assert index.stimuli[film].kind == "media" and index.stimuli[words].kind == "text"
    assert index.stimuli[film].duration == pytest.approx(SPEC.duration, abs=0.1)
    users = index.stimuli[film].users
    assert len(users) == 6 and {s for s, _ in users} == {"01", "02", "03"}
    run = index.runs["sub-01/func/sub-01_task-movie_run-2"]
    assert (run.repetition_time, run.n_volumes) == (SPEC.repetition_time, SPEC.n_bins)
    assert [e.stimulus for e in run.events] == [film, words]


def test_a_header_stating_its_tr_in_milliseconds_is_read_in_seconds(film_bids, tmp_path):
    """A run whose NIfTI header gives the TR as 2000 ms (its sidecar: 2 s) is indexed at
    2 s, as ingest reads it, not at 2000 s."""
    root = copy_dataset(film_bids, tmp_path)
    path = root / RUN_EVENTS.replace("_events.tsv", "_bold.nii.gz")
    img = nib.load(path)
    header = img.header.copy()
    header.set_zooms((*header.get_zooms()[:3], SPEC.repetition_time * 1000))
    header.set_xyzt_units("mm", "msec")
    data = np.asarray(img.dataobj)
    path.unlink()  # a copy may link to the original
    nib.save(nib.Nifti1Image(data, img.affine, header), path)
    run = _index(root).runs[RUN_EVENTS[: -len("_events.tsv")]]
    assert run.repetition_time == SPEC.repetition_time


def test_a_runs_own_events_file_overrides_the_dataset_one(film_bids, tmp_path):
    root = copy_dataset(film_bids, tmp_path)
    _events(root, "0\t20\tfilm.mp4")
    index = _index(root)
    assert [e.stimulus.name for e in index.runs[RUN_EVENTS[:-11]].events] == ["film.mp4"]
    assert len(index.stimuli[root / "stimuli" / "film_words.tsv"].users) == 5


def test_a_missing_stim_file_names_the_events_file_and_subject(film_bids, tmp_path):
    root = copy_dataset(film_bids, tmp_path)
    _events(root, "0\t20\tfilm.mp4", "0\t20\tclip.mp4")
    with pytest.raises(BidstrainError, match=r"sub-02: .*run-1_events.tsv: line 3: stim_file "
                       r"'clip.mp4' is not in the dataset's stimuli/"):  # fmt: skip
        _index(root)


def test_an_unreadable_film_names_the_file_and_subject(film_bids, tmp_path):
    root = copy_dataset(film_bids, tmp_path)
    (root / "stimuli" / "film.mp4").write_bytes(b"\x00not a film" * 100)
    with pytest.raises(BidstrainError, match=r"sub-01: .*stimuli/film.mp4: unreadable media"):
        _index(root)


def _wav(path, seconds, rate=8000):
    with av.open(str(path), "w") as container:
        stream = container.add_stream("pcm_s16le", rate=rate)
        stream.layout = "mono"
        frame = av.AudioFrame.from_ndarray(
            np.zeros((1, int(seconds * rate)), np.float32), format="flt", layout="mono"
        )
        frame.sample_rate = rate
        container.mux(stream.encode(frame))
        container.mux(stream.encode())


def test_a_truncated_sound_names_the_file_subject_and_missing_bytes(film_bids, tmp_path):
    root = copy_dataset(film_bids, tmp_path)
    _wav(root / "stimuli" / "sound.wav", 20.0)
    data = (root / "stimuli" / "sound.wav").read_bytes()
    (root / "stimuli" / "sound.wav").write_bytes(data[: len(data) // 2])
    _events(root, "0\t20\tsound.wav")
    with pytest.raises(BidstrainError, match=r"sub-02: .*sound.wav: truncated media file: "
                       r"\d+ bytes of its declared size are missing"):  # fmt: skip
        _index(root)


def test_a_truncated_streamable_film_names_the_file_and_subject(film_bids, tmp_path):
    root = copy_dataset(film_bids, tmp_path)
    cut_faststart(film_bids / "stimuli" / "film.mp4", root / "stimuli" / "film.mp4")
    with pytest.raises(BidstrainError, match=r"sub-01: .*film.mp4: truncated media file: "
                       r"nothing decodes in the last 1 s of the 20.00 s"):  # fmt: skip
        _index(root)


def test_files_written_to_a_pipe_are_measured_not_refused(film_bids, tmp_path):
    root = copy_dataset(film_bids, tmp_path)
    rate = 8000
    with open(root / "stimuli" / "sound.wav", "wb") as raw, av.open(Pipe(raw), "w", "wav") as c:
        stream = c.add_stream("pcm_s16le", rate=rate)
        stream.layout = "mono"
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 20 * rate), np.int16), "s16", "mono")
        frame.sample_rate = rate
        c.mux(stream.encode(frame))
        c.mux(stream.encode())
    assert (root / "stimuli" / "sound.wav").read_bytes()[4:8] == b"\xff" * 4  # size unknown
    with (
        open(root / "stimuli" / "film.mkv", "wb") as raw,
        av.open(Pipe(raw), "w", "matroska") as c,
    ):
        stream = c.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for index in range(200):
            frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), index, np.uint8), "rgb24")
            frame.pts = index
            c.mux(stream.encode(frame))
        c.mux(stream.encode())
    with av.open(str(root / "stimuli" / "film.mkv")) as container:
        assert container.duration is None  # the header declares none
    _events(root, "0\tn/a\tsound.wav", "0\tn/a\tfilm.mkv")
    index = _index(root)
    assert index.stimuli[root / "stimuli" / "sound.wav"].duration == pytest.approx(20.0)
    assert index.stimuli[root / "stimuli" / "film.mkv"].duration == pytest.approx(20.0)
    assert [e.duration for e in index.runs[RUN_EVENTS[:-11]].events] == pytest.approx([20, 20])


def test_cover_art_of_a_sound_is_not_a_film(film_bids, tmp_path):
    root = copy_dataset(film_bids, tmp_path)
    with av.open(str(root / "stimuli" / "story.mp3"), "w") as container:
        sound = container.add_stream("libmp3lame", rate=22050)
        sound.layout = "mono"
        cover = container.add_stream("png", rate=1)
        cover.width, cover.height, cover.pix_fmt = 16, 16, "rgb24"
        cover.disposition = av.stream.Disposition.attached_pic
        picture = av.VideoFrame.from_ndarray(np.full((16, 16, 3), 200, np.uint8), "rgb24")
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 20 * 22050), np.float32), "fltp", "mono")
        frame.sample_rate = 22050
        for packet in [*cover.encode(picture), *cover.encode(), *sound.encode(frame)]:
            container.mux(packet)
        container.mux(sound.encode())
    with av.open(str(root / "stimuli" / "story.mp3")) as container:
        assert len(container.streams.video) == 1  # the picture, as FFmpeg lists it
    _events(root, "0\t20\tstory.mp3")
    assert _index(root).stimuli[root / "stimuli" / "story.mp3"].kinds == ("audio",)


def test_a_stim_file_linked_elsewhere_as_datalad_does_is_read(film_bids, tmp_path):
    root = copy_dataset(film_bids, tmp_path)
    annex = root / ".git" / "annex" / "objects" / "film.mp4"
    annex.parent.mkdir(parents=True)
    (root / "stimuli" / "film.mp4").rename(annex)
    (root / "stimuli" / "film.mp4").symlink_to(os.path.relpath(annex, root / "stimuli"))
    assert root / "stimuli" / "film.mp4" in _index(root).stimuli


def test_two_spellings_of_one_stim_file_are_one_stimulus(film_bids, tmp_path):
    root = copy_dataset(film_bids, tmp_path)
    (root / "stimuli" / "x").mkdir()
    _events(root, "0\t20\tx/../film.mp4", "0\t20\t./film_words.tsv")
    index = _index(root)
    film, words = root / "stimuli" / "film.mp4", root / "stimuli" / "film_words.tsv"
    assert list(index.stimuli) == [film, words]
    assert [e.stimulus for e in index.runs[RUN_EVENTS[:-11]].events] == [film, words]
    assert len(index.stimuli[film].users) == 6


@pytest.mark.parametrize("name", ["../film.mp4", "x/../../film.mp4", "/elsewhere/film.mp4"])
def test_a_stim_file_outside_the_stimuli_folder_is_named(film_bids, tmp_path, name):
    root = copy_dataset(film_bids, tmp_path)
    (root / "film.mp4").write_bytes((root / "stimuli" / "film.mp4").read_bytes())
    _events(root, f"0\t20\t{name}")
    with pytest.raises(BidstrainError, match=rf"sub-02: .*line 2: stim_file '{name}' lies "
                       "outside the dataset's stimuli/ folder"):  # fmt: skip
        _index(root)


def test_a_transcript_in_milliseconds_is_named_against_the_run(film_bids, tmp_path):
    root = copy_dataset(film_bids, tmp_path)
    (root / "stimuli" / "words_ms.tsv").write_text("onset\tword\n500\thello\n12500\tthere\n")
    _events(root, "0\t20\tfilm.mp4", "0\tn/a\twords_ms.tsv")
    with pytest.raises(BidstrainError, match=r"sub-02: .*the last word of 'words_ms.tsv' comes at "
                       r"12500.00 s, but the run .* lasts 20.00 s"):  # fmt: skip
        _index(root)
    _events(root, "0\t20\tfilm.mp4", "nan\tn/a\tfilm_words.tsv")
    with pytest.raises(BidstrainError, match=r"sub-02: .*line 3: onset 'nan' is not a number"):
        _index(root)


def test_an_event_longer_than_its_film_says_by_how_much(film_bids, tmp_path):
    root = copy_dataset(film_bids, tmp_path)
    _events(root, "0\t26.5\tfilm.mp4")
    expected = (
        r"sub-02: .*line 2: the event of 'film.mp4' lasts 26.50 s but the file lasts 20.00 s "
        r"\(the event is 6.50 s longer\)"
    )
    with pytest.raises(BidstrainError, match=expected):
        _index(root)


@pytest.mark.parametrize("duration", ["-5", "0"])
def test_a_transcript_event_that_lasts_no_time_is_refused(film_bids, tmp_path, duration):
    root = copy_dataset(film_bids, tmp_path)
    _events(root, "0\t20\tfilm.mp4", f"0\t{duration}\tfilm_words.tsv")
    with pytest.raises(BidstrainError, match=rf"sub-02: .*line 3: the event of 'film_words.tsv' "
                       rf"lasts {duration} s"):  # fmt: skip
        _index(root)


def test_events_not_in_utf8_are_named_and_a_byte_order_mark_is_read(film_bids, tmp_path):
    root = copy_dataset(film_bids, tmp_path)
    (root / RUN_EVENTS).write_bytes(
        "onset\tduration\tstim_file\tnote\n0\t20\tfilm.mp4\tcaf\xe9\n".encode("latin-1")
    )
    with pytest.raises(
        BidstrainError, match=r"sub-02: .*events.tsv: line 2: byte 0xe9 is not UTF-8"
    ):
        _index(root)
    (root / RUN_EVENTS).write_text("\ufeffonset\tduration\tstim_file\n0\t20\tfilm.mp4\n")
    assert _index(root).runs


def test_a_stimulus_running_past_the_run_says_by_how_much(film_bids, tmp_path):
    root = copy_dataset(film_bids, tmp_path)
    _events(root, "5\t20\tfilm.mp4")
    expected = (
        r"sub-02: .*the stimuli end at 25.00 s .* lasts 20.00 s \(10 volumes x TR 2 s\): "
        r"the stimulus is 5.00 s longer"
    )
    with pytest.raises(BidstrainError, match=expected):
        _index(root)
    assert _index(root, tolerance=5.5).runs  # within a tolerance of 5.5 s it passes


def test_a_stimulus_ending_before_the_run_says_by_how_much(film_bids, tmp_path):
    root = copy_dataset(film_bids, tmp_path)
    short = NaturalisticSpec(duration=12.0)
    encode_film(root / "stimuli" / "short.mp4", short, film_truth(short, np.random.default_rng(1)))
    _events(root, "2\t12\tshort.mp4")
    with pytest.raises(BidstrainError, match=r"sub-02: .*the stimulus is 6.00 s shorter"):
        _index(root)


def test_a_word_column_makes_the_events_file_the_runs_transcript(film_bids, tmp_path):
    root = copy_dataset(film_bids, tmp_path)
    _events(root, "0\t20\tfilm.mp4\tn/a", "3.1\t0.3\tn/a\thello", columns="onset\tduration\t"
            "stim_file\tword")  # fmt: skip
    index = _index(root)
    events_file = root / RUN_EVENTS
    assert index.stimuli[events_file].kind == "text"
    assert index.stimuli[events_file].users == (("02", RUN_EVENTS[:-11]),)


@pytest.mark.parametrize(
    ("name", "text"), [("empty.tsv", "onset\tduration\tword\n"), ("empty.srt", "\n")]
)
def test_a_transcript_without_a_word_stops_the_index(film_bids, tmp_path, name, text):
    """A transcript without a word is a wrong file: the dry run says so, not the job."""
    root = copy_dataset(film_bids, tmp_path)
    (root / "stimuli" / name).write_text(text)
    _events(root, "0\t20\tfilm.mp4", f"0\t20\t{name}")
    expected = (
        rf"sub-02: .*stimuli/{name}: the transcript holds no word \(stim_file of line 3 of "
        r".*sub-02_task-movie_run-1_events.tsv\)"
    )
    with pytest.raises(BidstrainError, match=expected):
        _index(root)


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("bad.tsv", "onset\tword\n0.5\thello\nn/a\tfoo\n", "line 3: onset 'n/a' of word 'foo'"),
        ("bad.tsv", "onset\ttext\n0.5\thello\n", "a word table needs 'onset' and 'word'"),
        ("bad.tsv", "onset\tword\n0.5\tcaf\xe9\n", "line 2: byte 0xe9 is not UTF-8"),
        ("bad.srt", "1\nhello there\n", "subtitle cue without a time line"),
    ],
)
def test_a_bad_transcript_names_the_subject_that_presents_it(
    film_bids, tmp_path, name, text, message
):
    root = copy_dataset(film_bids, tmp_path)
    (root / "stimuli" / name).write_bytes(text.encode("latin-1"))
    _events(root, "0\t20\tfilm.mp4", f"0\t20\t{name}")
    with pytest.raises(BidstrainError, match=rf"^sub-02: .*stimuli/{name}: {message}"):
        _index(root)
    _events(root, "0\t20\tfilm.mp4\tn/a", "n/a\t0.3\tn/a\tfoo", columns="onset\tduration\t"
            "stim_file\tword")  # fmt: skip
    with pytest.raises(BidstrainError, match=r"^sub-02: .*events.tsv: line 3: onset 'n/a' of"):
        _index(root)


def test_a_word_column_without_a_word_is_no_transcript(film_bids, tmp_path):
    root = copy_dataset(film_bids, tmp_path)
    _events(root, "0\t20\tfilm.mp4\tn/a", "3.1\t0.3\tn/a\tn/a", columns="onset\tduration\t"
            "stim_file\tword")  # fmt: skip
    index = _index(root)
    assert [e.stimulus.name for e in index.runs[RUN_EVENTS[:-11]].events] == ["film.mp4"]
    assert root / RUN_EVENTS not in index.stimuli


def test_runs_of_other_trs_cannot_share_a_stimulus(film_bids, tmp_path):
    root = copy_dataset(film_bids, tmp_path)
    path = root / "sub-03/func/sub-03_task-movie_run-1_bold.nii.gz"
    img = nib.load(path)
    data = np.asarray(img.dataobj)[..., :20:2]
    slow = nib.Nifti1Image(data, img.affine, img.header)
    slow.header.set_zooms((3.0, 3.0, 3.0, 4.0))
    nib.save(slow, path)
    path.with_name(path.name.replace(".nii.gz", ".json")).write_text('{"RepetitionTime": 4.0}')
    expected = (
        r"film.mp4: runs of different TRs \(2 s, 4 s\) present this stimulus \(2 s: "
        r"sub-01_task-movie_run-1_bold.nii.gz, sub-01_task-movie_run-2_bold.nii.gz, "
        r"sub-02_task-movie_run-1_bold.nii.gz and 2 more; 4 s: "
        r"sub-03_task-movie_run-1_bold.nii.gz\)"
    )
    with pytest.raises(BidstrainError, match=expected):
        _index(root)
    # on one grid (time.tr), they share it: its features are binned at the common TR
    index = StimulusIndex.build(BidsIndex.build(root), common_tr=1.0)
    (film,) = [s for s in index.stimuli.values() if s.path.name == "film.mp4"]
    assert film.repetition_time == 1.0 and "03" in {subject for subject, _ in film.users}


def test_the_demo_noise_ceiling_is_the_repeat_reliability(film_bids):
    """Two runs of the same film: their correlation per voxel estimates the ceiling."""
    truth = json.loads((film_bids / "code" / "naturalistic_truth.json").read_text())
    for subject, known in truth["subjects"].items():
        runs = [
            nib.load(film_bids / f"sub-{subject}/func/sub-{subject}_task-movie_run-{r}_bold.nii.gz")
            .get_fdata()
            .reshape(-1, SPEC.n_bins)
            for r in (1, 2)
        ]
        ceiling = np.array(known["noise_ceiling"]).reshape(-1)
        responsive = ceiling > 0
        a, b = (r[responsive] - r[responsive].mean(1, keepdims=True) for r in runs)
        reliability = (a * b).sum(1) / np.sqrt((a * a).sum(1) * (b * b).sum(1))
        # 10 volumes per run: a noisy estimate per voxel, close on the mean
        assert reliability.mean() == pytest.approx(ceiling[responsive].mean(), abs=0.15)
        assert (ceiling[~responsive] == 0).all()
