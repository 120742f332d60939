"""The stimulus modalities (video, audio, text) in the checks: their aligned stores' values
for the scale table, their normalization, and each stimulus's coverage of its runs.

The aligned stores (:mod:`bidstrain.stimuli.alignment`) are what a model of the stimuli
reads next to BOLD, so they are checked as BOLD is:

- scale: the features of the training runs' stores, as the model sees them (z-scored, or
  raw with ``stimuli.normalize: false``), and raw (restored with the saved statistics),
  enter the scale table as modalities of their own (:func:`stimulus_samples`; columns
  constant over the training runs left out);
- normalization (:func:`normalization_findings`): every store was z-scored (a store left
  raw fails, naming its kind and range), its statistics are finite, the training runs'
  columns pooled have mean 0 and std 1 (within ``checks.stats_tolerance``), and the saved
  statistics restore the run's recorded raw means;
- coverage (:func:`check_coverage`): the seconds of each run without a stimulus, and the
  columns constant over the run and over every training run.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from bidstrain.checks import Check, verdict
from bidstrain.io.store import AlignedStore, read_aligned_store
from bidstrain.modalities import STIMULUS_KINDS

COVERAGE = "stimulus_coverage"
#: Values sampled per aligned store for the scale table.
SAMPLE_VALUES = 100_000


def read_stores(paths: Sequence[str]) -> dict[str, AlignedStore]:
    """The aligned stores, by path."""
    return {path: read_aligned_store(path) for path in paths}


def by_bold_store(stores: Mapping[str, AlignedStore]) -> dict[str, dict[str, str]]:
    """``{BOLD store: {kind: aligned store}}`` of the aligned stores ``stores`` (by
    path), from the BOLD store each records (what the trainer's windows read)."""
    aligned: dict[str, dict[str, str]] = {}
    for path, store in stores.items():
        aligned.setdefault(store.bold_store, {})[store.kind] = path
    return aligned


def _raw(store: AlignedStore) -> np.ndarray:
    features = store.features.astype(np.float64)
    if not store.normalized:
        return features
    return features * store.arrays["std"] + store.arrays["mean"]


def _sample(values: np.ndarray) -> np.ndarray:
    flat = values.ravel()
    step = max(flat.size // SAMPLE_VALUES, 1)
    return flat[::step]


def stimulus_samples(
    stores: Mapping[str, AlignedStore],
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Sampled values of the training runs' aligned stores by kind: as the model sees
    them, and raw. Columns constant over the training runs are left out (z-scored they
    are 0: a hashed bag of words, mostly empty, would otherwise look tiny next to BOLD);
    the coverage check counts them.

    Returns
    -------
    normalized, raw : dict of str to ndarray
    """
    seen: dict[str, list[np.ndarray]] = {}
    raw: dict[str, list[np.ndarray]] = {}
    for store in stores.values():
        if store.heldout:
            continue
        varying = ~store.arrays["constant"]
        seen.setdefault(store.kind, []).append(_sample(store.features[:, varying].astype(float)))
        raw.setdefault(store.kind, []).append(_sample(_raw(store)[:, varying]))
    order = [kind for kind in STIMULUS_KINDS if kind in seen]
    return (
        {kind: np.concatenate(seen[kind]) for kind in order},
        {kind: np.concatenate(raw[kind]) for kind in order},
    )


def normalization_findings(
    stores: Mapping[str, AlignedStore], tolerance: float
) -> tuple[list[str], dict[str, Any]]:
    """Problems of the aligned stores' normalization (module docstring), and the numbers.

    Returns
    -------
    fails : list of str
        Each naming the store, its kind and the numbers.
    values : dict
        Per kind: the pooled training mean and std error, stores not normalized.
    """
    fails = []
    raw_stores: dict[str, list[str]] = {}
    pooled: dict[str, list[np.ndarray]] = {}
    for path, store in stores.items():
        kind, label = store.kind, store.label
        mean, std = store.arrays["mean"], store.arrays["std"]
        bad_rows = np.flatnonzero(~np.isfinite(store.features).all(axis=1))
        if bad_rows.size:
            fails.append(
                f"{label} {kind} ({path}): NaN or Inf in {bad_rows.size} rows of its features "
                f"(frames {bad_rows[:5].tolist()}{'...' if bad_rows.size > 5 else ''}; rerun "
                "the stimuli and align_stimuli jobs of this stimulus)"
            )
            continue
        if not (np.isfinite(mean).all() and np.isfinite(std).all()):
            fails.append(f"{label} {kind} ({path}): non-finite z-score statistics")
            continue
        if not store.normalized:
            raw_stores.setdefault(kind, []).append(label)
            continue
        restored = _raw(store).mean(axis=0)
        scale = np.where(store.arrays["raw_std"] > 0, store.arrays["raw_std"], 1.0)
        error = float((np.abs(restored - store.arrays["raw_mean"]) / scale).max(initial=0.0))
        if error > tolerance:
            fails.append(
                f"{label} {kind} ({path}): data * std + mean misses the recorded raw mean by "
                f"{error:.3g} raw std (checks.stats_tolerance {tolerance})"
            )
        if not store.heldout:
            pooled.setdefault(kind, []).append(store.features.astype(np.float64))
    for kind, labels in raw_stores.items():
        sample = next(s for s in stores.values() if s.kind == kind and not s.normalized)
        low, high = sample.arrays["raw_min"].min(), sample.arrays["raw_max"].max()
        fails.append(
            f"{kind} stimulus features are not normalized (stimuli.normalize: false) in "
            f"{len(labels)} run(s), e.g. {labels[0]}: values span {low:.4g} to {high:.4g} "
            "while BOLD is z-scored (set stimuli.normalize: true)"
        )
    values: dict[str, Any] = {"not_normalized": {k: len(v) for k, v in raw_stores.items()}}
    for kind, runs in pooled.items():
        stacked = np.concatenate(runs)
        varying = stacked.std(axis=0) > 0
        mean_error = float(np.abs(stacked.mean(axis=0)).max(initial=0.0))
        std_error = float(np.abs(stacked.std(axis=0)[varying] - 1.0).max(initial=0.0))
        values[kind] = {"training_mean_error": mean_error, "training_std_error": std_error}
        if mean_error > tolerance or std_error > tolerance:
            fails.append(
                f"{kind} stimulus features of the training runs pooled have a column of mean "
                f"{mean_error:.3g} or std off 1 by {std_error:.3g} (checks.stats_tolerance "
                f"{tolerance}): their statistics are not the training runs' (stale stores?)"
            )
    return fails, values


def check_coverage(stores: Mapping[str, AlignedStore]) -> Check:
    """Each stimulus's coverage of its runs: seconds without stimulus, constant columns.

    A run without a stimulus for its whole length, or a kind whose every column is
    constant over the training runs (it carries no information), is a warning.
    """
    rows, warns = [], []
    totals: dict[str, dict[str, float]] = {}
    for path, store in stores.items():
        kind, attrs = store.kind, store.attrs
        in_run = int((store.arrays["raw_std"] == 0).sum())
        in_training = int(store.arrays["constant"].sum())
        n_features = int(store.features.shape[1])
        rows.append(
            {
                "store": path,
                "label": attrs["label"],
                "kind": kind,
                "heldout": attrs["heldout"],
                "run_seconds": attrs["run_seconds"],
                "seconds_without_stimulus": attrs["seconds_without_stimulus"],
                "features": n_features,
                "constant_in_run": in_run,
                "constant_in_training": in_training,
            }
        )
        total = totals.setdefault(kind, {"runs": 0, "seconds": 0.0, "without": 0.0})
        total["runs"] += 1
        total["seconds"] += attrs["run_seconds"]
        total["without"] += attrs["seconds_without_stimulus"]
        total["constant_in_training"] = in_training
        total["features"] = n_features
        if attrs["seconds_without_stimulus"] >= attrs["run_seconds"]:
            warns.append(f"{attrs['label']} has no {kind} stimulus for its whole length")
    for kind, total in totals.items():
        if total["constant_in_training"] == total["features"]:
            warns.append(f"every {kind} feature is constant over the training runs")
    listing = "; ".join(
        f"{kind}: {t['runs']} runs, {t['without']:.4g} of {t['seconds']:.4g} s without "
        f"stimulus, {t['constant_in_training']} of {t['features']} columns constant over "
        "the training runs"
        for kind, t in totals.items()
    )
    return verdict(COVERAGE, [], warns, listing, {"runs": rows, "totals": totals})
