"""Checkpoints: written atomically, found again only for the same training configuration.

A checkpoint holds the model, optimizer and scheduler states, the
:class:`~bidstrain.train.state.TrainState` (optimizer step, epoch, batch groups consumed in
that epoch, skipped steps, world size) and the hash of the configuration that produced
it; no RNG state: the batch order is a function of seed and epoch, the token masks of
seed, step, rank and micro-batch (:func:`bidstrain.train.model.mask_generator`). Files are
``<dir>/step-<step>.pt``; the two newest are kept.

The hash covers the ``train`` keys that determine the weights
(:func:`bidstrain.config.train_keys` ``("hashed")``) and the store lists; the world size
is not hashed but checked on resume (:func:`check_world_size`), since a run on another
number of GPUs must say so rather than silently start over.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from bidstrain.atomic import atomic_path
from bidstrain.config import train_keys
from bidstrain.errors import BidstrainError

LOG = logging.getLogger("bidstrain.train")
KEEP = 2
REQUIRED_KEYS = ("model", "optimizer", "scheduler", "train_state", "config_hash")


def config_hash(train_config: Mapping[str, Any], stores: Mapping[str, Any]) -> str:
    """Hash of everything that determines the trained weights: the ``train`` settings that
    enter it (``train_keys("hashed")``) and the store lists."""
    hashed = set(train_keys("hashed"))
    relevant = {k: v for k, v in train_config.items() if k in hashed}
    text = json.dumps({"train": relevant, "stores": stores}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def save(directory: str | Path, state: Mapping[str, Any]) -> Path:
    """Write ``state`` to ``<directory>/step-<step>.pt`` (the step of its ``train_state``)
    atomically and keep only the :data:`KEEP` newest checkpoints."""
    directory = Path(directory)
    path = directory / f"step-{state['train_state']['step']:08d}.pt"
    with atomic_path(path) as tmp:
        torch.save(dict(state), tmp)
    for old in sorted(directory.glob("step-*.pt"))[:-KEEP]:
        old.unlink()
    return path


def load_latest(directory: str | Path, expected_hash: str) -> dict[str, Any] | None:
    """The newest readable checkpoint of the configuration ``expected_hash``, or None.

    Unreadable or incomplete files, and checkpoints of another configuration, are skipped
    with a warning (never loaded: resuming someone else's weights would be silent).
    """
    for path in sorted(Path(directory).glob("step-*.pt"), reverse=True):
        try:
            state = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as error:  # any unreadable file is skipped, and said so
            LOG.warning("ignoring unreadable checkpoint %s: %s", path, error)
            continue
        missing = [key for key in REQUIRED_KEYS if key not in state]
        if missing:
            LOG.warning("ignoring incomplete checkpoint %s (missing %s)", path, missing)
        elif state["config_hash"] != expected_hash:
            LOG.warning(
                "ignoring checkpoint %s: it was written with another training configuration "
                "(hash %s, now %s); training starts from scratch",
                path,
                state["config_hash"],
                expected_hash,
            )
        else:
            state["path"] = path
            return state
    return None


def check_world_size(state: Mapping[str, Any], world_size: int, directory: str | Path) -> None:
    """Refuse to resume ``state`` (from :func:`load_latest`) with another world size.

    The batch order, the position in the epoch and the planned schedule depend on the
    number of ranks, so continuing on another number would not be the same training.

    Raises
    ------
    BidstrainError
        Naming both world sizes and what to do.
    """
    saved = state["train_state"]["world_size"]
    if saved != world_size:
        raise BidstrainError(
            f"{state['path']} was written by a run with world size {saved} (ranks = nodes x "
            f"GPUs per node), and this run has world size {world_size}: it cannot continue "
            f"that training exactly. Set the world size back to {saved} (train.gpus, "
            f"train.nodes, BIDSTRAIN_TRAIN_GPUS) to resume, or delete {directory} to train "
            "from scratch with the new one"
        )
