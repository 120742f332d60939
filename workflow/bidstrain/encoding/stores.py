"""The encoding data from the workflow's stores: for each cross-subject average (one run
of a task), its BOLD store and its aligned stimulus stores (one per kind, written by
``align_stimuli``, :func:`bidstrain.io.store.read_aligned_store`).

The BOLD store is the average's voxel store (``encoding.target: voxels``: the targets
are its masked voxels) or its parcel average (``parcels``: the targets are its parcels,
:mod:`bidstrain.average.parcels`). Both hold the average's valid frames, the frames its
aligned stores hold.

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
import zarr

from bidstrain.encoding.data import EncodingData, statistics_digest
from bidstrain.errors import BidstrainError
from bidstrain.io.store import (
    CONSOLIDATED,
    open_store,
    read_aligned_store,
    read_meta,
    read_parcel_attrs,
)

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
        ``encoding.target``: ``voxels`` (the average store's masked voxels) or
        ``parcels`` (the parcel average's parcels).

    Raises
    ------
    BidstrainError
        Naming the store: a missing kind, a BOLD store that is not of the target's kind,
        frames that differ from the BOLD's, kinds prepared with other delays or
        statistics across averages, parcels that differ across averages, or no training
        or no held-out average.
    """
    parts: dict[bool, tuple[list, list]] = {False: ([], []), True: ([], [])}
    names: dict[bool, list[str]] = {False: [], True: []}
    description: dict[str, Any] | None = None
    mask_of: dict[str, Any] = {}
    parcels: dict[str, Any] | None = None
    for name in sorted(averages):
        stores = averages[name]
        missing = [kind for kind in kinds if kind not in stores]
        if missing:
            raise BidstrainError(
                f"average {name} has no aligned {missing} features", path=stores["bold"]
            )
        time, values, about = _target_store(stores["bold"], target)
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
        parts[heldout][1].append(values)
        mask_of[name] = {"store": stores["bold"], "n_targets": int(values.shape[1])}
        if target == "parcels" and parcels is not None and about != parcels:
            raise BidstrainError(
                f"the parcels of average {name} differ from the others' (another atlas?)",
                path=stores["bold"],
            )
        parcels = about if target == "parcels" else None
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
            **(
                parcels
                if parcels is not None
                else {"mask": "the average stores' mask (voxels in C order)"}
            ),
            "n_targets": int(parts[False][1][0].shape[1]),
            "training_runs": names[False],
            "heldout_runs": names[True],
        },
    )


def _target_store(path: str, target: str) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """``(time, data, parcels)`` of an average's BOLD store of the ``target`` kind:
    float64 frame onsets, float32 ``data`` (frames x targets), and for parcels the atlas,
    the label values and the names (empty for voxels).

    Raises
    ------
    BidstrainError
        When the store is not of the target's kind.
    """
    parcel_store = read_meta(path).stats_dim == "parcel"
    if parcel_store != (target == "parcels"):
        have = "a parcel store" if parcel_store else "a voxel store"
        raise BidstrainError(f"encoding.target is {target} but the store is {have}", path=path)
    if not parcel_store:
        store = open_store(path, use_dask=False)
        data = np.asarray(store["data"].values, np.float32)
        return store["time"].values.astype(np.float64), data, {}
    group = zarr.open_group(path, mode="r", zarr_format=3, use_consolidated=CONSOLIDATED)
    attrs = read_parcel_attrs(path)
    about = {
        "atlas": attrs["atlas"],
        "parcels": [int(v) for v in group["parcel"][...]],
        "parcel_names": list(attrs["parcel_names"]),
    }
    data = np.asarray(group["data"][...], np.float32)
    return np.asarray(group["time"][...], np.float64), data, about


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
            "mean": mean.tolist(),
            "std": std.tolist(),
        },
        "decoder": {k: s.decoder for k, s in zip(kinds, aligned, strict=True)},
    }
