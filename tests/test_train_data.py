"""The training data path: counts from the normalize tables, reads by byte range or through
zarr, resampling and crop/pad onto the model's grid, the bounded set of open stores, the
grouped batch order, and worker processes."""

from __future__ import annotations

import copy
import os
import time

import numpy as np
import pytest
import torch
from bidstrain.demo.generate import write_bold_store
from bidstrain.errors import BidstrainError
from bidstrain.io.scans_table import StoreRow, write_table
from bidstrain.io.store import open_store, read_dims, to_grid
from bidstrain.train.data import (
    MODALITIES,
    LoaderBatches,
    StoreLayout,
    VolumeDataset,
    batches_per_epoch,
    buffer_bytes,
    make_loader,
    store_layout,
    volume_dataset,
)
from bidstrain.train.reader import ChunkCache, OpenStores, StoreReader, as_float32
from bidstrain.train.resample import GridMap, block_mean, downsampled_grid, model_view
from bidstrain.train.ring_size import (
    largest_sample,
    loader_bytes,
    page_locked_bytes,
    ring_slots,
    validity_words,
)
from bidstrain.train.sampler import ModalityBatchSampler, batch_sampler, epoch_order
from bidstrain.train.step import accumulation_groups
from bidstrain.train.validity import split
from train_support import train_config, write_store


def write_stored(path, storage: str, n_time: int = 9) -> str:
    """A BOLD store of random values in ``storage`` (float32, float16, bitround-N)."""
    mask = np.zeros((6, 7, 5), dtype=bool)
    mask[1:5, 1:6, 1:4] = True
    data = np.random.default_rng(0).standard_normal((n_time, int(mask.sum()))).astype(np.float32)
    return str(
        write_bold_store(
            path, mask, data, n_time, tr=1.0, source_path="x", chunk=2, storage=storage
        )
    )


def full_volume(path: str, t: int) -> tuple[np.ndarray, np.ndarray]:
    """Volume ``t`` of a store on its grid (xarray's reading), and the store's mask."""
    with open_store(path) as ds:
        return to_grid(ds, ds["data"][t].values), ds["mask"].values


@pytest.mark.parametrize("factor", [1, 2, 3])
@pytest.mark.parametrize("shape", [(8, 16, 10), (4, 4, 6)])
def test_grid_map_places_voxels_as_model_view_does(tmp_path, factor, shape):
    path = write_store(tmp_path / "b.zarr", modality="bold", n_time=2, grid=(11, 12, 9))
    volume, mask = full_volume(path, 1)
    grid_map = GridMap(mask, shape, factor)
    out = np.zeros(shape, dtype=np.float32)
    grid_map.place(volume[mask], out)
    np.testing.assert_allclose(out, model_view(volume, mask, shape, factor), atol=1e-6)


def test_block_mean_averages_in_mask_voxels_only():
    mask = np.zeros((5, 4, 4), dtype=bool)
    mask[:3, :2, :2] = True  # block (0,0,0) full, block (1,0,0) one layer of two
    volume = np.where(mask, 3.0, 0.0).astype(np.float32)
    volume[2, :2, :2] = 5.0
    mean = block_mean(volume, mask, 2)
    assert mean.shape == downsampled_grid(mask.shape, 2) == (3, 2, 2)
    assert mean[0, 0, 0] == 3.0 and mean[1, 0, 0] == 5.0  # not diluted by outside zeros
    assert mean[2, 0, 0] == 0.0 and mean[0, 1, 1] == 0.0


@pytest.mark.parametrize("storage", ["float32", "float16", "bitround-7"])
def test_reader_returns_the_stored_volumes(tmp_path, storage):
    path = write_stored(tmp_path / "b.zarr", storage)
    open_stores = OpenStores(capacity=4, chunk_cache=8)
    n_time, n_voxel, grid = read_dims(path)
    reader = open_stores.get(path, n_time, grid, 1)
    assert reader._direct == (storage != "bitround-7")
    times = [8, 0, 3, 3]
    with open_store(path) as ds:
        expected = ds["data"].values[times]
    np.testing.assert_array_equal(reader.read(times, open_stores.cache), expected)


