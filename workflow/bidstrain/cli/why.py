"""Why a job reruns: the settings behind Snakemake's "Params have changed" reasons.

A job reads its settings and lists from a snapshot of a plan file, named by the hash of
its content (:func:`bidstrain.paths.plan_snapshot`), and that path is the job's param:
Snakemake reruns the job when its snapshot is not the one its outputs were made with, and
its reason names both (``before: '<snapshot>' now: '<snapshot>'``), hashes only.
:class:`ParamsReasons` collects those pairs from Snakemake's output and says what differs
between each pair's files, key by key (:func:`bidstrain.config.setting_changes`), what
``bidstrain dry-run`` prints after Snakemake's summary.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from bidstrain.config import setting_changes
from bidstrain.paths import PLAN_SNAPSHOTS

#: A snapshot's path in a reason: its hash, then the plan file's name.
SNAPSHOT = re.compile(re.escape(PLAN_SNAPSHOTS) + r"/[0-9a-f]+-([^',\s]+)")
#: Files whose changes are told; the rest are counted.
SHOWN_FILES = 20


class ParamsReasons:
    """The snapshot pairs of the params changes in Snakemake's output: ``(plan file,
    before, now)``, each once."""

    def __init__(self) -> None:
        self.changed: set[tuple[str, str, str]] = set()

    def add(self, line: str) -> None:
        """Read one line of Snakemake's output (a reason names both sides on one line)."""
        before, separator, now = line.rpartition(" now: ")
        if not separator or "before: " not in before:
            return
        old = {m.group(1): m.group(0) for m in SNAPSHOT.finditer(before)}
        for match in SNAPSHOT.finditer(now):
            if match.group(1) in old:
                self.changed.add((match.group(1), old[match.group(1)], match.group(0)))

    def explain(self, study: Path) -> list[str]:
        """What differs between each pair's files (paths relative to ``study``): a
        heading, then one line per difference, ``<plan file>: <difference>``, by plan file;
        empty when no params changed."""
        if not self.changed:
            return []
        lines = ["bidstrain: the settings that changed since these jobs' outputs were made:"]
        changed = sorted(self.changed)
        for name, before, now in changed[:SHOWN_FILES]:
            lines += [f"  {name}: {change}" for change in _file_changes(study, before, now)]
        if len(changed) > SHOWN_FILES:
            lines.append(f"  and {len(changed) - SHOWN_FILES} more plan files")
        return lines


def _file_changes(study: Path, before: str, now: str) -> list[str]:
    """The differences between two snapshots: keys of JSON files, lines of the others
    (argument files: one value per line)."""
    values = []
    for path in (before, now):
        try:
            text = (study / path).read_text()
            values.append(json.loads(text) if path.endswith(".json") else text.splitlines())
        except (OSError, ValueError) as error:
            return [f"{path} cannot be read ({error.__class__.__name__}): not compared"]
    return setting_changes(*values) or ["the same settings, written otherwise"]
