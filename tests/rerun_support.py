"""What a dry run plans after a config change, by rule and reason: shared by the local
(tests/test_train_workflow.py) and SLURM (tests/test_slurm_reruns.py) rerun tests."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

from conftest import REPO, run_snakemake

RULE = re.compile(r"^\s*(?:local)?rule (\w+):$")
REASON = re.compile(r"^\s*reason: (.*)$")
PARAMS_CHANGED = "Params have changed since last execution"
INPUT_UPDATED = "Input files updated by another job"
#: target rules, which run nothing
LOCAL_TARGETS = {"all", "normalize", "average", "report"}


def planned_jobs(
    workdir: Path, bids_dir: Path, tmp_path: Path, changes: str, profile: str | None = None
) -> Counter:
    """Jobs a dry run of ``all`` plans after the config ``changes`` (YAML, given as a
    second config file), by rule and reason (Snakemake gives the first that applies):
    ``{(rule, reason): count}``. The target rules of :data:`LOCAL_TARGETS` are left out.
    ``profile``: see :func:`conftest.run_snakemake`."""
    changed = tmp_path / "changed.yaml"
    changed.write_text(changes)
    result = run_snakemake(
        workdir,
        "all",
        "--dry-run",
        "--configfile",
        str(REPO / "config" / "config.yaml"),
        str(changed),
        config={"bids_dir": bids_dir},
        profile=profile,
    )
    jobs = Counter()
    rule = None
    for line in result.stdout.splitlines():
        if match := RULE.match(line):
            rule = match.group(1)
        elif (match := REASON.match(line)) and rule:
            if rule not in LOCAL_TARGETS:
                jobs[(rule, match.group(1).split(":")[0])] += 1
            rule = None
    return jobs
