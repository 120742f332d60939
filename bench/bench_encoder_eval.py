"""Benchmark the encoder in evaluation (validation, ``embed``): time and peak RSS, one core.

Methods, each on the same encoder (``bidstrain.train.encoder.Encoder``, seeded) and the
same random tokens:

``bidstrain``
    ``Encoder.forward`` in evaluation mode without gradients: the layers run as in
    training (torch's inference fast path switched off while it runs);
``fast-path``
    ``torch.nn.TransformerEncoder.forward`` on the same module, evaluation mode without
    gradients: torch's inference fast path, what a plain ``nn.TransformerEncoder`` runs;
``training``
    one training forward and backward pass of the same batch: what training needs, which
    validation should not exceed.

Each measurement is a fresh process pinned to one core: ``work`` is the median wall time
of three passes after a first one, ``process`` the whole process's wall time (start-up,
imports and the four passes), ``peak`` the process's peak RSS (``VmHWM``) and
``added`` the peak above the RSS the process had before the first pass (imports, model
and tokens). Methods are interleaved within each repeat; medians are printed, with the
largest difference between the outputs of ``bidstrain`` and ``fast-path``.

    PYTHONPATH=workflow .venv/bin/python bench/bench_encoder_eval.py --repeats 3
    PYTHONPATH=workflow .venv/bin/python bench/bench_encoder_eval.py --tokens 252 \\
        --dim 768 --depth 12 --heads 12 --batch 4
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from process_memory import peak_rss_mib, status_mib

METHODS = ("bidstrain", "fast-path", "training")


def _work(method: str, tokens: int, batch: int, dim: int, depth: int, heads: int) -> dict:
    """Run one method in this process (pinned to one core) and measure it."""
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    import torch
    from bidstrain.train.encoder import Encoder

    torch.set_num_threads(1)
    torch.manual_seed(0)
    encoder = Encoder(dim, depth, heads)
    inputs = torch.randn(batch, tokens, dim)
    before = status_mib("VmRSS")

    def run() -> torch.Tensor:
        if method == "training":
            encoder.train()
            out = encoder(inputs)
            out.square().mean().backward()
            return out.detach()
        encoder.eval()
        with torch.no_grad():
            if method == "fast-path":
                return torch.nn.TransformerEncoder.forward(encoder, inputs)
            return encoder(inputs)

    out = run()
    times = []
    for _ in range(3):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    peak = peak_rss_mib()
    return {
        "work": statistics.median(times),
        "peak_mib": peak,
        "added_mib": peak - before,
        "output": out.flatten()[:4096].tolist(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, nargs="+", default=[252, 4096])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--depth", type=int, default=2)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--one", nargs=2, metavar=("METHOD", "TOKENS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    shape = (args.batch, args.dim, args.depth, args.heads)
    if args.one:
        print(json.dumps(_work(args.one[0], int(args.one[1]), *shape)))
        return
    print(f"batch {args.batch}, width {args.dim}, {args.depth} layers, {args.heads} heads")
    print("| tokens | method | work (s) | process (s) | peak RSS (MiB) | added (MiB) |")
    print("|---|---|---|---|---|---|")
    for tokens in args.tokens:
        runs: dict[str, list[dict]] = {method: [] for method in METHODS}
        for _ in range(args.repeats):
            for method in METHODS:
                command = [sys.executable, __file__, "--one", method, str(tokens)]
                command += ["--batch", str(args.batch), "--dim", str(args.dim)]
                command += ["--depth", str(args.depth), "--heads", str(args.heads)]
                start = time.perf_counter()
                out = subprocess.run(command, capture_output=True, text=True, check=True)
                runs[method].append(
                    json.loads(out.stdout) | {"process": time.perf_counter() - start}
                )
        for method, measured in runs.items():
            work, process, peak, added = (
                statistics.median(run[key] for run in measured)
                for key in ("work", "process", "peak_mib", "added_mib")
            )
            print(
                f"| {tokens:,} | {method} | {work:.3f} | {process:.2f} | {peak:.0f} | {added:.0f} |"
            )
        ours, fast = runs["bidstrain"][0]["output"], runs["fast-path"][0]["output"]
        difference = max(abs(a - b) for a, b in zip(ours, fast, strict=True))
        print(f"| {tokens:,} | bidstrain against fast-path: max abs difference {difference:.1e} |")


if __name__ == "__main__":
    main()
