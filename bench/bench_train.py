"""Training throughput on CPU at the demo shape, and whether the Zarr data loader keeps up.

Measures, interleaved in one run (the machine is shared, so ratios are taken between
measurements made side by side):

- ``step``: optimizer steps of the default model (config/config.yaml ``train``: T1w 32^3,
  bold and dwi 24^3, patch 8, width 64, depth 2, batch 4 mixed) on batches already in
  memory, in samples/s;
- ``zarr``: the training DataLoader (``VolumeDataset`` over bidstrain stores,
  ``num_workers=0``) in samples/s, with crop/pad and batching;
- ``nifti``: the same volumes read the way a hand-written dataset would, one
  ``nibabel`` ``.nii.gz`` per sample (decompress, pick the volume, mask, crop/pad).

- ``loop`` (every config and device): the training loop as the trainer runs it, batches
  from the DataLoader (``train.num_workers`` workers, pinned memory on a GPU): samples/s,
  the loader's share of the step time (time waiting for the next batch over the total),
  and on a GPU the peak memory (``torch.cuda.max_memory_allocated``).

``--config realistic`` measures the loop with config/train-mni2mm.yaml (ViT-B, 96x112x96,
bf16 on a GPU) over BOLD stores on the MNI 2 mm grid, single frames or (``--window W``)
windows of W frames in tubelets of ``train.patch_frames``; with ``--parcels P`` over parcel
stores of P parcels (``train.bold_input: parcels``, windows of ``--window``, default 20).
``--device cuda`` runs the model on the GPU.

Run: ``.venv/bin/python bench/bench_train.py [--repeats 5] [--config demo|realistic]
[--device cpu|cuda] [--workers N] [--window 20] [--parcels 400]``.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import statistics
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from bench_loader import GRID, realistic_settings, write_parcels
from bidstrain.config import TrainConfig, validate_config
from bidstrain.demo.generate import write_bold_store
from bidstrain.io.store import create_store
from bidstrain.train.data import make_loader, volume_dataset
from bidstrain.train.distributed import Context
from bidstrain.train.loop import Trainer, optimizer_step
from bidstrain.train.model import build_module
from bidstrain.train.resample import fit_to_shape
from bidstrain.train.sampler import batch_sampler
from bidstrain.train.schedule import build_scheduler

REPO = Path(__file__).resolve().parents[1]
# The demo dataset's grids and volume counts (bidstrain.demo.generate.DemoSpec): 3 subjects.
DEMO = {"T1w": ((40, 48, 40), 1, 3), "bold": ((20, 24, 20), 40, 2), "dwi": ((20, 24, 20), 8, 3)}


def write_data(root: Path) -> tuple[dict[str, list[str]], list[tuple[str, Path, int]]]:
    """Stores and .nii.gz files of the demo grids; returns the stores and the NIfTI
    samples ``(modality, path, volume)``."""
    rng = np.random.default_rng(0)
    stores, nifti = {}, []
    for modality, (grid, n_time, n_images) in DEMO.items():
        axes = np.meshgrid(*[np.linspace(-1, 1, n) for n in grid], indexing="ij")
        mask = sum(a**2 for a in axes) < 0.8
        for index in range(n_images):
            volumes = rng.standard_normal((*grid, n_time)).astype(np.float32) * mask[..., None]
            path = root / f"{modality}-{index}.zarr"
            with create_store(
                path, mask=mask, affine=np.eye(4), time=np.arange(n_time, dtype=float)
            ) as writer:
                writer.write(0, volumes[mask].T)
                dim = "voxel" if modality == "bold" else "time"
                size = int(mask.sum()) if dim == "voxel" else n_time
                writer.add_variable("mean", (dim,), np.zeros(size, dtype=np.float32))
                writer.add_variable("std", (dim,), np.ones(size, dtype=np.float32))
                writer.attrs.update(
                    modality=modality,
                    subject=str(index),
                    source_path="",
                    ddof=1,
                    n_zero_variance=0,
                    stats_dim=dim,
                    stats_from=[],
                )
            stores.setdefault(modality, []).append(str(path))
            nii = root / f"{modality}-{index}.nii.gz"
            nib.save(nib.Nifti1Image(volumes, np.eye(4)), nii)
            nifti += [(modality, nii, t) for t in range(n_time)]
    return stores, nifti


def time_zarr(loader) -> tuple[float, int]:
    start, n = time.perf_counter(), 0
    for batch in loader:
        n += sum(v.shape[0] for v in batch.values())
    return time.perf_counter() - start, n


def time_nifti(samples, shapes, order, batch_size) -> tuple[float, int]:
    start = time.perf_counter()
    for i in range(0, len(order), batch_size):
        items = []
        for index in order[i : i + batch_size]:
            modality, path, t = samples[index]
            volume = np.asarray(nib.load(path).dataobj, dtype=np.float32)[..., t]
            items.append((modality, fit_to_shape(volume, shapes[modality])))
        {m: torch.from_numpy(np.stack([v for n, v in items if n == m])) for m, _ in items}
    return time.perf_counter() - start, len(order)


def realistic_stores(
    root: Path, n_stores: int = 2, n_time: int = 60, parcels: int = 0
) -> dict[str, list[str]]:
    """BOLD stores on the MNI 2 mm grid (bench_loader's), or of ``parcels`` parcels."""
    if parcels:
        rng = np.random.default_rng(0)
        paths = [write_parcels(root / f"parcels-{i}.zarr", rng, n_time, parcels)
                 for i in range(n_stores)]  # fmt: skip
        return {"bold": [str(p) for p in paths]}
    axes = np.meshgrid(*[np.linspace(-1, 1, n) for n in GRID], indexing="ij")
    mask = sum(a**2 for a in axes) <= 0.55
    values = np.random.default_rng(0).standard_normal((8, int(mask.sum())), np.float32)
    paths = [root / f"mni-{i}.zarr" for i in range(n_stores)]
    for path in paths:
        write_bold_store(path, mask, values, n_time, storage="float32")
    return {"bold": [str(p) for p in paths]}


def make_trainer(config, modalities, device: torch.device, n_parcels=None) -> Trainer:
    torch.manual_seed(0)
    model = build_module(config, modalities, n_parcels=n_parcels).to(device)
    model.encoder.checkpointing = config.run.activation_checkpointing
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.optimizer.lr)
    scheduler = build_scheduler(optimizer, total_steps=10**6, warmup_steps=5, min_lr_ratio=0.1)
    return Trainer(model, model, optimizer, scheduler, Context(0, 1, device), config)


