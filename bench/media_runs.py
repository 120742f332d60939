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

    Each command prints one JSON object (with ``work``, ``peak_mib`` and ``seconds``, the
    media's length as :func:`bidstrain.stimuli.media.probe` measures it); ``process``,
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


def print_table(results: dict[str, list[dict]]) -> None:
    """The media's length, then a Markdown table of each method's median work (s),
    whole-process time (s), real-time factor (the media's length over the work) and
    peak RSS (MiB)."""
    seconds = next(iter(results.values()))[0]["seconds"]
    print(f"media: {seconds:.2f} s")
    print("| method | work (s) | process (s) | real-time factor, work | peak RSS (MiB) |")
    print("|---|---|---|---|---|")
    for method, runs in results.items():
        work, process, peak = (
            statistics.median(run[key] for run in runs) for key in ("work", "process", "peak_mib")
        )
        print(f"| {method} | {work:.2f} | {process:.2f} | {seconds / work:.1f}x | {peak:.0f} |")
