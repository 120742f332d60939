"""Command line of the training stage: ``python -m bidstrain.train`` (or under ``torchrun``).

::

    python -m bidstrain.train --config-json '{...train section...}' \\
        --train-stores-json '{"bold": [...], ...}' --validation-stores-json '{"bold": [...]}' \\
        --model-out results/train/demo/model.pt --metrics-out results/train/demo/metrics.jsonl \\
        --checkpoint-dir results/train/demo/checkpoints

Exit status: 0 when training finished, 1 on bad input (``bidstrain: error: ...``), and
75 (``EX_TEMPFAIL``) after SIGTERM/SIGUSR1 once the checkpoint is written: run the same
command again to resume.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence

from bidstrain.errors import run_cli
from bidstrain.train.loop import EXIT_INTERRUPTED, Interrupted, train


def main(argv: Sequence[str] | None = None) -> None:
    """Parse the arguments and train."""
    parser = argparse.ArgumentParser(prog="python -m bidstrain.train", description=__doc__)
    parser.add_argument("--config-json", required=True, help="the train section, as JSON")
    parser.add_argument("--train-stores-json", required=True, help="{modality: [store, ...]}")
    parser.add_argument("--validation-stores-json", default="{}", help="{modality: [store, ...]}")
    parser.add_argument(
        "--requested-gpus",
        type=int,
        help="GPUs the job asked for (default: train.gpus); logged when torch sees none",
    )
    parser.add_argument("--model-out", required=True)
    parser.add_argument("--metrics-out", required=True)
    parser.add_argument("--checkpoint-dir", required=True)
    args = parser.parse_args(argv)
    config = json.loads(args.config_json)
    try:
        train(
            config,
            json.loads(args.train_stores_json),
            json.loads(args.validation_stores_json),
            model_out=args.model_out,
            metrics_out=args.metrics_out,
            checkpoint_dir=args.checkpoint_dir,
            requested_gpus=args.requested_gpus,
        )
    except Interrupted as interrupted:
        logging.getLogger("bidstrain.train").warning("%s", interrupted)
        sys.exit(EXIT_INTERRUPTED)


if __name__ == "__main__":
    run_cli(main)
