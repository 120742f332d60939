"""DDP with 2 CPU processes (gloo): single-modality batches that differ across ranks, a
step skipped on every rank, every rank stopping at the same step and resuming exactly, a
run on another world size that sets those checkpoints aside and trains afresh, and rank
0's experiment lock."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import torch.multiprocessing as mp
from bidstrain.train import distributed
from bidstrain.train.checkpoint import load_latest
from bidstrain.train.model import MultiModalAutoencoder
from bidstrain.train.schedule import build_scheduler
from bidstrain.train.step import Trainer, optimizer_step
from bidstrain.train.stop import EXIT_INTERRUPTED, STOP_AT_STEP
from ddp_support import free_port, launch_trainer
from train_support import (
    assert_same_steps,
    metrics_records,
    tiny_stores,
    train_cli_args,
    train_config,
    trainer_env,
)

pytestmark = pytest.mark.integration

WORLD_SIZE = 2


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


DDP_CONFIG = {"batching": "single_modality", "epochs": 2}
COUNTS = {"T1w": 2, "bold": 6, "dwi": 4}


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    """A 2-rank run (``mp.spawn``) of :data:`DDP_CONFIG`: its directory and stores."""
    out = tmp_path_factory.mktemp("ddp")
    stores = tiny_stores(out, COUNTS)
    config = train_config(**DDP_CONFIG)
    mp.spawn(_train_rank, args=(free_port(), config, stores, str(out)), nprocs=WORLD_SIZE)
    return out, stores


def test_single_modality_batches_differ_across_ranks_and_weights_stay_identical(ddp_run):
    tmp_path, _ = ddp_run
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if r["kind"] == "step"]
    assert records[0]["world_size"] == WORLD_SIZE
    assert len(steps) == records[0]["total_steps"] == 6  # 1 + 3 + 2 batches over 2 ranks
    assert any(len(r["modalities"]) == 2 for r in steps), "ranks never had different modalities"
    rank0 = torch.load(tmp_path / "rank0.pt")
    rank1 = torch.load(tmp_path / "rank1.pt")
    for name, value in rank0.items():
        assert torch.equal(value, rank1[name]), name


def test_every_rank_stops_at_the_same_step_resumes_exactly_and_one_rank_starts_afresh(
    tmp_path, ddp_run
):
    """Stopped after step 3 on 2 ranks, the same run (a requeue) resumes and logs the
    uninterrupted run's metrics; then the experiment on 1 rank moves the 2-rank
    checkpoints aside, names the change, and trains from step 0 to the end."""
    reference_dir, stores = ddp_run
    config = train_config(**DDP_CONFIG)
    folder = tmp_path / "checkpoints"
    codes, outputs = launch_trainer(tmp_path, config, stores, 2, **{STOP_AT_STEP: "3"})
    assert codes == [EXIT_INTERRUPTED] * 2, outputs
    assert all("interrupted at step 3" in output for output in outputs), outputs
    assert [p.name for p in folder.glob("step-*.pt")] == ["step-00000003.pt"]

    codes, outputs = launch_trainer(tmp_path, config, stores, 2)
    assert codes == [0, 0], outputs
    assert "resumed from step 3 (epoch 1, batch group 0)" in outputs[0]
    two_ranks = metrics_records(tmp_path / "metrics.jsonl")
    assert_same_steps(two_ranks, metrics_records(reference_dir / "metrics.jsonl"))

    codes, outputs = launch_trainer(tmp_path, config, stores, 1)
    assert codes == [0], outputs
    aside = folder.with_name(f"checkpoints-{two_ranks[0]['config_hash']}")
    log = outputs[0]
    assert f"{folder} held the checkpoints of another run (world size 2 -> 1): moved " in log
    assert f"to {aside}, where they stay; training starts from step 0" in log
    one_rank = metrics_records(tmp_path / "metrics.jsonl")
    assert [r["world_size"] for r in one_rank if r["kind"] == "plan"] == [1]
    steps = [r["step"] for r in one_rank if r["kind"] == "step"]
    assert steps == list(range(1, one_rank[0]["total_steps"] + 1))
    kept = load_latest(aside)
    assert kept["train_state"]["step"] == 6 and kept["train_state"]["world_size"] == 2
    assert metrics_records(aside / "metrics.jsonl")[0]["world_size"] == 2
    assert load_latest(folder)["train_state"]["world_size"] == 1


def test_when_rank_0_cannot_lock_the_experiment_no_rank_trains(tmp_path):
    stores = tiny_stores(tmp_path, {"bold": 4})
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(tmp_path / "checkpoints")],
        env=trainer_env(),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline() == "locked\n"
        codes, outputs = launch_trainer(tmp_path, train_config(), stores, 2)
    finally:
        holder.kill()
        holder.wait()
    assert codes == [1, 1], outputs
    assert f"another trainer (pid {holder.pid} on host" in outputs[0]
    assert "rank 0 could not lock" in outputs[1]
    assert not (tmp_path / "checkpoints" / "metrics.jsonl").exists()


HOLD_LOCK = """
import signal, sys
from bidstrain.train.lock import ExperimentLock
ExperimentLock(sys.argv[1]).acquire()
print("locked", flush=True)
signal.pause()
"""


def test_without_the_dummy_loss_ddp_fails_with_an_explanation(tmp_path):
    stores = tiny_stores(tmp_path, {"T1w": 2, "bold": 6, "dwi": 4})
    config = train_config(batching="single_modality", dummy_loss={"enabled": False})
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={WORLD_SIZE}",
        *train_cli_args(tmp_path, config, stores, world_size=WORLD_SIZE),
    ]
    result = subprocess.run(command, capture_output=True, text=True, env=trainer_env(), timeout=120)
    assert result.returncode != 0
    assert "got no gradient on rank" in result.stderr, result.stderr[-3000:]
    assert "enable train.dummy_loss.enabled" in result.stderr.lower()
    assert not (tmp_path / "model.pt").exists()


def _nan_step_rank(rank, port, out_dir):
    _join(rank, port)
    config = train_config(mask_ratio=0.0)
    context = distributed.init()
    torch.manual_seed(0)
    module = MultiModalAutoencoder(config.model, ["bold"])
    model = torch.nn.parallel.DistributedDataParallel(module)
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-3)
    scheduler = build_scheduler(optimizer, total_steps=10, warmup_steps=0, min_lr_ratio=0.1)
    trainer = Trainer(model, module, optimizer, scheduler, context, config)
    generator = torch.Generator().manual_seed(rank)
    batch = {"bold": torch.randn(2, 1, 8, 8, 8, generator=generator)}
    if rank == 1:
        batch["bold"][0, 0, 3, 3, 3] = float("nan")
    before = {name: p.detach().clone() for name, p in module.named_parameters()}
    result = optimizer_step(trainer, [batch], step=1, log_norms=False)
    unchanged = all(torch.equal(before[n], p) for n, p in module.named_parameters())
    healthy = optimizer_step(
        trainer, [{"bold": torch.randn(2, 1, 8, 8, 8)}], step=1, log_norms=False
    )
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
    mp.spawn(_nan_step_rank, args=(free_port(), str(tmp_path)), nprocs=WORLD_SIZE)
    for rank in range(WORLD_SIZE):
        outcome = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert outcome["skipped"] and outcome["unchanged"], (rank, outcome)
        assert not outcome["next_skipped"] and outcome["moved"], (rank, outcome)
