"""Checkpoints: written atomically, found again only for the same training configuration.

A checkpoint holds the model, optimizer and scheduler states, the position in training
(optimizer step, epoch, batch groups consumed in that epoch, skipped steps), the RNG
states (torch; the batch order itself is a function of seed and epoch), and
the hash of the configuration that produced it. Files are
``<dir>/step-<step>.pt``; the two newest are kept.
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

LOG = logging.getLogger("bidstrain.train")
KEEP = 2
# Keys of `train` that change nothing a checkpoint holds: resources, logging, I/O workers.
UNHASHED_KEYS = frozenset(
    {"experiment", "runtime", "mem_mb", "cpus", "num_workers", "log_every", "checkpoint_every"}
)
REQUIRED_KEYS = (
    "model",
    "optimizer",
    "scheduler",
    "step",
    "epoch",
    "position",
    "consecutive_skips",
    "skipped_steps",
    "rng",
    "config_hash",
)


def config_hash(train_config: Mapping[str, Any], stores: Mapping[str, Any]) -> str:
    """Hash of everything that determines the trained weights: the ``train`` settings
    (except :data:`UNHASHED_KEYS`) and the store lists."""
    relevant = {k: v for k, v in train_config.items() if k not in UNHASHED_KEYS}
    text = json.dumps({"train": relevant, "stores": stores}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def rng_state() -> dict[str, Any]:
    """The torch RNG states (CUDA too when available): the only global RNG training draws
    from (token masking); the batch order is a function of seed and epoch."""
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(directory: str | Path, state: Mapping[str, Any]) -> Path:
    """Write ``state`` to ``<directory>/step-<state['step']>.pt`` atomically and keep only
    the :data:`KEEP` newest checkpoints."""
    directory = Path(directory)
    path = directory / f"step-{state['step']:08d}.pt"
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
            return state
    return None
