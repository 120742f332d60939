"""Benchmark: the BIDS index against pybids and snakebids on a 1,000-subject tree (the
dry run of the whole workflow: bench/bench_dry_run.py).

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
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "workflow"))

from bidstrain.demo.generate import make_empty_dataset  # noqa: E402

# name -> (imports, the statement timed); ROOT is the dataset root.
METHODS = {
    "bidstrain": ("from bidstrain.dataset.bids import BidsIndex", "BidsIndex.build(ROOT)"),
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = make_empty_dataset(Path(tmp) / "bids", args.subjects)
        times: dict[str, list[float]] = {name: [] for name in METHODS}
        for _ in range(args.repeats):
            for name, (imports, statement) in METHODS.items():
                times[name].append(time_in_subprocess(imports, statement, root))
    medians = {name: statistics.median(values) for name, values in times.items()}
    print(f"{args.subjects} subjects, median of {args.repeats} runs")
    for name, median in medians.items():
        ratio = medians[name] / medians["bidstrain"]
        print(f"  {name:40s} {median:8.3f} s   ({ratio:6.1f}x bidstrain)")


if __name__ == "__main__":
    main()
