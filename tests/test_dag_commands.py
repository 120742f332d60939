"""Every job of the DAG can start, whatever the number of subjects: lists that grow with
the subjects reach jobs through files, so no command line grows with them.

The kernel limits one argument to 131,072 bytes (MAX_ARG_STRLEN) and all of them to about
2 MB: at 1,000 subjects a list of stores on a command line was already over the first.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from bidstrain.demo import make_empty_dataset
from conftest import run_snakemake

pytestmark = pytest.mark.integration

MAX_ARGUMENT = 100_000
MAX_COMMAND = 1_000_000
RULE = re.compile(r"^\s*(?:local)?rule (\w+):$")


def dry_run_commands(tmp_path: Path, n_subjects: int) -> dict[str, list[list[str]]]:
    """The shell command of every job of ``snakemake -n all`` over an empty-image dataset
    of ``n_subjects``, split into arguments, by rule."""
    bids = make_empty_dataset(tmp_path / f"bids{n_subjects}", n_subjects)
    workdir = tmp_path / f"work{n_subjects}"
    result = run_snakemake(workdir, "-n", "-p", "all", config={"bids_dir": bids})
    commands: dict[str, list[list[str]]] = {}
    rule = None
    for line in result.stdout.splitlines():
        if match := RULE.match(line):
            rule = match.group(1)
        elif line.startswith("Shell command: ") and rule:
            commands.setdefault(rule, []).append(shlex.split(line.removeprefix("Shell command: ")))
    return commands


def _longest(commands: dict[str, list[list[str]]]) -> dict[str, tuple[int, int]]:
    """Per rule: the longest argument and the longest whole command, in bytes."""
    return {
        rule: (
            max(len(arg.encode()) for args in jobs for arg in args),
            max(sum(len(arg.encode()) + 1 for arg in args) for args in jobs),
        )
        for rule, jobs in commands.items()
    }


def test_no_command_grows_with_the_number_of_subjects(tmp_path):
    """The longest argument and command of every rule are the same at 30 and 90 subjects
    (labels have the same width): at 10,000 subjects they are what they are here, and here
    they are far below the kernel's limits."""
    small = _longest(dry_run_commands(tmp_path, 30))
    large = _longest(dry_run_commands(tmp_path, 90))
    assert set(small) == set(large) >= {"ingest", "normalize_subject", "checks", "train"}
    assert small == large
    for rule, (argument, command) in large.items():
        assert argument < MAX_ARGUMENT and command < MAX_COMMAND, (rule, argument, command)
