"""Benchmark: the training loader at the realistic shape against the page cache and the model.

Stores: ``--stores`` BOLD stores (``--storage``: ``normalize.storage``, float32 by default)
of ``--volumes`` volumes on the MNI 2 mm grid
(97x115x97) twice over: all with one ellipsoid mask of 224,469 voxels (about a brain), and
each with its own (slightly smaller ellipsoids, as subjects' masks differ, so a reused
batch buffer must be zeroed); the model's grid is 96x112x96 (4.13 MB of float32 per sample).

Measured in one run, interleaved over ``--repeats`` (medians; the machine may be shared):

- ``page cache``: a plain read of the same bytes, every shard file of the stores read
  (warm cache) into one buffer, each file whole and volume by volume (the size the loader
  reads); the faster of the two is the reference;
- ``decode``: seconds per volume of reading through :class:`~bidstrain.train.reader.StoreReader`
  for each ``normalize.storage`` (float32 and float16 by byte range, bitround-7 through
  zarr and zstd), one store of each;
- ``loader``: the training DataLoader (``make_loader`` with the config of
  ``config/train-mni2mm.yaml``: batch ``--batch-size``, ``mixed``, store groups and
  shuffle buffer from the schema) with ``--workers`` worker processes (0: the main
  process), epoch after epoch: samples/s and GB/s of model input over ``--batches``
  batches once every batch buffer of every loader process has been written once (the
  work: what a training run sees), over those first batches alone (a buffer's first batch
  pays the kernel for its fresh pages, once per run) and from the loader's creation (the
  whole process: worker start-up and the first batches included); without workers also
  per second of the process's CPU time (the share of a core the work takes);
- ``model``: optimizer steps of the realistic model (ViT-B, bf16 off, CPU) on in-memory
  bold batches: what training consumes here (``--model-steps 0`` skips it).

With ``--window W`` a sample is a window of W frames (``train.window``; ``--model-steps 0``,
the model measurement feeds single frames). With ``--parcels P`` the stores are
``--stores`` parcel stores of ``--volumes`` frames x P parcels
(:func:`~bidstrain.io.store.write_parcel_store`, ``train.bold_input: parcels``, windows of
20 frames unless ``--window``), and only the loader is measured.

Run: ``.venv/bin/python bench/bench_loader.py [--stores 4] [--volumes 100] [--repeats 3]
[--window 20] [--parcels 400]``.
"""

from __future__ import annotations

import argparse
import itertools
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import yaml
from bidstrain.config import TrainConfig, validate_config
from bidstrain.demo.generate import write_bold_store
from bidstrain.io.store import read_dims, write_parcel_store
from bidstrain.train.data import make_loader, volume_dataset
from bidstrain.train.distributed import Context
from bidstrain.train.model import build_module
from bidstrain.train.reader import OpenStores
from bidstrain.train.ring_size import ring_slots
from bidstrain.train.sampler import batch_sampler
from bidstrain.train.schedule import build_scheduler
from bidstrain.train.step import Trainer, optimizer_step

REPO = Path(__file__).resolve().parents[1]
GRID = (97, 115, 97)
DISTINCT = 8  # distinct volumes written, cycled


def realistic_settings(batch_size: int, **changes) -> dict:
    """The ``train`` section of config/train-mni2mm.yaml, CPU settings, and ``changes``."""
    config = yaml.safe_load((REPO / "config" / "train-mni2mm.yaml").read_text())
    config["bids_dir"] = "unused"
    train = validate_config(config)["train"]
    train.update({"bf16": False, "batch_size": batch_size, **changes})
    return train


def realistic_config(batch_size: int, window: int = 1) -> TrainConfig:
    """The typed :func:`realistic_settings` (BOLD windows of ``window`` frames)."""
    return TrainConfig.from_dict(realistic_settings(batch_size, window=window))


