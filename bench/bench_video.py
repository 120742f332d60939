"""Benchmark per-TR video features of a 480p film: real-time factor and peak RSS, one core.

Ours streams (:func:`bidstrain.stimuli.video.video_features`): each frame is decoded,
resized by FFmpeg's scaler to ``--size`` grey and added to its TR's running sum. Two
peers, written as a user would with the same library (PyAV):

``peer-resized``
    decode every frame, resized the same way, into a list; stack; average each TR
    (the same output as ours, checked);
``peer-full``
    decode every frame at full resolution (grey) into a list; stack; average each TR
    (what most scripts do: full frames, resized afterwards if at all);
``floor``
    decode every frame and drop it: no method that reads every frame can be faster, so
    this is the ceiling of the real-time factor on the machine.

Ours and ``peer-resized`` must give the same features to the last bit (their SHA-256 is
compared; the bench exits with an error where they differ).

Each measurement is a fresh process pinned to one core (``sched_setaffinity``): ``work``
is the wall time of decoding and averaging (after the imports), ``process`` the whole
process's wall time (start-up and imports included), ``peak`` the process's peak RSS
(``getrusage``), the real-time factor the film's duration over ``work`` (times faster
than real time). Methods are interleaved within each repeat; medians are printed.

    PYTHONPATH=workflow .venv/bin/python bench/bench_video.py --seconds 60 --repeats 3
    PYTHONPATH=workflow .venv/bin/python bench/bench_video.py --seconds 60 --repeats 3 \
        --size 320 240 --film /tmp/film480p.mp4
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from media_runs import measure, print_table
from process_memory import peak_rss_mib

METHODS = ("ours", "peer-resized", "peer-full", "floor")


def make_film(path: Path, seconds: float, fps: int = 25, size=(854, 480)) -> None:
    """A 480p H.264 film: moving sinusoidal gratings, a new brightness every 2 s, noise."""
    import av

    width, height = size
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "veryfast", "crf": "23"}
        for index in range(round(seconds * fps)):
            level = 60 + 120 * ((index // (2 * fps)) % 2)
            grating = 40 * np.sin((x + 4 * index) / 15) * np.cos((y - 2 * index) / 25)
            grey = level + grating + rng.normal(0, 4, (height, width))
            pixels = np.clip(grey, 0, 255).astype(np.uint8)
            frame = av.VideoFrame.from_ndarray(np.repeat(pixels[..., None], 3, 2), "rgb24")
            frame.pts = index
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


def _work(method: str, film: str, tr: float, size: tuple[int, int]) -> dict:
    """Run one method in this process (pinned to one core) and measure it."""
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    import av
    from bidstrain.stimuli.media import probe
    from bidstrain.stimuli.video import video_features

    start = time.perf_counter()
    if method == "ours":
        bins = np.stack(list(video_features(film, tr, size, "grey")))
    elif method == "floor":
        with av.open(film) as container:
            for _ in container.decode(container.streams.video[0]):
                pass
        bins = np.zeros((0,))
    else:
        with av.open(film) as container:
            stream = container.streams.video[0]
            if method == "peer-resized":
                kwargs = {"width": size[0], "height": size[1], "format": "gray"}
            else:
                kwargs = {"format": "gray"}
            frames, times = [], []
            for frame in container.decode(stream):
                frames.append(frame.to_ndarray(**kwargs))
                times.append(frame.time)
        movie = np.stack(frames)  # what a user's script then averages
        index = np.floor(np.array(times) / tr + 1e-9).astype(int)
        bins = np.stack([movie[index == k].mean(axis=0) for k in range(index.max() + 1)])
    work = time.perf_counter() - start
    peak = peak_rss_mib()
    digest = hashlib.sha256(bins.tobytes()).hexdigest()
    return {"work": work, "peak_mib": peak, "seconds": probe(film).duration,
            "bins": bins.shape[0], "sha256": digest,
            "checksum": float(bins.mean()) if bins.size else None}  # fmt: skip


def _baseline() -> float:
    """Peak RSS (MiB) of a process that only imports what the methods import."""
    code = f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); " \
           "import av, numpy, process_memory; import bidstrain.stimuli.video; " \
           "print(process_memory.peak_rss_mib())"  # fmt: skip
    return float(subprocess.run([sys.executable, "-c", code], capture_output=True,
                                text=True, check=True).stdout)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tr", type=float, default=2.0)
    parser.add_argument("--size", type=int, nargs=2, default=(64, 48))
    parser.add_argument("--film", type=Path, help="reuse (or write once) this film")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--one", nargs=2, metavar=("METHOD", "FILM"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(_work(args.one[0], args.one[1], args.tr, tuple(args.size))))
        return
    with tempfile.TemporaryDirectory() as tmp:
        film = args.film or Path(tmp) / "film480p.mp4"
        start = time.perf_counter()
        if not film.is_file():
            make_film(film, args.seconds)
        print(f"film: {film.stat().st_size / 2**20:.1f} MiB, ready in "
              f"{time.perf_counter() - start:.1f} s (written: {args.seconds:g} s 854x480 "
              "25 fps H.264)")  # fmt: skip
        results = measure(
            args.methods,
            args.repeats,
            lambda method: [
                sys.executable,
                __file__,
                "--one",
                method,
                str(film),
                "--tr",
                str(args.tr),
                "--size",
                *map(str, args.size),
            ],
        )
        print(f"baseline peak RSS (imports only): {_baseline():.0f} MiB")
        print_table(results)
        print("TRs:", {method: runs[0]["bins"] for method, runs in results.items()})
        checksums = {method: runs[0]["checksum"] for method, runs in results.items()}
        print("mean feature:", checksums)
        digests = [results[m][0]["sha256"] for m in ("ours", "peer-resized") if m in results]
        if len(digests) == 2 and digests[0] != digests[1]:
            sys.exit("ours and peer-resized differ: the features are not the same")
        if len(digests) == 2:
            print("ours and peer-resized: identical features (SHA-256)")


if __name__ == "__main__":
    main()
