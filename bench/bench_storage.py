"""Benchmark: store size, file count, write time and training-loader speed per storage.

For each ``normalize.storage`` option, writes one BOLD store of z-scored values (standard
normal, float32: what a normalized run looks like to a codec) on a ``--grid`` with an
ellipsoid mask (24 % of the grid: 219,152 voxels of 96x96x96, like an EPI mask) and
``--volumes`` volumes, in blocks of 4 volumes as the normalizer writes them, then reads
it through the training loader (:class:`bidstrain.train.data.VolumeDataset`,
``num_workers=0``, batches of 4 random volumes, placed on the grid and cropped or padded
to it).

Reported per storage: bytes on disk, files, write time (median of ``--repeats``) and
loader samples/s (median of ``--repeats``, interleaved across storages so that a busy
machine slows them alike). Run it against another checkout of the package with
``PYTHONPATH=<checkout>/workflow`` (one with :func:`bidstrain.demo.generate.write_bold_store`).

Run: ``.venv/bin/python bench/bench_storage.py [--grid 96 96 96] [--volumes 300]
[--storages float32 float16 bitround-7] [--repeats 3]``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from bidstrain.demo.generate import write_bold_store
from bidstrain.train.data import VolumeDataset
from bidstrain.train.sampler import ModalityBatchSampler

DISTINCT = 40  # distinct volumes, cycled (keeps the input's memory small)


def ellipsoid(grid: tuple[int, int, int]) -> np.ndarray:
    axes = np.meshgrid(*[np.linspace(-1, 1, n) for n in grid], indexing="ij")
    return sum(a**2 for a in axes) <= 0.62


def disk_usage(path: Path) -> tuple[int, int]:
    """Bytes on disk and number of files of a store."""
    files = [Path(root) / name for root, _, names in os.walk(path) for name in names]
    return sum(f.stat().st_blocks * 512 for f in files), len(files)


def loader_rate(path: Path, grid: tuple[int, int, int], batches: int) -> float:
    """Samples per second of the training loader over one store, fresh dataset."""
    dataset = VolumeDataset({"bold": [str(path)]}, {"bold": grid})
    sampler = ModalityBatchSampler(
        dataset.layout, batch_size=4, batching="mixed", seed=0, store_group=1, shuffle_buffer=1
    )
    started, n = time.perf_counter(), 0
    for index, indices in enumerate(sampler):
        n += dataset.batch(indices)["bold"].shape[0]
        if index + 1 == batches:
            break
    return n / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--grid", type=int, nargs=3, default=[96, 96, 96])
    parser.add_argument("--volumes", type=int, default=300)
    parser.add_argument("--storages", nargs="+", default=["float32", "float16", "bitround-7"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batches", type=int, default=40, help="loader batches per repeat")
    args = parser.parse_args()
    grid = tuple(args.grid)
    mask = ellipsoid(grid)
    rng = np.random.default_rng(0)
    volumes = rng.standard_normal((DISTINCT, int(mask.sum())), dtype=np.float32)
    print(
        f"grid {grid}, {int(mask.sum())} voxels in the mask, {args.volumes} volumes; "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    root = Path(tempfile.mkdtemp(prefix="bench_storage-"))
    try:
        writes = {s: [] for s in args.storages}
        rates = {s: [] for s in args.storages}
        for _ in range(args.repeats):
            for storage in args.storages:
                path = root / f"{storage}.zarr"
                started = time.perf_counter()
                write_bold_store(
                    path, mask, volumes, args.volumes, mean=1000.0, std=20.0, storage=storage
                )
                writes[storage].append(time.perf_counter() - started)
                rates[storage].append(loader_rate(path, grid, args.batches))
        for storage in args.storages:
            size, files = disk_usage(root / f"{storage}.zarr")
            print(
                f"{storage:11s} {size / 1e6:8.1f} MB  {files:4d} files  "
                f"write {statistics.median(writes[storage]):6.2f} s  "
                f"loader {statistics.median(rates[storage]):7.1f} samples/s  "
                f"(runs {[round(r, 1) for r in rates[storage]]})"
            )
        print(f"load average after {os.getloadavg()[0]:.2f}")
    finally:
        shutil.rmtree(root)


if __name__ == "__main__":
    main()
