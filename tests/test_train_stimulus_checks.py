"""The initial-loss check sees the stimulus kinds of train.stimuli: their zero-prediction
loss in the batches that hold BOLD windows, beside the modalities'. Video at 0-255 next to
z-scored BOLD (stimuli.normalize false) fails it under the seeds' plain MSE, naming video
and the ratio; the scale-invariant loss (var) keeps it within a few times BOLD's."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from bidstrain.checks.loss import check_loss_scale
from bidstrain.io.store import read_aligned_store
from stimuli_support import make_film_bids
from test_stimuli_alignment import align
from train_support import train_config, write_aligned, write_store


def _stores(root):
    bold = [write_store(root / f"bold{i}.zarr", modality="bold", n_time=12, seed=i) for i in (0, 1)]
    rng = np.random.default_rng(0)
    aligned = {
        store: {
            "video": write_aligned(root / f"{i}v.zarr", rng.uniform(40, 215, (12, 48)), "video"),
            "text": write_aligned(
                root / f"{i}t.zarr", rng.poisson(0.3, (12, 20)).astype(float), "text"
            ),
        }
        for i, store in enumerate(bold)
    }
    return {"bold": bold}, aligned


def test_zero_prediction_losses_of_the_stimulus_kinds_against_numpy(tmp_path):
    stores, aligned = _stores(tmp_path)
    config = train_config(stimuli=["video", "text"], loss={"normalize": "none"})
    check = check_loss_scale(stores, config, max_ratio=100, stimuli=aligned)
    losses = check.values["losses"]
    assert set(losses) == {"bold", "video", "text"}
    for kind in ("video", "text"):
        # every batch is a slice of the same features: the mean of its squares is the
        # mean over batches; with 12 frames and batches of 2 windows, 6 batches or 8
        values = [read_aligned_store(p).features.astype(np.float64) for p in
                  (aligned[s][kind] for s in stores["bold"])]  # fmt: skip
        overall = np.mean(np.concatenate(values) ** 2)
        assert losses[kind]["loss"] == pytest.approx(overall, rel=0.25)
        assert losses[kind]["batches"] == 8
    assert check.status == "fail"
    ratio = losses["video"]["loss"] / losses["text"]["loss"]
    assert check.values["ratio"] == pytest.approx(ratio)
    assert re.search(
        r"loss of video \([\d.e+]+\) is "
        + re.escape(f"{ratio:.3g}x that of text")
        + r".* stimuli.normalize true",
        check.message,
    )


def test_the_scale_invariant_loss_of_raw_video_is_one_plus_mean_squared_over_variance(tmp_path):
    stores, aligned = _stores(tmp_path)
    config = train_config(stimuli=["video"], batch_size=24)  # one batch: both stores
    check = check_loss_scale(stores, config, max_ratio=100, stimuli=aligned)
    assert check.status == "pass"
    values = np.concatenate(
        [read_aligned_store(aligned[s]["video"]).features for s in stores["bold"]]
    ).astype(np.float64)
    want = 1 + values.mean() ** 2 / values.var()
    assert check.values["losses"]["video"]["loss"] == pytest.approx(want, rel=1e-4)


@pytest.fixture(scope="module")
def film(tmp_path_factory):
    return make_film_bids(tmp_path_factory)


@pytest.mark.integration
@pytest.mark.slow  # the workflow through the checks on the naturalistic demo
def test_raw_video_fails_the_initial_loss_check_on_the_naturalistic_demo(film, tmp_path):
    """stimuli.normalize false, train.stimuli [video, text], the plain MSE of the seeds."""
    train = {"stimuli": ["video", "text"], "loss": {"normalize": "none"}}
    result = align(film, tmp_path, "checks", stimuli={"normalize": False}, train=train, check=False)
    assert result.returncode != 0
    checks = json.loads((tmp_path / "logs/checks/demo/summary.json").read_text())["checks"]
    (loss,) = [c for c in checks if c["name"] == "initial_loss"]
    assert loss["status"] == "fail"
    assert set(loss["values"]["losses"]) == {"bold", "video", "text"}
    found = re.search(
        r"the initial \(zero-prediction\) none-normalized loss of video \(([\d.e+]+)\) is "
        r"([\d.e+]+)x that of (\w+)",
        loss["message"],
    )
    assert found, loss["message"]
    ratio = float(found[2])
    assert ratio == pytest.approx(loss["values"]["ratio"], rel=1e-2) and ratio > 100
    low = found[3]
    assert float(found[1]) / loss["values"]["losses"][low]["weighted"] == pytest.approx(
        ratio, rel=1e-2
    )