def test_float16_rows_become_float32_exactly():
    """Every float16 value (all 65,536 bit patterns, subnormals, infinities and NaN
    included, in two rows) is the float32 numpy makes of it."""
    every = np.arange(2**16, dtype=np.uint16).view(np.float16).reshape(2, -1)
    converted = as_float32(every)
    assert converted.dtype == np.float32
    np.testing.assert_array_equal(converted, every.astype(np.float32))  # NaN equals NaN here
    rows = np.ones((2, 3), np.float32)
    assert as_float32(rows) is rows


def test_float32_volumes_read_straight_onto_the_grid_are_the_placed_rows(tmp_path):
    mask = random_mask((24, 20, 30), 7)  # runs for several vectored reads; crop x and z
    data = np.random.default_rng(7).standard_normal((4, int(mask.sum())), np.float32)
    path = str(write_bold_store(tmp_path / "b.zarr", mask, data, 4, tr=1.0, chunk=2))
    shape = (20, 24, 26)
    reader = StoreReader(path, 4, shape, 1)
    scattered = reader._scattered
    assert scattered._iov.size > 2 * os.sysconf("SC_IOV_MAX") and scattered._dropped.size > 0
    cache = ChunkCache(4)
    for t in (3, 0, 2):
        out, expected = np.full((2, *shape), np.nan, np.float32)  # NaN: voxels not written
        reader.place(t, out, cache)
        reader.grid_map.place(reader.read([t], cache)[0], expected)
        np.testing.assert_array_equal(out, expected)
    copied = copy.deepcopy(scattered)  # finds its iovecs where they are, not where made
    again = np.full_like(out, np.nan)
    assert copied(*reader._locate(2)[1:], again) == scattered.nbytes
    np.testing.assert_array_equal(again, out)
    out.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        reader.place(0, out, cache)
    out.flags.writeable = True
    shard = tmp_path / "b.zarr" / "data" / "c" / "0" / "0"
    os.truncate(shard, reader._locate(3)[2] + 100)
    with pytest.raises(BidstrainError, match="shard 0 of data is truncated"):
        reader.place(3, out, cache)
    reader.close()


def test_a_store_with_another_count_than_its_table_is_an_error(tmp_path):
    path = write_store(tmp_path / "b.zarr", modality="bold", n_time=3)
    with pytest.raises(BidstrainError, match="3 volumes but the training plan counted 5"):
        StoreReader(path, 5, (8, 8, 8), 1)


def test_layout_comes_from_the_tables_without_opening_a_store(tmp_path):
    real = write_store(tmp_path / "avg.zarr", modality="bold", n_time=4)
    folder = tmp_path / "results" / "normalized" / "sub-01"
    folder.mkdir(parents=True)
    listed = [str(folder / "sub-01_T1w.zarr"), str(folder / "sub-01_task-a_bold.zarr")]
    rows = [
        StoreRow(listed[0], "T1w", "t1.nii", False, 1, 500, (10, 12, 10), (), "sha256:0123"),
        StoreRow(
            listed[1],
            "bold",
            "b.nii",
            False,
            40,
            300,
            (10, 12, 10),
            (),
            "sha256:0123",
        ),
    ]
    write_table(rows, folder / "sub-01_scans.tsv")
    layout = store_layout(
        {"bold": [listed[1], real], "T1w": [listed[0]]}, [str(folder / "sub-01_scans.tsv")]
    )
    assert layout.paths == (listed[0], listed[1], real)  # MODALITIES order
    assert layout.volumes.tolist() == [1, 40, 4] and layout.offsets.tolist() == [0, 1, 41, 45]
    assert layout.counts() == {"bold": 44, "T1w": 1}
    store, time = layout.locate(np.array([0, 1, 40, 41, 44]))
    assert store.tolist() == [0, 1, 1, 2, 2] and time.tolist() == [0, 0, 39, 0, 3]