def page_cache_rate(paths: list[Path], piece: int | None = None) -> tuple[float, float]:
    """Bytes per second of wall-clock and of this process's CPU time reading the stores'
    shard files (warm cache) into one buffer: each file whole, or ``piece`` bytes at a
    time (one volume: what the loader reads)."""
    files = [p / "data" / "c" / "0" / "0" for p in paths]
    buffer = memoryview(bytearray(piece or max(f.stat().st_size for f in files)))
    started, cpu, total = time.perf_counter(), time.process_time(), 0
    for file in files:
        with open(file, "rb", buffering=0) as handle:
            while n := handle.readinto(buffer):
                total += n
    return total / (time.perf_counter() - started), total / (time.process_time() - cpu)


def decode_seconds(path: Path, n_time: int) -> float:
    """Seconds per volume through the loader's reader, every volume of the store in order."""
    stores = OpenStores(capacity=1, chunk_cache=64)
    reader = stores.get(str(path), n_time, (96, 112, 96), 1)
    started = time.perf_counter()
    for t in range(n_time):
        reader.read([t], stores.cache)
    seconds = (time.perf_counter() - started) / n_time
    stores.close()
    return seconds


def loader_rate(
    train: TrainConfig, stores: list[str], workers: int, batches: int
) -> tuple[float, float, float, float]:
    """Samples/s of the loader: its steady rate over ``batches`` batches once every batch
    buffer of every loader process has been written once (the work), from its creation
    (worker start-up and the buffers' first batches included: the whole process's view),
    over those first batches alone (each a fresh buffer: the kernel provides its pages),
    and per second of this process's CPU time in the steady part (with workers, the main
    process's only). Epochs follow each other until enough batches were read."""
    started = time.perf_counter()
    dataset = volume_dataset({"bold": stores}, train)
    sampler = batch_sampler(dataset.layout, train)
    loader = make_loader(dataset, sampler, train, device=torch.device("cpu"), num_workers=workers)
    slots = ring_slots(
        grad_accum_steps=train.optimizer.grad_accum_steps,
        prefetch_factor=train.loader.prefetch_factor,
        workers=workers,
    )
    fresh = slots * max(workers, 1)  # batches written into a buffer for the first time
    samples = _samples(loader, sampler)
    for _ in range(fresh):
        next(samples)
    first, cpu = time.perf_counter(), time.process_time()
    n = sum(next(samples) for _ in range(batches))
    ended, cpu = time.perf_counter(), time.process_time() - cpu
    samples.close()
    del loader  # stops the workers
    first_use = fresh * train.loader.batch_size / (first - started)
    whole = (fresh * train.loader.batch_size + n) / (ended - started)
    return whole, first_use, n / (ended - first), n / cpu


def _samples(loader: torch.utils.data.DataLoader, sampler) -> Iterator[int]:
    """Samples of each batch the loader gives, epoch after epoch."""
    for epoch in itertools.count():
        sampler.set_epoch(epoch)
        for batch in loader:
            yield batch["bold"].shape[0]


def model_rate(train: TrainConfig, steps: int) -> float:
    """Samples/s of optimizer steps of the realistic model on in-memory bold batches."""
    torch.manual_seed(0)
    module = build_module(train, ["bold"])
    optimizer = torch.optim.AdamW(module.parameters(), lr=train.optimizer.lr)
    scheduler = build_scheduler(optimizer, total_steps=100, warmup_steps=0, min_lr_ratio=0.1)
    trainer = Trainer(
        module, module, optimizer, scheduler, Context(0, 1, torch.device("cpu")), train
    )
    batch = {"bold": torch.randn(train.loader.batch_size, 1, *train.model.shapes["bold"])}
    optimizer_step(trainer, [batch], step=1, log_norms=False)  # warm-up
    started = time.perf_counter()
    for _ in range(steps):
        optimizer_step(trainer, [batch], step=1, log_norms=False)
    return steps * train.loader.batch_size / (time.perf_counter() - started)


