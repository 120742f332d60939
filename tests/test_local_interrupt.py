"""A Ctrl-C on ``bidstrain run`` during a local training: the trainer stops after its
step with a checkpoint, Snakemake ends and removes its lock, and the next run resumes the
training from that step (the pause hook of :mod:`bidstrain.train.stop` holds the trainer
at a known step; the signal, not the machine's speed, decides where it stops)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest
from bidstrain.train.stop import PAUSE_AT_STEP
from conftest import REPO, snakemake_env

pytestmark = pytest.mark.integration

PAUSE_AFTER = 2


def _bidstrain(*args: str, env: dict[str, str], **popen) -> subprocess.Popen:
    command = [sys.executable, "-m", "bidstrain.cli", *args]
    return subprocess.Popen(command, env=env, text=True, **popen)


def test_a_ctrl_c_during_local_training_checkpoints_and_the_next_run_resumes(demo_bids, tmp_path):
    study = tmp_path / "study"
    env = {**snakemake_env(uses_slurm=False), "PYTHONPATH": str(REPO / "workflow")}
    init = _bidstrain("init", str(study), "--bids-dir", str(demo_bids), env=env)
    assert init.wait(timeout=120) == 0
    checkpoints = study / "results" / "train" / "main" / "checkpoints"
    paused = checkpoints / f"paused-at-{PAUSE_AFTER}"
    run = _bidstrain(
        "-C", str(study), "run", "train", "--cores", "2",
        env={**env, PAUSE_AT_STEP: str(PAUSE_AFTER)},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 600  # a bound on a failure, not a timing
        while not paused.exists():
            assert run.poll() is None, run.stdout.read()
            assert time.monotonic() < deadline, "the trainer never paused"
            time.sleep(0.1)
        run.send_signal(signal.SIGINT)  # a terminal's Ctrl-C reaches bidstrain alone
        output = run.communicate(timeout=300)[0]
    finally:
        run.kill()
    assert run.returncode != 0, output
    log = (study / "logs" / "train" / "main.log").read_text()
    assert "received SIGINT: stopping at the next step boundary, after a checkpoint" in log
    assert (checkpoints / f"step-{PAUSE_AFTER:08d}.pt").exists(), log
    assert not (study / "results" / "train" / "main" / "model.pt").exists()
    assert not any((study / ".snakemake" / "locks").glob("*"))  # the next run starts

    again = _bidstrain(
        "-C", str(study), "run", "train", "--cores", "2",
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    output = again.communicate(timeout=600)[0]
    assert again.returncode == 0, output
    log = (study / "logs" / "train" / "main.log").read_text()
    assert f"resumed from step {PAUSE_AFTER}" in log, log
    assert (study / "results" / "train" / "main" / "model.pt").exists()
