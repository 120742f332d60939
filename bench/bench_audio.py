"""Benchmark per-TR log-mel features of a long sound: real-time factor and peak RSS, one core.

Ours streams (:func:`bidstrain.stimuli.audio.audio_features`): frames are decoded one at
a time, resampled to 16 kHz, averaged over the channels, cut into Hann windows and added
to their TR's running mean. The peer is what a user would write with the same library
(PyAV) and numpy: decode the whole sound (resampled the same way) into one array, then
the same spectrogram over all of it at once, then the mean of each TR (the same
features: the bench prints their largest difference from ours). ``floor`` decodes every
frame and drops it.

Each measurement is a fresh process pinned to one core: ``work`` is the wall time after
the imports, ``process`` the whole process's wall time (start-up and imports included),
``peak`` the process's peak RSS. Methods are interleaved within each
repeat; medians are printed.

    PYTHONPATH=workflow .venv/bin/python bench/bench_audio.py --seconds 600 --repeats 5
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
from media_runs import measure, print_table
from process_memory import peak_rss_mib

METHODS = ("ours", "peer", "floor")
TR = 2.0


def make_sound(path: Path, seconds: float, rate: int = 44100) -> None:
    """A stereo 44.1 kHz AAC sound: a new tone every 2 s, left and right a little apart,
    and noise."""
    import av

    rng = np.random.default_rng(0)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=rate)
        stream.layout = "stereo"
        for start in range(0, round(seconds * rate), 1024):
            t = (start + np.arange(1024)) / rate
            hz = 200 * 2 ** ((t // 2) % 6)
            left = 0.3 * np.sin(2 * np.pi * hz * t) + rng.normal(0, 0.01, t.size)
            samples = np.stack([left, 0.8 * left]).astype(np.float32)
            frame = av.AudioFrame.from_ndarray(samples, "fltp", "stereo")
            frame.sample_rate, frame.pts, frame.time_base = rate, start, Fraction(1, rate)
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


def _work(method: str, sound: str) -> dict:
    """Run one method in this process (pinned to one core) and measure it."""
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    import av
    from bidstrain.stimuli import audio
    from bidstrain.stimuli.media import probe

    rate, window, hop, n_mels = 16000, 0.025, 0.010, 40
    start = time.perf_counter()
    if method == "ours":
        bins = np.stack(list(audio.audio_features(sound, TR, n_mels, window, hop, rate)))
    elif method == "floor":
        with av.open(sound) as container:
            for _ in container.decode(container.streams.audio[0]):
                pass
        bins = np.zeros((0, n_mels))
    else:
        with av.open(sound) as container:
            resampler = av.AudioResampler(format="fltp", rate=rate)
            decoded = itertools.chain(container.decode(container.streams.audio[0]), [None])
            parts = [
                out.to_ndarray().mean(axis=0) for f in decoded for out in resampler.resample(f)
            ]
        samples = np.concatenate(parts).astype(np.float64)
        length, step = round(window * rate), round(hop * rate)
        taper = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(length) / length)
        filters = audio.mel_filterbank(rate, length, n_mels) / (length * np.sum(taper**2))
        windows = np.lib.stride_tricks.sliding_window_view(samples, length)[::step]
        mel = (np.abs(np.fft.rfft(windows * taper, axis=1)) ** 2) @ filters.T
        centres = (np.arange(len(mel)) * step + length / 2) / rate
        index = np.floor(centres / TR + 1e-9).astype(int)
        bins = np.log10(np.stack([mel[index == k].mean(0) for k in range(index.max() + 1)])
                        + audio.LOG_FLOOR)  # fmt: skip
    work = time.perf_counter() - start
    peak = peak_rss_mib()
    return {"work": work, "peak_mib": peak, "seconds": probe(sound).duration, "bins": bins.tolist()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=600.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sound", type=Path, help="reuse (or write once) this sound")
    parser.add_argument("--one", nargs=2, metavar=("METHOD", "SOUND"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(_work(*args.one)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        sound = args.sound or Path(tmp) / "sound.m4a"
        if not sound.is_file():
            make_sound(sound, args.seconds)
        print(
            f"sound: {sound.stat().st_size / 2**20:.1f} MiB (written: {args.seconds:g} s stereo "
            "44.1 kHz AAC)"
        )
        results = measure(
            METHODS,
            args.repeats,
            lambda method: [sys.executable, __file__, "--one", method, str(sound)],
        )
        print(f"load average after: {os.getloadavg()}")
        print_table(results)
        ours, peer = (np.array(results[m][0]["bins"]) for m in ("ours", "peer"))
        n = min(len(ours), len(peer))
        difference = np.abs(ours[:n] - peer[:n]).max()
        print(f"TRs: ours {len(ours)}, peer {len(peer)}; largest difference of the features "
              f"(log10 units) over the first {n}: {difference:.2e}")  # fmt: skip


if __name__ == "__main__":
    main()