def test_open_stores_stay_within_the_bound(tmp_path):
    paths = [
        write_store(tmp_path / f"b{i}.zarr", modality="bold", n_time=2, seed=i) for i in range(5)
    ]
    dataset = VolumeDataset({"bold": paths}, {"bold": (8, 8, 8)}, max_open_stores=2)
    for index in [0, 2, 4, 6, 8, 1]:  # stores 0..4, then 0 again
        dataset.batch([index])
        assert len(dataset.open_stores) <= 2
    assert dataset.open_stores.opened == 6  # store 0 was closed, then reopened


def test_dataset_batch_places_each_sample_in_index_order(tmp_path):
    stores = {
        "T1w": [write_store(tmp_path / "t.zarr", modality="T1w", n_time=1, grid=(13, 11, 9))],
        "bold": [
            write_store(tmp_path / f"b{i}.zarr", modality="bold", n_time=3, seed=i)
            for i in range(2)
        ],
    }
    shapes = {"T1w": (6, 6, 4), "bold": (8, 8, 8)}
    dataset = VolumeDataset(stores, shapes, resample={"T1w": 2})
    batch = dataset.batch([5, 0, 1, 3])
    assert list(batch) == ["T1w", "bold", "valid:T1w", "valid:bold"]
    assert batch["bold"].shape == (3, 1, 8, 8, 8)
    _, valid = split(batch)
    for slot, (path, t) in enumerate([(1, 1), (0, 0), (0, 2)]):  # samples 5, 1, 3
        volume, mask = full_volume(stores["bold"][path], t)
        np.testing.assert_array_equal(
            batch["bold"][slot, 0].numpy(), model_view(volume, mask, (8, 8, 8))
        )
        np.testing.assert_array_equal(valid["bold"][slot, 0].numpy(), holds_data(mask, (8, 8, 8)))
    volume, mask = full_volume(stores["T1w"][0], 0)
    np.testing.assert_allclose(
        batch["T1w"][0, 0].numpy(), model_view(volume, mask, (6, 6, 4), 2), atol=1e-6
    )
    np.testing.assert_array_equal(valid["T1w"][0, 0].numpy(), holds_data(mask, (6, 6, 4), 2))
    assert 0 < valid["T1w"].sum() < valid["T1w"].numel()  # the store's grid, cropped or padded


def holds_data(mask: np.ndarray, shape, factor: int = 1) -> np.ndarray:
    """The voxels of the model's grid that a store of ``mask`` fills, through
    :func:`model_view` of ones (not the loader's :class:`GridMap`)."""
    return model_view(np.ones(mask.shape), mask, shape, factor) > 0


def synthetic_layout(volumes: dict[str, list[int]], chunk: int) -> StoreLayout:
    """A layout of stores that need not exist (the sampler reads none)."""
    codes = [MODALITIES.index(m) for m in volumes for _ in volumes[m]]
    counts = np.asarray([n for m in volumes for n in volumes[m]], dtype=np.int64)
    return StoreLayout(
        paths=tuple(f"{m}{i}" for m in volumes for i in range(len(volumes[m]))),
        modality=np.asarray(codes, dtype=np.int8),
        volumes=counts,
        chunk=np.full(counts.size, chunk, dtype=np.int64),
        offsets=np.concatenate([[0], np.cumsum(counts)]),
        modalities=tuple(volumes),
    )


LAYOUT = {"T1w": [1, 1, 1], "bold": [10, 7], "dwi": [6]}


