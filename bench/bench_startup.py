"""Benchmark: trainer start-up over a cohort, per_subject mode (dataset built, first batch).

A cohort of ``--subjects`` subjects, each with a T1w (1 volume), two BOLD runs (300
volumes each) and a DWI (64 volumes), listed in one normalize table per subject
(``results/normalized/sub-*/sub-*_scans.tsv``, written by
:func:`bidstrain.io.scans_table.write_table`) and in a ``stores.json`` with ``tables``, as
the plan writes it. What start-up reads is real: the 10,000 tables and ``stores.json``;
the store paths are symbolic links to three real stores of each shape (tiny grids), so
the first batch opens and reads real stores while the cohort takes seconds to make.
Start-up opens no store to count volumes, so the size of the stores it does not read does
not enter the measurement.

Measured in a fresh interpreter (``--repeats``, medians): imports, then
:func:`bidstrain.train.loop.training_data` (the trainer's own set-up: tables read, store
layout, sampler, loader) with the settings of ``config/train-mni2mm.yaml``, then the first
batch. Also: reading the array metadata of one store (:func:`bidstrain.io.store.read_dims`),
what start-up would cost per store without the tables.

Run: ``.venv/bin/python bench/bench_startup.py [--subjects 10000] [--repeats 3]``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from bidstrain.io.scans_table import StoreRow, write_table
from bidstrain.io.store import create_store, read_dims

REPO = Path(__file__).resolve().parents[1]
#: modality, store name, volumes
IMAGES = (("T1w", "T1w", 1), ("bold", "task-rest_run-1_bold", 300),
          ("bold", "task-rest_run-2_bold", 300), ("dwi", "dwi", 64))  # fmt: skip

CHILD = """
import json, sys, time
started = time.perf_counter()
import torch
import yaml
from bidstrain.config import TrainConfig, validate_config
from bidstrain.train.__main__ import read_stores, read_table_list
from bidstrain.train.distributed import Context
from bidstrain.train.loop import training_data
imported = time.perf_counter()
repo, stores_file = sys.argv[1], sys.argv[2]
config = yaml.safe_load(open(f"{repo}/config/train-mni2mm.yaml"))
config["bids_dir"] = "unused"
settings = validate_config(config)["train"]
settings.update(num_workers=0)
train = TrainConfig.from_dict(settings)
training, _ = read_stores(stores_file)
context = Context(0, 1, torch.device("cpu"))
data = training_data(train, training, context, read_table_list(stores_file))
built = time.perf_counter()
batch = next(iter(data.loader))
first = time.perf_counter()
print(json.dumps({"imports": imported - started, "dataset": built - imported,
                  "first_batch": first - built, "samples": len(data.dataset),
                  "batch": {m: list(v.shape) for m, v in batch.items()}}))
"""


def write_real_store(path: Path, modality: str, n_time: int) -> None:
    mask = np.zeros((6, 6, 6), dtype=bool)
    mask[1:5, 1:5, 1:5] = True
    rows = np.random.default_rng(0).standard_normal((n_time, 64), dtype=np.float32)
    with create_store(path, mask=mask, affine=np.eye(4), time=np.arange(n_time, dtype=float)) as w:
        w.write(0, rows)
        dim = "voxel" if modality == "bold" else "time"
        size = 64 if dim == "voxel" else n_time
        w.add_variable("mean", (dim,), np.zeros(size, dtype=np.float32))
        w.add_variable("std", (dim,), np.ones(size, dtype=np.float32))
        w.attrs.update(modality=modality, subject="x", source_path="x", ddof=1,
                       n_zero_variance=0, stats_dim=dim, stats_from=[])  # fmt: skip


def make_cohort(root: Path, subjects: int) -> Path:
    """Tables, linked stores and stores.json of ``subjects`` subjects; returns stores.json."""
    real = {}
    for modality, name, n_time in IMAGES:
        real[name] = root / "real" / f"{name}.zarr"
        write_real_store(real[name], modality, n_time)
    training: dict[str, list[str]] = {"T1w": [], "bold": [], "dwi": []}
    tables = []
    for index in range(subjects):
        label = f"{index:05d}"
        folder = root / "results" / "normalized" / f"sub-{label}"
        folder.mkdir(parents=True)
        rows = []
        for modality, name, n_time in IMAGES:
            store = folder / f"sub-{label}_{name}.zarr"
            os.symlink(real[name], store)
            training[modality].append(str(store))
            rows.append(
                StoreRow(
                    str(store),
                    modality,
                    "x.nii.gz",
                    False,
                    n_time,
                    64,
                    (6, 6, 6),
                    (),
                    "sha256:0123",
                )
            )
        table = folder / f"sub-{label}_scans.tsv"
        write_table(rows, table)
        tables.append(str(table))
    stores_file = root / "stores.json"
    stores_file.write_text(json.dumps({"training": training, "validation": {}, "tables": tables}))
    return stores_file


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--subjects", type=int, default=10000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench_startup-"))
    try:
        started = time.perf_counter()
        stores_file = make_cohort(root, args.subjects)
        print(f"{args.subjects} subjects made in {time.perf_counter() - started:.1f} s; "
              f"load average {os.getloadavg()[0]:.2f}")  # fmt: skip
        runs = []
        for _ in range(args.repeats):
            wall = time.perf_counter()
            out = subprocess.run(
                [sys.executable, "-c", CHILD, str(REPO), str(stores_file)],
                check=True, capture_output=True, text=True, cwd=root,
            )  # fmt: skip
            result = json.loads(out.stdout.splitlines()[-1])
            result["process"] = time.perf_counter() - wall
            runs.append(result)
        print(f"samples {runs[0]['samples']:,}, first batch {runs[0]['batch']}")
        for key in ("imports", "dataset", "first_batch", "process"):
            values = [r[key] for r in runs]
            print(f"{key:12s} median {statistics.median(values):6.2f} s  runs "
                  f"{[round(v, 2) for v in values]}")  # fmt: skip
        started = time.perf_counter()
        stores = list((root / "results" / "normalized").glob("sub-0000*/*.zarr"))
        for store in stores:
            read_dims(store)
        per_store = (time.perf_counter() - started) / len(stores)
        n_stores = len(IMAGES) * args.subjects
        print(f"read_dims per store {per_store * 1e3:.2f} ms: "
              f"{per_store * n_stores:.0f} s for {n_stores} stores without tables")  # fmt: skip
        print(f"load average after {os.getloadavg()[0]:.2f}")
    finally:
        shutil.rmtree(root)


if __name__ == "__main__":
    main()
