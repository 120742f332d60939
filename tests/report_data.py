"""Tiny inputs that follow the inter-stage contracts, for the report tests.

Stores are written with :func:`bidstrain.io.store.create_store` from the demo generator's
images; the checks summary and the training metrics are written by hand.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from bidstrain.demo.generate import DemoSpec, _ellipsoid, bold_run, dwi_series
from bidstrain.io.store import create_store, open_store
from bidstrain.train.metrics import learning_summary

SPEC = DemoSpec(bold_shape=(12, 14, 12), n_volumes=30)
TR = 2.0


def shared_signal(n_volumes: int = SPEC.n_volumes) -> np.ndarray:
    """The task signal every demo subject shares."""
    return np.sin(2 * np.pi * np.arange(n_volumes) * TR / 40.0).astype(np.float32)


def _base_attrs(modality: str, subject: str, stats_dim: str) -> dict:
    return {
        "modality": modality,
        "subject": subject,
        "session": None,
        "entities": {"sub": subject},
        "source_path": f"/bids/sub-{subject}/sub-{subject}_{modality}.nii.gz",
        "source_size": 1000,
        "repetition_time": TR if modality == "bold" else None,
        "ddof": 1,
        "n_zero_variance": 0,
        "n_nonfinite": 0,
        "stats_dim": stats_dim,
        "stats_from": [],
    }


def write_bold_store(
    path: Path, subject: str, seed: int, signal: np.ndarray, spec: DemoSpec = SPEC
) -> Path:
    """A BOLD store z-scored per voxel (statistics per voxel), from a demo run."""
    rng = np.random.default_rng(seed)
    run = bold_run(spec, rng, signal).astype(np.float32)
    mask = _ellipsoid(spec.bold_shape)
    series = run[mask].T  # (time, voxel)
    mean = series.mean(axis=0)
    std = series.std(axis=0, ddof=1)
    with create_store(path, mask=mask, affine=np.eye(4), time=np.arange(len(series)) * TR) as w:
        w.write(0, (series - mean) / std)
        w.add_variable("mean", ("voxel",), mean.astype(np.float32))
        w.add_variable("std", ("voxel",), std.astype(np.float32))
        w.attrs.update(_base_attrs("bold", subject, "voxel"))
        w.attrs["entities"] = {"sub": subject, "task": "rest", "run": "1"}
    return path


def write_dwi_store(path: Path, subject: str = "01") -> Path:
    """A DWI store z-scored per volume (statistics per time point), with bval and bvec."""
    data, bvals, bvecs = dwi_series(SPEC, np.random.default_rng(3))
    mask = _ellipsoid(SPEC.bold_shape)
    series = data.astype(np.float32)[mask].T
    mean = series.mean(axis=1)
    std = series.std(axis=1, ddof=1)
    time_coords = {"bval": (("time",), bvals), "bvec": (("time", "direction"), bvecs.T)}
    with create_store(
        path, mask=mask, affine=np.eye(4), time=np.arange(len(series)), time_coords=time_coords
    ) as w:
        w.write(0, (series - mean[:, None]) / std[:, None])
        w.add_variable("mean", ("time",), mean.astype(np.float32))
        w.add_variable("std", ("time",), std.astype(np.float32))
        w.attrs.update(_base_attrs("dwi", subject, "time"))
    return path


def write_average_store(path: Path, subject_stores: list[Path]) -> Path:
    """A cross-subject average of BOLD stores (intersection mask), with ``n_subjects``."""
    stores = [open_store(p) for p in subject_stores]
    mask = np.logical_and.reduce([ds["mask"].values for ds in stores])
    mask[0, :, :] = False  # a group mask smaller than some subjects' masks
    grids = [to_values(ds, mask) for ds in stores]
    data = np.mean([g[0] for g in grids], axis=0)
    with create_store(path, mask=mask, affine=np.eye(4), time=stores[0]["time"].values) as w:
        w.write(0, data)
        w.add_variable("mean", ("voxel",), np.mean([g[1] for g in grids], axis=0))
        w.add_variable("std", ("voxel",), np.mean([g[2] for g in grids], axis=0))
        subjects = list(dict.fromkeys(ds.attrs["subject"] for ds in stores))  # sessions: once
        n_subjects = np.full(mask.sum(), len(subjects), dtype=np.int32)
        n_subjects[: mask.sum() // 4] -= 1
        w.add_variable("n_subjects", ("voxel",), n_subjects)
        w.attrs.update(_base_attrs("bold", "group", "voxel"))
        w.attrs["subjects"] = subjects
    return path


def to_values(ds, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Data, mean and std of a store restricted to the voxels of a smaller ``mask``."""
    keep = mask[ds["i"].values, ds["j"].values, ds["k"].values]
    return (
        ds["data"].values[:, keep],
        ds["mean"].values[keep],
        ds["std"].values[keep],
    )


