"""Benchmark a training step with stimulus tokens beside BOLD: time and peak RSS, one core.

The model of ``train.stimuli: [video]`` at the default settings (BOLD on the 24^3 grid in
patches of 8: 27 tokens; the default 64x48 grey video at the default delays 2, 3 and 4
TRs: 9,216 features; width 64, 2 layers, 4 heads, single frames), one sample a step, cut
into tokens two ways:

``patch_features 256``
    the default: 36 video tokens of 256 features;
``patch_features 1``
    a token per feature (as BrainLM cuts parcels): 9,216 video tokens.

Each measurement is a fresh process pinned to one core: ``work`` is the median wall time
of three optimizer steps (forward with the masks, backward, AdamW) after a first one,
``process`` the whole process's wall time (start-up, imports and the four steps),
``peak`` the process's peak RSS (``VmHWM``). Settings are interleaved within each repeat;
medians are printed.

    PYTHONPATH=workflow .venv/bin/python bench/bench_stimulus_tokens.py --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from process_memory import peak_rss_mib

#: The default video (64 x 48 grey pixels) at the default three delays.
VIDEO_FEATURES = 64 * 48 * 3
SETTINGS = (256, 1)


def _work(patch_features: int, batch: int) -> dict:
    """One setting's steps in this process (pinned to one core), measured."""
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    import torch
    from bidstrain.config import TrainConfig
    from bidstrain.train.model import build_module

    torch.set_num_threads(1)
    torch.manual_seed(0)
    config = TrainConfig.with_defaults(
        {"stimuli": ["video"], "patch_features": patch_features, "batch_size": batch}
    )
    model = build_module(config, ["bold"], stimuli={"video": VIDEO_FEATURES}).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    data = {
        "bold": torch.randn(batch, 1, *config.model.shapes["bold"]),
        "video": torch.randn(batch, 1, VIDEO_FEATURES),
    }

    def step() -> float:
        optimizer.zero_grad()
        loss = model(data).loss
        loss.backward()
        optimizer.step()
        return float(loss)

    step()
    times = []
    for _ in range(3):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    tokens = sum(sum(sequence.values()) for sequence in model.sequence_tokens())
    return {"work": statistics.median(times), "peak_mib": peak_rss_mib(), "tokens": tokens}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one is not None:
        print(json.dumps(_work(args.one, args.batch)))
        return
    runs: dict[int, list[dict]] = {setting: [] for setting in SETTINGS}
    for _ in range(args.repeats):
        for setting in SETTINGS:
            command = [sys.executable, __file__, "--one", str(setting), "--batch", str(args.batch)]
            start = time.perf_counter()
            out = subprocess.run(command, capture_output=True, text=True, check=True)
            runs[setting].append(json.loads(out.stdout) | {"process": time.perf_counter() - start})
    print(f"batch {args.batch}; {VIDEO_FEATURES:,} video features")
    print("| train.patch_features | tokens | step (s) | process (s) | peak RSS (MiB) |")
    print("|---|---|---|---|---|")
    for setting, measured in runs.items():
        work, process, peak = (
            statistics.median(run[key] for run in measured)
            for key in ("work", "process", "peak_mib")
        )
        tokens = measured[0]["tokens"]
        print(f"| {setting} | {tokens:,} | {work:.3f} | {process:.2f} | {peak:.0f} |")


if __name__ == "__main__":
    main()
