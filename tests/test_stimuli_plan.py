"""The plan of the stimuli stage: one feature job per stimulus file, only when enabled."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from bidstrain import paths
from bidstrain.dataset.bids import BidsIndex
from bidstrain.errors import BidstrainError
from bidstrain.plan import Plan
from conftest import run_snakemake
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
        "--audio-window 0.025 --audio-hop 0.01 --audio-rate 16000"
    )
    assert plan.stimulus_arguments("stimuli/film_words.tsv") == (
        "--tr 2.0 --text-method hashing --text-embeddings '' --text-n-features 256"
    )
    assert len(plan.stimuli.runs) == 6


def test_word_vectors_that_are_not_a_file_stop_the_plan(film_bids, tmp_path):
    """Said with the dry run, not as a missing input of every transcript's job."""
    vectors = tmp_path / "vectors.txt"
    for table in ("", str(vectors)):
        with pytest.raises(BidstrainError, match=rf"stimuli.text_embeddings '{table}' is not"):
            _plan(film_bids, enabled=True, text_method="embeddings", text_embeddings=table)
    vectors.write_text("film 0.5 1.0\n")
    plan = _plan(film_bids, enabled=True, text_method="embeddings", text_embeddings=str(vectors))
    assert plan.stimulus_embeddings("stimuli/film_words.tsv") == [str(vectors)]


def test_disabled_stimuli_plan_nothing_and_read_no_film(film_bids, tmp_path):
    root = copy_dataset(film_bids, tmp_path)
    (root / "stimuli" / "film.mp4").unlink()
    plan = _plan(root)
    assert plan.stimuli is None and plan.stimulus_stores == []
    with pytest.raises(BidstrainError, match=r"sub-01: .*stim_file 'film.mp4' is not in"):
        _plan(root, enabled=True)


def _own_events(root, subject, rows):
    """Give ``subject`` its own events file (BIDS inheritance: it wins over the
    dataset's)."""
    lines = ["onset\tduration\ttrial_type\tstim_file", *rows]
    events = root / f"sub-{subject}" / "func" / f"sub-{subject}_task-movie_events.tsv"
    events.write_text("\n".join(lines) + "\n")


def test_the_plan_lists_each_runs_and_each_averages_aligned_stores(film_bids):
    plan = _plan(film_bids, enabled=True)
    runs = plan.aligned_run_stimuli
    assert len(runs) == 6 and all(
        list(kinds) == ["video", "audio", "text"] for kinds in runs.values()
    )
    averages = plan.aligned_average_stimuli
    assert sorted(averages) == ["task-movie_run-1", "task-movie_run-2"]
    assert averages["task-movie_run-1"]["video"] == paths.aligned_average_stimulus(
        "task-movie_run-1", "video"
    )
    assert len(plan.aligned_stimulus_stores) == 8 * 3
    assert _plan(film_bids).aligned_stimulus_stores == []


def test_an_averages_members_must_present_the_same_stimulus(film_bids, tmp_path):
    root = copy_dataset(film_bids, tmp_path)
    # within one frame (2 s) of the others: the same presentation
    _own_events(root, "02", ["1\t20\tfilm\tfilm.mp4", "0\t20\ttranscript\tfilm_words.tsv"])
    assert len(_plan(root, enabled=True, length_tolerance=5.0).aligned_stimulus_stores) == 24
    _own_events(root, "02", ["4\t20\tfilm\tfilm.mp4", "0\t20\ttranscript\tfilm_words.tsv"])
    # each stimulus by its whole path: a film.mp4 of another folder would read alike
    film, words = (re.escape(str(root / "stimuli" / n)) for n in ("film.mp4", "film_words.tsv"))
    differ = (
        r"the average task-movie_run-1 needs one stimulus for all its subjects, but sub-01 "
        rf"presented {film} at 0 s, {words} at 0 s \(.*task-movie_events.tsv\) and "
        rf"sub-02 presented {film} at 4 s, {words} at 0 s \(.*sub-02_task-movie_"
        r"events.tsv\) \(tolerance 2 s, one frame\)"
    )
    plan = _plan(root, enabled=True, length_tolerance=5.0)
    with pytest.raises(BidstrainError, match=differ):
        _ = plan.alignment_targets
    _own_events(root, "03", ["0\t20\tfilm\tfilm.mp4"])
    plan = _plan(root, enabled=True, length_tolerance=5.0)
    with pytest.raises(
        BidstrainError,
        match=rf"; sub-03 presented {film} at 0 s \(.*sub-03_task-movie_events.tsv\) \(",
    ):
        _ = plan.alignment_targets


