"""BOLD quality per run: tSNR, DVARS, zero-variance voxels, mask fraction; outliers warn.

Metrics come from the normalized store and its saved statistics (raw scale is
``data * std + mean``), so no raw image is read:

``tsnr``
    median over the mask of the voxel's temporal mean divided by its temporal std; for a
    run whose confounds were regressed out, the std of the residuals (the store's own
    statistics): ``tsnr_of`` says which (``image`` or ``confound residuals``), and the
    check's message names it;
``dvars``
    median over time of the RMS (over the mask) of the change between successive volumes,
    in percent of the median voxel mean (never across a left-out volume);
``zero_variance``
    mask voxels whose raw signal is constant;
``mask_fraction``
    share of the grid inside the mask.

A run whose value is a robust outlier of the group (``|x - median| / scale`` above
``checks.outlier_threshold``, with ``scale = max(MAD / 0.6745, 10 % of |median|)``) is a
warning, not a failure: look at it before training. The floor keeps a handful of nearly
identical runs (MAD near 0) from flagging every ordinary difference between subjects.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from bidstrain.checks import Check, verdict
from bidstrain.checks.scan import StoreScan

NAME = "bold_quality"
METRICS = ("tsnr", "dvars", "zero_variance", "mask_fraction")
#: Fewest runs for outliers to mean anything.
MIN_RUNS = 3
#: Smallest spread, as a share of the group median, that a deviation is measured against.
RELATIVE_SCALE_FLOOR = 0.1
#: A voxel counts as constant when its recovered raw std is at most this share of its raw
#: level (and at least 1). Deliberately not :data:`bidstrain.io.store.ZERO_STD`: that absolute
#: threshold applies to statistics computed from the raw values, whereas this std is
#: recovered from the stored z-scores (float32 or less, summed in float64), whose rounding
#: leaves a constant voxel of a held-out run (z-scored with other runs' statistics, so
#: not written as 0) a std of about 1e-8 of its level rather than 0.
CONSTANT_RELATIVE_STD = 1e-6


def run_metrics(scan: StoreScan) -> dict[str, float]:
    """Quality metrics of one BOLD subject store (see the module docstring)."""
    raw_mean = scan.moments_mean * scan.std + scan.mean
    raw_std = scan.moments_std * scan.std
    constant = raw_std <= CONSTANT_RELATIVE_STD * np.maximum(np.abs(raw_mean), 1.0)
    tsnr = np.abs(raw_mean[~constant]) / raw_std[~constant]
    level = float(np.median(np.abs(raw_mean))) if raw_mean.size else float("nan")
    return {
        "tsnr": float(np.median(tsnr)) if tsnr.size else 0.0,
        "dvars": 100 * float(np.median(scan.dvars)) / level if scan.dvars.size and level else 0.0,
        "zero_variance": int(constant.sum()),
        "mask_fraction": scan.n_voxel / scan.grid_size,
        "tsnr_of": "image" if scan.meta.confounds_strategy == "none" else "confound residuals",
    }


def robust_z(values: np.ndarray) -> np.ndarray:
    """``(x - median) / max(MAD / 0.6745, RELATIVE_SCALE_FLOOR |median|)``; zeros when both
    are 0 (no spread to compare with)."""
    values = np.asarray(values, dtype=np.float64)
    median = np.median(values)
    scale = max(np.median(np.abs(values - median)) / 0.6745, RELATIVE_SCALE_FLOOR * abs(median))
    return np.zeros_like(values) if scale == 0 else (values - median) / scale


def check_quality(scans: Sequence[StoreScan], *, outlier_threshold: float) -> Check:
    """Per-run BOLD quality and robust outliers against the group.

    Parameters
    ----------
    scans : sequence of StoreScan
        BOLD subject stores (not averages).
    outlier_threshold : float
        ``checks.outlier_threshold``.
    """
    runs = [{"label": s.label, "store": s.path, **run_metrics(s)} for s in scans]
    warns = []
    if len(runs) >= MIN_RUNS:
        for metric in METRICS:
            values = np.array([run[metric] for run in runs], dtype=np.float64)
            median = float(np.median(values))
            for run, z in zip(runs, robust_z(values), strict=True):
                if abs(z) > outlier_threshold:
                    warns.append(
                        f"{run['label']}: {metric} {run[metric]:.4g} against a group median of "
                        f"{median:.4g} (robust z {z:+.1f}, checks.outlier_threshold "
                        f"{outlier_threshold}; inspect {run['store']})"
                    )
    if runs:
        tsnr = [run["tsnr"] for run in runs]
        of = " or ".join(sorted({run["tsnr_of"] for run in runs}))
        ok = (
            f"{len(runs)} BOLD runs, median tSNR ({of}) {min(tsnr):.3g} to {max(tsnr):.3g}, "
            "no outlier"
        )
    else:
        ok = "no BOLD run"
    return verdict(NAME, [], warns, ok, {"runs": runs, "outlier_threshold": outlier_threshold})
