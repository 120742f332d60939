"""The training loader's batch buffers, counted from the settings, and the plan's refusal
of a configuration whose buffers cannot fit in the training job's memory."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml
from bidstrain.errors import BidstrainError
from bidstrain.train.data import LoaderBatches, volume_dataset
from bidstrain.train.ring import loader_buffer_bytes
from test_plan import plan_of
from train_support import tiny_stores, train_config

MNI2MM = Path(__file__).parents[1] / "config" / "train-mni2mm.yaml"


def test_buffer_bytes_are_processes_times_slots_times_batch_times_sample():
    config = train_config(batch_size=16, num_workers=8, prefetch_factor=4, grad_accum_steps=1)
    window = 20 * math.prod((96, 112, 96))
    # 8 workers, each 1 + 1 + 4 buffers of 16 windows of 20 frames of float32
    assert loader_buffer_bytes(config, window) == 8 * 6 * 16 * window * 4
    assert loader_buffer_bytes(config, window) / 1e9 == pytest.approx(63.4, abs=0.1)
    # the main process alone keeps grad_accum_steps + 1 buffers
    assert loader_buffer_bytes(config, window, workers=0) == 2 * 16 * window * 4


def test_the_count_is_what_the_loader_allocates(tmp_path):
    config = train_config(batch_size=3, grad_accum_steps=2)
    stores = tiny_stores(tmp_path, {"bold": 2, "T1w": 1})
    dataset = volume_dataset(stores, config)
    largest = max(dataset.sample_size(m) for m in dataset.shapes)
    batches = LoaderBatches(dataset, slots=3, batch_size=3, pin=False)
    assert loader_buffer_bytes(config, largest, workers=0) == 3 * batches.size * 4


def _mni2mm(**train):
    settings = yaml.safe_load(MNI2MM.read_text())
    return {"train": {**settings["train"], **train}, "resources": settings["resources"]}


def test_the_plan_refuses_windows_whose_buffers_exceed_the_job_memory(demo_bids):
    # 8 workers x 6 buffers x 16 windows of 24 frames of 96x112x96 float32: 70.9 GiB
    needed = 8 * 6 * 16 * 24 * 96 * 112 * 96 * 4 / 2**30
    with pytest.raises(BidstrainError) as error:
        plan_of(demo_bids, **_mni2mm(window=24, patch_frames=4))
    message = str(error.value)
    assert f"need {needed:.1f} GiB per node" in message
    assert "resources.train.mem_mb (64000 MB)" in message
    assert "train.num_workers" in message and "train.window" in message
    # the same buffers fit with 4 workers
    assert plan_of(demo_bids, **_mni2mm(window=24, patch_frames=4, num_workers=4)).gpus == 1


def test_the_shipped_configurations_plan(demo_bids):
    assert plan_of(demo_bids, **_mni2mm()).world_size == 1
    assert plan_of(demo_bids, **_mni2mm(window=20, patch_frames=4, num_workers=2)).gpus == 1
    assert plan_of(demo_bids).experiment