def write_summary(path: Path) -> Path:
    """A checks summary with one check of each status and the scale table."""
    stats = {"min": -3.0, "max": 3.0, "mean": 0.0, "std": 1.0, "p1": -2.3, "p99": 2.3}
    summary = {
        "passed": False,
        "checks": [
            {
                "name": "scale_table",
                "status": "pass",
                "message": "zero-prediction MSE within a factor 1.2 across modalities",
                "values": {
                    "raw": {
                        "T1w": {**stats, "mean": 1500.0, "std": 600.0, "mse_zero": 2.6e6},
                        "bold": {**stats, "mean": 7000.0, "std": 1500.0, "mse_zero": 5.1e7},
                        "dwi": {**stats, "mean": 900.0, "std": 700.0, "mse_zero": 1.3e6},
                    },
                    "normalized": {
                        "T1w": {**stats, "mse_zero": 1.0},
                        "bold": {**stats, "mse_zero": 0.98},
                        "dwi": {**stats, "mse_zero": 1.2},
                    },
                    "max_scale_ratio": 100.0,
                },
            },
            {
                "name": "normalized_stats",
                "status": "warn",
                "message": "sub-02 task-rest run-1: 3 voxels with |mean| > 0.001 "
                "(largest 0.004); raise checks.stats_tolerance to accept",
                "values": {},
            },
            {
                "name": "schedule",
                "status": "fail",
                "message": "warmup_steps 50 >= total_steps 30",
                "values": {},
            },
        ],
    }
    path.write_text(json.dumps(summary))
    return path


PLAN = {
    "kind": "plan",
    "total_steps": 30,
    "warmup_steps": 5,
    "lr": 1e-3,
    "min_lr_ratio": 0.1,
    "epochs": 3,
    "batches_per_epoch": 10,
    "grad_accum_steps": 1,
    "world_size": 1,
    "config_hash": "abc",
}


def validation_in_time(loss: float) -> dict:
    """What a validation of BOLD windows adds to its record: the baseline and the loss
    with the frames shuffled in time (here 1.5x ``loss``)."""
    return {
        "baseline_per_modality": {"bold": 1.0},
        "loss_shuffled_time": 1.5 * loss,
        "loss_shuffled_time_per_modality": {"bold": 1.5 * loss},
    }


def write_metrics(
    path: Path, lr_of_step, restart_at: int | None = None, *, windows: bool = False
) -> Path:
    """A metrics.jsonl of 30 steps with a skipped non-finite step and validation lines.

    ``lr_of_step(step)`` gives the actual lr logged at 1-based step ``step``; with
    ``restart_at`` a second plan line is written before that step (a resumed run). With
    ``windows`` (BOLD windows, as with ``train.window`` > 1) the validation lines also hold
    the BOLD baseline (1.0) and the loss on the windows shuffled in time (1.5x the loss),
    and a ``summary`` line ends the file.
    """
    rng = np.random.default_rng(0)
    lines = [PLAN]
    modalities = ["T1w", "bold", "dwi"]
    for step in range(1, PLAN["total_steps"] + 1):
        if step == restart_at:
            lines.append(PLAN)
        active = [modalities[step % 3]]
        per_mod = {m: float(1.0 / step**0.3 * (1 + 0.1 * rng.random())) for m in active}
        grad = math.nan if step == 7 else float(5.0 / step**0.5)
        lines.append(
            {
                "kind": "step",
                "step": step,
                "epoch": (step - 1) // 10,
                "lr": lr_of_step(step),
                "loss": sum(per_mod.values()),
                "loss_per_modality": per_mod,
                "dummy_loss": 1e-7 * (1 + rng.random()),
                "grad_norm": grad,
                "skipped": step == 7,
                "modalities": active,
                "samples_per_s": float(40 + 5 * rng.random()),
                "seconds_per_step": 0.1,
            }
        )
        if step % 5 == 0:
            norms = {f"[{m}] embed.{m}": float(rng.random()) for m in active}
            norms.update({f"[inactive] embed.{m}": 1e-9 for m in modalities if m not in active})
            norms[f"[inactive] head.{modalities[(step + 1) % 3]}"] = 0.0
            lines.append({"kind": "grad_norms", "step": step, "norms": norms})
        if step % 10 == 0:
            lines.append(
                {
                    "kind": "validation",
                    "step": step,
                    "epoch": step // 10 - 1,
                    "loss": 1.2 / step**0.3,
                    "loss_per_modality": {"bold": 1.2 / step**0.3},
                    **(validation_in_time(1.2 / step**0.3) if windows else {}),
                }
            )
    if windows:
        lines.append(
            learning_summary(lines, modalities=["bold"], max_ratio=0.9, strict=False, step=30)
        )
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path
