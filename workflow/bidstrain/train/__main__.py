"""Command line of the training stage: ``python -m bidstrain.train`` (or under ``torchrun``).

::

    python -m bidstrain.train --settings results/plan/<experiment>/train.json \\
        --stores results/train/demo/stores.json --world-size 1 \\
        --model-out results/train/demo/model.pt --model-json-out results/train/demo/model.json \\
        --metrics-out results/train/demo/metrics.jsonl \\
        --checkpoint-dir results/train/demo/checkpoints

``--settings`` names a JSON file of the ``train`` section (the plan writes it at parse
time; keys it leaves out take their schema defaults). ``--stores`` names a JSON file
``{"training": {modality: [store, ...]}, "validation": {modality: [store, ...]}}`` (other
keys are ignored; ``validation`` may be missing): the lists grow with the cohort, and a
command line must not. ``--world-size`` is the number of
ranks the workflow planned (nodes x GPUs per node, 1 without torchrun); the run stops when
the real one differs.

Exit status: 0 when training finished, 1 on bad input (``bidstrain: error: ...``), and
75 (``EX_TEMPFAIL``) after SIGTERM/SIGUSR1 once the checkpoint is written: run the same
command again to resume. Tests stop it at a given step through the environment variables
documented in :mod:`bidstrain.train.stop`.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from bidstrain.config import read_train_settings
from bidstrain.errors import BidstrainError, run_cli
from bidstrain.train.loop import Interrupted, train
from bidstrain.train.stop import EXIT_INTERRUPTED


def read_stores(path: str | Path) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """The training and validation store lists of a ``--stores`` file.

    Raises
    ------
    BidstrainError
        When the file is missing, not JSON, or not ``{"training": {modality: [path, ...]},
        "validation": {...}}``.
    """
    try:
        content = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise BidstrainError(f"cannot read the store lists: {error}", path=path) from None
    lists = []
    for key in ("training", "validation"):
        value = content.get(key, {}) if isinstance(content, Mapping) else None
        if not _is_store_lists(value) or (key == "training" and not value):
            raise BidstrainError(
                f'"{key}" must map each modality to a list of store paths, got {value!r:.200}',
                path=path,
            )
        lists.append({modality: list(stores) for modality, stores in value.items()})
    return lists[0], lists[1]


def read_table_list(path: str | Path) -> list[str]:
    """The normalize tables a ``--stores`` file lists under ``tables`` (none when absent):
    the volume counts of their stores, read without opening the stores."""
    content = json.loads(Path(path).read_text())
    tables = content.get("tables", [])
    if not (isinstance(tables, list) and all(isinstance(t, str) for t in tables)):
        raise BidstrainError(f'"tables" must be a list of paths, got {tables!r:.200}', path=path)
    return tables


def read_parcellation(path: str | Path) -> dict[str, str] | None:
    """The ``parcellation`` of a ``--stores`` file (``{"name", "checksum"}`` of the atlas
    the plan found; None when absent), recorded in ``model.json``."""
    value = json.loads(Path(path).read_text()).get("parcellation")
    if value is not None and not (
        isinstance(value, Mapping) and {"name", "checksum"} <= set(value)
    ):
        raise BidstrainError(
            f'"parcellation" must be {{"name", "checksum"}} or null, got {value!r:.200}',
            path=path,
        )
    return None if value is None else {"name": value["name"], "checksum": value["checksum"]}


def read_stimuli(path: str | Path) -> dict[str, dict[str, str]]:
    """The ``stimuli`` of a ``--stores`` file: ``{BOLD store: {kind: aligned store}}``
    for ``train.stimuli`` (empty when absent)."""
    value = json.loads(Path(path).read_text()).get("stimuli") or {}
    if not (
        isinstance(value, Mapping)
        and all(
            isinstance(kinds, Mapping) and all(isinstance(p, str) for p in kinds.values())
            for kinds in value.values()
        )
    ):
        raise BidstrainError(
            f'"stimuli" must map BOLD stores to {{kind: aligned store}}, got {value!r:.200}',
            path=path,
        )
    return {bold: dict(kinds) for bold, kinds in value.items()}


def _is_store_lists(value) -> bool:
    return isinstance(value, Mapping) and all(
        isinstance(stores, list) and all(isinstance(s, str) for s in stores)
        for stores in value.values()
    )


def main(argv: Sequence[str] | None = None) -> None:
    """Parse the arguments and train."""
    parser = argparse.ArgumentParser(prog="python -m bidstrain.train", description=__doc__)
    parser.add_argument("--settings", required=True, help="JSON file: the train section")
    parser.add_argument(
        "--stores", required=True, help='JSON file {"training": {...}, "validation": {...}}'
    )
    parser.add_argument("--world-size", type=int, required=True, help="ranks the workflow planned")
    parser.add_argument("--model-out", required=True)
    parser.add_argument("--model-json-out", required=True, help="model.json: the model's inputs")
    parser.add_argument("--metrics-out", required=True)
    parser.add_argument("--checkpoint-dir", required=True)
    args = parser.parse_args(argv)
    training, validation = read_stores(args.stores)
    try:
        train(
            read_train_settings(args.settings),
            training,
            validation,
            model_out=args.model_out,
            model_json_out=args.model_json_out,
            metrics_out=args.metrics_out,
            checkpoint_dir=args.checkpoint_dir,
            world_size=args.world_size,
            tables=read_table_list(args.stores),
            parcellation=read_parcellation(args.stores),
            stimuli=read_stimuli(args.stores),
        )
    except Interrupted as interrupted:
        logging.getLogger("bidstrain.train").warning("%s", interrupted)
        sys.exit(EXIT_INTERRUPTED)


if __name__ == "__main__":
    run_cli(main)
