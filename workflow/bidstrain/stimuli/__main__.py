"""Command line: the per-TR features of one stimulus file into one feature store (a job of
rule ``stimulus_features``; one job per file, whatever the number of runs that used it).

::

    python -m bidstrain.stimuli --stimulus bids/stimuli/film.mp4 --tr 2.0 \\
        --out results/stimuli/film.mp4.zarr [--video-size 64 48 --video-colour grey
        --audio-n-mels 40 --audio-window 0.025 --audio-hop 0.010 --audio-rate 16000
        --text-method hashing
        --text-n-features 256 --text-embeddings vectors.tsv]
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

from bidstrain.config import StimulusFeatureConfig
from bidstrain.errors import run_cli
from bidstrain.stimuli.features import write_stimulus_store

log = logging.getLogger("bidstrain.stimuli")


def main(argv: Sequence[str] | None = None) -> None:
    """Parse the arguments and write the store."""
    defaults = StimulusFeatureConfig.defaults()
    parser = argparse.ArgumentParser(prog="python -m bidstrain.stimuli", description=__doc__)
    parser.add_argument("--stimulus", required=True, help="a film, sound or transcript")
    parser.add_argument("--tr", type=float, required=True, help="bin width in seconds")
    parser.add_argument("--out", required=True, help="the feature store (.zarr)")
    parser.add_argument("--video-size", type=int, nargs=2, default=defaults.video_size)
    parser.add_argument("--video-colour", choices=("grey", "rgb"), default=defaults.video_colour)
    parser.add_argument("--audio-n-mels", type=int, default=defaults.audio_n_mels)
    parser.add_argument("--audio-window", type=float, default=defaults.audio_window)
    parser.add_argument("--audio-hop", type=float, default=defaults.audio_hop)
    parser.add_argument("--audio-rate", type=int, default=defaults.audio_rate)
    parser.add_argument(
        "--text-method", choices=("hashing", "embeddings"), default=defaults.text_method
    )
    parser.add_argument("--text-embeddings", default=defaults.text_embeddings)
    parser.add_argument("--text-n-features", type=int, default=defaults.text_n_features)
    args = parser.parse_args(argv)
    settings = StimulusFeatureConfig(
        video_size=tuple(args.video_size),
        video_colour=args.video_colour,
        audio_n_mels=args.audio_n_mels,
        audio_window=args.audio_window,
        audio_hop=args.audio_hop,
        audio_rate=args.audio_rate,
        text_method=args.text_method,
        text_embeddings=args.text_embeddings,
        text_n_features=args.text_n_features,
    )
    meta = write_stimulus_store(args.stimulus, args.tr, settings, args.out)
    log.info("%s: %s features per TR of %g s -> %s", args.stimulus, meta.kinds, args.tr, args.out)


if __name__ == "__main__":
    run_cli(main)
