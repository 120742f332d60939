"""Benchmark: the BIDS index against pybids and snakebids on a 1,000-subject tree, and a
Snakemake dry run of the whole workflow over it.

Usage: ``.venv/bin/python bench/bench_index.py [--subjects 1000] [--repeats 5]``
(pybids and snakebids come with ``pip install -e '.[bench]'``).

The tree holds, per subject, a T1w, two BOLD runs and a DWI with sidecars and bval/bvec,
as empty files: no method opens an image. Methods run interleaved, each repetition in a
fresh process so that no cache is shared, and the median wall time is reported.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "workflow"))

from bidstrain.demo import make_empty_dataset  # noqa: E402

# name -> (imports, the statement timed); ROOT is the dataset root.
METHODS = {
    "bidstrain": ("from bidstrain.bids import BidsIndex", "BidsIndex.build(ROOT)"),
    "pybids": ("import bids", "bids.BIDSLayout(ROOT, validate=False)"),
    "snakebids": (
        "from snakebids import generate_inputs",
        "generate_inputs(bids_dir=ROOT, pybids_inputs={"
        "'bold': {'filters': {'suffix': 'bold', 'extension': '.nii.gz'},"
        " 'wildcards': ['subject', 'session', 'task', 'run']},"
        " 'T1w': {'filters': {'suffix': 'T1w', 'extension': '.nii.gz'},"
        " 'wildcards': ['subject', 'session']},"
        " 'dwi': {'filters': {'suffix': 'dwi', 'extension': '.nii.gz'},"
        " 'wildcards': ['subject', 'session']}})",
    ),
}


def time_in_subprocess(imports: str, statement: str, root: Path) -> float:
    """Wall time of ``statement`` (with ROOT bound) in a fresh interpreter, imports excluded."""
    script = (
        f"import sys, time\n{imports}\nROOT = sys.argv[1]\nstart = time.perf_counter()\n"
        f"{statement}\nprint(time.perf_counter() - start)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, str(root)], capture_output=True, text=True, check=True
    )
    return float(out.stdout.strip().splitlines()[-1])


#: The floor: a bare Snakefile with the per-subject jobs of bidstrain's DAG (ingest, four
#: normalize jobs, four figures), no index, no input functions, no config schema.
BARE_SNAKEFILE = """
IMAGES = ["T1w", "bold1", "bold2", "dwi"]
rule all:
    input: expand("report/{s}_{m}.png", s=config["subjects"].split(","), m=IMAGES)
rule ingest:
    output: "ingest/{s}.json"
    shell: "touch {output}"
rule normalize:
    input: "ingest/{s}.json"
    output: directory("normalized/{s}_{m}.zarr")
    shell: "mkdir {output}"
rule figure:
    input: "normalized/{s}_{m}.zarr"
    output: "report/{s}_{m}.png"
    shell: "touch {output}"
"""


def time_dry_run(workdir: Path, *options: str) -> float:
    """Wall time of ``snakemake -n all --quiet OPTIONS`` (start-up included)."""
    command = [sys.executable, "-m", "snakemake", "-n", "all", "--cores", "2", "--quiet"]
    start = time.perf_counter()
    subprocess.run(
        [*command, "--directory", str(workdir), *options], check=True, capture_output=True
    )
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = make_empty_dataset(Path(tmp) / "bids", args.subjects)
        bare = Path(tmp) / "Snakefile.bare"
        bare.write_text(BARE_SNAKEFILE)
        subjects = ",".join(f"{n:04d}" for n in range(args.subjects))
        config = REPO / "config/config.yaml"
        dry_runs = {
            "snakemake -n all": [
                "--snakefile",
                str(REPO / "Snakefile"),
                "--configfile",
                str(config),
                "--config",
                f"bids_dir={root}",
            ],
            "snakemake -n, bare Snakefile, same jobs": [
                "--snakefile",
                str(bare),
                "--config",
                f"subjects={subjects}",
            ],
        }
        times: dict[str, list[float]] = {name: [] for name in [*METHODS, *dry_runs]}
        for _ in range(args.repeats):
            for name, (imports, statement) in METHODS.items():
                times[name].append(time_in_subprocess(imports, statement, root))
            for name, options in dry_runs.items():
                times[name].append(time_dry_run(Path(tmp) / "work", *options))
    medians = {name: statistics.median(values) for name, values in times.items()}
    print(f"{args.subjects} subjects, median of {args.repeats} runs")
    for name, median in medians.items():
        ratio = medians[name] / medians["bidstrain"]
        print(f"  {name:40s} {median:8.3f} s   ({ratio:6.1f}x bidstrain)")


if __name__ == "__main__":
    main()
