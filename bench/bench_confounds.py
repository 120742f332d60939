"""Benchmark: confound regression of one 96x96x96x300 fMRIPrep BOLD run, ours against nilearn.

Input: :func:`bidstrain.demo.generate.make_fmriprep_demo` with one subject, one run in
``MNI152NLin2009cAsym:res-2`` on a 96x96x96 grid, 300 volumes (int16), its brain mask and
a confounds table from which the ``simple`` strategy takes 30 columns (4 cosines, 24
motion parameters, white matter and CSF) and drops the non-steady-state volume 0.

Variants, each in a fresh subprocess (so that its peak memory is its own), interleaved,
``--repeats`` times each (:func:`bench_normalize.in_subprocess`):

``nilearn``
    ``load_confounds_strategy(run, "simple")``, then ``NiftiMasker(mask_img=<brain mask>,
    standardize="zscore_sample", detrend=False, memory_level=0,
    reports=False).fit_transform(run, confounds=..., sample_mask=...)`` and ``np.save``.
``ours``
    :func:`bidstrain.normalize.confounds.load_run_confounds` (the same nilearn call),
    then :func:`bidstrain.normalize.normalize_bold` with the same mask file: the
    regression in the two streamed passes, a Zarr store written.

Each subprocess reports the time of its work (after its imports), its peak resident
memory with imports (``VmHWM``: what a SLURM memory limit sees) and the peak of its
work alone (the kernel's high-water mark reset after the imports, minus the resident
memory at that point); the parent records the wall time of the whole subprocess. The run
ends with the largest differences between our store, nilearn's array (computed in float32,
nilearn's default for an int16 image) and nilearn in float64 (:func:`differences`).

Run: ``.venv/bin/python bench/bench_confounds.py [--repeats 3]`` (writes the input under
bench/data/fmriprep_confounds/ on first use, about 270 MB; git-ignored; bench_normalize.py
has its own ``bench/data/fmriprep`` of links, without a confounds table).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
import warnings
from pathlib import Path

from bench_normalize import DATA, in_subprocess
from process_memory import status_mib

ROOT = DATA / "fmriprep_confounds"
FUNC = ROOT / "sub-01" / "func"
SPACE = "space-MNI152NLin2009cAsym_res-2"
RUN = FUNC / f"sub-01_task-rest_run-1_{SPACE}_desc-preproc_bold.nii.gz"
MASK = FUNC / f"sub-01_task-rest_run-1_{SPACE}_desc-brain_mask.nii.gz"
TABLE = FUNC / "sub-01_task-rest_run-1_desc-confounds_timeseries.tsv"
STRATEGY = "simple"
VARIANTS = ("nilearn", "ours")
#: Voxels per slab of the float64 reference (:func:`differences`).
REFERENCE_VOXELS = 20_000


def ensure_input() -> None:
    """Write the fMRIPrep-shaped run if it is not there yet."""
    if not RUN.exists():
        from bidstrain.demo.generate import DemoSpec, make_fmriprep_demo

        spec = DemoSpec(n_subjects=1, bold_shape=(96, 96, 96), n_volumes=300)
        make_fmriprep_demo(ROOT, spec, ("MNI152NLin2009cAsym:res-2",), n_cosines=4, runs=("1",))


def run_variant(variant: str, out_dir: Path) -> dict[str, float]:
    """Do one variant's work in this process; return its time and peak memory."""
    import numpy as np
    from nilearn.interfaces.fmriprep import load_confounds_strategy

    if variant == "nilearn":
        from nilearn.maskers import NiftiMasker
    else:
        from bidstrain.config import Config, validate_config
        from bidstrain.normalize import ImageInfo, Options, normalize_bold
        from bidstrain.normalize.confounds import load_run_confounds
    import_peak = status_mib("VmHWM")
    Path("/proc/self/clear_refs").write_text("5")  # resets the high-water mark VmHWM
    baseline = status_mib("VmRSS")
    started = time.perf_counter()
    if variant == "nilearn":
        confounds, sample_mask = load_confounds_strategy(str(RUN), denoise_strategy=STRATEGY)
        masker = NiftiMasker(
            mask_img=str(MASK),
            standardize="zscore_sample",
            detrend=False,
            memory_level=0,
            reports=False,
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # nilearn's deprecation notes
            signals = masker.fit_transform(str(RUN), confounds=confounds, sample_mask=sample_mask)
        np.save(out_dir / "nilearn_confounds.npy", signals)
        n_confounds = confounds.shape[1]
    else:
        confounds = load_run_confounds(RUN, TABLE, STRATEGY, {}, 300, ddof=1, subject="01")
        info = ImageInfo("bold", "01", repetition_time=2.0)
        defaults = Config.from_dict(validate_config({"bids_dir": ""}))
        options = Options.from_config(defaults.normalize, defaults.time, str(MASK))
        normalize_bold(RUN, out_dir / "ours_confounds.zarr", info, options, confounds)
        n_confounds = len(confounds.columns)
    seconds = time.perf_counter() - started
    return {
        "seconds": seconds,
        "peak_mb": max(import_peak, status_mib("VmHWM")),
        "work_peak_mb": status_mib("VmHWM") - baseline,
        "n_confounds": n_confounds,
    }


def differences(out_dir: Path) -> dict[str, float]:
    """Largest differences between our store, nilearn's array and nilearn in float64.

    nilearn's default keeps the int16 run in float32; the float64 reference is
    ``nilearn.signal.clean`` (what ``NiftiMasker`` calls, with the same arguments) on the
    masked series converted to float64, :data:`REFERENCE_VOXELS` voxels at a time (the
    whole run in float64 would take 2 GB).
    """
    import nibabel as nib
    import numpy as np
    from bidstrain.io.store import open_store
    from nilearn import signal
    from nilearn.interfaces.fmriprep import load_confounds_strategy

    ours = open_store(out_dir / "ours_confounds.zarr", use_dask=False).data.values
    theirs = np.load(out_dir / "nilearn_confounds.npy")
    if ours.shape != theirs.shape:
        raise RuntimeError(f"shapes differ: ours {ours.shape}, nilearn {theirs.shape}")
    confounds, sample_mask = load_confounds_strategy(str(RUN), denoise_strategy=STRATEGY)
    series = np.asarray(nib.load(RUN).dataobj)[np.asarray(nib.load(MASK).dataobj) > 0].T
    to_float64 = to_nilearn = 0.0
    for start in range(0, series.shape[1], REFERENCE_VOXELS):
        voxels = slice(start, start + REFERENCE_VOXELS)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # nilearn's deprecation notes
            reference = signal.clean(
                series[:, voxels].astype(np.float64),
                detrend=False,
                standardize="zscore_sample",
                confounds=confounds,
                sample_mask=sample_mask,
            )
        to_float64 = max(to_float64, float(np.abs(ours[:, voxels] - reference).max()))
        to_nilearn = max(to_nilearn, float(np.abs(theirs[:, voxels] - reference).max()))
    return {
        "ours - nilearn": float(np.abs(ours - theirs).max()),
        "ours - nilearn float64": to_float64,
        "nilearn - nilearn float64": to_nilearn,
    }


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
    load_before = os.getloadavg()
    results: dict[str, list[dict[str, float]]] = {v: [] for v in VARIANTS}
    for repeat in range(args.repeats):
        for variant in VARIANTS:
            record = in_subprocess(variant, args.out_dir, script=Path(__file__))
            results[variant].append(record)
            print(f"repeat {repeat + 1} {variant}: {record}", flush=True)
    median = {
        v: {key: statistics.median(r[key] for r in records) for key in records[0]}
        for v, records in results.items()
    }
    print(f"\nload average (1, 5, 15 min) before {load_before}, after {os.getloadavg()}")
    print("\n| variant | confounds | work s | subprocess wall s | peak RSS MB | work peak MB |")
    print("|---|---|---|---|---|---|")
    for v in VARIANTS:
        m = median[v]
        print(
            f"| {v} | {m['n_confounds']:.0f} | {m['seconds']:.2f} | {m['wall']:.2f} | "
            f"{m['peak_mb']:.0f} | {m['work_peak_mb']:.0f} |"
        )
    theirs, ours = median["nilearn"], median["ours"]
    print(
        f"\nspeed-up vs nilearn {theirs['seconds'] / ours['seconds']:.1f}x "
        f"(wall {theirs['wall'] / ours['wall']:.1f}x); "
        f"peak memory / nilearn's {ours['peak_mb'] / theirs['peak_mb']:.3f} "
        f"(work only {ours['work_peak_mb'] / theirs['work_peak_mb']:.3f})"
    )
    for pair, value in differences(args.out_dir).items():
        print(f"max |{pair}| {value:.2e}")


if __name__ == "__main__":
    main()
