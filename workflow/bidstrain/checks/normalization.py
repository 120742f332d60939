"""Normalization verified: statistics saved and finite, data z-scored, raw values recoverable.

For every store training or validation reads, and every subject store behind them:

- the store opens with ``mean`` and ``std`` (the statistics exist) and they are finite;
- ``data`` holds no NaN/Inf and was normalized with the configured ``normalize.ddof``;
- subject stores fitted on their own data have mean about 0 and std about 1 (with their
  ddof) wherever the raw variance was non-zero, and 0 where it was zero: per voxel over
  time for BOLD, per volume over the mask for T1w/DWI. Held-out runs are normalized with
  other runs' statistics, so this does not apply to them;
- ``data * std + mean`` equals the raw NIfTI values at ``checks.sample_voxels`` sampled
  voxels of the first volumes (errors in units of the saved std);
- the store has as many volumes, and its mask the grid, of the ingest manifest's record;
- cross-subject averages of training runs have per-voxel mean about 0 and std at most 1
  (a mean of unit-variance series). Frames are averaged over the subjects valid there
  (:mod:`bidstrain.average.frames`), so the moments weigh each frame by its number of
  subjects: the weighted sum is then every subject's sum of z-scores, 0. That holds when
  every frame holds every subject, or else for one session per subject on the
  intersection mask with every frame some subject is valid at kept; otherwise, and for
  truncated runs, the mean is not checked, and the std only for truncated runs
  (:func:`_average_moments_apply`);
- held-out runs, normalized with the other runs' statistics, stay near that scale: a
  median per-voxel mean beyond :data:`HELDOUT_MAX_SHIFT` std or a median std outside
  :data:`HELDOUT_STD_RANGE` is a warning (the held-out run does not look like the runs its
  statistics came from, so validation losses will not compare with training losses).

Parcel stores (with ``train.bold_input: parcels``, what the model reads) are checked the
same way per parcel, but for the raw values and the manifest: a run's parcel store must
instead hold the frames of its voxel store, whose raw values are checked. A parcel
average's moments are those of z-scores only when every parcel is covered by every
subject's runs (``n_partial_parcels`` 0): a parcel some runs leave out is the mean over
the others.

Reduced-precision stores (``normalize.storage``) round every stored z-score ``z`` by at
most ``p |z|`` (``p``, the storage's relative error, is recorded in the store): the
tolerances widen by what that rounding can explain (:func:`allowed_error`), and no more,
so a store left at scanner scale still fails however coarse its storage.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bidstrain.checks import Check, verdict
from bidstrain.checks.scan import StoreScan
from bidstrain.io.store import ZERO_STD

NAME = "normalization"
HELDOUT_MAX_SHIFT = 1.0
HELDOUT_STD_RANGE = (0.5, 2.0)


def allowed_error(scan: StoreScan, tolerance: float, roundings: int = 1) -> float:
    """``checks.stats_tolerance`` plus what the store's storage rounding can explain.

    The mean over time (or voxels) of z-scores each rounded by at most ``p |z|`` moves by at
    most ``p`` times their root mean square, which is at most 1 for z-scores, and so does
    their std. An average of rounded stores, itself rounded, has ``roundings=2``.
    """
    return tolerance + roundings * scan.meta.precision


def _raw_error(scan: StoreScan, raw: np.ndarray) -> tuple[float, str]:
    """Largest ``|data * std + mean - raw|`` in units of the saved std beyond what the
    storage rounding of the stored z-score explains, and where."""
    n_volumes = scan.head.shape[0]
    got = scan.raw(scan.head, slice(0, n_volumes))
    if scan.over_time:
        scale = np.broadcast_to(scan.std[scan.head_voxels], got.shape)
    else:
        scale = np.broadcast_to(scan.std[:n_volumes, None], got.shape)
    error = np.abs(got - raw) / np.where(scale >= ZERO_STD, scale, 1.0)
    error -= scan.meta.precision * np.abs(scan.head)
    if not error.size:
        return 0.0, ""
    t, v = np.unravel_index(int(np.argmax(error)), error.shape)
    ijk = tuple(int(axis[v]) for axis in scan.head_ijk)
    where = f"voxel {ijk} volume {t}: stored {got[t, v]:.6g}, raw {raw[t, v]:.6g}"
    return max(float(error.max()), 0.0), where


def _tolerance_text(scan: StoreScan, tolerance: float, allowed: float) -> str:
    if allowed == tolerance or scan.meta.storage == "float32":
        return f"checks.stats_tolerance {tolerance}"
    return (
        f"{allowed:.3g}: checks.stats_tolerance {tolerance} plus the rounding of storage "
        f"{scan.meta.storage}"
    )


def _zscore_problems(scan: StoreScan, tolerance: float) -> tuple[list[str], dict[str, float]]:
    unit = scan.unit
    varying = scan.std >= ZERO_STD
    mean_error = float(np.abs(scan.moments_mean[varying]).max(initial=0.0))
    std_error = float(np.abs(scan.moments_std[varying] - 1).max(initial=0.0))
    constant = float(np.abs(scan.moments_std[~varying]).max(initial=0.0))
    allowed = allowed_error(scan, tolerance)
    problems = []
    if mean_error > allowed or std_error > allowed:
        problems.append(
            f"{scan.label} ({scan.path}): per-{unit} mean is off 0 by up to {mean_error:.3g} "
            f"and std off 1 by up to {std_error:.3g} (ddof {scan.meta.ddof}), above "
            f"{_tolerance_text(scan, tolerance, allowed)}: the data is not z-scored (rerun "
            "normalize)"
        )
    if constant > tolerance:
        problems.append(
            f"{scan.label} ({scan.path}): {int((~varying).sum())} zero-variance {unit}s vary "
            f"in the data (std up to {constant:.3g}); they should be 0 (rerun normalize)"
        )
    return problems, {"max_abs_mean": mean_error, "max_std_error": std_error}


def _heldout_shift(scan: StoreScan) -> tuple[list[str], dict[str, float]]:
    varying = scan.std >= ZERO_STD
    shift = float(np.median(np.abs(scan.moments_mean[varying]))) if varying.any() else 0.0
    spread = float(np.median(scan.moments_std[varying])) if varying.any() else 1.0
    low, high = HELDOUT_STD_RANGE
    problems = []
    if shift > HELDOUT_MAX_SHIFT or not low <= spread <= high:
        problems.append(
            f"{scan.label} ({scan.path}): held-out run normalized with the statistics of "
            f"{', '.join(scan.meta.stats_from)} has median per-{scan.unit} mean "
            f"{shift:.3g} and median std {spread:.3g} (expected near 0 and 1): it does not "
            "look like the runs its statistics came from (check the acquisition, or choose "
            "other runs with normalize.heldout)"
        )
    return problems, {"heldout_median_abs_mean": shift, "heldout_median_std": spread}


def _average_moments_apply(scan: StoreScan) -> bool:
    """Whether the average's subject-weighted moments must be those of z-scores: its runs
    were not truncated, and every frame holds every subject, or each subject is one
    session on the intersection mask and every frame with a valid subject is kept. For a
    parcel average, the intersection mask is every parcel covered by every subject."""
    if scan.meta.truncated or (scan.is_parcels and scan.n_partial_parcels != 0):
        return False
    if scan.frame_subjects is None:
        return True
    n_subjects = len(scan.meta.subjects)
    if (scan.frame_subjects == n_subjects).all():
        return True
    single = all(len(sessions) == 1 for sessions in scan.meta.sessions.values())
    kept = bool((scan.frame_valid | (scan.frame_subjects == 0)).all())
    intersection = scan.is_parcels or scan.meta.mask_mode == "intersection"
    return single and intersection and kept


def _average_problems(scan: StoreScan, tolerance: float) -> tuple[list[str], dict[str, float]]:
    mean_error = float(np.abs(scan.moments_mean).max(initial=0.0))
    max_std = float(scan.moments_std.max(initial=0.0))
    allowed = allowed_error(scan, tolerance, roundings=2)
    applies = _average_moments_apply(scan)
    problems = []
    if mean_error > allowed and applies:
        problems.append(
            f"{scan.label} ({scan.path}): per-{scan.unit} mean of the average is off 0 by up to "
            f"{mean_error:.3g} ({_tolerance_text(scan, tolerance, allowed)}): its subject "
            "stores were not z-scored (rerun normalize and average)"
        )
    if max_std > 1 + allowed and (applies or scan.meta.truncated):
        problems.append(
            f"{scan.label} ({scan.path}): per-{scan.unit} std of the average reaches "
            f"{max_std:.3g}, above 1: its subject stores were not z-scored (rerun "
            "normalize and average)"
        )
    return problems, {"max_abs_mean": mean_error, "max_std": max_std}


def _raw_problems(
    scan: StoreScan, raw_heads: Mapping[str, np.ndarray], tolerance: float
) -> tuple[list[str], float | None]:
    """Whether ``data * std + mean`` gives the raw image back, and the largest error."""
    if scan.path not in raw_heads:
        return [
            f"{scan.label} ({scan.path}): its raw image {scan.meta.source_path} cannot be "
            "read, so the saved statistics cannot be verified (was the dataset moved? rerun "
            "the workflow from ingest)"
        ], None
    raw_error, where = _raw_error(scan, raw_heads[scan.path])
    if raw_error <= tolerance:
        return [], raw_error
    rounding = "" if scan.meta.storage == "float32" else f" beyond the {scan.meta.storage} rounding"
    return [
        f"{scan.label} ({scan.path}): data * std + mean differs from the raw image "
        f"{scan.meta.source_path} by {raw_error:.3g} std{rounding} at {where} "
        f"(checks.stats_tolerance {tolerance}): the saved statistics are not the ones the "
        "data was normalized with (rerun normalize)"
    ], raw_error


def _frame_problems(scan: StoreScan, voxels: StoreScan | None) -> list[str]:
    """Whether a run's parcel store holds the frames of its voxel store."""
    if voxels is None:
        return [
            f"{scan.label} ({scan.path}): its voxel store could not be read, so its frames "
            "cannot be verified (see the voxel store's problem)"
        ]
    if scan.n_time != voxels.n_time:
        return [
            f"{scan.label} ({scan.path}): {scan.n_time} frames, but its voxel store "
            f"{voxels.path} has {voxels.n_time}: the parcel store is stale (rerun normalize)"
        ]
    return []