@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
def test_without_padding_every_sample_is_dealt_to_one_rank_once(world_size):
    """Validation's sampler: each held-out sample scored exactly once, whatever the
    number of ranks (padding would count some twice)."""
    layout = synthetic_layout(LAYOUT, chunk=3)
    dealt = []
    for rank in range(world_size):
        sampler = ModalityBatchSampler(
            layout, batch_size=4, batching="mixed", rank=rank, world_size=world_size, seed=1,
            store_group=2, shuffle_buffer=5, pad=False,
        )  # fmt: skip
        batches = list(sampler)
        assert len(batches) == len(sampler)
        dealt += [i for batch in batches for i in batch]
    assert sorted(dealt) == list(range(len(layout)))  # 26 samples: uneven on 3 and 4 ranks


@pytest.mark.parametrize("batching", ["mixed", "single_modality"])
def test_sampler_gives_each_rank_different_batches_and_the_same_count(batching):
    layout = synthetic_layout(LAYOUT, chunk=3)
    modality = np.repeat(layout.modality, layout.volumes)
    seen, per_rank = [], []
    for rank in range(2):
        sampler = ModalityBatchSampler(
            layout,
            batch_size=4,
            batching=batching,
            rank=rank,
            world_size=2,
            seed=1,
            store_group=2,
            shuffle_buffer=5,
        )
        sampler.set_epoch(3)
        batches = list(sampler)
        per_rank.append(batches)
        expected = batches_per_epoch(layout.counts(), batch_size=4, batching=batching, world_size=2)
        assert len(batches) == len(sampler) == expected
        seen += [i for batch in batches for i in batch]
        if batching == "single_modality":
            assert all(len({modality[i] for i in batch}) == 1 for batch in batches)
        sampler.set_epoch(3, start=2)
        assert list(sampler) == batches[2:]
    assert set(seen) == set(range(len(layout)))
    assert per_rank[0] != per_rank[1]


def test_order_reads_a_group_of_stores_at_a_time_and_whole_chunks():
    layout = synthetic_layout({"bold": [9, 9, 9, 9, 9, 9]}, chunk=3)
    stores = np.arange(6)
    order = epoch_order(layout, stores, np.random.default_rng(0), store_group=2, shuffle_buffer=1)
    assert sorted(order.tolist()) == list(range(54))
    owner, time = layout.locate(order)
    for group in range(3):  # 18 samples of two stores, then the next two
        assert len(set(owner[group * 18 : (group + 1) * 18])) == 2
    for start in range(0, 54, 3):  # each chunk's volumes read together, in order
        assert len(set(owner[start : start + 3])) == 1
        assert time[start] % 3 == 0 and np.all(np.diff(time[start : start + 3]) == 1)
    buffered = epoch_order(
        layout, stores, np.random.default_rng(0), store_group=2, shuffle_buffer=6
    )
    assert sorted(buffered.tolist()) == list(range(54)) and not np.array_equal(buffered, order)
    for start in range(0, 54, 6):  # the same windows, shuffled inside
        assert set(buffered[start : start + 6]) == set(order[start : start + 6])


def test_order_with_large_group_and_buffer_is_a_permutation_that_changes_with_the_epoch():
    layout = synthetic_layout({"bold": [50, 50]}, chunk=10)
    orders = [
        epoch_order(
            layout,
            np.arange(2),
            np.random.default_rng([0, epoch]),
            store_group=2,
            shuffle_buffer=100,
        )
        for epoch in (0, 0, 1)
    ]
    np.testing.assert_array_equal(orders[0], orders[1])
    assert not np.array_equal(orders[0], orders[2])
    owner, _ = layout.locate(orders[0])
    assert 0.2 < owner[:50].mean() < 0.8  # the two stores mixed, not one after the other


