"""Benchmark: ``snakemake -n all`` over cohorts of empty images, as a user types it (the job
listing printed), against Snakemake's floor for the same DAG measured in the same run.

Usage: ``.venv/bin/python bench/bench_dry_run.py [--subjects 1000 10000] [--repeats 3]
[--slurm] [--parcels]``

The floor is a bare Snakefile with the same jobs (per subject a normalize job, which
also writes the ingest record; per group of subjects a figure job) and no index, plan or
schema, run twice: as it is, and with the garbage collector threshold bidstrain's
common.smk sets (so that the ratio compares like with like). Each run is a fresh
``snakemake`` process (start-up included) in a fresh working directory; runs are
interleaved and the medians of the wall time, the CPU time (user + system) and the peak
RSS (GNU ``time``) are reported.
``--slurm`` adds dry runs through ``profiles/slurm`` (the SLURM executor plugin asks
``scontrol`` at start-up: with ``SLURM_CONF=/dev/null`` it fails at once, with a
controller it answers). Parse time is what common.smk does before Snakemake builds the
DAG (schema validation, index, plan and its files, with its garbage collector setting),
in a fresh process, imports excluded.
Last, one more dry run with the shell commands printed gives the longest argument and
command of the whole DAG.

``--parcels`` switches parcels on: the cohort is then an fMRIPrep output tree of empty
files (per subject a T1w and two BOLD runs in ``MNI152NLin2009cAsym:res-2``, with their
brain masks and sidecars; :func:`make_empty_fmriprep`) with the demo's atlas dataset in
the same space inside it (``atlas/``), and config ``parcellation`` names that atlas, so
that every BOLD job also has its parcel outputs. The bare Snakefile is unchanged.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "workflow"))

from bidstrain.demo.generate import (  # noqa: E402
    ATLAS_NAME,
    ATLAS_SPACE,
    make_atlas_demo,
    make_empty_dataset,
)

#: Snakemake's floor for bidstrain's DAG: per subject one normalize job (two outputs: the
#: ingest record and the table), one figure job per group of subjects (64 at most, each
#: taking its subjects' tables), and the target rule; no index, no schema, no plan.
BARE_SNAKEFILE = """
SUBJECTS = config["subjects"].split(",")
GROUPS = {}
for i, s in enumerate(SUBJECTS):
    GROUPS.setdefault(str(i % 64), []).append(s)
rule all:
    input: expand("report/{g}", g=GROUPS)
rule normalize:
    output: "ingest/{s}.json", "normalized/{s}.tsv"
    shell: "touch {output}"
rule figure:
    input: lambda w: expand("normalized/{s}.tsv", s=GROUPS[w.g])
    output: directory("report/{g}")
    shell: "mkdir {output}"
"""


#: The plan's parse-time work as common.smk does it, its collector setting included (ROOT:
#: the dataset root).
PARSE = """
import gc, time, yaml
gc.set_threshold(50_000)
from pathlib import Path
from bidstrain.dataset.bids import BidsIndex
from bidstrain.config import Config, validate_config
from bidstrain.plan import Plan
start = time.perf_counter()
config = yaml.safe_load(Path(REPO, "config/config.yaml").read_text())
if OVERRIDES:
    config.update(yaml.safe_load(Path(OVERRIDES).read_text()))
config["bids_dir"] = ROOT
validate_config(config)
config = Config.from_dict(config)
Plan.build(config, BidsIndex.build(config.bids_dir)).files()
print(time.perf_counter() - start)
"""


def make_empty_fmriprep(root: Path, n_subjects: int) -> Path:
    """An fMRIPrep output tree of empty images in :data:`ATLAS_SPACE`, with the demo's
    atlas dataset inside it (``root/atlas``): the cohort of a dry run with parcels on.

    Per subject ``sub-NNNN``: the preprocessed T1w and its brain mask and, for two runs of
    task ``rest``, the preprocessed BOLD, its brain mask and its sidecar
    (``RepetitionTime`` 2 s), all in the atlas's space. No image can be opened.
    """
    space, res = ATLAS_SPACE.split(":res-")
    root.mkdir(parents=True, exist_ok=True)
    description = {
        "Name": "empty fMRIPrep outputs",
        "BIDSVersion": "1.9.0",
        "DatasetType": "derivative",
        "GeneratedBy": [{"Name": "fMRIPrep", "Version": "23.2.1"}],
    }
    (root / "dataset_description.json").write_text(json.dumps(description))
    sidecar = json.dumps({"RepetitionTime": 2.0, "SkullStripped": False})
    for n in range(n_subjects):
        sub = f"sub-{n:04d}"
        anat = f"anat/{sub}_space-{space}_res-{res}"
        files = {f"{anat}_desc-preproc_T1w.nii.gz": "", f"{anat}_desc-brain_mask.nii.gz": ""}
        for run in (1, 2):
            stem = f"func/{sub}_task-rest_run-{run}_space-{space}_res-{res}"
            files[f"{stem}_desc-preproc_bold.nii.gz"] = ""
            files[f"{stem}_desc-preproc_bold.json"] = sidecar
            files[f"{stem}_desc-brain_mask.nii.gz"] = ""
        for name, text in files.items():
            path = root / sub / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    make_atlas_demo(root / "atlas")
    return root


def parcel_config(root: Path, path: Path) -> Path:
    """A config file (given after config/config.yaml) that switches parcels on with the
    atlas of :func:`make_empty_fmriprep` and selects its space."""
    overrides = {
        "space": ATLAS_SPACE,
        "parcellation": {"name": ATLAS_NAME, "path": str(root / "atlas")},
    }
    path.write_text(json.dumps(overrides))  # JSON is YAML
    return path


def parse_seconds(root: Path, overrides: Path | None = None) -> float:
    """Seconds of schema validation, index, plan and its files in a fresh process (config
    ``overrides`` merged over config/config.yaml, as Snakemake merges a second
    ``--configfile``)."""
    code = f"REPO, ROOT = {str(REPO)!r}, {str(root)!r}\n"
    code += f"OVERRIDES = {None if overrides is None else str(overrides)!r}\n" + PARSE
    result = subprocess.run(
        [sys.executable, "-c", code],
        check=True,
        capture_output=True,
        text=True,
        cwd=REPO / "workflow",
    )
    return float(result.stdout)


def longest_command(workdir: Path, *options: str) -> tuple[int, int, int]:
    """Jobs, longest argument and longest command (bytes) of the shell commands that
    ``snakemake -n -p all OPTIONS`` lists: every job can start when they are under the
    kernel's limits (131,072 bytes an argument, about 2 MB in all)."""
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    listing = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "-p", "all", "--directory", str(workdir)]
        + list(options),
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    commands = [
        shlex.split(line.removeprefix("Shell command: "))
        for line in listing.splitlines()
        if line.startswith("Shell command: ")
    ]
    return (
        len(commands),
        max(len(arg.encode()) for args in commands for arg in args),
        max(sum(len(arg.encode()) + 1 for arg in args) for args in commands),
    )