def ellipsoid(radius: float) -> np.ndarray:
    """A brain-sized ellipsoid mask on :data:`GRID` (``radius`` 0.55: 224,469 voxels)."""
    axes = np.meshgrid(*[np.linspace(-1, 1, n) for n in GRID], indexing="ij")
    return sum(a**2 for a in axes) <= radius


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--stores", type=int, default=4)
    parser.add_argument("--volumes", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--batches", type=int, default=30, help="loader batches per repeat")
    parser.add_argument("--model-steps", type=int, default=2, help="0: no model measurement")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--window", type=int, default=None, help="frames per BOLD sample (1; parcels: 20)"
    )
    parser.add_argument("--parcels", type=int, default=0, help="parcel stores of P parcels")
    parser.add_argument(
        "--storage", default="float32", help="normalize.storage of the loader's stores"
    )
    args = parser.parse_args()
    window = args.window or (20 if args.parcels else 1)
    root = Path(tempfile.mkdtemp(prefix="bench_loader-"))
    try:
        if args.parcels:
            parcel_bench(root, args, window)
        else:
            voxel_bench(root, args, window)
        print(f"load average after {os.getloadavg()[0]:.2f}")
    finally:
        shutil.rmtree(root)


def voxel_bench(root: Path, args: argparse.Namespace, window: int) -> None:
    """Page cache, decoding, loader (one mask, own masks) and model at the realistic grid."""
    train = realistic_config(args.batch_size, window)
    mask = ellipsoid(0.55)
    rng = np.random.default_rng(0)
    sample_bytes = 4 * np.prod(train.model.shapes["bold"]) * window
    sets = {"one mask": [], "own masks": []}
    for i in range(args.stores):
        own = ellipsoid(0.55 - 0.01 * i)  # every store its own mask, as subjects have
        for name, store_mask in (("one mask", mask), ("own masks", own)):
            values = rng.standard_normal((DISTINCT, int(store_mask.sum())), np.float32)
            path = root / f"{name.replace(' ', '-')}-{i}.zarr"
            store = write_bold_store(path, store_mask, values, args.volumes, storage=args.storage)
            sets[name].append(store)
    itemsize = 2 if args.storage == "float16" else 4
    stored = {
        name: np.mean([itemsize * read_dims(p)[1] for p in paths]) for name, paths in sets.items()
    }
    values = rng.standard_normal((DISTINCT, int(mask.sum())), np.float32)
    codecs = {}
    for storage in ("float32", "float16", "bitround-7"):
        codecs[storage] = root / f"codec-{storage}.zarr"
        write_bold_store(codecs[storage], mask, values, 40, storage=storage)
    every = [p for paths in sets.values() for p in paths]
    page_cache_rate(every)  # warm
    print(
        f"{args.stores} stores x {args.volumes} volumes, grid {GRID}, {int(mask.sum())} "
        f"voxels; sample {sample_bytes / 1e6:.2f} MB of model input ({window} frames); torch "
        f"{torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs; "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    piece = itemsize * int(mask.sum())
    cache = {"whole files": [], "volume by volume": []}
    cache_cpu = {name: [] for name in cache}
    decode = {s: [] for s in codecs}
    runs = {(name, w): ([], [], [], []) for name in sets for w in args.workers}
    for _ in range(args.repeats):
        for name, size in (("whole files", None), ("volume by volume", piece)):
            wall, cpu = page_cache_rate(every, size)
            cache[name].append(wall)
            cache_cpu[name].append(cpu)
        for storage, path in codecs.items():
            decode[storage].append(decode_seconds(path, 40))
        for (name, workers), measured in runs.items():
            rates = loader_rate(train, [str(p) for p in sets[name]], workers, args.batches)
            for values, rate in zip(measured, rates, strict=True):
                values.append(rate)
    for name, rates in cache.items():
        rate, cpu = statistics.median(rates), statistics.median(cache_cpu[name])
        print(
            f"page cache, {name:16s} {rate / 1e9:6.2f} GB/s, {cpu / 1e9:6.2f} GB per CPU "
            f"second  runs {_gb(rates)}, CPU {_gb(cache_cpu[name])}"
        )
    page = max(statistics.median(rates) for rates in cache.values())
    page_cpu = max(statistics.median(rates) for rates in cache_cpu.values())
    for storage, seconds in decode.items():
        print(f"read+decode {storage:10s} {statistics.median(seconds) * 1e3:6.2f} ms/volume")
    for (name, workers), (whole, first_use, work, cpu) in runs.items():
        rate = statistics.median(work)
        print(
            f"loader {name:9s} {workers} workers: work {rate:6.1f} samples/s = "
            f"{rate * sample_bytes / 1e9:5.2f} GB/s of model input "
            f"({rate * sample_bytes / page:.2f} of the page cache; its stored bytes "
            f"{rate * stored[name] * window / page:.2f}); first use of the buffers "
            f"{statistics.median(first_use):6.1f} samples/s; whole "
            f"{statistics.median(whole):6.1f} samples/s; runs work {_round(work)} first "
            f"{_round(first_use)} whole {_round(whole)}"
        )
        if workers == 0:
            rate = statistics.median(cpu)
            print(
                f"    per CPU second: {rate:6.1f} samples = {rate * sample_bytes / 1e9:5.2f} "
                f"GB of model input ({rate * sample_bytes / page_cpu:.2f} of the page "
                f"cache's per CPU second)  runs {_round(cpu)}"
            )
    if args.model_steps:
        model = model_rate(train, args.model_steps)
        print(f"model (ViT-B, CPU)   {model:6.3f} samples/s")


def parcel_bench(root: Path, args: argparse.Namespace, window: int) -> None:
    """The loader over parcel stores (``train.bold_input: parcels``)."""
    train = TrainConfig.from_dict(
        realistic_settings(args.batch_size, window=window, bold_input="parcels")
    )
    rng = np.random.default_rng(0)
    stores = [
        str(write_parcels(root / f"parcels-{i}.zarr", rng, args.volumes, args.parcels))
        for i in range(args.stores)
    ]
    sample_bytes = 4 * args.parcels * window
    print(
        f"{args.stores} parcel stores x {args.volumes} frames x {args.parcels} parcels; "
        f"sample {window} frames = {sample_bytes / 1e3:.1f} kB; torch {torch.__version__}, "
        f"{os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.2f}"
    )
    runs = {w: ([], [], [], []) for w in args.workers}
    for _ in range(args.repeats):
        for workers, measured in runs.items():
            rates = loader_rate(train, stores, workers, args.batches)
            for values, rate in zip(measured, rates, strict=True):
                values.append(rate)
    for workers, (whole, _, work, cpu) in runs.items():
        rate = statistics.median(work)
        print(
            f"loader parcels {workers} workers: work {rate:8.0f} samples/s = "
            f"{rate * sample_bytes / 1e6:7.1f} MB/s of model input; per CPU second of this "
            f"process {statistics.median(cpu):8.0f}; whole {statistics.median(whole):8.0f} "
            f"samples/s; runs work {_round(work)} whole {_round(whole)}"
        )


def write_parcels(path: Path, rng: np.random.Generator, n_time: int, n_parcels: int) -> Path:
    """A z-scored parcel store of random values, as the normalize job writes one."""
    ones = np.ones(n_parcels)
    attrs = dict(
        modality="bold",
        subject="01",
        affine=np.eye(4).tolist(),
        source_path="none",
        ddof=1,
        n_zero_variance=0,
        stats_dim="parcel",
        stats_from=[str(path)],
        atlas="bench",
    )
    write_parcel_store(
        path,
        data=rng.standard_normal((n_time, n_parcels), np.float32),
        mean=0 * ones,
        std=ones,
        parcels=np.arange(1, n_parcels + 1),
        n_voxels=ones,
        coverage=ones,
        time=np.arange(n_time, dtype=np.float64),
        attrs=attrs,
    )
    return path


def _round(values: list[float]) -> list[int]:
    return [round(v) for v in values]


def _gb(values: list[float]) -> list[float]:
    return [round(v / 1e9, 2) for v in values]


if __name__ == "__main__":
    main()
