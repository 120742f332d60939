"""Benchmark cross-subject averaging at cohort scale: time and peak RSS for N subjects.

Ours is the job itself, ``python -m bidstrain.average @STORES --out ... --settings
'{"mask": "intersection"}'``
(:func:`bidstrain.average.cohort.main`),
against what a user would write with xarray: concatenate every subject store along a new
dimension, take the mean and save it to Zarr (dask-backed, so it streams chunks too)::

    xr.concat([open_store(p).data for p in stores], "subject").mean("subject")

Each measurement is a fresh process: ``whole`` is its wall time seen from outside (interpreter
start, imports, work, exit), ``work`` the time after the imports, ``peak`` its peak RSS
(``getrusage``). Methods and sizes are interleaved within each repeat; medians are printed.

Subject stores (demo grid by default) are written by :func:`bidstrain.io.store.create_store`
from demo BOLD runs (:func:`bidstrain.demo.generate.bold_run`), ``--distinct`` different runs; the
other subjects are file copies of those stores with their ``subject`` attribute rewritten
(writing 1,000 stores from scratch takes about 80 s here; the averaging reads the same bytes
either way).

    PYTHONPATH=workflow .venv/bin/python bench/bench_average.py \
        --subjects 100 300 1000 --repeats 3 --peer-max 1000
    PYTHONPATH=workflow .venv/bin/python bench/bench_average.py \
        --subjects 100 300 1000 --repeats 3 --vary-masks
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from process_memory import peak_rss_mib

AVERAGE_FLAGS = ["--settings", '{"mask": "intersection"}']


def make_subject_stores(
    root: Path, n_subjects: int, n_distinct: int, spec, *, vary_masks: bool = False
) -> list[Path]:
    """``n_subjects`` z-scored demo BOLD stores, ``n_distinct`` of them with their own data.

    The demo's brain masks are all the same; ``vary_masks`` drops a random 1% of each
    distinct store's mask voxels, so that masks differ as subjects' own masks do."""
    import numpy as np
    import zarr
    from bidstrain.demo.generate import bold_run
    from bidstrain.io.store import create_store

    rng = np.random.default_rng(spec.seed)
    shared = np.sin(2 * np.pi * np.arange(spec.n_volumes) * spec.repetition_time / 40.0)
    stores = []
    for n in range(n_subjects):
        path = root / f"sub-{n:05d}_task-rest_desc-zscore_bold.zarr"
        stores.append(path)
        if n >= n_distinct:
            shutil.copytree(stores[n % n_distinct], path)
            zarr.open_group(path, mode="r+").attrs.update(
                subject=f"{n:05d}", entities={"sub": f"{n:05d}", "task": "rest"}
            )
            continue
        raw = bold_run(spec, rng, shared.astype(np.float32)).astype(np.float64)
        mask = raw.mean(axis=-1) > 1000
        if vary_masks:
            mask &= rng.random(mask.shape) > 0.01
        series = raw[mask].T
        mean, std = series.mean(axis=0), series.std(axis=0, ddof=1)
        time_s = np.arange(spec.n_volumes) * spec.repetition_time
        with create_store(path, mask=mask, affine=np.eye(4), time=time_s) as writer:
            writer.write(0, (series - mean) / std)
            writer.add_variable("mean", ("voxel",), mean.astype(np.float32))
            writer.add_variable("std", ("voxel",), std.astype(np.float32))
            writer.attrs.update(
                modality="bold",
                subject=f"{n:05d}",
                session="",
                entities={"sub": f"{n:05d}", "task": "rest"},
                source_path="demo",
                source_size=0,
                repetition_time=spec.repetition_time,
                ddof=1,
                n_zero_variance=0,
                n_nonfinite=0,
                stats_dim="voxel",
                stats_from=["demo"],
            )
    return stores


def run_one(method: str, members: str, out: str) -> dict:
    """Average the stores listed in ``members`` with ``method`` in this process."""
    if method == "ours":
        from bidstrain.average.__main__ import main

        start = time.perf_counter()
        main([f"@{members}", "--out", out, *AVERAGE_FLAGS])
    else:
        import xarray as xr
        from bidstrain.io.store import open_store

        start = time.perf_counter()
        stores = Path(members).read_text().split()
        data = xr.concat([open_store(p).data for p in stores], dim="subject", join="inner")
        xr.Dataset({"data": data.mean("subject")}).to_zarr(out, mode="w", consolidated=False)
    return {
        "work": time.perf_counter() - start,
        "peak": peak_rss_mib(),
    }


def measure(method: str, members: Path, out: Path) -> dict:
    """One fresh process of ``method``: whole-process seconds, work seconds, peak RSS (MB)."""
    shutil.rmtree(out, ignore_errors=True)
    command = [sys.executable, __file__, "--one", method, "--members", str(members)]
    start = time.perf_counter()
    done = subprocess.run([*command, "--out", str(out)], check=True, capture_output=True, text=True)
    whole = time.perf_counter() - start
    return {"whole": whole, **json.loads(done.stdout.splitlines()[-1])}


def load() -> str:
    """The 1/5/15-minute load averages, for the record."""
    return "/".join(Path("/proc/loadavg").read_text().split()[:3])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, nargs="+", default=[100, 300, 1000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--distinct", type=int, default=50, help="stores with their own data")
    parser.add_argument("--peer-max", type=int, default=1000, help="largest N for xarray")
    parser.add_argument(
        "--vary-masks",
        action="store_true",
        help="subject masks differ (no peer: concat cannot align different voxel sets)",
    )
    parser.add_argument("--bold-shape", type=int, nargs=3, default=[20, 24, 20])
    parser.add_argument("--volumes", type=int, default=40)
    parser.add_argument("--one", choices=["ours", "xarray"], help=argparse.SUPPRESS)
    parser.add_argument("--members", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args.members, args.out)))
        return
    from bidstrain.demo.generate import DemoSpec

    spec = DemoSpec(bold_shape=tuple(args.bold_shape), n_volumes=args.volumes)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        stores = make_subject_stores(
            root, max(args.subjects), args.distinct, spec, vary_masks=args.vary_masks
        )
        cases = []
        for n in args.subjects:
            members = root / f"members-{n}.txt"
            members.write_text("".join(f"{path}\n" for path in stores[:n]))
            peer = n <= args.peer_max and not args.vary_masks
            methods = ["ours", "xarray"] if peer else ["ours"]
            cases += [(method, n, members) for method in methods]
        print(f"load before: {load()}", flush=True)
        runs: dict[tuple[str, int], list[dict]] = {}
        for _ in range(args.repeats):
            for method, n, members in cases:
                result = measure(method, members, root / f"{method}.zarr")
                runs.setdefault((method, n), []).append(result)
                print(method, n, json.dumps(result), flush=True)
        print(f"load after: {load()}")
    print(
        f"\n{spec.bold_shape} x {spec.n_volumes} volumes, {args.distinct} distinct stores, "
        f"{'different' if args.vary_masks else 'the same'} masks, "
        f"median of {args.repeats} interleaved runs"
    )
    print("| subjects | method | whole process | work | peak RSS |\n|---|---|---|---|---|")
    for (method, n), results in runs.items():
        med = {key: statistics.median(r[key] for r in results) for key in results[0]}
        print(
            f"| {n} | {method} | {med['whole']:.2f} s | {med['work']:.2f} s | "
            f"{med['peak']:.0f} MB |"
        )


if __name__ == "__main__":
    main()
