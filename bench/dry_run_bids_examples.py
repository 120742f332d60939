"""Dry-run the workflow over every MRI dataset of bids-examples and print a table.

Usage::

    git clone https://github.com/bids-standard/bids-examples /tmp/bids-examples
    .venv/bin/python bench/dry_run_bids_examples.py /tmp/bids-examples [--jobs 2] [--api]

A dataset is an MRI dataset when it holds a ``*_T1w``, ``*_bold`` or ``*_dwi`` NIfTI
image (68 of the repository at commit ca54a02e); the derivative datasets nested under a
dataset's ``derivatives/`` that hold one are swept too. Each is dry-run as a user would:
``snakemake -n --config bids_dir=<dataset>`` from the repository root (the repository's
config), in a fresh working directory. When that stops with an error whose fix is a
config key (:data:`USER_KEYS`: the ``echo`` of multi-echo data, the ``space`` of an
fMRIPrep output), the dataset is dry-run again with that key set, as the message says.

Each row gives the outcome: ``plans`` (and the number of jobs), ``refused`` (the one-line
``bidstrain:`` message), or ``BROKEN`` (a Python traceback, no ``bidstrain:`` line, or a
message over several lines). The exit status is 1 when any row is ``BROKEN``. At
ca54a02e: 71 datasets, 61 plan (3 of them with the key set), 10 refused (the eight
template datasets and two zero-byte ``dataset_description.json``), none broken; about
2 s of CPU per dry run (the runs set ``SLURM_CONF=/dev/null``). ``--api`` plans
through ``bidstrain``'s Python API instead (the index and ``Plan.build``, all datasets
in about 2 s, without Snakemake's DAG).
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "workflow"))

#: The config keys a user sets for a dataset after reading the workflow's message.
USER_KEYS = {
    "ds210": {"echo": "1"},  # multi-echo BOLD
    "ds000001-fmriprep": {"space": "MNI152NLin2009cAsym"},  # several output spaces
    "synthetic/derivatives/fmriprep": {"space": "MNI152NLin2009cAsym"},
}
MRI_IMAGE = re.compile(r"_(T1w|bold|dwi)\.nii(\.gz)?$")


@dataclass(frozen=True)
class Outcome:
    """The result of one dry run."""

    status: str  # plans, refused, BROKEN
    detail: str  # jobs planned, or the error


def mri_datasets(root: Path) -> list[Path]:
    """The datasets of ``root`` that hold a T1w, BOLD or DWI image, sorted; the derivative
    datasets nested in their ``derivatives/`` folders that hold one follow their parent."""
    found = []
    for dataset in sorted(p for p in root.iterdir() if (p / "dataset_description.json").is_file()):
        if not _has_mri(dataset):
            continue
        found.append(dataset)
        nested = dataset / "derivatives"
        if nested.is_dir():
            found += [
                d
                for d in sorted(nested.iterdir())
                if (d / "dataset_description.json").is_file() and _has_mri(d)
            ]
    return found


def _has_mri(dataset: Path) -> bool:
    return any(MRI_IMAGE.search(name) for _, _, names in os.walk(dataset) for name in names)


def dry_run(dataset: Path, keys: dict[str, str]) -> Outcome:
    """``snakemake -n`` with the repository's config and ``bids_dir=<dataset>``."""
    config = [f"bids_dir={dataset}", *(f"{k}={v}" for k, v in keys.items())]
    env = {
        **os.environ,
        "SLURM_CONF": "/dev/null",
        "PYTHONPATH": os.pathsep.join(
            filter(None, [str(REPO / "workflow"), os.environ.get("PYTHONPATH")])
        ),
    }
    with tempfile.TemporaryDirectory() as workdir:
        command = [
            sys.executable, "-m", "snakemake", "-n", "--cores", "1", "--nolock", "--quiet",
            "rules", "--snakefile", str(REPO / "workflow" / "Snakefile"), "--configfile",
            str(REPO / "config" / "config.yaml"), "--directory", workdir, "--config", *config,
        ]  # fmt: skip
        result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO)
    output = result.stdout + result.stderr
    if "Traceback (most recent call last)" in output:
        return Outcome("BROKEN", "traceback: " + output.strip().splitlines()[-1])
    if result.returncode == 0:
        total = re.search(r"^total\s+(\d+)", output, re.MULTILINE)
        return Outcome("plans", f"{total[1] if total else '?'} jobs")
    return _refusal(output)