def _manifest_problems(scan: StoreScan, manifest: Mapping[str, Mapping[str, Any]]) -> list[str]:
    record = manifest.get(str(Path(scan.meta.source_path).resolve()))
    if record is None:
        return [
            f"{scan.label} ({scan.path}): its source {scan.meta.source_path} is not in the "
            "ingest manifest (rerun the workflow from ingest)"
        ]
    problems = []
    raw_volumes = int(record["n_volumes"])
    # confound regression drops the volumes of nilearn's sample mask: fewer, never more;
    # a run resampled in time has the frames of its time grid (frame_valid counts them)
    regressed = scan.meta.confounds_strategy != "none"
    if not scan.meta.resampled and (
        scan.n_time > raw_volumes or (scan.n_time != raw_volumes and not regressed)
    ):
        problems.append(
            f"{scan.label} ({scan.path}): {scan.n_time} volumes, but the raw image has "
            f"{raw_volumes} (rerun normalize)"
        )
    shape = tuple(int(n) for n in record["shape"].split("x"))[:3]
    if scan.grid_size != int(np.prod(shape)):
        problems.append(
            f"{scan.label} ({scan.path}): mask grid of {scan.grid_size} voxels, but the raw "
            f"image grid is {shape} (rerun normalize)"
        )
    return problems


