"""The stimulus features that come with BOLD windows (train.stimuli): rows t .. t + W of
each window's aligned store, in the order of the batch's BOLD samples."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from bidstrain.errors import BidstrainError
from bidstrain.train import stimulus_windows as module
from bidstrain.train.data import make_loader, volume_dataset
from bidstrain.train.distributed import Context
from bidstrain.train.loop import training_data
from bidstrain.train.sampler import batch_sampler
from bidstrain.train.stimulus_windows import StimulusWindows
from bidstrain.train.worker_batches import RingBatch
from train_support import train_config, write_aligned, write_store

WINDOW = 3


def stores_with_stimuli(root, frames=(9, 7)):
    bold = [
        write_store(root / f"bold{i}.zarr", modality="bold", n_time=n, seed=i)
        for i, n in enumerate(frames)
    ]
    t1w = [write_store(root / "t1w.zarr", modality="T1w", n_time=2, seed=5)]
    rng = np.random.default_rng(0)
    features = {
        (store, kind): rng.standard_normal((n, size)).astype(np.float32)
        for store, n in zip(bold, frames, strict=True)
        for kind, size in (("video", 4), ("text", 6))
    }
    aligned = {
        store: {
            kind: write_aligned(root / f"{i}_{kind}.zarr", features[store, kind], kind, store)
            for kind in ("video", "text")
        }
        for i, store in enumerate(bold)
    }
    return {"T1w": t1w, "bold": bold}, aligned, features


def test_each_bold_window_carries_rows_t_to_t_plus_w_of_its_aligned_stores(tmp_path):
    stores, aligned, features = stores_with_stimuli(tmp_path)
    config = train_config(window=WINDOW, window_stride=1, stimuli=["text", "video"])
    dataset = volume_dataset(stores, config, stimuli=aligned)
    assert dataset.stimuli.n_features == {"video": 4, "text": 6}
    layout = dataset.layout
    slots = np.random.default_rng(1).permutation(len(dataset))
    starts = layout.starts(slots)
    batch = dataset.batch(starts)
    assert list(batch) == ["T1w", "bold", "valid:T1w", "valid:bold", "video", "text"]
    store, time = layout.locate(starts)
    bold = [i for i in range(len(starts)) if layout.paths[store[i]] in aligned]
    assert batch["bold"].shape[0] == len(bold) == batch["video"].shape[0]
    for row, i in enumerate(bold):
        path, t = layout.paths[store[i]], int(time[i])
        for kind in ("video", "text"):
            want = features[path, kind][t : t + WINDOW]
            assert batch[kind].dtype == torch.float32
            np.testing.assert_array_equal(batch[kind][row].numpy(), want)


def test_workers_batches_are_views_of_rings_the_main_process_shares(tmp_path, monkeypatch):
    stores, aligned, _ = stores_with_stimuli(tmp_path)
    config = train_config(
        window=WINDOW, window_stride=1, stimuli=["text", "video"], batch_size=3, num_workers=2
    )
    dataset = volume_dataset(stores, config, stimuli=aligned)
    sampler = batch_sampler(dataset.layout, config)
    expected = [dataset.batch(indices) for indices in sampler]
    received = []
    monkeypatch.setattr(RingBatch, "tensors", record(RingBatch.tensors, received))
    loader = make_loader(dataset, sampler, config, device=torch.device("cpu"))
    blocks = loader.dataset.worker_rings.blocks
    rings = {block.untyped_storage().data_ptr() for block in blocks}
    batches = 0
    for batch, want in zip(loader, expected, strict=True):
        assert list(batch) == list(want)
        torch.testing.assert_close(batch, want, rtol=0, atol=0)
        images = [batch[m] for m in ("T1w", "bold") if m in batch]
        assert images and all(t.untyped_storage().data_ptr() in rings for t in images)
        batches += 1
    assert batches == len(expected) > 2
    # every batch came from a worker, as places in its ring (the volumes and the bits of
    # the voxels that hold data): only the stimulus features crossed processes
    assert len(received) == batches
    assert {ring_batch.worker for ring_batch in received} == {0, 1}
    assert all(set(b.arrays) <= {"video", "text"} for b in received)
    assert all(any(name.startswith("valid:") for name in b.places) for b in received)


def record(tensors, received):
    """``RingBatch.tensors`` that also keeps each batch it is called on."""

    def recorded(ring_batch):
        received.append(ring_batch)
        return tensors(ring_batch)

    return recorded


def test_a_batch_without_bold_has_no_stimulus_features(tmp_path):
    stores, aligned, _ = stores_with_stimuli(tmp_path)
    config = train_config(window=WINDOW, stimuli=["video"])
    dataset = volume_dataset(stores, config, stimuli=aligned)
    t1w = dataset.layout.offsets[:-1][dataset.layout.modality == 0]
    assert list(dataset.batch(t1w)) == ["T1w", "valid:T1w"]


def test_without_train_stimuli_the_batch_is_the_images_alone(tmp_path):
    stores, aligned, _ = stores_with_stimuli(tmp_path)
    dataset = volume_dataset(stores, train_config(window=WINDOW), stimuli=aligned)
    assert dataset.stimuli is None
    batch = dataset.batch(dataset.layout.starts(np.arange(len(dataset))))
    assert list(batch) == ["T1w", "bold", "valid:T1w", "valid:bold"]


def test_a_bold_store_without_aligned_stimuli_is_named(tmp_path):
    stores, aligned, _ = stores_with_stimuli(tmp_path)
    config = train_config(window=WINDOW, stimuli=["video"])
    del aligned[stores["bold"][1]]
    with pytest.raises(BidstrainError, match="no aligned video stimulus store") as error:
        volume_dataset(stores, config, stimuli=aligned)
    assert stores["bold"][1] in str(error.value)


def test_aligned_rows_must_match_the_bold_frames(tmp_path):
    stores, aligned, _ = stores_with_stimuli(tmp_path)
    bold = stores["bold"][0]
    aligned[bold]["video"] = write_aligned(
        tmp_path / "short.zarr", np.zeros((5, 4), np.float32), "video", bold
    )
    with pytest.raises(BidstrainError, match="5 rows but the BOLD store .* has 9 frames"):
        volume_dataset(stores, train_config(window=WINDOW, stimuli=["video"]), stimuli=aligned)


def test_each_aligned_store_is_read_once_per_process(tmp_path, monkeypatch):
    stores, aligned, _ = stores_with_stimuli(tmp_path)
    windows = StimulusWindows(aligned, ["video"])
    reads = []
    original = module.read_aligned_store
    monkeypatch.setattr(module, "read_aligned_store", lambda p: reads.append(p) or original(p))
    for _ in range(3):
        windows.features(stores["bold"][0], "video")
    assert reads == [aligned[stores["bold"][0]]["video"]]
    assert windows.__getstate__()["_features"] == {}  # a worker reads its own


def test_train_stimuli_without_training_bold_is_named(tmp_path):
    stores, aligned, _ = stores_with_stimuli(tmp_path)
    config = train_config(window=WINDOW, stimuli=["video"])
    context = Context(0, 1, torch.device("cpu"))
    with pytest.raises(BidstrainError, match=r"train.stimuli is \['video'\] but no training"):
        training_data(config, {"T1w": stores["T1w"]}, context, stimuli=aligned)
