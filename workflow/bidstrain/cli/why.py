"""Why a job reruns: the settings behind Snakemake's reasons that name plan files.

A job reads its settings and lists from a snapshot of a plan file, named by the hash of
its content (:func:`bidstrain.paths.plan_snapshot`), and that path is the job's param:
Snakemake reruns the job when its snapshot is not the one its outputs were made with, and
its reason names both (``before: '<snapshot>' now: '<snapshot>'``), hashes only. Some
jobs also take the plan file itself as an input (the alignment spec, the trainer's
stores, the manifest's arguments...): when its content changed, Snakemake's reason is
``Updated input files: <plan file>``, without the params (it reports the first reason it
finds), and the snapshot the outputs were made with is named by the checksum Snakemake
recorded for that input (its metadata of the job's first output).

:class:`RerunReasons` collects both from Snakemake's output and says what differs
between each pair of versions, key by key (:func:`bidstrain.config.setting_changes`),
what ``bidstrain dry-run`` prints after Snakemake's summary.
"""

from __future__ import annotations

import base64
import json
import os
import re
from pathlib import Path

from bidstrain.config import setting_changes
from bidstrain.paths import PLAN_SNAPSHOTS, RESULTS, plan_snapshot

#: A snapshot's path in a reason: its hash, then the plan file's name.
SNAPSHOT = re.compile(re.escape(PLAN_SNAPSHOTS) + r"/[0-9a-f]+-([^',\s]+)")
#: The plan's files (the snapshots among them are not inputs of any job).
PLAN_FILES = f"{RESULTS}/plan/"
UPDATED_INPUT = "Updated input files: "
#: Files whose changes are told; the rest are counted.
SHOWN_FILES = 20
#: Snakemake's metadata of each output file (its default, file persistence).
METADATA = Path(".snakemake") / "metadata"


class RerunReasons:
    """The plan files whose change reruns jobs, from Snakemake's output: the snapshot
    pairs of params changes (``(plan file, before, now)``, each once), and the plan files
    among updated inputs with the first output of their job."""

    def __init__(self) -> None:
        self.changed: set[tuple[str, str, str]] = set()
        #: ``{plan file: output}`` of the jobs whose reason names it as an updated input
        self.updated: dict[str, str] = {}
        self._output = ""

    def add(self, line: str) -> None:
        """Read one line of Snakemake's output (a reason names both sides on one line;
        a job's ``output:`` line comes before its reason)."""
        stripped = line.strip()
        if stripped.startswith("output: "):
            self._output = stripped.removeprefix("output: ").split(", ")[0]
        if UPDATED_INPUT in stripped:
            listed = stripped.split(UPDATED_INPUT, 1)[1].split(";")[0].split(", ")
            for path in listed:
                if path.startswith(PLAN_FILES) and not path.startswith(PLAN_SNAPSHOTS):
                    self.updated.setdefault(path, self._output)
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
        empty when no plan file changed."""
        pairs = set(self.changed)
        for path, output in self.updated.items():
            before = _recorded_snapshot(study, path, output)
            if before is not None:
                pairs.add((os.path.basename(path), before, path))
        if not pairs:
            return []
        lines = ["bidstrain: the settings that changed since these jobs' outputs were made:"]
        changed = sorted(pairs)
        for name, before, now in changed[:SHOWN_FILES]:
            lines += [f"  {name}: {change}" for change in _file_changes(study, before, now)]
        if len(changed) > SHOWN_FILES:
            lines.append(f"  and {len(changed) - SHOWN_FILES} more plan files")
        return lines


def _recorded_snapshot(study: Path, plan_file: str, output: str) -> str | None:
    """The snapshot of ``plan_file`` as it was when Snakemake made ``output`` (from the
    input checksum of its metadata record), or None when it has no readable record (a
    database persistence, an output made without it) or no such snapshot."""
    folder = study / METADATA
    try:
        name = base64.urlsafe_b64encode(output.encode()).decode()
        size = os.pathconf(folder, "PC_NAME_MAX") - 1  # as snakemake.persistence.file
        chunks = [name[i : i + size] for i in range(0, len(name), size)]
        record = folder.joinpath(*("@" + chunk for chunk in chunks[:-1]), chunks[-1])
        checksums = json.loads(record.read_text()).get("input_checksums") or {}
    except (OSError, ValueError):
        return None
    algorithm, _, digest = str(checksums.get(plan_file, "")).partition(":")
    snapshot = plan_snapshot(plan_file, digest[:16])
    return snapshot if algorithm == "sha256" and (study / snapshot).is_file() else None


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
