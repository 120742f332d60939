"""The model uses time, proven through the training job: trained by ``python -m
bidstrain.train`` on BOLD windows of the demo (voxels and parcels), its validation loss on
the held-out runs' windows in their true order is clearly below ``loss_shuffled_time``
(the same windows with their frames shuffled in time, same masks) and below the baseline,
as the job's metrics file records them (what the training report draws).

The plan is built from the configuration as the workflow builds it (fMRIPrep demo, two
subjects, runs 1 and 2 for training and run 3 held out, the demo atlas, per-subject
stores); the normalize jobs and the trainer run from the files the plan writes, in this
process (their ``main`` with the job's arguments). This replaces an earlier numpy version
that cut the windows and trained with its own loop: the job path proves the same thing
on the windows, masks and losses users get, in a fraction of its time (its second
baseline, predicting zeros, is the mean's 1.0 on z-scored windows). It used 4^3 patches,
where a masked patch also sees the other patches of its frames; with those the job path
needs more steps for a clear gap (docs/time-and-parcels.md), so it uses whole-volume
tubelets here.
"""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path

import pytest
from bidstrain import paths
from bidstrain.demo.generate import ATLAS_NAME, make_atlas_demo, make_fmriprep_demo
from bidstrain.normalize.__main__ import main as normalize
from bidstrain.plan import write_if_changed
from bidstrain.train.__main__ import main as train
from test_plan import plan_of
from train_support import metrics_records

log = logging.getLogger(__name__)

#: How far below the shuffled-frames loss and the baseline the true-order loss must lie.
MARGIN = 0.8
#: The train section: windows of 8 frames (4 tokens of 2 frames), each window's volume
#: cropped to 12^3 and read as one tubelet per token (patch_size 12), so that a masked
#: token is predicted from the other times of its window; every window of the training
#: runs (stride 1: 14 batches of 16 an epoch), 30 epochs (420 steps). Seeds 0 to 3 pass
#: (voxels: loss / shuffled 0.55 to 0.67; parcels 0.30 to 0.35).
TRAIN = {
    "window": 8,
    "patch_frames": 2,
    "window_stride": 1,
    "shapes": {"bold": [12, 12, 12]},
    "patch_size": 12,
    "embed_dim": 32,
    "depth": 2,
    "heads": 4,
    "mask_ratio": 0.5,
    "lr": 0.004,
    "weight_decay": 0.0,
    "batch_size": 16,
    "epochs": 30,
    "warmup_steps": 10,
    "log_every": 100,
}


def configuration(root: Path, bold_input: str) -> dict:
    return {
        "space": "MNI152NLin2009cAsym:res-2",
        "modalities": ["bold"],
        "normalize": {"heldout": {"run": ["3"]}},
        "parcellation": {"name": ATLAS_NAME, "path": str(root / "atlas")},
        "average": {"mode": "per_subject"},
        "train": {**TRAIN, "bold_input": bold_input, "experiment": f"time-{bold_input}"},
    }


@pytest.fixture(scope="module")
def normalized(tmp_path_factory) -> Path:
    """The demo normalized by the plan's jobs (voxel and parcel stores); the root."""
    root = tmp_path_factory.mktemp("temporal")
    make_fmriprep_demo(root / "fmriprep", runs=("1", "2", "3"), n_nonsteady=0)
    make_atlas_demo(root / "atlas")
    plan = plan_of(root / "fmriprep", **configuration(root, "voxels"))
    (root / "work").mkdir()
    with contextlib.chdir(root / "work"):
        write_if_changed(plan.files())
        for subject, job in plan.jobs.items():
            normalize(
                [
                    *("--settings", paths.PLAN_NORMALIZE_SETTINGS, "--subject", subject),
                    *("--ingest", paths.ingest_record(subject), "--spec", job.spec_file),
                    *("--out-table", job.table),
                ]
            )
    return root


@pytest.mark.slow
@pytest.mark.parametrize("bold_input", ["voxels", "parcels"])
def test_held_out_windows_in_true_order_beat_shuffled_frames(normalized, bold_input):
    plan = plan_of(normalized / "fmriprep", **configuration(normalized, bold_input))
    experiment = plan.experiment
    with contextlib.chdir(normalized / "work"):
        write_if_changed(plan.files())
        train(
            [
                *("--settings", paths.plan_train_settings(experiment)),
                *("--stores", paths.plan_stores(experiment), "--world-size", "1"),
                *("--model-out", paths.trained_model(experiment)),
                *("--model-json-out", paths.trained_model_description(experiment)),
                *("--metrics-out", paths.training_metrics(experiment)),
                *("--checkpoint-dir", paths.checkpoints(experiment)),
            ]
        )
        records = metrics_records(Path(paths.training_metrics(experiment)))
    stores = json.loads((normalized / "work" / paths.plan_stores(experiment)).read_text())
    assert all("run-3" in store for store in stores["validation"]["bold"])
    assert not any("run-3" in store for store in stores["training"]["bold"])
    validations = [r for r in records if r["kind"] == "validation"]
    assert len(validations) == TRAIN["epochs"]
    final = validations[-1]
    loss = final["loss_per_modality"]["bold"]
    shuffled = final["loss_shuffled_time_per_modality"]["bold"]
    baseline = final["baseline_per_modality"]["bold"]
    log.warning(
        "%s windows, final validation: loss %.4f, frames shuffled in time %.4f, baseline "
        "%.4f (ratios %.3f, %.3f)",
        *(bold_input, loss, shuffled, baseline, loss / shuffled, loss / baseline),
    )
    assert loss < MARGIN * shuffled
    assert loss < MARGIN * baseline
    assert final["loss_shuffled_time"] == pytest.approx(shuffled)  # BOLD alone
