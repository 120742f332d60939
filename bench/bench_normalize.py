"""Benchmark: normalizing one 96x96x96x300 int16 BOLD run, ours against nilearn and the floor.

Variants, each in a fresh subprocess (so that its peak memory is its own), interleaved,
``--repeats`` times each:

``nilearn``
    ``NiftiMasker(mask_img=<our mask>, standardize="zscore_sample", detrend=False,
    memory_level=0, reports=False).fit_transform`` followed by ``np.save`` of the result.
``nilearn_epi``
    The same with ``mask_strategy="epi"`` instead of a mask file: nilearn computes its EPI
    mask from the run (saved too, to compare with ours; not timed).
``isal``
    Decompressing the file with ``isal.igzip`` and nothing else: the floor of any reader.
``ours``
    :func:`bidstrain.normalize.normalize_bold` with ``mask=`` the same mask file nilearn
    is given: the same work as the ``nilearn`` variant (streaming passes, Zarr store
    written). Imports numpy, nibabel, zarr and isal, not nilearn.
``ours_epi``
    The same, computing the EPI mask itself (the workflow's default, ``mask: epi``) with
    :func:`bidstrain.normalize.masking.epi_mask` (nilearn's algorithm, scipy.ndimage; no
    nilearn import).
``job_epi``
    The normalization job as Snakemake runs it, ``python -m bidstrain.normalize --spec
    ... --out-table ...`` with ``mask: epi``: the whole process, interpreter start,
    imports and the validation of the subject's BOLD headers (its ingest record) included;
    its peak memory comes from ``os.wait4``.

Each in-process variant reports the time of its work (after its imports, nilearn's
included for every variant that uses it) and its peak resident memory (``ru_maxrss``,
imports included: what a SLURM memory limit sees); the parent also records the wall time of
the whole subprocess, imports included. The run prints the load average before and after,
the largest difference between our stores and nilearn's arrays, and whether our EPI masks
equal nilearn's.

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
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
DATA = BENCH / "data"
BIDS = DATA / "bids"
RUN = BIDS / "sub-01" / "func" / "sub-01_task-rest_run-1_bold.nii.gz"
MASK = DATA / "mask.nii.gz"
INGEST = DATA / "ingest" / "sub-01.json"
JOB_COMMAND = DATA / "job_command.json"
VARIANTS = ("nilearn", "nilearn_epi", "isal", "ours", "ours_epi", "job_epi")
NILEARN_EPI_MASK = "nilearn_epi_mask.nii.gz"


def ensure_input() -> Path:
    """Write the demo run (96x96x96 voxels, 300 volumes, int16) if it is not there yet."""
    if not RUN.exists():
        from bidstrain.demo.generate import DemoSpec, make_demo

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
    elif variant in ("nilearn", "nilearn_epi"):
        import numpy as np
        from nilearn.maskers import NiftiMasker

        started = time.perf_counter()
        mask = {"mask_img": str(MASK)} if variant == "nilearn" else {"mask_strategy": "epi"}
        masker = NiftiMasker(
            **mask, standardize="zscore_sample", detrend=False, memory_level=0, reports=False
        )
        np.save(out_dir / f"{variant}.npy", masker.fit_transform(str(RUN)))
    else:
        from bidstrain.config import Config, validate_config
        from bidstrain.normalize import ImageInfo, Options, normalize_bold

        info = ImageInfo("bold", "01", repetition_time=2.0)
        mask = "epi" if variant == "ours_epi" else str(MASK)
        defaults = Config.from_dict(validate_config({"bids_dir": ""}))
        options = Options.from_config(defaults.normalize, defaults.time, mask)
        started = time.perf_counter()
        normalize_bold(RUN, out_dir / f"{variant}.zarr", info, options)
    seconds = time.perf_counter() - started
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if variant == "nilearn_epi":
        masker.mask_img_.to_filename(out_dir / NILEARN_EPI_MASK)
    return {"seconds": seconds, "peak_mb": peak_mb}


def job_command(out_dir: Path) -> list[str]:
    """The normalize job's command line (rule ``normalize_subject``) for the run, ``mask:
    epi``, the other settings at their defaults (its settings and spec files written under
    ``out_dir``); the job first validates the subject's BOLD headers and writes its ingest
    record, as in the workflow."""
    spec = [
        {
            "modality": "bold",
            "image": str(RUN),
            "store": str(out_dir / "job_epi.zarr"),
            "mask": "epi",
            "stats_from": [],
        }
    ]
    settings, spec_file = out_dir / "normalize.json", out_dir / "sub-01.json"
    settings.write_text(json.dumps({"bids_dir": str(BIDS), "ingest": {}, "normalize": {}}))
    spec_file.write_text(json.dumps(spec))
    return [
        sys.executable,
        "-m",
        "bidstrain.normalize",
        *("--settings", str(settings), "--subject", "01", "--spec", str(spec_file)),
        *("--ingest", str(INGEST), "--out-table", str(out_dir / "job_epi_scans.tsv")),
    ]


def setup(out_dir: Path) -> None:
    """Write the input run, the mask file given to nilearn (our EPI mask, so that both use
    the same voxels) and the job's command line (JOB_COMMAND).

    Run in a subprocess of its own: a child's ``ru_maxrss`` includes its parent's peak
    resident memory (Linux carries it across fork and exec), so the parent that starts the
    measured processes imports nothing but the standard library.
    """
    ensure_input()
    if not MASK.exists():
        import nibabel as nib
        from bidstrain.io.store import open_store, store_meta

        run_variant("ours_epi", out_dir)
        ds = open_store(out_dir / "ours_epi.zarr")
        nib.save(nib.Nifti1Image(ds.mask.values.astype("uint8"), store_meta(ds).affine), MASK)
    JOB_COMMAND.write_text(json.dumps(job_command(out_dir)))


def run_job() -> dict[str, float]:
    """Run the normalize job's command; its wall time (also its "work") and peak memory."""
    command = json.loads(JOB_COMMAND.read_text())
    with tempfile.TemporaryFile() as stderr:
        started = time.perf_counter()
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr)
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        if process.returncode:
            stderr.seek(0)
            raise RuntimeError(f"{command[:3]} failed:\n{stderr.read().decode()}")
    return {"seconds": wall, "peak_mb": usage.ru_maxrss / 1024, "wall": wall}


