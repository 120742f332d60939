"""Tiny stores for the training tests (written with the real store writer)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from bidstrain.config import TrainConfig, validate_config
from bidstrain.io.store import create_store, write_aligned_store

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
    structure: float = 0.0,
) -> str:
    """Write a store of ``n_time`` random volumes in an ellipsoid mask; return its path.

    ``nan_volume`` puts a NaN into that volume (to exercise the non-finite guard).
    ``structure`` > 0 adds something to learn: a fixed spatial pattern (the same in every
    store of the grid) times a random amplitude per volume, ``structure`` times the noise
    in standard deviation, so a masked token is predictable from the visible ones.
    """
    rng = np.random.default_rng(seed)
    axes = np.meshgrid(*[np.linspace(-1, 1, n) for n in grid], indexing="ij")
    mask = sum(a**2 for a in axes) < 0.8
    n_voxel = int(mask.sum())
    data = rng.standard_normal((n_time, n_voxel))
    if structure:
        pattern = np.sign(np.sin(3 * axes[0]) * np.cos(2 * axes[1]) + 0.5 * axes[2])[mask]
        data += structure * rng.standard_normal((n_time, 1)) * pattern[None]
    data = (scale * data / np.sqrt(1 + structure**2)).astype(np.float32)
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


def train_config(**overrides) -> TrainConfig:
    """The typed ``train`` section of :func:`train_settings`."""
    return TrainConfig.from_dict(train_settings(**overrides))


def train_settings(**overrides) -> dict:
    """The ``train`` section with the schema's defaults, small shapes, and ``overrides``
    (nested dicts are merged one level deep), as plain JSON types."""
    config = validate_config({"bids_dir": "unused"})["train"]
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


def train_cli_args(
    out: Path,
    config: TrainConfig,
    stores: dict[str, list[str]],
    *,
    validation: dict[str, list[str]] | None = None,
    world_size: int = 1,
    stimuli: dict[str, dict[str, str]] | None = None,
) -> list[str]:
    """Arguments of ``python -m bidstrain.train`` writing its outputs under ``out``, with
    the settings in ``out/settings.json`` and the store lists (and the aligned stimulus
    stores ``stimuli``) in ``out/stores.json``."""
    settings_file = out / "settings.json"
    settings_file.write_text(json.dumps(config.settings()))
    stores_file = out / "stores.json"
    lists = {"training": stores, "validation": validation or {}, "stimuli": stimuli or {}}
    stores_file.write_text(json.dumps(lists))
    return [
        "-m",
        "bidstrain.train",
        "--settings",
        str(settings_file),
        "--stores",
        str(stores_file),
        "--world-size",
        str(world_size),
        "--model-out",
        str(out / "model.pt"),
        "--model-json-out",
        str(out / "model.json"),
        "--metrics-out",
        str(out / "metrics.jsonl"),
        "--checkpoint-dir",
        str(out / "checkpoints"),
    ]


def trainer_env(**extra: str) -> dict[str, str]:
    """The environment of a trainer process: this one, the package importable, one
    thread per process, and ``extra`` (for example a test stop hook)."""
    return {**os.environ, "PYTHONPATH": str(REPO / "workflow"), "OMP_NUM_THREADS": "1", **extra}


def read_until(process: subprocess.Popen, text: str) -> str:
    """The lines ``process`` printed (stdout, text mode) up to and including the first
    holding ``text``; all of its output when it exits without printing it."""
    lines = []
    for line in process.stdout:
        lines.append(line)
        if text in line:
            break
    return "".join(lines)


def metrics_records(path: Path) -> list[dict]:
    """The records of a ``metrics.jsonl``."""
    return [json.loads(line) for line in path.read_text().splitlines()]


def assert_same_steps(got: list[dict], want: list[dict]) -> None:
    """The ``step`` records of two runs agree: same steps, losses, norms, rates."""
    got = [r for r in got if r["kind"] == "step"]
    want = [r for r in want if r["kind"] == "step"]
    assert [s["step"] for s in got] == [s["step"] for s in want]
    for a, b in zip(got, want, strict=True):
        for key in ("loss", "grad_norm", "lr", "dummy_loss"):
            assert a[key] == pytest.approx(b[key], rel=1e-6, abs=1e-9), (a["step"], key)
        assert a["modalities"] == b["modalities"]


def write_aligned(path: Path, features: np.ndarray, kind: str, bold: str = "") -> str:
    """An aligned stimulus store of ``kind`` holding ``features`` (frames x features),
    z-scored as the alignment job writes them (statistics 0 and 1); return its path."""
    n = features.shape[1]
    arrays = {
        "delay": np.zeros(n, dtype=np.int64),
        "source_feature": np.arange(n),
        "mean": np.zeros(n),
        "std": np.ones(n),
        "constant": np.zeros(n, dtype=bool),
        "raw_mean": features.mean(axis=0),
        "raw_std": features.std(axis=0),
        "raw_min": features.min(axis=0),
        "raw_max": features.max(axis=0),
    }
    attrs = {
        "kind": kind,
        "label": Path(bold).name,
        "bold_store": bold,
        "heldout": False,
        "normalized": True,
        "delay_method": "delays",
        "delays": [2, 3],
        "decoder": {"units": "z"},
        "training_runs": [bold],
        "run_seconds": float(len(features)),
        "seconds_without_stimulus": 0.0,
    }
    write_aligned_store(path, features, np.arange(len(features), dtype=np.float64), arrays, attrs)
    return str(path)
