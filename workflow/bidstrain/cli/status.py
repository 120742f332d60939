"""What a run of the workflow in a study folder is doing: ``bidstrain status``.

Snakemake writes every run's log to ``.snakemake/log/<time>.snakemake.log`` in the study
folder: each job as it starts (its rule, ``jobid`` and ``log`` files), ``Finished jobid:
N`` when it ends, an ``Error in rule`` block when it fails, the count of steps done, and
its end (``Complete log(s):``, or ``Nothing to be done`` for a run that found every
output up to date).
:func:`read_run` reads the newest run's; :func:`describe` shows each started job that has
not finished with the last line of its own log (training writes its progress there).

``--report``, ``--summary``, ``--rulegraph``, ``--dag`` and ``--lint`` write logs there
too, which run nothing: a log is a run's when it opens with Snakemake's banner of an
execution (``SNAKEMAKE``, then the command), starts a job, or ends.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path

_START = re.compile(r"^(?:local)?rule (\w+):$")
_FIELD = re.compile(r"^    (\w+): (.*)$")
_FINISHED = re.compile(r"^Finished jobid: (\d+)")
_ERROR = re.compile(r"^Error in rule (\w+):$")
_PROGRESS = re.compile(r"^\d+ of \d+ steps \(.+\) done$")
_TIME = re.compile(r"^\[(.+)\]$")
_ENDED = ("Complete log(s):", "Nothing to be done")
_BANNER = "SNAKEMAKE"


@dataclass
class Job:
    """One job a run started."""

    jobid: str
    rule: str
    logs: list[str]
    started: str  # Snakemake's time stamp, as printed


@dataclass
class Run:
    """What a Snakemake log says of its run."""

    path: Path
    jobs: dict[str, Job] = field(default_factory=dict)
    finished: set[str] = field(default_factory=set)
    failed: set[str] = field(default_factory=set)
    progress: str = ""
    ended: bool = False
    banner: bool = False

    @property
    def executes(self) -> bool:
        """Whether the log is an execution's (see the module docstring)."""
        return self.banner or self.ended or bool(self.jobs) or bool(self.progress)

    @property
    def running(self) -> list[Job]:
        """Jobs started (or submitted) and neither finished nor failed."""
        done = self.finished | self.failed
        return [job for jobid, job in self.jobs.items() if jobid not in done]


def newest_log(study: Path) -> Path | None:
    """The log of the newest Snakemake run in ``study`` (the newest log that
    :attr:`Run.executes`), or None."""
    logs = sorted((study / ".snakemake" / "log").glob("*.snakemake.log"))
    return next((path for path in reversed(logs) if read_run(path).executes), None)


def read_run(path: Path) -> Run:
    """Parse a Snakemake run log (see the module docstring)."""
    run = Run(path)
    block: dict[str, str] | None = None
    stamp = ""
    for line in path.read_text(errors="replace").splitlines():
        if block is not None and (match := _FIELD.match(line)):
            block.setdefault(match.group(1), match.group(2))
            continue
        if block is not None:
            _close(run, block)
            block = None
        if match := _TIME.match(line):
            stamp = match.group(1)
        elif match := _START.match(line):
            block = {"kind": "start", "rule": match.group(1), "stamp": stamp}
        elif match := _ERROR.match(line):
            block = {"kind": "error", "rule": match.group(1)}
        elif match := _FINISHED.match(line):
            run.finished.add(match.group(1))
        elif _PROGRESS.match(line):
            run.progress = line
        elif line.startswith(_ENDED):
            run.ended = True
        elif line == _BANNER:
            run.banner = True
    if block is not None:
        _close(run, block)
    return run


def _close(run: Run, block: dict[str, str]) -> None:
    jobid = block.get("jobid")
    if jobid is None:
        return
    if block["kind"] == "error":
        run.failed.add(jobid)
        return
    logs = block.get("log", "").removesuffix(" (check log file(s) for error details)")
    run.jobs[jobid] = Job(
        jobid, block["rule"], [p for p in logs.split(", ") if p], block.get("stamp", "")
    )


def last_line(path: Path) -> str:
    """The last non-empty line of a text file (its last 8 KiB), or ``""``.

    A progress bar that rewrites its line with carriage returns shows its latest state.
    """
    try:
        with open(path, "rb") as handle:
            handle.seek(0, 2)
            handle.seek(max(0, handle.tell() - 8192))
            tail = handle.read().decode(errors="replace")
    except OSError:
        return ""
    lines = [part.strip() for part in re.split(r"[\r\n]", tail) if part.strip()]
    return lines[-1] if lines else ""


def describe(study: Path, now: float | None = None) -> str:
    """The status of the newest run in ``study``: whether it has ended, its steps, and
    every job not finished with the last line of its log (and how long ago the log was
    written).

    Parameters
    ----------
    study : Path
        The study folder (Snakemake's working directory).
    now : float, optional
        The current time (seconds since the epoch), for the log ages.
    """
    path = newest_log(study)
    if path is None:
        return f"no run of the workflow in {study} yet (no .snakemake/log/)\n"
    run = read_run(path)
    now = time.time() if now is None else now
    state = "ended" if run.ended else "in progress"
    lines = [f"run {path.name.removesuffix('.snakemake.log')}: {state}"]
    if run.progress:
        lines.append(run.progress)
    sections = [("failed", [run.jobs[j] for j in sorted(run.failed) if j in run.jobs])]
    sections.insert(0, ("running" if not run.ended else "left unfinished", run.running))
    for title, jobs in sections:
        if not jobs:
            continue
        lines.append(f"{title}:")
        for job in jobs:
            lines.append(f"  {job.rule} (job {job.jobid}, started {job.started})")
            for log in job.logs:
                lines.append(f"    {log}{_age(study / log, now)}")
                if text := last_line(study / log):
                    lines.append(f"      {text}")
    return "\n".join(lines) + "\n"


def _age(path: Path, now: float) -> str:
    try:
        seconds = max(0, int(now - path.stat().st_mtime))
    except OSError:
        return " (not written yet)"
    return f" (written {seconds} s ago)"


def follow(study: Path, interval: float = 5.0) -> None:
    """Print :func:`describe` whenever it changes (log ages aside) until the run ends."""
    shown = None
    while True:
        text = describe(study)
        key = re.sub(r" \(written \d+ s ago\)", "", text)
        if key != shown:
            print(text, flush=True)
            shown = key
        path = newest_log(study)
        if path is None or read_run(path).ended:
            return
        time.sleep(interval)
