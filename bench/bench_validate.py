"""Benchmark ``snakemake validate`` at cohort scale: wall time for N subjects.

The dataset is :func:`bidstrain.demo.generate.make_empty_dataset`'s tree (per subject a
T1w, two BOLD runs and a DWI with sidecars and gradient tables) with every empty image
replaced by a real, small ``.nii.gz`` (a header and a few voxels: validation reads the
header, the sidecars and the gzip trailer, whose cost does not grow with the image) and
real ``.bval``/``.bvec`` files.

Three measurements, each a fresh process, medians of ``--repeats``:

- ``snakemake``: ``snakemake validate`` as a user runs it (start, parse, plan, the job);
- ``job``: the validate job alone, ``python -m bidstrain.ingest validate @args ...``;
- ``floor``: what any header check needs, ``nibabel.load`` of every image and a read of
  its sidecar, in one process (no checks).

    PYTHONPATH=workflow .venv/bin/python bench/bench_validate.py --subjects 1000 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DWI_VOLUMES = 7

FLOOR = """
import json, sys
from pathlib import Path
import nibabel as nib
for path in Path(sys.argv[1]).rglob("*.nii.gz"):
    nib.load(path).header
    sidecar = Path(str(path).removesuffix(".nii.gz") + ".json")
    if sidecar.exists():
        json.loads(sidecar.read_text())
"""


def make_dataset(root: Path, n_subjects: int) -> Path:
    """The empty-image dataset of ``n_subjects``, its images made real NIfTI files."""
    import nibabel as nib
    import numpy as np
    from bidstrain.demo.generate import make_empty_dataset

    make_empty_dataset(root, n_subjects)
    shapes = {"T1w": (8, 8, 8), "bold": (6, 6, 6, 10), "dwi": (6, 6, 6, DWI_VOLUMES)}
    images = {}
    for suffix, shape in shapes.items():
        img = nib.Nifti1Image(np.zeros(shape, np.int16), np.diag([2.0, 2.0, 2.0, 1.0]))
        img.header.set_xyzt_units("mm", "sec")
        if len(shape) == 4:
            img.header["pixdim"][4] = 2.0
        path = root / f"template_{suffix}.nii.gz"
        nib.save(img, path)
        images[suffix] = path.read_bytes()
        path.unlink()
    bval = " ".join(["0"] + ["1000"] * (DWI_VOLUMES - 1)) + "\n"
    bvec = "\n".join(" ".join(["0"] + ["1"] * (DWI_VOLUMES - 1)) for _ in range(3)) + "\n"
    for path in root.rglob("*.nii.gz"):
        path.write_bytes(images[path.name.removesuffix(".nii.gz").rsplit("_", 1)[1]])
    for path in root.rglob("*.bval"):
        path.write_text(bval)
    for path in root.rglob("*.bvec"):
        path.write_text(bvec)
    return root


def timed(command: list[str], cwd: Path, env: dict[str, str]) -> float:
    start = time.perf_counter()
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, nargs="+", default=[1000])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    env = {**os.environ, "PYTHONPATH": str(REPO / "workflow"), "SLURM_CONF": "/dev/null"}
    with tempfile.TemporaryDirectory() as tmp:
        for n_subjects in args.subjects:
            bids = make_dataset(Path(tmp) / f"bids{n_subjects}", n_subjects)
            work = Path(tmp) / f"work{n_subjects}"
            work.mkdir()
            snakemake = [
                sys.executable,
                "-m",
                "snakemake",
                "--snakefile",
                str(REPO / "workflow" / "Snakefile"),
                "--configfile",
                str(REPO / "config" / "config.yaml"),
                "--cores",
                "1",
                "--nolock",
                "validate",
                "--config",
                f"bids_dir={bids}",
            ]
            job = [
                sys.executable,
                "-m",
                "bidstrain.ingest",
                "validate",
                "@results/plan/validate.args",
                "--bids-dir",
                str(bids),
                "--settings",
                "{}",  # the ingest section's defaults, as config/config.yaml leaves it
                "--out-tsv",
                "job.tsv",
                "--out-text",
                "job.txt",
            ]
            floor = [sys.executable, "-c", FLOOR, str(bids)]
            times: dict[str, list[float]] = {"snakemake": [], "job": [], "floor": []}
            for _ in range(args.repeats):
                times["snakemake"].append(timed(snakemake, work, env))
                times["job"].append(timed(job, work, env))
                times["floor"].append(timed(floor, work, env))
            images = len((work / "results/plan/validate.args").read_text().split()) - 1
            problems = (work / "results/validate/problems.txt").read_text().splitlines()[0]
            medians = {name: statistics.median(values) for name, values in times.items()}
            print(
                f"{n_subjects} subjects, {images} images ({problems}): "
                + ", ".join(f"{name} {value:.2f} s" for name, value in medians.items())
                + f"; job per image {1000 * medians['job'] / images:.2f} ms, "
                f"job / floor {medians['job'] / medians['floor']:.2f}"
            )


if __name__ == "__main__":
    main()
