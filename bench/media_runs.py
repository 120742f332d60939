"""Fresh-process measurements shared by the media benches (``bench_audio``,
``bench_video``): each method runs in its own process, the methods interleaved within
each repeat."""

from __future__ import annotations

import json
import statistics
import subprocess
import time
from collections.abc import Callable, Sequence


def measure(
    methods: Sequence[str], repeats: int, command_of: Callable[[str], list[str]]
) -> dict[str, list[dict]]:
    """Run ``command_of(method)`` for every method, ``repeats`` times, interleaved.

    Each command prints one JSON object (with ``work`` and ``peak_mib``); ``process``,
    the whole process's wall time, start-up and imports included, is added to it.
    """
    results: dict[str, list[dict]] = {method: [] for method in methods}
    for _ in range(repeats):
        for method in methods:
            start = time.perf_counter()
            out = subprocess.run(command_of(method), capture_output=True, text=True, check=True)
            process = time.perf_counter() - start
            results[method].append(json.loads(out.stdout) | {"process": process})
    return results


def medians(runs: list[dict]) -> tuple[float, float, float]:
    """The median work (s), whole-process time (s) and peak RSS (MiB) of a method's runs."""
    work, process, peak = (
        statistics.median(run[key] for run in runs) for key in ("work", "process", "peak_mib")
    )
    return work, process, peak