def test_words_in_each_subjects_events_file_are_one_stimulus_when_they_are_the_same(
    film_bids, tmp_path
):
    root = copy_dataset(film_bids, tmp_path)
    subjects = sorted(p.name[4:] for p in root.glob("sub-*"))

    def own_words(subject, words):
        rows = ["0\t20\tfilm\tfilm.mp4\tn/a"]
        rows += [f"{1.5 * i}\t0.3\tword\tn/a\t{word}" for i, word in enumerate(words)]
        lines = ["onset\tduration\ttrial_type\tstim_file\tword", *rows]
        events = root / f"sub-{subject}" / "func" / f"sub-{subject}_task-movie_events.tsv"
        events.write_text("\n".join(lines) + "\n")

    for subject in subjects:
        own_words(subject, ["once", "upon", "a", "time"])
    assert _plan(root, enabled=True).alignment_targets
    own_words(subjects[1], ["once", "upon", "a", "tide"])
    plan = _plan(root, enabled=True)
    with pytest.raises(BidstrainError, match=rf"sub-{subjects[1]} presented .*/film.mp4 at 0 s, "
                       r"the words of its events file \(hash [0-9a-f]{16}\) at 0 s"):  # fmt: skip
        _ = plan.alignment_targets


def test_differing_presentations_stop_a_dry_run_in_one_line(film_bids, tmp_path):
    root = copy_dataset(film_bids, tmp_path / "bids")
    _own_events(root, "02", ["4\t20\tfilm\tfilm.mp4", "0\t20\ttranscript\tfilm_words.tsv"])
    stimuli = {"enabled": True, "length_tolerance": 5.0}
    config = {"bids_dir": str(root), "modalities": ["bold"], "stimuli": stimuli}
    result = run_snakemake(tmp_path / "work", "-n", config=config, check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "bidstrain: the average task-movie_run-1 needs one stimulus" in output, output
    assert "Traceback" not in output


def test_a_stim_file_with_braces_stops_a_dry_run_naming_it(film_bids, tmp_path):
    """Snakemake reads ``{1}`` in a path as a wildcard, and no escape keeps it a file
    name: the plan refuses the name with the events file, subject and line."""
    root = copy_dataset(film_bids, tmp_path / "bids")
    (root / "stimuli" / "film.mp4").rename(root / "stimuli" / "film{1}.mp4")
    events = "onset\tduration\ttrial_type\tstim_file\n0\t20\tfilm\tfilm{1}.mp4\n"
    (root / "task-movie_events.tsv").write_text(events)
    config = {"bids_dir": str(root), "modalities": ["bold"], "stimuli": {"enabled": True}}
    result = run_snakemake(tmp_path / "work", "-n", "stimuli", config=config, check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    expected = (
        r"bidstrain: sub-01: .*/task-movie_events.tsv: line 2: stim_file "
        r"'film\{1\}.mp4' holds a brace, .*rename the file"
    )
    assert re.search(expected, output), output
    assert "WildcardError" not in output and "Traceback" not in output


def test_a_parcel_encoding_target_reads_the_parcel_averages_and_needs_an_atlas(film_bids):
    from bidstrain.demo.naturalistic import ATLAS_IMAGE, ATLAS_NAME

    settings = {
        "modalities": ["bold"],
        "normalize": {"heldout": {"run": ["2"]}},
        "stimuli": {"enabled": True},
        "encoding": {"enabled": True, "target": "parcels"},
    }
    without = Plan.build(typed_config(film_bids, **settings), BidsIndex.build(film_bids))
    with pytest.raises(BidstrainError, match="encoding.target is parcels but no parcellation"):
        without.encoding_inputs()
    atlas = {"name": ATLAS_NAME, "path": str(film_bids / ATLAS_IMAGE), "space": "native"}
    config = typed_config(film_bids, **settings, parcellation=atlas)
    plan = Plan.build(config, BidsIndex.build(film_bids))
    averages = plan.encoding_inputs()["averages"]
    assert {name: stores["bold"] for name, stores in averages.items()} == {
        name: paths.average_parcel_store_at(name, ATLAS_NAME) for name in averages
    }
    first = sorted(averages)[0]
    assert plan.encoding_figure_arguments() == [
        "--bold",
        paths.average_store_at(first),
        "--atlas",
        ATLAS_NAME,
        str(film_bids / ATLAS_IMAGE),
        str(film_bids / "code" / "atlas-slabs_dseg.tsv"),
        "native",
    ]


def _fmriprep_of(raw, out):
    """The raw runs as an fMRIPrep derivative (links in its naming, no events files, no
    stimuli/ folder, as fMRIPrep writes its outputs)."""
    description = {"Name": "fmriprep", "BIDSVersion": "1.9.0", "DatasetType": "derivative",
                   "GeneratedBy": [{"Name": "fMRIPrep", "Version": "23.2.1"}]}  # fmt: skip
    out.mkdir()
    (out / "dataset_description.json").write_text(json.dumps(description))
    for run in sorted(raw.glob("sub-*/func/*_bold.nii.gz")):
        stem = run.name.removesuffix("_bold.nii.gz")
        folder = out / run.parent.relative_to(raw)
        folder.mkdir(parents=True, exist_ok=True)
        derived = folder / f"{stem}_space-MNI152NLin2009cAsym_res-2_desc-preproc_bold"
        Path(f"{derived}.nii.gz").symlink_to(run)
        Path(f"{derived}.json").write_text(json.dumps({"RepetitionTime": 2.0}))
    return out


def test_a_derivative_takes_its_events_and_stimuli_from_stimuli_raw_dir(film_bids, tmp_path):
    fmriprep = _fmriprep_of(film_bids, tmp_path / "fmriprep")

    def plan(**stimuli):
        config = typed_config(
            fmriprep,
            modalities=["bold"],
            space="MNI152NLin2009cAsym:res-2",
            normalize={"mask": "none"},
            stimuli={"enabled": True, **stimuli},
        )
        return Plan.build(config, BidsIndex.build(fmriprep))

    with pytest.raises(BidstrainError, match="none of the 6 BOLD runs has an events file.*"
                       "set stimuli.raw_dir to the raw dataset"):  # fmt: skip
        plan()
    found = plan(raw_dir=str(film_bids))
    assert len(found.stimuli.runs) == 6
    assert found.stimulus_names == ["stimuli/film.mp4", "stimuli/film_words.tsv"]
    run = next(iter(found.stimuli.runs.values()))
    assert run.image.path.is_relative_to(fmriprep) and run.events_file.is_relative_to(film_bids)


def test_the_figures_own_setting_does_not_rerun_the_encoding_model(film_bids):
    def digest(**encoding):
        settings = {"modalities": ["bold"], "normalize": {"heldout": {"run": ["2"]}}}
        encoding = {"enabled": True, **encoding}
        config = typed_config(film_bids, **settings, stimuli={"enabled": True}, encoding=encoding)
        plan = Plan.build(config, BidsIndex.build(film_bids))
        return plan.settings_digest(paths.plan_encoding_settings(plan.experiment))

    assert digest(figure_targets=5) == digest()
    assert digest(epochs=7) != digest()
