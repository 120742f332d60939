"""Benchmark: normalizing one 96x96x96x300 int16 BOLD run, ours against nilearn and the floor.

Variants, each in a fresh subprocess (so that its peak memory is its own), interleaved,
``--repeats`` times each:

``nilearn``
    ``NiftiMasker(mask_img=<our mask>, standardize="zscore_sample", detrend=False,
    memory_level=0, reports=False).fit_transform`` followed by ``np.save`` of the result.
``isal``
    Decompressing the file with ``isal.igzip`` and nothing else: the floor of any reader.
``ours``
    :func:`bidstrain.normalize.normalize_bold` with ``mask=`` the same mask file nilearn
    is given: the same work as the ``nilearn`` variant (streaming passes, Zarr store
    written). Imports numpy, nibabel, zarr and isal, not nilearn.
``ours_epi``
    The same, computing the EPI mask itself (the workflow's default, ``mask: epi``):
    nilearn's ``compute_epi_mask`` on the streamed mean, so nilearn is imported too.

Each subprocess reports the time of its work (after its imports, nilearn's included for
every variant that uses it) and its peak resident memory (``ru_maxrss``, imports
included: what a SLURM memory limit sees); the parent also records the wall time of the
whole subprocess, imports included. The run prints the load average before and after and
ends with the largest difference between our store and nilearn's array.

Run: ``.venv/bin/python bench/bench_normalize.py [--repeats 3]`` (writes the input under
bench/data/ on first use, about 260 MB; git-ignored).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
DATA = BENCH / "data"
BIDS = DATA / "bids"
RUN = BIDS / "sub-01" / "func" / "sub-01_task-rest_run-1_bold.nii.gz"
MASK = DATA / "mask.nii.gz"
VARIANTS = ("nilearn", "isal", "ours", "ours_epi")


def ensure_input() -> Path:
    """Write the demo run (96x96x96 voxels, 300 volumes, int16) if it is not there yet."""
    if not RUN.exists():
        from bidstrain.demo import DemoSpec, make_demo

        spec = DemoSpec(
            n_subjects=1,
            bold_shape=(96, 96, 96),
            n_volumes=300,
            modalities=("bold",),
            sessions_subject=False,
        )
        make_demo(BIDS, spec)
    return RUN


def run_variant(variant: str, out_dir: Path) -> dict[str, float]:
    """Do one variant's work in this process; return its time and peak memory."""
    if variant == "isal":
        from isal import igzip

        started = time.perf_counter()
        with igzip.open(RUN, "rb") as stream:
            while stream.read(2**20):
                pass
    elif variant == "nilearn":
        import numpy as np
        from nilearn.maskers import NiftiMasker

        started = time.perf_counter()
        masker = NiftiMasker(
            mask_img=str(MASK),
            standardize="zscore_sample",
            detrend=False,
            memory_level=0,
            reports=False,
        )
        np.save(out_dir / "nilearn.npy", masker.fit_transform(str(RUN)))
    else:
        if variant == "ours_epi":
            import nilearn.masking  # noqa: F401  (imported lazily for the EPI mask: not timed)
        from bidstrain.normalize import ImageInfo, Options, normalize_bold

        info = ImageInfo("bold", "01", repetition_time=2.0)
        mask = "epi" if variant == "ours_epi" else str(MASK)
        started = time.perf_counter()
        normalize_bold(RUN, out_dir / f"{variant}.zarr", info, Options(mask=mask))
    seconds = time.perf_counter() - started
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"seconds": seconds, "peak_mb": peak_mb}


def in_subprocess(variant: str, out_dir: Path, script: Path = Path(__file__)) -> dict[str, float]:
    """Run ``script --variant variant`` in a fresh interpreter; its record and wall time."""
    command = [sys.executable, str(script), "--variant", variant, "--out-dir", str(out_dir)]
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    record = json.loads(result.stdout.strip().splitlines()[-1])
    record["wall"] = time.perf_counter() - started
    return record


def max_difference(store: Path) -> tuple[float, float]:
    """Largest |ours - nilearn| where the variance is non-zero, and elsewhere."""
    import numpy as np
    from bidstrain.store import open_store

    ours = open_store(store)
    theirs = np.load(store.parent / "nilearn.npy")
    varying = ours["std"].values > 0
    difference = np.abs(ours.data.values - theirs)
    rest = float(difference[:, ~varying].max()) if (~varying).any() else 0.0
    return float(difference[:, varying].max()), rest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--out-dir", type=Path, default=DATA / "out")
    args = parser.parse_args()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    if args.variant:
        print(json.dumps(run_variant(args.variant, args.out_dir)))
        return
    ensure_input()
    if not MASK.exists():  # our EPI mask, given to nilearn so both use the same voxels
        in_subprocess("ours_epi", args.out_dir)
        import nibabel as nib
        from bidstrain.store import open_store, store_meta

        ds = open_store(args.out_dir / "ours_epi.zarr")
        nib.save(nib.Nifti1Image(ds.mask.values.astype("uint8"), store_meta(ds).affine), MASK)
    load_before = os.getloadavg()
    results: dict[str, list[dict[str, float]]] = {v: [] for v in VARIANTS}
    for repeat in range(args.repeats):
        for variant in VARIANTS:
            record = in_subprocess(variant, args.out_dir)
            results[variant].append(record)
            print(f"repeat {repeat + 1} {variant}: {record}", flush=True)
    median = {
        v: {key: statistics.median(r[key] for r in records) for key in records[0]}
        for v, records in results.items()
    }
    load_after = os.getloadavg()
    print(f"\nload average (1, 5, 15 min) before {load_before}, after {load_after}")
    print("\n| variant | work s (median) | subprocess wall s | peak RSS MB |")
    print("|---|---|---|---|")
    for v in VARIANTS:
        m = median[v]
        print(f"| {v} | {m['seconds']:.2f} | {m['wall']:.2f} | {m['peak_mb']:.0f} |")
    nilearn, floor = median["nilearn"], median["isal"]
    for v in ("ours", "ours_epi"):
        varying, constant = max_difference(args.out_dir / f"{v}.zarr")
        print(
            f"\n{v}: speed-up vs nilearn {nilearn['seconds'] / median[v]['seconds']:.1f}x "
            f"(wall {nilearn['wall'] / median[v]['wall']:.1f}x); "
            f"memory vs nilearn {median[v]['peak_mb'] / nilearn['peak_mb']:.3f}; "
            f"time vs isal floor {median[v]['seconds'] / floor['seconds']:.2f}x; "
            f"max |ours - nilearn| {varying:.2e} (non-zero variance), {constant:.2e} (zero)"
        )


if __name__ == "__main__":
    main()