def in_subprocess(variant: str, out_dir: Path, script: Path = Path(__file__)) -> dict[str, float]:
    """Run ``script --variant variant`` in a fresh interpreter; its record and wall time."""
    command = [sys.executable, str(script), "--variant", variant, "--out-dir", str(out_dir)]
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    record = json.loads(result.stdout.strip().splitlines()[-1])
    record["wall"] = time.perf_counter() - started
    return record


def max_difference(store: Path, reference: str) -> tuple[float, float]:
    """Largest |ours - nilearn| where the variance is non-zero, and elsewhere."""
    import numpy as np
    from bidstrain.io.store import open_store

    ours = open_store(store)
    theirs = np.load(store.parent / f"{reference}.npy")
    if theirs.shape != ours.data.shape:  # another mask
        return float("nan"), float("nan")
    varying = ours["std"].values > 0
    difference = np.abs(ours.data.values - theirs)
    rest = float(difference[:, ~varying].max()) if (~varying).any() else 0.0
    return float(difference[:, varying].max()), rest


def same_mask(store: Path) -> str:
    """Whether a store's mask is nilearn's EPI mask of the run (``nilearn_epi``)."""
    import nibabel as nib
    import numpy as np
    from bidstrain.io.store import open_store

    ours = open_store(store).mask.values
    theirs = nib.as_closest_canonical(nib.load(store.parent / NILEARN_EPI_MASK))
    differ = int((ours != np.asarray(theirs.dataobj).astype(bool)).sum())
    return f"{int(ours.sum())} voxels, {differ} differ from nilearn's EPI mask"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--setup", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out-dir", type=Path, default=DATA / "out")
    args = parser.parse_args()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    if args.variant:
        print(json.dumps(run_variant(args.variant, args.out_dir)))
        return
    if args.setup:
        setup(args.out_dir)
        return
    command = [sys.executable, __file__, "--setup", "--out-dir", str(args.out_dir)]
    subprocess.run(command, check=True)
    load_before = os.getloadavg()
    results: dict[str, list[dict[str, float]]] = {v: [] for v in VARIANTS}
    for repeat in range(args.repeats):
        for variant in VARIANTS:
            if variant == "job_epi":
                record = run_job()
            else:
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
    floor = median["isal"]
    for v, reference in [
        ("ours", "nilearn"),
        ("ours_epi", "nilearn"),
        ("ours_epi", "nilearn_epi"),
        ("job_epi", "nilearn"),
        ("job_epi", "nilearn_epi"),
    ]:
        theirs, ours = median[reference], median[v]
        varying, constant = max_difference(args.out_dir / f"{v}.zarr", reference)
        print(
            f"\n{v} vs {reference}: work {theirs['seconds'] / ours['seconds']:.2f}x faster, "
            f"whole process {theirs['wall'] / ours['wall']:.2f}x faster; "
            f"peak memory {ours['peak_mb'] / theirs['peak_mb']:.3f} of nilearn's; "
            f"time vs isal floor {ours['seconds'] / floor['seconds']:.2f}x; "
            f"max |ours - nilearn| {varying:.2e} (non-zero variance), {constant:.2e} (zero)"
        )
    for v in ("ours_epi", "job_epi"):
        print(f"{v} mask: {same_mask(args.out_dir / f'{v}.zarr')}")


if __name__ == "__main__":
    main()