def test_worker_processes_deliver_the_main_process_batches(tmp_path):
    stores = {
        "bold": [
            write_store(tmp_path / f"b{i}.zarr", modality="bold", n_time=5, seed=i)
            for i in range(3)
        ]
    }
    config = train_config(num_workers=1, store_group=2, shuffle_buffer=4)
    dataset = VolumeDataset(stores, config.model.shapes, max_open_stores=2)
    batches = {}
    for workers in (0, 1):
        sampler = ModalityBatchSampler(
            dataset.layout,
            batch_size=4,
            batching="mixed",
            seed=0,
            store_group=2,
            shuffle_buffer=4,
        )
        loader = make_loader(
            dataset, sampler, config, device=torch.device("cpu"), num_workers=workers
        )
        batches[workers] = [batch["bold"].clone() for batch in loader]  # buffers are reused
    assert len(batches[0]) == 4
    for main, worker in zip(batches[0], batches[1], strict=True):
        torch.testing.assert_close(main, worker, rtol=0, atol=0)


def random_mask(grid: tuple[int, int, int], seed: int) -> np.ndarray:
    """A mask of scattered voxels (many short runs), different for every seed."""
    return np.random.default_rng(seed).random(grid) < 0.6


def write_masked_stores(tmp_path, storage: str) -> dict[str, list[str]]:
    """Stores of three modalities, each with its own mask, odd grids and ``storage``."""
    grids = {
        "T1w": [(13, 11, 9)],
        "bold": [(11, 12, 9), (11, 12, 9), (7, 9, 12)],
        "dwi": [(9, 9, 9)],
    }
    stores, seed = {}, 0
    for modality, modality_grids in grids.items():
        for grid in modality_grids:
            seed += 1
            mask = random_mask(grid, seed)
            data = np.random.default_rng(seed).standard_normal((5, int(mask.sum())), np.float32)
            path = tmp_path / f"{modality}-{seed}.zarr"
            write_bold_store(path, mask, data, 5, tr=1.0, chunk=2, storage=storage)
            stores.setdefault(modality, []).append(str(path))
    return stores


# bold: crop x (11 -> 8), pad y and z; T1w: downsampled by 2, then padded; dwi: cropped
MASKED_SHAPES = {"T1w": (8, 8, 6), "bold": (8, 16, 10), "dwi": (6, 10, 7)}


def reference_volume(dataset: VolumeDataset, index: int) -> np.ndarray:
    """Sample ``index`` read with xarray and placed by :func:`model_view` (float32)."""
    (store,), (t,) = dataset.layout.locate(np.array([index]))
    modality = MODALITIES[dataset.layout.modality[store]]
    volume, mask = full_volume(dataset.layout.paths[store], int(t))
    shape, factor = dataset.shapes[modality], dataset.resample[modality]
    return model_view(volume.astype(np.float32), mask, shape, factor)


def reference_valid(dataset: VolumeDataset, index: int) -> np.ndarray:
    """The voxels that hold data of sample ``index`` (:func:`holds_data` of its store)."""
    (store,), _ = dataset.layout.locate(np.array([index]))
    modality = MODALITIES[dataset.layout.modality[store]]
    _, mask = full_volume(dataset.layout.paths[store], 0)
    return holds_data(mask, dataset.shapes[modality], dataset.resample[modality])


@pytest.mark.parametrize("storage", ["float32", "float16", "bitround-7"])
def test_reused_buffers_give_the_batches_of_new_ones_bit_for_bit(tmp_path, storage):
    stores = write_masked_stores(tmp_path, storage)
    dataset = VolumeDataset(stores, MASKED_SHAPES, resample={"T1w": 2})
    loader_batches = LoaderBatches(dataset, slots=2, batch_size=4, pin=False)
    sampler = ModalityBatchSampler(
        dataset.layout, batch_size=4, batching="mixed", seed=3, store_group=2, shuffle_buffer=4
    )
    compositions = set()
    for epoch in range(3):  # every ring buffer rewritten with other masks and modalities
        sampler.set_epoch(epoch)
        for indices in sampler:
            reused = loader_batches.__getitems__(indices)
            fresh = dataset.batch(indices)
            assert list(reused) == list(fresh)
            compositions.add(tuple(len(v) for v in reused.values()))
            torch.testing.assert_close(reused, fresh, rtol=0, atol=0)
            for modality, volumes in split(reused)[0].items():
                assert volumes.shape == (len(volumes), 1, *MASKED_SHAPES[modality])
    assert len(compositions) > 2  # the batches' layout in the buffers changed
    for index in range(len(dataset)):  # and new buffers are what model_view gives
        inputs, valid = split(dataset.batch([index]))
        ((modality, volumes),) = inputs.items()
        np.testing.assert_array_equal(
            valid[modality][0, 0].numpy(), reference_valid(dataset, index)
        )
        expected = reference_volume(dataset, index)
        if dataset.resample[modality] == 1:
            np.testing.assert_array_equal(volumes[0, 0].numpy(), expected)
        else:
            np.testing.assert_allclose(volumes[0, 0].numpy(), expected, rtol=1e-6, atol=1e-6)