def check_normalization(
    scans: Sequence[StoreScan],
    unreadable: Mapping[str, str],
    raw_heads: Mapping[str, np.ndarray],
    *,
    training: set[str],
    manifest: Mapping[str, Mapping[str, Any]],
    ddof: int,
    tolerance: float,
    voxel_stores: Mapping[str, StoreScan | None] | None = None,
) -> Check:
    """Verify the normalization of every scanned store.

    Parameters
    ----------
    scans : sequence of StoreScan
        Subject stores and averages that training or validation reads (or averages).
    unreadable : mapping
        ``{store path: error}`` of stores that are missing or lack statistics.
    raw_heads : mapping
        ``{store path: raw_head(scan)}`` of the subject stores whose raw image was read.
    training : set of str
        Paths of the stores training reads (averages there must have mean 0).
    manifest : mapping
        Ingest manifest rows by resolved raw image path.
    ddof : int
        ``normalize.ddof``.
    tolerance : float
        ``checks.stats_tolerance``: allowed deviation of mean from 0, std from 1 and raw
        reconstruction (in std units).
    voxel_stores : mapping, optional
        ``{parcel store path: its voxel store's scan}`` (None where that store could not
        be read) of the run parcel stores among ``scans``.
    """
    voxel_stores = voxel_stores or {}
    fails = [
        f"{path}: {error} (the saved statistics are missing: rerun normalize)"
        for path, error in unreadable.items()
    ]
    warns: list[str] = []
    per_store = []
    for scan in scans:
        values: dict[str, Any] = {"store": scan.path, "label": scan.label}
        if not (np.isfinite(scan.mean).all() and np.isfinite(scan.std).all()):
            fails.append(f"{scan.label} ({scan.path}): the saved mean/std hold NaN or Inf")
        if scan.n_nonfinite:
            fails.append(
                f"{scan.label} ({scan.path}): data holds {scan.n_nonfinite} NaN/Inf values "
                "(normalize.nonfinite: mask leaves such voxels out)"
            )
        if scan.meta.ddof != ddof:
            fails.append(
                f"{scan.label} ({scan.path}): normalized with ddof {scan.meta.ddof}, but "
                f"normalize.ddof is {ddof} (rerun normalize)"
            )
        if scan.is_average:
            if scan.path in training:
                problems, numbers = _average_problems(scan, tolerance)
                fails += problems
                values.update(numbers)
        else:
            if scan.meta.heldout:
                problems, numbers = _heldout_shift(scan)
                warns += problems
            else:
                problems, numbers = _zscore_problems(scan, tolerance)
                fails += problems
            values.update(numbers)
            if scan.is_parcels:
                fails += _frame_problems(scan, voxel_stores.get(scan.path))
            else:
                fails += _manifest_problems(scan, manifest)
                # a store of confound-regression residuals, or of frames resampled in
                # time, cannot give the raw image back
                if scan.meta.confounds_strategy == "none" and not scan.meta.resampled:
                    problems, values["max_raw_error"] = _raw_problems(scan, raw_heads, tolerance)
                    fails += problems
        per_store.append(values)
    ok = (
        f"{len(scans)} stores: statistics saved and finite, data z-scored, raw values "
        f"recovered within {tolerance} std"
    )
    return verdict(NAME, fails, warns, ok, {"stores": per_store, "tolerance": tolerance})
