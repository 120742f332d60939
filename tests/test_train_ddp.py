"""DDP with 2 CPU processes (gloo): single-modality batches that differ across ranks."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
import torch
import torch.multiprocessing as mp
from bidstrain.train import distributed
from bidstrain.train.loop import Trainer, optimizer_step
from bidstrain.train.model import MultiModalAutoencoder
from bidstrain.train.schedule import build_scheduler
from train_support import REPO, tiny_stores, train_cli_args, train_config

pytestmark = pytest.mark.slow

WORLD_SIZE = 2


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _join(rank: int, port: int) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(WORLD_SIZE),
    )
    torch.set_num_threads(1)


def _train_rank(rank, port, config, stores, out_dir):
    from bidstrain.train.loop import train

    _join(rank, port)
    model = train(
        config,
        stores,
        {},
        model_out=f"{out_dir}/model.pt",
        metrics_out=f"{out_dir}/metrics.jsonl",
        checkpoint_dir=f"{out_dir}/checkpoints",
    )
    torch.save(model.state_dict(), f"{out_dir}/rank{rank}.pt")


def test_single_modality_batches_differ_across_ranks_and_weights_stay_identical(tmp_path):
    stores = tiny_stores(tmp_path, {"T1w": 2, "bold": 6, "dwi": 4})
    config = train_config(batching="single_modality", epochs=2)
    mp.spawn(_train_rank, args=(_free_port(), config, stores, str(tmp_path)), nprocs=WORLD_SIZE)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if r["kind"] == "step"]
    assert records[0]["world_size"] == WORLD_SIZE
    assert len(steps) == records[0]["total_steps"] == 6  # 1 + 3 + 2 batches over 2 ranks
    assert any(len(r["modalities"]) == 2 for r in steps), "ranks never had different modalities"
    rank0 = torch.load(tmp_path / "rank0.pt")
    rank1 = torch.load(tmp_path / "rank1.pt")
    for name, value in rank0.items():
        assert torch.equal(value, rank1[name]), name


def test_without_the_dummy_loss_ddp_fails_with_an_explanation(tmp_path):
    stores = tiny_stores(tmp_path, {"T1w": 2, "bold": 6, "dwi": 4})
    config = train_config(batching="single_modality", dummy_loss={"enabled": False})
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={WORLD_SIZE}",
        *train_cli_args(tmp_path, config, stores),
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO / "workflow"), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode != 0
    assert "got no gradient on rank" in result.stderr, result.stderr[-3000:]
    assert "enable train.dummy_loss.enabled" in result.stderr.lower()
    assert not (tmp_path / "model.pt").exists()


def _nan_step_rank(rank, port, out_dir):
    _join(rank, port)
    config = train_config()
    context = distributed.init(0)
    torch.manual_seed(0)
    module = MultiModalAutoencoder(config["shapes"], patch=4, dim=16, depth=1, heads=2)
    model = torch.nn.parallel.DistributedDataParallel(module)
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-3)
    scheduler = build_scheduler(optimizer, total_steps=10, warmup_steps=0, min_lr_ratio=0.1)
    trainer = Trainer(model, module, optimizer, scheduler, context, config)
    generator = torch.Generator().manual_seed(rank)
    batch = {"bold": torch.randn(2, 1, 8, 8, 8, generator=generator)}
    if rank == 1:
        batch["bold"][0, 0, 3, 3, 3] = float("nan")
    before = {name: p.detach().clone() for name, p in module.named_parameters()}
    result = optimizer_step(trainer, [batch], log_norms=False)
    unchanged = all(torch.equal(before[n], p) for n, p in module.named_parameters())
    healthy = optimizer_step(trainer, [{"bold": torch.randn(2, 1, 8, 8, 8)}], log_norms=False)
    moved = not all(torch.equal(before[n], p) for n, p in module.named_parameters())
    with open(f"{out_dir}/rank{rank}.json", "w") as file:
        json.dump(
            {
                "skipped": result.skipped,
                "unchanged": unchanged,
                "next_skipped": healthy.skipped,
                "moved": moved,
                "adam_state": len(optimizer.state),
            },
            file,
        )
    distributed.shutdown(context)


def test_nan_on_one_rank_skips_the_step_on_every_rank(tmp_path):
    mp.spawn(_nan_step_rank, args=(_free_port(), str(tmp_path)), nprocs=WORLD_SIZE)
    for rank in range(WORLD_SIZE):
        outcome = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert outcome["skipped"] and outcome["unchanged"], (rank, outcome)
        assert not outcome["next_skipped"] and outcome["moved"], (rank, outcome)