def test_block_means_are_the_sums_of_each_block_times_its_inverse_count():
    mask = random_mask((13, 11, 9), 0)  # 7x6x5 blocks, cropped in x and z, padded in y
    grid_map = GridMap(mask, (6, 8, 4), 2)
    assert grid_map.source is not None
    row = np.random.default_rng(1).standard_normal(int(mask.sum())).astype(np.float32)
    out = np.zeros((6, 8, 4), dtype=np.float32)
    grid_map.place(row, out)
    every = grid_map.target[grid_map.inverse]  # grid voxel of each store voxel kept
    sums = np.bincount(every, weights=row[grid_map.source], minlength=out.size)
    counts = np.bincount(every, minlength=out.size)
    scale = np.divide(1.0, counts, out=np.zeros(out.size), where=counts > 0).astype(np.float32)
    np.testing.assert_array_equal(out.ravel(), sums.astype(np.float32) * scale)
    np.testing.assert_allclose(out, model_view(to_3d(row, mask), mask, (6, 8, 4), 2), atol=1e-6)


def to_3d(row: np.ndarray, mask: np.ndarray) -> np.ndarray:
    volume = np.zeros(mask.shape, dtype=row.dtype)
    volume[mask] = row
    return volume


def test_a_batch_stays_intact_until_its_process_has_written_slots_more(tmp_path):
    dataset = VolumeDataset(
        write_masked_stores(tmp_path, "float32"), MASKED_SHAPES, resample={"T1w": 2}
    )
    slots = 3
    loader_batches = LoaderBatches(dataset, slots=slots, batch_size=4, pin=False)
    batches = [[0, 1, 2, 3], [4, 5, 6, 7], [20, 21, 8, 9], [12, 13, 14, 15]]  # T1w: 0-4
    held = loader_batches.__getitems__(batches[0])
    expected = {m: v.clone() for m, v in held.items()}
    for indices in batches[1:slots]:
        loader_batches.__getitems__(indices)
    torch.testing.assert_close(held, expected, rtol=0, atol=0)
    newer = loader_batches.__getitems__(batches[slots])  # in the held batch's buffer
    assert newer["bold"].untyped_storage().data_ptr() == held["T1w"].untyped_storage().data_ptr()
    assert not torch.equal(held["T1w"], expected["T1w"])


def test_batches_the_step_holds_survive_the_workers_reading_ahead(tmp_path):
    config = train_config(
        shapes=MASKED_SHAPES,
        resample={"T1w": 2},
        batch_size=3,
        grad_accum_steps=2,
        prefetch_factor=2,
        num_workers=1,
    )
    assert ring_slots(grad_accum_steps=2, prefetch_factor=2, workers=1) == 5
    assert ring_slots(grad_accum_steps=2, prefetch_factor=2, workers=0) == 3
    dataset = volume_dataset(write_masked_stores(tmp_path, "float16"), config)
    sampler = batch_sampler(dataset.layout, config)
    expected = [dataset.batch(indices) for indices in sampler]
    loader = make_loader(dataset, sampler, config, device=torch.device("cpu"))
    received = 0
    for group in accumulation_groups(loader, config.optimizer.grad_accum_steps):
        time.sleep(0.2)  # the worker reads ahead while the step runs
        for batch in group:
            torch.testing.assert_close(batch, expected[received], rtol=0, atol=0)
            received += 1
    assert received == len(expected) == 9  # 25 samples in batches of 3


