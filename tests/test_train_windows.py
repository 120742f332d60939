"""BOLD windows in the training data path: segments from the normalize table or the store,
window counts fixed per epoch, offsets drawn per epoch, exact values against numpy reads of
the stores (voxels and parcels), no window across a left-out frame or a run's end, resume,
and the frame permutation of the shuffled-time validation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from bidstrain.demo.generate import write_bold_store
from bidstrain.errors import BidstrainError
from bidstrain.io.scans_table import StoreRow, read_tables, write_table
from bidstrain.io.store import (
    create_store,
    open_store,
    read_segments,
    segments_of_valid,
    to_grid,
    write_parcel_store,
)
from bidstrain.train.buffers import BatchBuffer, BatchRing
from bidstrain.train.data import VolumeDataset, sample_counts, store_layout, volume_dataset
from bidstrain.train.loop import log_left_out
from bidstrain.train.model import build_module
from bidstrain.train.reader import StoreReader
from bidstrain.train.sampler import ModalityBatchSampler, batch_sampler
from bidstrain.train.validity import split
from bidstrain.train.windows import draw_offsets, shuffle_time, window_counts
from conftest import run_bench
from train_support import train_config, write_store

GRID = (6, 7, 5)


def bold_store(path, valid, seed=0) -> tuple[str, np.ndarray]:
    """A BOLD store whose time grid has the frames ``valid`` (bool), the valid ones in
    ``data`` (random values); returns its path and the data (valid frames x voxels)."""
    valid = np.asarray(valid, dtype=bool)
    mask = np.zeros(GRID, dtype=bool)
    mask[1:5, 1:6, 1:4] = True
    rng = np.random.default_rng(seed)
    data = rng.standard_normal((int(valid.sum()), int(mask.sum()))).astype(np.float32)
    frame_time = np.arange(valid.size, dtype=np.float64)
    with create_store(path, mask=mask, affine=np.eye(4), time=frame_time[valid], chunk=3) as w:
        w.write(0, data)
        w.add_variable("mean", ("voxel",), np.zeros(mask.sum(), dtype=np.float32))
        w.add_variable("std", ("voxel",), np.ones(mask.sum(), dtype=np.float32))
        w.add_variable("frame_time", ("frame",), frame_time)
        w.add_variable("frame_valid", ("frame",), valid)
        w.attrs.update(
            modality="bold",
            subject="01",
            source_path=str(path),
            ddof=1,
            n_zero_variance=0,
            stats_dim="voxel",
            stats_from=[str(path)],
            n_invalid_frames=int((~valid).sum()),
        )
    return str(path), data


def parcel_store(path, n_time, n_parcels=5, seed=0, empty=()) -> tuple[str, np.ndarray]:
    """A parcel store of random values, but for the parcels ``empty`` (no voxel in the
    run's mask: 0, as the normalize job writes them); returns its path and data (frames x
    parcels)."""
    data = np.random.default_rng(seed).standard_normal((n_time, n_parcels)).astype(np.float32)
    ones = np.ones(n_parcels)
    data[:, list(empty)] = ones[list(empty)] = 0
    attrs = dict(
        modality="bold",
        subject="01",
        affine=np.eye(4).tolist(),
        source_path="x",
        ddof=1,
        n_zero_variance=0,
        stats_dim="parcel",
        stats_from=[str(path)],
        atlas="toy",
    )
    write_parcel_store(
        path,
        data=data,
        mean=0 * ones,
        std=ones,
        parcels=np.arange(1, n_parcels + 1),
        n_voxels=ones,
        coverage=ones,
        time=np.arange(n_time, dtype=np.float64),
        attrs=attrs,
    )
    return str(path), data


def windows_of(layout, flat: np.ndarray) -> list[tuple[int, int]]:
    """(store, first frame) of each sample of a batch order."""
    store, frame = layout.locate(np.asarray(flat))
    return list(zip(store.tolist(), frame.tolist(), strict=True))


def test_window_counts_follow_the_documented_formula():
    lengths = np.arange(0, 40)
    for window in (1, 3, 4, 7):
        for stride in (1, 2, 3, 4, 9):
            got = window_counts(lengths, window, stride)
            for length, count in zip(lengths, got, strict=True):
                # every start o + k * S with o in the slack fits: count windows at stride S
                # in L frames need (count - 1) * S + W <= L
                if length < window:
                    assert count == 0
                else:
                    assert count == max(1, (length - window + 1) // stride)
                    assert (count - 1) * stride + window <= length


def test_segments_of_valid_frames():
    valid = np.array([0, 1, 1, 1, 0, 0, 1, 1, 0, 1], dtype=bool)
    assert segments_of_valid(valid) == (3, 2, 1)
    assert segments_of_valid(np.ones(5, bool)) == (5,)
    assert segments_of_valid(np.zeros(4, bool)) == ()


def test_windows_never_cross_a_gap_or_the_run_end_and_counts_stay_fixed(tmp_path):
    valid = np.ones(40, dtype=bool)
    valid[[9, 10, 25]] = False  # segments of 9, 14 and 14 frames
    path, _ = bold_store(tmp_path / "a.zarr", valid)
    short, _ = bold_store(tmp_path / "b.zarr", np.ones(3, bool), seed=1)
    assert read_segments(path) == (9, 14, 14)
    stores = {"bold": [path, short]}
    layout = store_layout(stores, window=4, stride=3)
    # floor((L - W + 1) / S): 2, 3, 3 windows; the short store none
    assert len(layout) == 8 and list(layout.samples) == [8, 0]
    assert layout.left_out()["frames"].tolist() == [0, 3]
    config = train_config(window=4, window_stride=3, batch_size=3, store_group=1)
    sampler = batch_sampler(layout, config)
    gap_frames = np.flatnonzero(~valid)
    # frame index in data -> frame of the time grid
    grid_frame = np.flatnonzero(valid)
    seen = set()
    for epoch in range(6):
        sampler.set_epoch(epoch)
        flat, bounds = sampler.rank_batches()
        assert len(flat) == 8 and len(bounds) - 1 == sampler.n_batches == 3
        windows = windows_of(layout, flat)
        assert {s for s, _ in windows} == {0}
        for _, first in windows:
            frames = grid_frame[first : first + 4]
            assert len(frames) == 4
            # consecutive on the time grid: no left-out frame inside, not past the end
            assert np.all(np.diff(frames) == 1)
            assert not np.isin(frames, gap_frames).any()
        seen.add(tuple(sorted(f for _, f in windows)))
    assert len(seen) > 1, "every epoch drew the same window offsets"


def test_window_offsets_depend_on_seed_and_epoch_alone():
    slack = np.array([0, 3, 5, 1, 0, 7])
    a = draw_offsets(slack, seed=4, epoch=2)
    assert np.array_equal(a, draw_offsets(slack, seed=4, epoch=2))
    assert np.all((a >= 0) & (a <= slack))
    assert a[0] == 0 and a[4] == 0
    many = np.stack([draw_offsets(slack, seed=4, epoch=e) for e in range(200)])
    # each value of the slack is drawn
    for j, top in enumerate(slack):
        assert set(many[:, j]) == set(range(top + 1))


def test_resume_replays_the_same_windows(tmp_path):
    paths = [bold_store(tmp_path / f"{i}.zarr", np.ones(30, bool), seed=i)[0] for i in range(3)]
    layout = store_layout({"bold": paths}, window=4, stride=2)
    config = train_config(window=4, window_stride=2, batch_size=4)
    whole = batch_sampler(layout, config)
    whole.set_epoch(3)
    batches = list(whole)
    resumed = batch_sampler(layout, config)
    resumed.set_epoch(3, start=5)
    assert list(resumed) == batches[5:]


@pytest.mark.parametrize("stride", [None, 1])
def test_voxel_windows_hold_the_store_frames(tmp_path, stride):
    valid = np.ones(20, dtype=bool)
    valid[7] = False
    path, data = bold_store(tmp_path / "a.zarr", valid)
    t1 = write_store(tmp_path / "t1.zarr", modality="T1w", n_time=1, grid=(8, 8, 8))
    config = train_config(
        window=3, window_stride=stride, shapes={"T1w": [8, 8, 8], "bold": [8, 8, 8]}
    )
    dataset = volume_dataset({"T1w": [t1], "bold": [path]}, config)
    sampler = batch_sampler(dataset.layout, config)
    sampler.set_epoch(1)
    flat, _ = sampler.rank_batches()
    batch = dataset.batch(flat)
    bold_starts = [i for i in flat if dataset.layout.locate(np.array([i]))[0][0] == 1]
    assert batch["bold"].shape == (len(bold_starts), 3, 8, 8, 8)
    assert batch["T1w"].shape == (1, 1, 8, 8, 8)
    with open_store(path) as ds:
        for n, start in enumerate(bold_starts):
            first = int(dataset.layout.locate(np.array([start]))[1][0])
            for f in range(3):
                # the model grid (8, 8, 8) pads the store's (6, 7, 5) grid at its centre
                full = to_grid(ds, data[first + f].astype(np.float64))
                want = np.zeros((8, 8, 8))
                want[1:7, 0:7, 1:6] = full
                got = batch["bold"][n, f].numpy().astype(np.float64)
                assert np.array_equal(got, want), (start, f)


def test_parcel_windows_hold_the_store_rows(tmp_path):
    path, data = parcel_store(tmp_path / "p.zarr", 17, n_parcels=5)
    config = train_config(window=4, bold_input="parcels")
    dataset = volume_dataset({"bold": [path]}, config)
    assert dataset.shapes["bold"] == (5,)
    sampler = batch_sampler(dataset.layout, config)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        flat, _ = sampler.rank_batches()
        assert len(flat) == 3  # floor((17 - 4 + 1) / 4)
        batch = dataset.batch(flat)["bold"]
        assert batch.shape == (3, 4, 5) and batch.dtype == torch.float32
        for n, start in enumerate(flat):
            assert np.array_equal(batch[n].numpy(), data[start : start + 4])


def test_the_loss_of_parcel_windows_counts_the_parcels_that_hold_data(tmp_path):
    """Parcels 1 and 4 have no voxel in the run's mask: the batch says so, and the loss
    (checked in float64 with numpy) counts the masked tokens of the other parcels only."""
    path, data = parcel_store(tmp_path / "p.zarr", 12, n_parcels=6, empty=(1, 4))
    config = train_config(window=4, patch_frames=2, bold_input="parcels", mask_ratio=0.5)
    dataset = volume_dataset({"bold": [path]}, config)
    batch = dataset.batch(dataset.layout.starts(np.arange(len(dataset))))
    _, valid = split(batch)
    holds_data = np.array([True, False, True, True, False, True])
    assert valid["bold"].shape == (len(dataset), 1, 6)
    assert (valid["bold"].numpy() == holds_data).all()
    torch.manual_seed(0)
    model = build_module(config, ["bold"], n_parcels=6)
    masks = model.token_masks(batch, torch.Generator().manual_seed(2))
    output = model(batch, masks=masks)
    masked = model.head["bold"].voxels(masks["bold"]).numpy()
    counted = masked & holds_data
    assert counted.sum() < masked.sum()  # masked tokens of empty parcels, not counted
    target = batch["bold"].numpy().astype(np.float64)[counted]
    error = output.reconstructions["bold"].detach().numpy().astype(np.float64)[counted] - target
    want = np.mean(error**2) / (target.var() + config.loss.eps)
    assert output.loss_per_modality["bold"].item() == pytest.approx(want, rel=1e-5)


def test_parcel_stores_take_segments_from_the_table(tmp_path):
    valid = np.ones(20, dtype=bool)
    valid[[5, 6]] = False
    voxels, _ = bold_store(tmp_path / "v.zarr", valid)
    parcels, _ = parcel_store(tmp_path / "p.zarr", 18)
    table = tmp_path / "sub-01_scans.tsv"
    row = StoreRow(voxels, "bold", "x.nii", False, 18, 60, GRID, (), "sha256:0", (5, 13), parcels)
    write_table([row], table)
    (back,) = read_tables([table])
    assert back.segments == (5, 13) and back.parcels == parcels
    layout = store_layout({"bold": [parcels]}, [str(table)], window=4)
    assert layout.segment_length.tolist() == [5, 13]
    assert layout.segment_windows.tolist() == [1, 2]
    # without the table a parcel store has one segment
    assert store_layout({"bold": [parcels]}, window=4).segment_length.tolist() == [18]


def test_an_old_table_reads_segments_from_the_store(tmp_path):
    valid = np.ones(12, dtype=bool)
    valid[4] = False
    path, _ = bold_store(tmp_path / "v.zarr", valid)
    table = tmp_path / "sub-01_scans.tsv"
    write_table([StoreRow(path, "bold", "x.nii", False, 11, 60, GRID, (), "sha256:0")], table)
    lines = table.read_text().splitlines()
    old = "\n".join("\t".join(line.split("\t")[:9]) for line in lines) + "\n"
    table.write_text(old)
    assert read_tables([table])[0].segments is None
    assert sample_counts({"bold": [path]}, [str(table)], window=4) == {"bold": 2}
    # with a stale table that counts other frames: a clear error
    write_table([StoreRow(path, "bold", "x.nii", False, 11, 60, GRID, (), "s", (3, 7))], table)
    with pytest.raises(BidstrainError, match="segments"):
        store_layout({"bold": [path]}, [str(table)], window=4)


def test_window_one_is_the_frames(tmp_path):
    valid = np.ones(10, dtype=bool)
    valid[3] = False
    path, _ = bold_store(tmp_path / "v.zarr", valid)
    layout = store_layout({"bold": [path]})
    assert len(layout) == 9
    assert layout.starts(np.arange(9)).tolist() == list(range(9))


def test_shuffle_time_permutes_each_sample_in_time():
    windows = torch.arange(3 * 6 * 4, dtype=torch.float32).view(3, 6, 4)
    shuffled = shuffle_time(windows, torch.Generator().manual_seed(0))
    again = shuffle_time(windows, torch.Generator().manual_seed(0))
    assert torch.equal(shuffled, again)
    for n in range(3):
        # the same frames, each whole, in another order
        rows = {tuple(r) for r in shuffled[n].tolist()}
        assert rows == {tuple(r) for r in windows[n].tolist()}
    assert not torch.equal(shuffled, windows)
    voxels = torch.randn(2, 5, 2, 3, 2)
    moved = shuffle_time(voxels, torch.Generator().manual_seed(1))
    assert torch.allclose(moved.sum(1), voxels.sum(1))


@pytest.mark.parametrize(("storage", "factor"), [("float16", 1), ("float32", 2), ("bitround-7", 1)])
def test_windows_of_other_stores_hold_their_frames(tmp_path, monkeypatch, storage, factor):
    """Windows read at once (float16, a resampled float32) or through zarr (compressed)
    equal their frames read one by one onto the grid; a window across two inner chunks
    too."""
    mask = np.zeros((8, 8, 6), dtype=bool)
    mask[1:7, 2:8, 1:5] = True
    data = np.random.default_rng(3).standard_normal((13, int(mask.sum()))).astype(np.float32)
    path = str(
        write_bold_store(
            tmp_path / "s.zarr", mask, data, 13, tr=1.0, source_path="x", chunk=8, storage=storage
        )
    )
    shape = (4, 4, 4)
    windowed = VolumeDataset(
        {"bold": [path]}, {"bold": shape}, resample={"bold": factor}, window=5, stride=1
    )
    single = VolumeDataset({"bold": [path]}, {"bold": shape}, resample={"bold": factor})
    starts = np.arange(9)  # every window; from frame 4 on across two inner chunks
    frame_reads = []
    read = StoreReader.read
    monkeypatch.setattr(
        StoreReader, "read", lambda self, t, c: frame_reads.append(list(t)) or read(self, t, c)
    )
    windows = windowed.batch(starts)["bold"].numpy()
    monkeypatch.undo()
    # uncompressed: every window is one range read of the shard (its inner chunks lie in
    # order), across inner chunks too; compressed: through zarr's chunks
    assert frame_reads == (
        [] if storage != "bitround-7" else [list(range(s, s + 5)) for s in starts]
    )
    frames = single.batch(np.arange(13))["bold"].numpy()[:, 0]
    for n, start in enumerate(starts):
        np.testing.assert_array_equal(windows[n], frames[start : start + 5])
    assert np.abs(windows).sum() > 0


def test_the_trainer_logs_the_frames_in_no_window(tmp_path, caplog):
    valid = np.ones(20, dtype=bool)
    valid[[3, 4]] = False  # segments of 3 and 15 frames
    path, _ = bold_store(tmp_path / "a.zarr", valid)
    short, _ = bold_store(tmp_path / "b.zarr", np.ones(4, bool), seed=1)
    table = tmp_path / "sub-01_scans.tsv"
    rows = [
        StoreRow(path, "bold", "a.nii", False, 18, 60, GRID, (), "s", (3, 15), invalid_frames=2),
        StoreRow(short, "bold", "b.nii", False, 4, 60, GRID, (), "s", (4,), invalid_frames=0),
    ]
    write_table(rows, table)
    layout = store_layout({"bold": [path, short]}, [str(table)], window=5)
    with caplog.at_level("WARNING", logger="bidstrain.train"):
        log_left_out(layout)
    assert f"{path}: 3 of its 18 frames are in no window (segments [3, 15]" in caplog.text
    assert f"{short}: 4 of its 4 frames" in caplog.text
    assert (
        "2 of 2 stores too short for train.window (7 frames, 1 stores with no window at "
        "all); 2 frames left out of the stores' time grids"
    ) in caplog.text


def test_an_average_no_table_lists_counts_its_left_out_frames(tmp_path, caplog):
    """A cross-subject average has no normalize table: the frames it leaves out (too few
    subjects valid there) come from its attributes, and the trainer logs them."""
    valid = np.ones(12, dtype=bool)
    valid[[0, 7]] = False  # segments of 6 and 4 frames
    path, _ = bold_store(tmp_path / "avg.zarr", valid)
    run, _ = bold_store(tmp_path / "run.zarr", np.ones(6, bool), seed=1)
    table = tmp_path / "sub-01_scans.tsv"
    write_table([StoreRow(run, "bold", "r.nii", False, 6, 60, GRID, (), "s", (6,))], table)
    layout = store_layout({"bold": [path]}, [str(table)], window=5)
    assert layout.invalid.tolist() == [2]
    with caplog.at_level("WARNING", logger="bidstrain.train"):
        log_left_out(layout)
    assert f"{path}: 4 of its 10 frames are in no window (segments [6, 4]" in caplog.text
    assert "2 frames left out of the stores' time grids" in caplog.text


@pytest.mark.parametrize("factor", [1, 2])
@pytest.mark.parametrize("zeroed", [True, False])
def test_reused_buffers_give_windows_of_frames_read_one_by_one(tmp_path, factor, zeroed):
    """Windows written into a ring of reused buffers equal their frames read one by one,
    bit for bit: float32 stores (read straight onto the grid without resampling), a float16
    one, each with its own mask, beside T1w volumes that move where the windows lie in the
    buffers from batch to batch; the buffers zeroed memory as the kernel gives it, or
    holding other values first (as page-locked memory may)."""
    grid = (9, 10, 8)
    bold = []
    for seed, storage in ((1, "float32"), (2, "float32"), (3, "float16")):
        mask = np.random.default_rng(seed).random(grid) < 0.6  # many short runs, own mask
        data = np.random.default_rng(seed).standard_normal((9, int(mask.sum())), np.float32)
        path = tmp_path / f"bold-{seed}.zarr"
        write_bold_store(path, mask, data, 9, tr=1.0, chunk=4, storage=storage)
        bold.append(str(path))
    t1 = write_store(tmp_path / "t1.zarr", modality="T1w", n_time=2, grid=(7, 7, 7))
    shapes = {"T1w": (6, 6, 6), "bold": (8, 6, 6) if factor == 1 else (4, 4, 4)}
    resample = {"bold": factor}
    windowed = VolumeDataset(
        {"T1w": [t1], "bold": bold}, shapes, resample=resample, window=3, stride=1
    )
    single = VolumeDataset({"bold": bold}, shapes, resample=resample)
    frames = single.batch(np.arange(len(single)))["bold"].numpy()[:, 0]
    assert np.abs(frames).sum() > 0
    size = 3 * max(windowed.sample_size(m) for m in shapes)
    ring = BatchRing(2, size)
    if not zeroed:
        footprints = {}
        ring.buffers = [
            BatchBuffer(torch.full((size,), np.nan), footprints=footprints) for _ in range(2)
        ]
    sampler = ModalityBatchSampler(
        windowed.layout, batch_size=3, batching="mixed", seed=3, store_group=2, shuffle_buffer=4
    )
    compositions = set()
    for epoch in range(4):
        sampler.set_epoch(epoch)
        for indices in sampler:
            batch = windowed.batch(indices, out=ring.next())
            compositions.add(tuple(len(v) for v in batch.values()))
            store, first = windowed.layout.locate(np.asarray(indices))
            bold_slots = [n for n, s in enumerate(store) if windowed.layout.paths[s] in bold]
            for n, slot in enumerate(bold_slots):
                path = windowed.layout.paths[store[slot]]
                start = single.layout.offsets[bold.index(path)] + first[slot]
                np.testing.assert_array_equal(batch["bold"][n].numpy(), frames[start : start + 3])
            if "T1w" in batch:
                fresh = windowed.batch(indices)["T1w"]
                torch.testing.assert_close(batch["T1w"], fresh, rtol=0, atol=0)
    assert len(compositions) > 2  # the windows moved within the buffers


@pytest.mark.slow  # the training bench at the realistic shape
def test_the_training_bench_runs_parcel_windows_at_the_realistic_settings(tmp_path):
    """What a lent GPU machine runs (bench/bench_train.py --config realistic --parcels),
    here on the CPU with few parcels, one step: it measures the loop on parcel windows."""
    args = ["--config", "realistic", "--parcels", "50", "--window", "4", "--batch-size", "1",
            "--repeats", "1", "--steps", "1", "--workers", "0"]  # fmt: skip
    done = run_bench("bench_train.py", *args, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "window 4, parcels" in done.stdout
    rate = float(done.stdout.split("loop samples/s")[1].split()[1])
    assert rate > 0


def test_reused_buffers_give_parcel_windows_beside_volumes_of_new_ones(tmp_path):
    """A batch of parcel windows writes its buffer whole, without masks: a T1w volume
    placed later where those values lie is zeroed outside its mask like anywhere else
    (it once kept them, so training read other batches' parcel values as T1w voxels)."""
    parcels = [parcel_store(tmp_path / f"p{n}.zarr", 24, n_parcels=40, seed=n)[0] for n in range(3)]
    t1 = [
        write_store(tmp_path / f"t1-{n}.zarr", modality="T1w", n_time=1, seed=n) for n in range(3)
    ]
    config = train_config(window=4, bold_input="parcels", batch_size=3, batching="mixed")
    dataset = volume_dataset({"bold": parcels, "T1w": t1}, config)
    size = 3 * max(dataset.sample_size(m) for m in ("bold", "T1w"))
    ring = BatchRing(2, size)
    sampler = ModalityBatchSampler(
        dataset.layout, batch_size=3, batching="mixed", seed=1, store_group=1, shuffle_buffer=1
    )
    compositions = set()
    for epoch in range(6):
        sampler.set_epoch(epoch)
        for indices in sampler:
            batch = dataset.batch(indices, out=ring.next())
            compositions.add(tuple(len(v) for v in split(batch)[0].values()))
            for modality, values in dataset.batch(indices).items():
                torch.testing.assert_close(batch[modality], values, rtol=0, atol=0)
    assert (3,) in compositions and len(compositions) > 2  # parcel-only batches, and mixed