def time_loop(config, stores, device: torch.device, steps: int) -> dict[str, float]:
    """The training loop fed by the DataLoader: samples/s, loader share, peak memory."""
    dataset = volume_dataset(stores, config)
    sampler = batch_sampler(dataset.layout, config)
    loader = make_loader(dataset, sampler, config, device=device)
    parcels = dataset.shapes["bold"][0] if config.model.bold_input == "parcels" else None
    trainer = make_trainer(config, list(stores), device, n_parcels=parcels)
    batches = iter(loader)
    optimizer_step(trainer, [next(batches)], step=1, log_norms=False)  # warm-up, workers started
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    waited = samples = 0.0
    started = time.perf_counter()
    for _ in range(steps):
        asked = time.perf_counter()
        batch = next(batches, None)
        if batch is None:
            sampler.set_epoch(sampler.epoch + 1)
            batches = iter(loader)
            batch = next(batches)
        waited += time.perf_counter() - asked
        samples += optimizer_step(trainer, [batch], step=1, log_norms=False).samples
    total = time.perf_counter() - started
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else 0.0
    return {"samples/s": samples / total, "loader share": waited / total, "peak GiB": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10, help="optimizer steps per repeat")
    parser.add_argument("--config", choices=["demo", "realistic"], default="demo")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workers", type=int, help="train.num_workers (default: the config's)")
    parser.add_argument("--batch-size", type=int, help="train.batch_size (default: the config's)")
    parser.add_argument("--window", type=int, help="realistic: frames per BOLD sample")
    parser.add_argument("--parcels", type=int, default=0, help="realistic: parcel stores")
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.config == "demo":
        settings = validate_config({"bids_dir": "unused"})["train"]
    else:
        window = args.window or (20 if args.parcels else 1)
        extra = {"bold_input": "parcels"} if args.parcels else {}
        settings = realistic_settings(16, bf16=device.type == "cuda", window=window, **extra)
    if args.workers is not None:
        settings["num_workers"] = args.workers
    settings["batch_size"] = args.batch_size or settings["batch_size"]
    config = TrainConfig.from_dict(settings)
    with tempfile.TemporaryDirectory() as tmp:
        if args.config == "realistic":
            stores = realistic_stores(Path(tmp), parcels=args.parcels)
            loops = [time_loop(config, stores, device, args.steps) for _ in range(args.repeats)]
            report_loops(args, config, loops)
            return
        stores, nifti = write_data(Path(tmp))
        compare_demo(args, config, stores, nifti, device)


def report_loops(args, config, loops: list[dict[str, float]]) -> None:
    print(
        f"{args.config} on {args.device}: batch {config.loader.batch_size}, "
        f"{config.loader.num_workers} workers, bf16 {config.run.bf16}, window "
        f"{config.model.window}, {config.model.bold_input}, torch {torch.__version__}"
    )
    for key in ("samples/s", "loader share", "peak GiB"):
        values = [loop[key] for loop in loops]
        print(f"loop {key:12s} median {statistics.median(values):8.3f}  runs "
              f"{[round(v, 3) for v in values]}")  # fmt: skip


def compare_demo(args, config, stores, nifti, device: torch.device) -> None:
    """Step, Zarr loader and NIfTI peer, interleaved, then the loop."""
    shapes, batch_size = config.model.shapes, config.loader.batch_size
    dataset = volume_dataset(stores, config)
    sampler = batch_sampler(dataset.layout, config)
    loader = make_loader(dataset, sampler, config, device=device, num_workers=0)
    order = [i for batch in sampler for i in batch]
    trainer = make_trainer(config, list(shapes), device)
    # copies: the loader writes into a ring of reused buffers (bidstrain.train.buffers)
    batches = [copy.deepcopy(batch) for batch in itertools.islice(loader, args.steps)]
    optimizer_step(trainer, batches[:1], step=1, log_norms=False)  # warm-up
    rates = {"step": [], "zarr": [], "nifti": []}
    for _ in range(args.repeats):
        start = time.perf_counter()
        samples = 0
        for batch in batches:
            samples += optimizer_step(trainer, [batch], step=1, log_norms=False).samples
        rates["step"].append(samples / (time.perf_counter() - start))
        seconds, n = time_zarr(loader)
        rates["zarr"].append(n / seconds)
        seconds, n = time_nifti(nifti, shapes, order, batch_size)
        rates["nifti"].append(n / seconds)
    median = {name: statistics.median(values) for name, values in rates.items()}
    threads = torch.get_num_threads()
    print(f"torch {torch.__version__}, {threads} threads, samples/epoch {len(dataset)}")
    for name, values in rates.items():
        print(
            f"{name:6s} median {median[name]:8.1f} samples/s  runs {[round(v, 1) for v in values]}"
        )
    print(f"zarr loader / step consumption: {median['zarr'] / median['step']:.1f}x")
    print(f"zarr loader / nifti per-sample reads: {median['zarr'] / median['nifti']:.1f}x")
    loops = [time_loop(config, stores, device, args.steps) for _ in range(args.repeats)]
    report_loops(args, config, loops)


if __name__ == "__main__":
    main()
