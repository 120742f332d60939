"""Checkpoints: written atomically, resumed only by the same run, set aside otherwise.

A checkpoint holds the model, optimizer and scheduler states, the
:class:`~bidstrain.train.state.TrainState` (optimizer step, epoch, batch groups consumed in
that epoch, skipped steps, world size), the run it belongs to (:func:`run_identity`) and
that run's hash (``config_hash``, :func:`run_hash`); no RNG state: the batch order is a
function of seed and epoch, the token masks of seed, step, rank and micro-batch
(:func:`bidstrain.train.model.mask_generator`). Files are ``<dir>/step-<step>.pt``; the two
newest are kept.

A run is defined by the ``train`` keys that determine the weights
(:func:`bidstrain.config.train_keys` ``("hashed")``), the definition of the losses
(:data:`bidstrain.train.losses.DEFINITION`), the world size (the batch order and
the schedule depend on it), the training and validation store lists, and the content of
each of those stores: its checksum (:func:`bidstrain.io.store.store_checksum`, computed as
the store was written), not when it was written. A normalize, average or stimulus
alignment job rerun on unchanged data rewrites its stores with the same checksums, and the
run resumes; a rerun
on changed data rewrites them with others, and it does not. It resumes from a checkpoint
only when the hashes agree: a SLURM requeue, a restart after preemption, a rerun of the
same job, or any of these after the stores were rewritten with the same content. Anything
else starts from step 0 after :func:`set_aside` moved the folder's contents to a sibling folder
``<dir>-<old hash>`` (kept, loadable with :func:`load_latest`) and logged which part of
the run changed.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import pickle
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from bidstrain.config import TrainConfig, named, setting_changes
from bidstrain.errors import BidstrainError
from bidstrain.io.atomic import atomic_path
from bidstrain.io.store import store_checksum
from bidstrain.train.lock import LOCK_FILE
from bidstrain.train.losses import DEFINITION, UNRECORDED_DEFINITION

LOG = logging.getLogger("bidstrain.train")
KEEP = 2
REQUIRED_KEYS = ("model", "optimizer", "scheduler", "train_state", "config_hash")
#: A store's root metadata file (Zarr v3). A store is written whole and renamed into place
#: (:func:`bidstrain.io.store.create_store`), so this file's modification time says when:
#: what stands for the content of a store without a ``checksum`` attribute.
STORE_METADATA = "zarr.json"


def run_identity(
    config: TrainConfig,
    world_size: int,
    training: Mapping[str, Sequence[str]],
    validation: Mapping[str, Sequence[str]],
    stimuli: Mapping[str, Mapping[str, Sequence[str]]] | None = None,
) -> dict[str, Any]:
    """What defines a run: what a checkpoint must share with a run to be resumed by it.

    Parameters
    ----------
    config : TrainConfig
        The ``train`` settings; only the keys that determine the weights are kept.
    world_size : int
        Ranks of the run.
    training, validation : mapping
        ``{modality: [store path, ...]}`` (modalities without stores are dropped).
    stimuli : mapping, optional
        ``{"training" | "validation": {kind: [aligned store, ...]}}``: the stimulus
        features of ``train.stimuli`` (recorded only when given).

    Returns
    -------
    dict
        ``train`` (settings), ``loss_definition``, ``world_size``, ``training`` and
        ``validation`` (the lists), ``stimuli`` (with ``train.stimuli``), ``content``
        (``{store: its checksum}``; ``written <ns>``, the modification time of its
        ``zarr.json``, for a store without a checksum, and for an aligned stimulus store).

    Raises
    ------
    BidstrainError
        Naming a store that is missing or has no root metadata.
    """
    lists = {
        part: {m: list(paths) for m, paths in stores.items() if paths}
        for part, stores in (("training", training), ("validation", validation))
    }
    stores = [path for part in lists.values() for paths in part.values() for path in paths]
    identity = {
        "train": config.hashed(),
        "loss_definition": DEFINITION,
        "world_size": int(world_size),
        **lists,
        "content": {path: _content(path) for path in stores},
    }
    if stimuli:
        identity["stimuli"] = {part: dict(kinds) for part, kinds in stimuli.items()}
        aligned = [p for kinds in stimuli.values() for paths in kinds.values() for p in paths]
        identity["content"].update({path: _content(path) for path in aligned})
    return identity


def _content(store: str) -> str:
    """What stands for the content of ``store`` in a run identity: its checksum, or when
    it records none (a store written before checksums), when it was written."""
    try:
        written = f"written {os.stat(os.path.join(store, STORE_METADATA)).st_mtime_ns}"
        return store_checksum(store) or written
    except (OSError, BidstrainError):
        raise BidstrainError(
            f"cannot read the store's {STORE_METADATA}: the store is missing or incomplete; "
            "rerun the job that writes it (normalize or average)",
            path=store,
        ) from None


def run_hash(identity: Mapping[str, Any]) -> str:
    """The 16-hex-digit hash of a :func:`run_identity`."""
    text = json.dumps(identity, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def changes(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> list[str]:
    """What differs between the run identity ``old`` (None for a checkpoint that records
    none) and ``new``, one phrase per difference (``world size 2 -> 1``)."""
    if old is None:
        return ["the checkpoint records no run configuration"]
    found = [f"train.{change}" for change in setting_changes(old["train"], new["train"])]
    before = old.get("loss_definition", UNRECORDED_DEFINITION)
    after = new.get("loss_definition", UNRECORDED_DEFINITION)
    if before != after:
        found.append(f"loss definition {before} -> {after}")
    if old["world_size"] != new["world_size"]:
        found.append(f"world size {old['world_size']} -> {new['world_size']}")
    for part in ("training", "validation"):
        for modality in sorted(set(old[part]) | set(new[part])):
            before, after = old[part].get(modality, []), new[part].get(modality, [])
            earlier, now = set(before), set(after)
            added = [path for path in after if path not in earlier]
            removed = [path for path in before if path not in now]
            what = f"{part} {modality} stores"
            if added:
                found.append(f"{what}: {len(added)} added ({named(added)})")
            if removed:
                found.append(f"{what}: {len(removed)} removed ({named(removed)})")
            if not added and not removed and before != after:
                found.append(f"{what}: another order")
    old_content = old.get("content", {})
    rewritten = [
        path
        for path, content in new["content"].items()
        if path in old_content and old_content[path] != content
    ]
    if rewritten:
        found.append(
            f"{len(rewritten)} store(s) rewritten with other content since ({named(rewritten)})"
        )
    return found


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


def load_latest(directory: str | Path) -> dict[str, Any] | None:
    """The newest readable checkpoint of ``directory`` (its path under ``"path"``), or None.

    Unreadable or incomplete files are skipped with a warning. Whether the checkpoint
    belongs to the current run is the caller's question (its ``config_hash``).
    """
    for path in sorted(Path(directory).glob("step-*.pt"), reverse=True):
        try:
            state = torch.load(path, map_location="cpu", weights_only=False)
        except (OSError, EOFError, RuntimeError, pickle.UnpicklingError) as error:
            # a truncated or corrupt file (torch's zip reader raises RuntimeError)
            LOG.warning("ignoring unreadable checkpoint %s: %s", path, error)
            continue
        missing = [key for key in REQUIRED_KEYS if key not in state]
        if missing:
            LOG.warning("ignoring incomplete checkpoint %s (missing %s)", path, missing)
        else:
            state["path"] = path
            return state
    return None


def set_aside(
    directory: str | Path, saved: Mapping[str, Any] | None, identity: Mapping[str, Any]
) -> Path | None:
    """Move the checkpoints of another run out of ``directory`` before a fresh start.

    When ``directory`` holds ``step-*.pt`` files, everything in it but the experiment lock
    (checkpoints, the working ``metrics.jsonl``, markers) moves to a new sibling folder
    ``<directory>-<hash of saved>`` (``-2``, ``-3``... when taken; ``-unreadable`` when no
    checkpoint could be read): nothing is overwritten or deleted. A warning names the
    folder and what changed between ``saved`` (from :func:`load_latest`) and the run
    ``identity``.

    Returns
    -------
    Path or None
        The new folder; None when there was no checkpoint to move.
    """
    directory = Path(directory)
    if not any(directory.glob("step-*.pt")):
        return None
    if saved is None:
        label, reasons = "unreadable", ["no checkpoint there is readable"]
    else:
        label, reasons = saved["config_hash"], changes(saved.get("run"), identity)
    target = _new_sibling(directory, label)
    names = sorted(entry.name for entry in directory.iterdir() if entry.name != LOCK_FILE)
    for name in names:
        os.replace(directory / name, target / name)
    LOG.warning(
        "%s held the checkpoints of another run (%s): moved %s to %s, where they stay; "
        "training starts from step 0",
        directory,
        "; ".join(reasons) or f"run hash {label} -> {run_hash(identity)}",
        ", ".join(names),
        target,
    )
    return target


def _new_sibling(directory: Path, label: str) -> Path:
    """Create and return the first free folder ``<directory>-<label>[-<n>]``."""
    for n in itertools.count(1):
        candidate = directory.with_name(f"{directory.name}-{label}" + (f"-{n}" if n > 1 else ""))
        try:
            candidate.mkdir()
        except FileExistsError:
            continue
        return candidate
