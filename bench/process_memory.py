"""Peak resident memory of a measured process, its own.

``getrusage(...).ru_maxrss`` is no measure of a bench's child alone: Linux carries the
parent's peak across fork and exec, so a bench that wrote its input (a film, stores)
before starting the measured processes would find its own peak in theirs. ``VmHWM``
belongs to the process's address space, which exec replaces.
"""

from __future__ import annotations

from pathlib import Path


def status_mib(field: str) -> float:
    """``field`` of ``/proc/self/status`` (``VmHWM``, ``VmRSS``...), in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def peak_rss_mib() -> float:
    """This process's peak resident memory since it started (``VmHWM``), in MiB."""
    return status_mib("VmHWM")