def dry_run(workdir: Path, *options: str) -> tuple[float, float, float]:
    """Wall seconds, CPU seconds (user + system) and peak RSS (MB) of ``snakemake -n all
    OPTIONS``, the last two GNU time's. On a machine that other work shares, CPU time
    varies less than wall time."""
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    command = ["/usr/bin/time", "-f", "%U %S %M", sys.executable, "-m", "snakemake", "-n", "all"]
    start = time.perf_counter()
    result = subprocess.run(
        [*command, "--cores", "2", "--directory", str(workdir), *options],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    seconds = time.perf_counter() - start
    user, system, peak = result.stderr.strip().splitlines()[-1].split()
    return seconds, float(user) + float(system), int(peak) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--slurm", action="store_true", help="also through profiles/slurm")
    parser.add_argument(
        "--parcels", action="store_true", help="fMRIPrep cohort in an atlas's space, parcels on"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.subjects:
            overrides = None
            if args.parcels:
                root = make_empty_fmriprep(Path(tmp) / f"fmriprep{n}", n)
                overrides = parcel_config(root, Path(tmp) / f"parcels{n}.yaml")
            else:
                root = make_empty_dataset(Path(tmp) / f"bids{n}", n)
            bare = Path(tmp) / "Snakefile.bare"
            bare.write_text(BARE_SNAKEFILE)
            bare_gc = Path(tmp) / "Snakefile.bare_gc"
            bare_gc.write_text("import gc\n\ngc.set_threshold(50_000)\n" + BARE_SNAKEFILE)
            subjects = "subjects=" + ",".join(f"{i:04d}" for i in range(n))
            workflow = [
                "--snakefile",
                str(REPO / "workflow" / "Snakefile"),
                "--configfile",
                str(REPO / "config/config.yaml"),
                *([] if overrides is None else [str(overrides)]),
                "--config",
                f"bids_dir={root}",
            ]
            runs = {
                "bidstrain, snakemake -n all": workflow,
                "bare Snakefile, same jobs": ["--snakefile", str(bare), "--config", subjects],
                "bare Snakefile, gc as bidstrain": [
                    "--snakefile",
                    str(bare_gc),
                    "--config",
                    subjects,
                ],
            }
            if args.slurm:
                slurm = ["--profile", str(REPO / "profiles/slurm")]
                runs["bidstrain, --profile slurm -n all"] = [*slurm, *workflow]
            results: dict[str, list[tuple[float, float, float]]] = {name: [] for name in runs}
            parse = []
            for _ in range(args.repeats):
                for name, options in runs.items():
                    results[name].append(dry_run(Path(tmp) / "work", *options))
                parse.append(parse_seconds(root, overrides))
            load = " ".join(f"{x:.2f}" for x in os.getloadavg())
            print(f"{n} subjects, median of {args.repeats} runs (load average now {load})")
            for name, values in results.items():
                seconds, cpu, peak = (statistics.median(v[i] for v in values) for i in range(3))
                print(f"  {name:36s} {seconds:8.2f} s  CPU {cpu:8.2f} s  peak {peak:7.0f} MB")
            print(f"  {'parse (validation, index, plan)':36s} {statistics.median(parse):8.2f} s")
            jobs, argument, command = longest_command(Path(tmp) / "work", *workflow)
            print(f"  {jobs} job commands: longest argument {argument} B, command {command} B")


if __name__ == "__main__":
    main()
