"""Every job of the DAG can start, whatever the number of subjects: lists that grow with
the subjects reach jobs through files, so no command line grows with them.

The kernel limits one argument to 131,072 bytes (MAX_ARG_STRLEN) and all of them to about
2 MB: at 1,000 subjects a list of stores on a command line was already over the first.
"""

from __future__ import annotations

import re
import shlex

import pytest
from bidstrain.demo.generate import make_empty_dataset
from bidstrain.plan import figure_group_of
from conftest import REPO, run_snakemake

pytestmark = pytest.mark.integration

MAX_ARGUMENT = 100_000
MAX_COMMAND = 1_000_000
#: Normalization figure groups of the dry runs (config report.normalize_groups).
GROUPS = 8
RULE = re.compile(r"^\s*(?:local)?rule (\w+):$")


@pytest.fixture(scope="module")
def dry_runs(tmp_path_factory) -> dict[int, str]:
    """``snakemake -n -p all`` over empty-image datasets of 30 and 90 subjects, in 8
    normalization figure groups: the printed listing, by subject count."""
    tmp_path = tmp_path_factory.mktemp("dag")
    groups = tmp_path / "groups.yaml"
    groups.write_text(f"report:\n  normalize_groups: {GROUPS}\n")
    configs = [str(REPO / "config" / "config.yaml"), str(groups)]
    listings = {}
    for n_subjects in (30, 90):
        bids = make_empty_dataset(tmp_path / f"bids{n_subjects}", n_subjects)
        workdir = tmp_path / f"work{n_subjects}"
        listings[n_subjects] = run_snakemake(
            workdir, "-n", "-p", "all", "--configfile", *configs, config={"bids_dir": bids}
        ).stdout
    return listings


def commands_of(listing: str) -> dict[str, list[list[str]]]:
    """The shell command of every job of a dry run's listing, split into arguments, by
    rule."""
    commands: dict[str, list[list[str]]] = {}
    rule = None
    for line in listing.splitlines():
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


def test_no_command_grows_with_the_number_of_subjects(dry_runs):
    """The longest argument and command of every rule are the same at 30 and 90 subjects
    (labels have the same width): at 10,000 subjects they are what they are here, and here
    they are far below the kernel's limits."""
    small = _longest(commands_of(dry_runs[30]))
    large = _longest(commands_of(dry_runs[90]))
    assert set(small) == set(large) >= {"ingest", "normalize_subject", "checks", "train"}
    assert small == large
    for rule, (argument, command) in large.items():
        assert argument < MAX_ARGUMENT and command < MAX_COMMAND, (rule, argument, command)


def test_the_dag_grows_by_one_job_per_subject_and_the_figure_groups(dry_runs):
    """Per subject one normalize job; the normalization figures in one job per figure
    group that has subjects (at most report.normalize_groups); the other jobs do not
    depend on the number of subjects."""
    counts = {}
    for n_subjects, listing in dry_runs.items():
        counts[n_subjects] = {
            rule: int(count) for rule, count in re.findall(r"^(\w+)\s+(\d+)$", listing, re.M)
        }
        groups = {
            figure_group_of(f"{i:04d}", GROUPS) for i in range(n_subjects)
        }  # make_empty_dataset's labels
        assert counts[n_subjects]["normalize_subject"] == n_subjects
        assert counts[n_subjects]["report_normalize"] == len(groups) <= GROUPS
    constant = {n: c["total"] - n - c["report_normalize"] for n, c in counts.items()}
    assert constant[30] == constant[90] < 20, counts
    assert counts[90]["report_normalize"] == GROUPS  # every group has subjects at 90
