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

Run: ``.venv/bin/python bench/bench_train.py [--repeats 5]``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from bidstrain.config import validate_config
from bidstrain.store import create_store
from bidstrain.train.data import (
    ModalityBatchSampler,
    VolumeDataset,
    collate,
    fit_to_shape,
    make_loader,
)
from bidstrain.train.distributed import Context
from bidstrain.train.loop import Trainer, optimizer_step
from bidstrain.train.model import MultiModalAutoencoder
from bidstrain.train.schedule import build_scheduler

REPO = Path(__file__).resolve().parents[1]
# The demo dataset's grids and volume counts (bidstrain.demo.DemoSpec): 3 subjects.
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
        collate(items)
    return time.perf_counter() - start, len(order)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10, help="optimizer steps per repeat")
    args = parser.parse_args()
    config = validate_config({"bids_dir": "unused"}, REPO / "config" / "schema.yaml")["train"]
    shapes, batch_size = config["shapes"], config["batch_size"]
    with tempfile.TemporaryDirectory() as tmp:
        stores, nifti = write_data(Path(tmp))
        dataset = VolumeDataset(stores, shapes)
        sampler = ModalityBatchSampler(
            dataset.modalities, batch_size=batch_size, batching="mixed", seed=0
        )
        loader = make_loader(dataset, sampler, num_workers=0)
        order = [i for batch in sampler for i in batch]
        torch.manual_seed(0)
        model = MultiModalAutoencoder(
            shapes,
            patch=config["patch_size"],
            dim=config["embed_dim"],
            depth=config["depth"],
            heads=config["heads"],
        )
        optimizer = torch.optim.AdamW(model.parameters(), lr=config["lr"])
        scheduler = build_scheduler(optimizer, total_steps=10**6, warmup_steps=5, min_lr_ratio=0.1)
        trainer = Trainer(
            model, model, optimizer, scheduler, Context(0, 1, torch.device("cpu")), config
        )
        batches = list(loader)[: args.steps]
        optimizer_step(trainer, batches[:1], log_norms=False)  # warm-up
        rates = {"step": [], "zarr": [], "nifti": []}
        for _ in range(args.repeats):
            start = time.perf_counter()
            samples = 0
            for batch in batches:
                samples += optimizer_step(trainer, [batch], log_norms=False).samples
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


if __name__ == "__main__":
    main()
