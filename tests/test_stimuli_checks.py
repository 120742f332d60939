"""The checks see the stimulus modalities: `snakemake checks` on the naturalistic demo, with
the stimulus features z-scored (the checks pass and report the coverage) and with them left
at 0-255 next to z-scored BOLD, the seeds' exact case (the checks fail, naming video and
the ratio, and stop the encoding model as they stop training)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from bidstrain.checks.stimuli import check_coverage
from bidstrain.io.store import read_aligned_store, write_aligned_store
from stimuli_support import make_film_bids
from test_stimuli_alignment import align

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def film(tmp_path_factory):
    return make_film_bids(tmp_path_factory)


def summary(workdir):
    """The summary the checks keep in logs/ (a strict failure removes results/)."""
    checks = json.loads((workdir / "logs/checks/demo/summary.json").read_text())["checks"]
    return {check["name"]: check for check in checks}


@pytest.mark.slow  # about 22 s; its failing twins below stay in `make test`
def test_z_scored_stimuli_pass_the_checks_with_their_coverage(film, tmp_path):
    align(film, tmp_path, "checks")
    checks = summary(tmp_path)
    scale = checks["scale_table"]
    assert scale["status"] == "pass"
    assert set(scale["values"]["normalized"]) == {"bold", "video", "audio", "text"}
    for kind in ("video", "audio", "text"):
        assert scale["values"]["normalized"][kind]["mse_zero"] == pytest.approx(1.0, abs=1e-3)
    assert checks["normalization"]["status"] == "pass"
    assert "6 aligned stimulus stores" in checks["normalization"]["message"]
    coverage = checks["stimulus_coverage"]
    assert coverage["status"] == "pass"
    # the averages of runs 1 (training) and 2 (held out), three kinds each
    assert len(coverage["values"]["runs"]) == 6
    assert all(row["seconds_without_stimulus"] == 0.0 for row in coverage["values"]["runs"])
    assert "video: 2 runs, 0 of 40 s without stimulus" in coverage["message"]
    table = (tmp_path / "logs/checks/demo/summary.tsv").read_text()
    assert "stimulus_coverage\tpass\tvideo: 2 runs" in table


def test_video_at_0_255_next_to_z_scored_bold_fails_naming_video_and_the_ratio(film, tmp_path):
    result = align(film, tmp_path, "checks", stimuli={"normalize": False}, check=False)
    assert result.returncode != 0
    log = (tmp_path / "logs/checks/demo.log").read_text()
    found = re.search(
        r"check scale_table failed: the zero-prediction MSE of normalized video \(([\d.e+]+)\) "
        r"is ([\d.e+]+)x that of (\w+) \(([\d.e+-]+)\), above checks.max_scale_ratio 100",
        log,
    )
    assert found, log
    video_mse, ratio = float(found[1]), float(found[2])
    # luminance 40 to 215 on an 8-pixel gradient: a mean square in the tens of thousands
    assert 5e3 < video_mse < 5e4 and ratio > 1e3
    assert ratio == pytest.approx(video_mse / float(found[4]), rel=1e-2)
    assert re.search(
        r"check normalization failed: .*video stimulus features are not normalized "
        r"\(stimuli.normalize: false\) in 2 run\(s\), e.g. average task-movie_run-1: values "
        r"span \d",
        log,
    )


@pytest.mark.slow
def test_the_encoding_model_waits_for_the_checks_and_the_seeds_case_stops_it(film, tmp_path):
    encoding = {"enabled": True, "epochs": 2}
    result = align(film, tmp_path, "encoding", stimuli={"normalize": False},
                   encoding=encoding, check=False)  # fmt: skip
    assert result.returncode != 0
    assert (
        "check scale_table failed: the zero-prediction MSE of normalized video"
        in (tmp_path / "logs/checks/demo.log").read_text()
    )
    assert not list((tmp_path / "results").glob("encoding/**/model.pt"))


def test_coverage_counts_the_seconds_without_stimulus_and_constant_columns(tmp_path):
    """A run whose film starts 6 s in, with one pixel that never changes."""
    features = np.arange(20.0).reshape(10, 2)
    arrays = {
        "delay": np.zeros(2, dtype=np.int64),
        "source_feature": np.arange(2),
        "mean": np.zeros(2),
        "std": np.ones(2),
        "constant": np.array([False, True]),
        "raw_mean": features.mean(axis=0),
        "raw_std": np.array([1.0, 0.0]),
        "raw_min": features.min(axis=0),
        "raw_max": features.max(axis=0),
    }
    attrs = {"kind": "video", "label": "sub-01 task-movie run-1", "heldout": False,
             "normalized": True, "run_seconds": 20.0, "seconds_without_stimulus": 6.0}  # fmt: skip
    write_aligned_store(tmp_path / "a.zarr", features, np.arange(10) * 2.0, arrays, attrs)
    check = check_coverage({"a.zarr": read_aligned_store(tmp_path / "a.zarr")})
    (row,) = check.values["runs"]
    assert row["seconds_without_stimulus"] == 6.0
    assert row["constant_in_run"] == 1 and row["constant_in_training"] == 1
    assert check.message == (
        "video: 1 runs, 6 of 20 s without stimulus, 1 of 2 columns constant over the training runs"
    )
    attrs["seconds_without_stimulus"] = 20.0
    write_aligned_store(tmp_path / "b.zarr", features, np.arange(10) * 2.0, arrays, attrs)
    check = check_coverage({"b.zarr": read_aligned_store(tmp_path / "b.zarr")})
    assert check.status == "warn" and "has no video stimulus for its whole length" in check.message


def test_nan_in_aligned_features_fails_the_normalization_check_naming_the_store(tmp_path):
    from bidstrain.checks.stimuli import normalization_findings
    from train_support import write_aligned

    features = np.random.default_rng(0).standard_normal((12, 3))
    features = (features - features.mean(axis=0)) / features.std(axis=0)
    good = write_aligned(tmp_path / "good.zarr", features, "video", "run-1")
    features[[4, 5], 1] = np.nan
    bad = write_aligned(tmp_path / "bad.zarr", features, "video", "run-1")
    fails, _ = normalization_findings({good: read_aligned_store(good)}, 1e-3)
    assert fails == []
    fails, _ = normalization_findings({bad: read_aligned_store(bad)}, 1e-3)
    (fail,) = fails
    assert fail.startswith(f"run-1 video ({bad}): NaN or Inf in 2 rows of its features")
    assert "(frames [4, 5]; rerun the stimuli and align_stimuli jobs" in fail