def test_loader_bytes_are_every_process_ring_of_the_largest_sample():
    config = train_config(
        shapes={"T1w": [8, 8, 6], "bold": [4, 5, 6], "dwi": [6, 10, 7]},
        window=5,
        batch_size=3,
        grad_accum_steps=2,
        prefetch_factor=4,
    )
    # by hand: BOLD windows of 5 x 4*5*6 = 600 values beat T1w (384) and DWI (420), each
    # with its validity bits, one per voxel in float32 words: 120 bits in 4, 420 in 14
    assert [validity_words(n) for n in (1, 32, 33, 120, 384, 420)] == [1, 1, 2, 4, 12, 14]
    assert largest_sample(config, ["T1w", "bold", "dwi"]) == 604
    assert largest_sample(config, ["T1w", "dwi"]) == 434
    # 7 workers, each a ring of 2 + 1 + 4 buffers of 3 samples of 600 float32
    assert loader_bytes(config, 600, workers=7) == 7 * 7 * 3 * 600 * 4 == 352_800
    # the main process alone: 2 + 1 buffers, no read-ahead
    assert loader_bytes(config, 600, workers=0) == 3 * 3 * 600 * 4 == 21_600
    # page-locked (a GPU): blocks of a power of two (a batch of 7,200 bytes takes 8,192);
    # the main process's own 3 buffers, or the workers' rings in shared memory plus the
    # DataLoader's copies of 7 x 4 read-ahead batches and the step's 2
    assert [page_locked_bytes(n) for n in (0, 1, 7_200, 8_192)] == [0, 1, 8_192, 8_192]
    assert loader_bytes(config, 600, workers=0, pinned=True) == 3 * 8_192
    assert loader_bytes(config, 600, workers=7, pinned=True) == 352_800 + 30 * 8_192
    parcels = train_config(bold_input="parcels", window=5)
    assert largest_sample(parcels, ["bold"]) == 0  # parcel count unknown: skipped
    assert largest_sample(parcels, ["bold", "T1w"]) == 512 + 16


def test_buffer_bytes_are_what_the_main_process_ring_allocates(tmp_path):
    config = train_config(shapes=MASKED_SHAPES, window=3, batch_size=4, grad_accum_steps=2)
    dataset = volume_dataset(write_masked_stores(tmp_path, "float32"), config)
    sampler = batch_sampler(dataset.layout, config)
    loader = make_loader(dataset, sampler, config, device=torch.device("cpu"), num_workers=0)
    next(iter(loader))
    ring = loader.dataset._ring.buffers
    allocated = sum(buffer.flat.numel() * buffer.flat.element_size() for buffer in ring)
    assert len(ring) == 3
    # BOLD windows of 3 x 8*16*10 values (and 8*16*10 bits: 40 words) are the largest
    assert allocated == buffer_bytes(loader, config) == 3 * 4 * (3 * 8 * 16 * 10 + 40) * 4


@pytest.mark.skipif(not torch.cuda.is_available(), reason="page-locked memory needs CUDA")
def test_main_process_batches_for_a_gpu_are_page_locked(tmp_path):
    config = train_config(shapes=MASKED_SHAPES, resample={"T1w": 2}, batch_size=4, pin_memory=True)
    dataset = volume_dataset(write_masked_stores(tmp_path, "float32"), config)
    sampler = batch_sampler(dataset.layout, config)
    expected = [dataset.batch(indices) for indices in sampler]
    loader = make_loader(dataset, sampler, config, device=torch.device("cuda"), num_workers=0)
    for batch, reference in zip(loader, expected, strict=True):
        assert all(volumes.is_pinned() for volumes in batch.values())
        torch.testing.assert_close(batch, reference, rtol=0, atol=0)