def _refusal(output: str) -> Outcome:
    """A failed run's ``bidstrain:`` message; BROKEN when absent or over several lines."""
    lines = output.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("bidstrain: ")), None)
    if start is None:
        return Outcome("BROKEN", "no bidstrain message: " + " | ".join(lines[-3:]))
    after = lines[start + 1] if start + 1 < len(lines) else ""
    if after and not after.lstrip().startswith('File "'):
        return Outcome("BROKEN", f"message over several lines: {lines[start]} | {after}")
    return Outcome("refused", lines[start].removeprefix("bidstrain: "))


def plan_via_api(dataset: Path, keys: dict[str, str]) -> Outcome:
    """The index and the plan through the Python API, with the repository's config."""
    import yaml
    from bidstrain.config import Config, validate_config
    from bidstrain.dataset.bids import BidsIndex
    from bidstrain.errors import BidstrainError
    from bidstrain.plan import Plan

    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config.update(bids_dir=str(dataset), **{k: yaml.safe_load(v) for k, v in keys.items()})
    try:
        typed = Config.from_dict(validate_config(config))
        index = BidsIndex.build(
            typed.bids_dir, typed.participant_label, typed.exclude_participant_label
        )
        plan = Plan.build(typed, index)
    except BidstrainError as error:
        status = "refused" if "\n" not in str(error) else "BROKEN"
        return Outcome(status, str(error))
    except Exception as error:  # noqa: BLE001 - a crash is what the sweep looks for
        return Outcome("BROKEN", f"traceback: {type(error).__name__}: {error}")
    counts = ", ".join(f"{len(v)} {m}" for m, v in plan.images.items() if v)
    return Outcome("plans", f"{len(plan.subjects)} subjects: {counts}")


def sweep(root: Path, api: bool, jobs: int) -> list[tuple[str, Outcome, str, Outcome | None]]:
    """Every MRI dataset's outcome, then (where :data:`USER_KEYS` names keys) the outcome
    with those keys set."""
    run = plan_via_api if api else dry_run
    datasets = mri_datasets(root)

    def one(dataset: Path) -> tuple[str, Outcome, str, Outcome | None]:
        name = dataset.relative_to(root).as_posix()
        keys = USER_KEYS.get(name, {})
        first = run(dataset, {})
        second = run(dataset, keys) if keys else None
        return name, first, " ".join(f"{k}={v}" for k, v in keys.items()), second

    with ThreadPoolExecutor(jobs) as pool:
        return list(pool.map(one, datasets))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("root", type=Path, help="a checkout of bids-examples")
    parser.add_argument("--api", action="store_true", help="plan through the Python API")
    parser.add_argument("--jobs", type=int, default=1, help="dry runs at a time")
    args = parser.parse_args(argv)
    logging.disable(logging.WARNING)  # the index's warnings, with --api
    rows = sweep(args.root.resolve(), args.api, args.jobs)
    print("| dataset | outcome | keys set | outcome with them |")
    print("|---|---|---|---|")
    for name, first, keys, second in rows:
        then = f"{second.status}: {second.detail}" if second else ""
        print(f"| {name} | {first.status}: {first.detail} | {keys} | {then} |")
    final = [second or first for _, first, _, second in rows]
    counts = {s: sum(o.status == s for o in final) for s in ("plans", "refused", "BROKEN")}
    print(f"\n{len(rows)} datasets: " + ", ".join(f"{n} {s}" for s, n in counts.items()))
    return 1 if counts["BROKEN"] else 0


if __name__ == "__main__":
    sys.exit(main())
