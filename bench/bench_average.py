"""Benchmark cross-subject averaging: time and peak memory for N demo-sized subjects.

Ours (:func:`bidstrain.average.average_stores`, streaming one subject at a time) against
what a user would write with xarray: concatenate every subject store along a new
dimension and take the mean (every subject in memory at once). Each measurement runs in a
fresh process (peak RSS from ``getrusage``), ours and the peer interleaved, repeated.

    PYTHONPATH=workflow .venv/bin/python bench/bench_average.py --subjects 50 --repeats 5
    PYTHONPATH=workflow .venv/bin/python bench/bench_average.py --subjects 20 \
        --bold-shape 48 48 40 --volumes 100 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from bidstrain.demo import DemoSpec, bold_run
from bidstrain.store import create_store


def make_subject_stores(root: Path, n_subjects: int, spec: DemoSpec) -> list[Path]:
    """Demo BOLD runs (scanner scale), z-scored per voxel, one store per subject."""
    rng = np.random.default_rng(spec.seed)
    shared = np.sin(2 * np.pi * np.arange(spec.n_volumes) * spec.repetition_time / 40.0)
    stores = []
    for n in range(n_subjects):
        raw = bold_run(spec, rng, shared.astype(np.float32)).astype(np.float64)
        mask = raw.mean(axis=-1) > 1000
        series = raw[mask].T
        mean, std = series.mean(axis=0), series.std(axis=0, ddof=1)
        path = root / f"sub-{n:03d}_task-rest_desc-zscore_bold.zarr"
        time_s = np.arange(spec.n_volumes) * spec.repetition_time
        with create_store(path, mask=mask, affine=np.eye(4), time=time_s) as writer:
            writer.write(0, (series - mean) / std)
            writer.add_variable("mean", ("voxel",), mean.astype(np.float32))
            writer.add_variable("std", ("voxel",), std.astype(np.float32))
            writer.attrs.update(
                modality="bold",
                subject=f"{n:03d}",
                session="",
                entities={"sub": f"{n:03d}", "task": "rest"},
                source_path="demo",
                source_size=0,
                repetition_time=spec.repetition_time,
                ddof=1,
                n_zero_variance=0,
                n_nonfinite=0,
                stats_dim="voxel",
                stats_from=["demo"],
            )
        stores.append(path)
    return stores


def run_one(method: str, stores: list[str], out: str) -> dict:
    """Average ``stores`` with ``method`` in this process; seconds and peak RSS (MB)."""
    if method == "ours":
        from bidstrain.average import average_stores

        start = time.perf_counter()
        average_stores(stores, out)
    else:
        import xarray as xr
        from bidstrain.store import open_store

        start = time.perf_counter()
        data = xr.concat([open_store(p).data for p in stores], dim="subject", join="inner")
        xr.Dataset({"data": data.mean("subject")}).to_zarr(out, mode="w", consolidated=False)
    seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def measure(method: str, stores: list[Path], out: Path) -> dict:
    command = [sys.executable, __file__, "--one", method, "--out", str(out), *map(str, stores)]
    return json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--bold-shape", type=int, nargs=3, default=list(DemoSpec.bold_shape))
    parser.add_argument("--volumes", type=int, default=DemoSpec.n_volumes)
    parser.add_argument("--one", choices=["ours", "xarray"], help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("stores", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args.stores, args.out)))
        return
    spec = DemoSpec(bold_shape=tuple(args.bold_shape), n_volumes=args.volumes)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        stores = make_subject_stores(root, args.subjects, spec)
        runs = {"ours": [], "xarray": [], f"ours ({args.subjects // 5} subjects)": []}
        for _ in range(args.repeats):
            runs["ours"].append(measure("ours", stores, root / "ours.zarr"))
            runs["xarray"].append(measure("xarray", stores, root / "xarray.zarr"))
            few = stores[: args.subjects // 5]
            runs[f"ours ({args.subjects // 5} subjects)"].append(
                measure("ours", few, root / "few.zarr")
            )
    print(
        f"{args.subjects} subjects of {spec.bold_shape} x {spec.n_volumes} volumes, "
        f"median of {args.repeats} interleaved runs"
    )
    medians = {
        name: {key: statistics.median(r[key] for r in results) for key in ("seconds", "peak_mb")}
        for name, results in runs.items()
    }
    for name, median in medians.items():
        print(f"{name:>20}: {median['seconds']:.2f} s, peak RSS {median['peak_mb']:.0f} MB")
    ours, peer = medians["ours"], medians["xarray"]
    print(
        f"ratio xarray/ours: time {peer['seconds'] / ours['seconds']:.2f}x, "
        f"peak memory {peer['peak_mb'] / ours['peak_mb']:.2f}x"
    )


if __name__ == "__main__":
    main()
