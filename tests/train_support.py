"""Tiny stores for the training tests (written with the real store writer)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from bidstrain.config import validate_config
from bidstrain.store import create_store

REPO = Path(__file__).resolve().parents[1]


def write_store(
    path: Path,
    *,
    modality: str,
    n_time: int,
    grid: tuple[int, int, int] = (10, 12, 10),
    seed: int = 0,
    scale: float = 1.0,
    nan_volume: int | None = None,
) -> str:
    """Write a store of ``n_time`` random volumes in an ellipsoid mask; return its path.

    ``nan_volume`` puts a NaN into that volume (to exercise the non-finite guard).
    """
    rng = np.random.default_rng(seed)
    axes = np.meshgrid(*[np.linspace(-1, 1, n) for n in grid], indexing="ij")
    mask = sum(a**2 for a in axes) < 0.8
    n_voxel = int(mask.sum())
    data = (scale * rng.standard_normal((n_time, n_voxel))).astype(np.float32)
    if nan_volume is not None:
        data[nan_volume, 0] = np.nan
    stats_dim = "voxel" if modality == "bold" else "time"
    n_stats = n_voxel if stats_dim == "voxel" else n_time
    with create_store(
        path, mask=mask, affine=np.eye(4), time=np.arange(n_time, dtype=np.float64)
    ) as writer:
        writer.write(0, data)
        writer.add_variable("mean", (stats_dim,), np.zeros(n_stats, dtype=np.float32))
        writer.add_variable("std", (stats_dim,), np.ones(n_stats, dtype=np.float32))
        writer.attrs.update(
            modality=modality,
            subject="01",
            source_path=str(path),
            ddof=1,
            n_zero_variance=0,
            stats_dim=stats_dim,
            stats_from=[str(path)],
        )
    return str(path)


def tiny_stores(root: Path, counts: dict[str, int], **kwargs) -> dict[str, list[str]]:
    """One store per modality with ``counts[modality]`` volumes."""
    return {
        modality: [
            write_store(root / f"{modality}.zarr", modality=modality, n_time=n, seed=i, **kwargs)
        ]
        for i, (modality, n) in enumerate(counts.items())
    }


def train_config(**overrides) -> dict:
    """The ``train`` section with the schema's defaults, small shapes, and ``overrides``
    (nested dicts are merged one level deep)."""
    config = validate_config({"bids_dir": "unused"}, REPO / "config" / "schema.yaml")["train"]
    config.update(
        shapes={"T1w": [8, 8, 8], "bold": [8, 8, 8], "dwi": [8, 8, 8]},
        patch_size=4,
        embed_dim=16,
        depth=1,
        heads=2,
        batch_size=2,
        epochs=2,
        warmup_steps=2,
        log_every=2,
    )
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict) and key != "shapes":
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    return config


def train_cli_args(tmp_path: Path, config: dict, stores: dict[str, list[str]]) -> list[str]:
    """Arguments of ``python -m bidstrain.train`` writing its outputs under ``tmp_path``."""
    return [
        "-m",
        "bidstrain.train",
        "--config-json",
        json.dumps(config),
        "--train-stores-json",
        json.dumps(stores),
        "--model-out",
        str(tmp_path / "model.pt"),
        "--metrics-out",
        str(tmp_path / "metrics.jsonl"),
        "--checkpoint-dir",
        str(tmp_path / "checkpoints"),
    ]
