"""The encoding data from the workflow's stores: for each cross-subject average (one run
of a task), its BOLD store and its aligned stimulus stores (one per kind, written by
``align_stimuli``, :func:`bidstrain.io.store.read_aligned_store`).

An inputs file (JSON, written by the plan) is ``{"averages": {name: {"bold": store,
<kind>: aligned store, ...}}}``. An average is held out when its aligned stores say so
(``normalize.heldout`` selected its runs); the features of the kinds are concatenated in
the order of ``encoding.kinds``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bidstrain.encoding.data import EncodingData, statistics_digest
from bidstrain.errors import BidstrainError
from bidstrain.io.store import open_store, read_aligned_store

#: Seconds within which the aligned and BOLD frame times must agree.
TIME_TOLERANCE = 1e-3


def read_inputs(path: str | Path) -> dict[str, dict[str, str]]:
    """The ``averages`` of an inputs file (see the module docstring)."""
    try:
        averages = json.loads(Path(path).read_text())["averages"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as error:
        raise BidstrainError(f"cannot read the encoding inputs: {error}", path=path) from None
    if not averages:
        raise BidstrainError(
            "no cross-subject average with aligned stimuli: enable stimuli, average.mode "
            "cross_subject, and give the runs stimuli",
            path=path,
        )
    return averages


def data_from_stores(
    averages: Mapping[str, Mapping[str, str]], kinds: Sequence[str], target: str
) -> EncodingData:
    """Concatenate the training and held-out averages' features and BOLD.

    Parameters
    ----------
    averages : mapping
        ``{name: {"bold": store, kind: aligned store}}``.
    kinds : sequence of str
        ``encoding.kinds``.
    target : str
        ``encoding.target``; ``voxels`` (the average store's masked voxels).

    Raises
    ------
    BidstrainError
        Naming the store: a missing kind, frames that differ from the BOLD's, kinds
        prepared with other delays or statistics across averages, or no training or no
        held-out average.
    """
    if target != "voxels":
        raise BidstrainError(
            f"encoding.target {target}: the averages have no parcel stores yet; use voxels"
        )
    parts: dict[bool, tuple[list, list]] = {False: ([], []), True: ([], [])}
    names: dict[bool, list[str]] = {False: [], True: []}
    description: dict[str, Any] | None = None
    mask_of: dict[str, Any] = {}
    for name in sorted(averages):
        stores = averages[name]
        missing = [kind for kind in kinds if kind not in stores]
        if missing:
            raise BidstrainError(
                f"average {name} has no aligned {missing} features", path=stores["bold"]
            )
        bold = open_store(stores["bold"], use_dask=False)
        time = np.asarray(bold["time"].values, np.float64)
        aligned = [read_aligned_store(stores[kind]) for kind in kinds]
        for kind, store in zip(kinds, aligned, strict=True):
            if store.time.shape != time.shape or np.abs(store.time - time).max() > TIME_TOLERANCE:
                raise BidstrainError(
                    f"the {kind} features are on other frames than the BOLD of {name} "
                    f"({store.time.size} vs {time.size} frames): rerun align_stimuli",
                    path=stores[kind],
                )
        here = describe(kinds, aligned)
        if description is None:
            description = here
        elif here != description:
            raise BidstrainError(
                f"the features of average {name} were prepared differently from the others'",
                path=stores[kinds[0]],
            )
        heldout = bool(aligned[0].heldout)
        names[heldout].append(name)
        parts[heldout][0].append(np.concatenate([s.features for s in aligned], axis=1))
        parts[heldout][1].append(np.asarray(bold["data"].values, np.float32))
        mask_of[name] = {"store": stores["bold"], "n_voxels": int(bold["data"].shape[1])}
    for heldout, label in ((False, "training"), (True, "held-out")):
        if not parts[heldout][0]:
            raise BidstrainError(f"no {label} average with aligned stimuli (normalize.heldout)")
    return EncodingData(
        train_x=np.concatenate(parts[False][0]).astype(np.float32),
        train_y=np.concatenate(parts[False][1]),
        heldout_x=np.concatenate(parts[True][0]).astype(np.float32),
        heldout_y=np.concatenate(parts[True][1]),
        features=description,
        target={
            "kind": target,
            "averages": mask_of,
            "mask": "the average stores' mask (voxels in C order)",
            "n_targets": int(parts[False][1][0].shape[1]),
            "training_runs": names[False],
            "heldout_runs": names[True],
        },
    )


def describe(kinds: Sequence[str], aligned: Sequence[Any]) -> dict[str, Any]:
    """The feature description (:class:`~bidstrain.encoding.data.EncodingData`) of a
    run's aligned stores (:class:`~bidstrain.io.store.AlignedStore`, in ``kinds`` order)."""
    first = aligned[0].attrs
    mean = np.concatenate([s.arrays["mean"] for s in aligned])
    std = np.concatenate([s.arrays["std"] for s in aligned])
    return {
        "kinds": list(kinds),
        "sizes": {
            k: int(np.unique(s.arrays["source_feature"]).size)
            for k, s in zip(kinds, aligned, strict=True)
        },
        "columns": {k: int(s.features.shape[1]) for k, s in zip(kinds, aligned, strict=True)},
        "delays": list(first["delays"]),
        "method": first["delay_method"],
        "repetition_time": float(first["repetition_time"]),
        "normalized": bool(first["normalized"]),
        "statistics": {
            "digest": statistics_digest(mean, std),
            "training_runs": sorted({r for s in aligned for r in s.training_runs}),
        },
        "decoder": {k: s.decoder for k, s in zip(kinds, aligned, strict=True)},
    }
