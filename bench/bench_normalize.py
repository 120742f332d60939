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

``nilearn_labels``
    ``NiftiLabelsMasker(labels_img=<the atlas>, mask_img=<our mask>, strategy="mean",
    standardize="zscore_sample", memory_level=0, reports=False).fit_transform`` + ``np.save``:
    the peer of the parcel outputs.
``ours_time``, ``ours_parcels``
    ``normalize_bold`` with the mask file, resampled to ``time.tr`` 0.8 s (``linear``);
    ``ours_parcels`` also writes the parcel outputs of the atlas (:data:`N_PARCELS` Voronoi
    parcels drawn on the run's grid, a label image and its table under bench/data/): the
    work of parcel extraction is the difference.
``job_time``, ``job_parcels``, ``job_parcels_native``
    The normalize job (whole process, ``mask: epi``) with ``time.tr`` 0.8 s (``linear``),
    without and with the atlas; and with the atlas at the run's own TR. A job with an
    atlas needs a run in the atlas's space, so these read the run through an
    fMRIPrep-style tree of links (``bench/data/fmriprep``: the run named
    ``space-MNI152NLin2009cAsym_res-2_desc-preproc_bold``, its sidecar, and our mask as
    its brain mask).
``job_time_pchip``, ``job_time_fourier``
    ``job_time`` with the other two ``time.method`` values.
``job_parcels_mask``
    ``job_parcels_native`` given the brain mask file nilearn is given (the workflow's
    ``mask: auto`` on fMRIPrep input) instead of computing the EPI mask: the job that does
    what ``nilearn_labels`` does, plus the voxel store.

``--variants`` runs a subset (the others' comparisons are then left out).

Each in-process variant reports the time of its work (after its imports, nilearn's
included for every variant that uses it) and its peak resident memory (``VmHWM``,
imports included: what a SLURM memory limit sees; a job's is ``wait4``'s ``ru_maxrss``);
the parent also records the wall time of the whole subprocess, imports included. The run
prints the load average before and after, the largest difference between our stores and
nilearn's arrays, and whether our EPI masks equal nilearn's.

Run: ``.venv/bin/python bench/bench_normalize.py [--repeats 3]`` (writes the input under
bench/data/ on first use, about 260 MB; git-ignored).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from process_memory import peak_rss_mib

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
DATA = BENCH / "data"
BIDS = DATA / "bids"
RUN = BIDS / "sub-01" / "func" / "sub-01_task-rest_run-1_bold.nii.gz"
MASK = DATA / "mask.nii.gz"
JOB_COMMAND = DATA / "job_command.json"
FMRIPREP = DATA / "fmriprep"
SPACE = "MNI152NLin2009cAsym"
FMRIPREP_STEM = f"sub-01_task-rest_run-1_space-{SPACE}_res-2"
FMRIPREP_RUN = FMRIPREP / "sub-01" / "func" / f"{FMRIPREP_STEM}_desc-preproc_bold.nii.gz"
ATLAS = DATA / f"atlas-bench_space-{SPACE}_dseg.nii.gz"
ATLAS_LABELS = DATA / f"atlas-bench_space-{SPACE}_dseg.tsv"
N_PARCELS = 400
TARGET_TR = 0.8
VARIANTS = (
    "nilearn",
    "nilearn_epi",
    "nilearn_labels",
    "isal",
    "ours",
    "ours_epi",
    "ours_time",
    "ours_parcels",
    "job_epi",
    "job_time",
    "job_time_pchip",
    "job_time_fourier",
    "job_parcels",
    "job_parcels_native",
    "job_parcels_mask",
)
JOBS = {
    "job_epi": {},
    "job_time": {"time": "linear"},
    "job_time_pchip": {"time": "pchip"},
    "job_time_fourier": {"time": "fourier"},
    "job_parcels": {"time": "linear", "parcels": True},
    "job_parcels_native": {"parcels": True},
    "job_parcels_mask": {"parcels": True, "mask_file": True},
}
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
    elif variant == "nilearn_labels":
        import numpy as np
        from nilearn.maskers import NiftiLabelsMasker

        started = time.perf_counter()
        masker = NiftiLabelsMasker(
            labels_img=str(ATLAS),
            mask_img=str(MASK),
            strategy="mean",
            standardize="zscore_sample",
            memory_level=0,
            reports=False,
        )
        np.save(out_dir / f"{variant}.npy", masker.fit_transform(str(RUN)))
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
        resampled = variant in ("ours_time", "ours_parcels")
        time_section = {"tr": TARGET_TR, "method": "linear"} if resampled else {}
        config = Config.from_dict(validate_config({"bids_dir": "", "time": time_section}))
        options = Options.from_config(config.normalize, config.time, mask)
        parcels = parcel_job(out_dir) if variant == "ours_parcels" else None
        started = time.perf_counter()
        normalize_bold(RUN, out_dir / f"{variant}.zarr", info, options, None, parcels)
    seconds = time.perf_counter() - started
    peak_mb = peak_rss_mib()
    if variant == "nilearn_epi":
        masker.mask_img_.to_filename(out_dir / NILEARN_EPI_MASK)
    return {"seconds": seconds, "peak_mb": peak_mb}


def atlas_files():
    """The benchmark's atlas (:func:`write_atlas`) as the job's settings name it."""
    from bidstrain.dataset.atlas import AtlasFiles

    return AtlasFiles("bench", ATLAS, ATLAS_LABELS, SPACE)


def parcel_outputs(out_dir: Path, name: str) -> dict[str, str]:
    """The ``parcels`` entry of a job's spec: the outputs of variant ``name``."""
    return {
        "store": str(out_dir / f"{name}_parcels.zarr"),
        "timeseries": str(out_dir / f"{name}_timeseries.tsv"),
        "coverage": str(out_dir / f"{name}_coverage.tsv"),
    }


def parcel_job(out_dir: Path):
    """The parcel outputs of ``ours_parcels``, with the atlas on the run's grid."""
    from bidstrain.dataset.atlas import load_atlas
    from bidstrain.normalize.nifti_stream import read_layout
    from bidstrain.normalize.parcels import ParcelOutputs
    from bidstrain.normalize.passes import ParcelJob

    layout = read_layout(RUN)
    atlas = load_atlas(atlas_files(), layout.shape, layout.affine, image=RUN)
    return ParcelJob(atlas, ParcelOutputs.from_json(parcel_outputs(out_dir, "ours_parcels")))


def write_atlas() -> None:
    """:data:`N_PARCELS` parcels on the run's grid (RAS+, our mask's): the Voronoi cells of
    seeds drawn in the mask, over the mask dilated by two voxels; and its label table."""
    import nibabel as nib
    import numpy as np
    from scipy import ndimage
    from scipy.spatial import cKDTree

    mask_img = nib.load(MASK)
    mask = np.asarray(mask_img.dataobj) > 0
    region = ndimage.binary_dilation(mask, iterations=2)
    rng = np.random.default_rng(0)
    inside = np.argwhere(mask)
    seeds = inside[rng.choice(len(inside), N_PARCELS, replace=False)]
    points = np.argwhere(region)
    labels = np.zeros(mask.shape, dtype=np.int16)
    labels[tuple(points.T)] = cKDTree(seeds).query(points)[1] + 1
    nib.save(nib.Nifti1Image(labels, mask_img.affine), ATLAS)
    rows = "".join(f"{i}\tparcel{i:03d}\n" for i in range(1, N_PARCELS + 1))
    ATLAS_LABELS.write_text("index\tname\n" + rows)


def write_fmriprep_tree() -> None:
    """The run as an fMRIPrep output in :data:`SPACE` (links; our mask as its brain mask),
    so that a job can take the atlas."""
    FMRIPREP_RUN.parent.mkdir(parents=True, exist_ok=True)
    description = {
        "Name": "bench",
        "BIDSVersion": "1.9.0",
        "DatasetType": "derivative",
        "GeneratedBy": [{"Name": "fMRIPrep", "Version": "23.2.1"}],
    }
    (FMRIPREP / "dataset_description.json").write_text(json.dumps(description))
    func = FMRIPREP_RUN.parent
    sidecar = {"RepetitionTime": 2.0, "SkullStripped": False}
    (func / f"{FMRIPREP_STEM}_desc-preproc_bold.json").write_text(json.dumps(sidecar))
    for link, target in (
        (FMRIPREP_RUN, RUN),
        (func / f"{FMRIPREP_STEM}_desc-brain_mask.nii.gz", MASK),
    ):
        if not link.is_symlink():
            link.symlink_to(target)


def job_command(
    out_dir: Path,
    name: str,
    time: str | None = None,
    parcels: bool = False,
    mask_file: bool = False,
) -> list[str]:
    """The normalize job's command line (rule ``normalize_subject``) for the run, ``mask:
    epi`` (with ``mask_file``: the fMRIPrep tree's brain mask, :data:`MASK`), resampled to
    :data:`TARGET_TR` by the ``time`` method when given, with the atlas's parcel outputs with
    ``parcels``, the other settings at their defaults (its settings and spec files written
    under ``out_dir``); the job first validates the subject's BOLD headers and writes its
    ingest record, as in the workflow."""
    image = FMRIPREP_RUN if time or parcels else RUN
    entry = {
        "modality": "bold",
        "image": str(image),
        "store": str(out_dir / f"{name}.zarr"),
        "mask": str(FMRIPREP_RUN.with_name(f"{FMRIPREP_STEM}_desc-brain_mask.nii.gz"))
        if mask_file
        else "epi",
        "stats_from": [],
    }
    if parcels:
        entry["parcels"] = parcel_outputs(out_dir, name)
    settings = {
        "bids_dir": str(FMRIPREP if time or parcels else BIDS),
        "ingest": {},
        "normalize": {},
        "time": {"tr": TARGET_TR, "method": time} if time else {},
        "atlas": atlas_files().to_json() if parcels else None,
    }
    settings_file, spec_file = out_dir / f"{name}_settings.json", out_dir / f"{name}_spec.json"
    settings_file.write_text(json.dumps(settings))
    spec_file.write_text(json.dumps([entry]))
    return [
        sys.executable,
        "-m",
        "bidstrain.normalize",
        *("--settings", str(settings_file), "--subject", "01", "--spec", str(spec_file)),
        *("--ingest", str(out_dir / f"{name}_ingest.json")),
        *("--out-table", str(out_dir / f"{name}_scans.tsv")),
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
    if not ATLAS.exists():
        write_atlas()
    write_fmriprep_tree()
    commands = {name: job_command(out_dir, name, **kind) for name, kind in JOBS.items()}
    JOB_COMMAND.write_text(json.dumps(commands))


def run_job(name: str) -> dict[str, float]:
    """Run a normalize job's command; its wall time (also its "work") and peak memory."""
    command = json.loads(JOB_COMMAND.read_text())[name]
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


#: (ours, reference) pairs the summary compares.
COMPARISONS = (
    ("ours", "nilearn"),
    ("ours_epi", "nilearn"),
    ("ours_epi", "nilearn_epi"),
    ("job_epi", "nilearn"),
    ("job_epi", "nilearn_epi"),
    ("ours_time", "nilearn"),
    ("job_time", "nilearn"),
    ("job_time_pchip", "nilearn"),
    ("job_time_fourier", "nilearn"),
    ("job_parcels", "nilearn"),
    ("ours_parcels", "nilearn_labels"),
    ("job_parcels", "nilearn_labels"),
    ("job_parcels_native", "nilearn_labels"),
    ("job_parcels_mask", "nilearn_labels"),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--setup", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out-dir", type=Path, default=DATA / "out")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
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
    variants = [v for v in VARIANTS if v in args.variants]
    results: dict[str, list[dict[str, float]]] = {v: [] for v in variants}
    for repeat in range(args.repeats):
        for variant in variants:
            if variant in JOBS:
                record = run_job(variant)
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
    for v in variants:
        m = median[v]
        print(f"| {v} | {m['seconds']:.2f} | {m['wall']:.2f} | {m['peak_mb']:.0f} |")
    for v, reference in COMPARISONS:
        if v not in median or reference not in median:
            continue
        theirs, ours = median[reference], median[v]
        line = (
            f"\n{v} vs {reference}: work {theirs['seconds'] / ours['seconds']:.2f}x faster, "
            f"whole process {theirs['wall'] / ours['wall']:.2f}x faster; "
            f"peak memory {ours['peak_mb'] / theirs['peak_mb']:.3f} of nilearn's"
        )
        if "isal" in median:
            line += f"; time vs isal floor {ours['seconds'] / median['isal']['seconds']:.2f}x"
        if v in ("ours", "ours_epi", "job_epi") and reference != "nilearn_labels":
            varying, constant = max_difference(args.out_dir / f"{v}.zarr", reference)
            line += (
                f"; max |ours - nilearn| {varying:.2e} (non-zero variance), {constant:.2e} (zero)"
            )
        print(line)
    pairs = (
        ("ours_parcels", "ours_time"),
        ("job_parcels", "job_time"),
        ("job_parcels_native", "job_epi"),
    )
    for v, without in pairs:
        if v in median and without in median:
            added = median[v]["wall"] / median[without]["wall"] - 1
            work = median[v]["seconds"] / median[without]["seconds"] - 1
            print(
                f"\nparcels add {100 * work:.1f} % (work), {100 * added:.1f} % (whole "
                f"process) to {without}"
            )
    for v in ("ours_epi", "job_epi"):
        if v in median and "nilearn_epi" in median:
            print(f"{v} mask: {same_mask(args.out_dir / f'{v}.zarr')}")


if __name__ == "__main__":
    main()
