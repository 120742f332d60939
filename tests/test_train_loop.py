"""The training loop end to end on tiny stores: metrics, validation, checkpoints, resume
after SIGTERM (at a step the test stop hooks fix), a changed run that sets the checkpoints
aside and starts afresh, one trainer per experiment, the non-finite guard."""

from __future__ import annotations

import json
import logging
import math
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading

import pytest
import torch
from bidstrain.errors import BidstrainError
from bidstrain.train.__main__ import read_stores
from bidstrain.train.checkpoint import (
    changes,
    load_latest,
    run_hash,
    run_identity,
    save,
    set_aside,
)
from bidstrain.train.loop import Interrupted, train
from bidstrain.train.losses import DEFINITION
from bidstrain.train.metrics import MetricsLog
from bidstrain.train.state import TrainState
from bidstrain.train.stop import EXIT_INTERRUPTED, PAUSE_AT_STEP, STOP_AT_STEP, StopSignals
from train_support import (
    assert_same_steps,
    read_until,
    tiny_stores,
    train_cli_args,
    train_config,
    trainer_env,
    write_store,
)

pytestmark = pytest.mark.integration

COUNTS = {"T1w": 2, "bold": 6, "dwi": 4}


def run(tmp_path, stores, validation=None, **overrides):
    out = tmp_path / "out"
    train(
        train_config(**overrides),
        stores,
        validation or {},
        model_out=out / "model.pt",
        metrics_out=out / "metrics.jsonl",
        checkpoint_dir=out / "checkpoints",
    )
    return records(out / "metrics.jsonl")


def records(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def of_kind(lines, kind):
    return [line for line in lines if line["kind"] == kind]


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    return tiny_stores(tmp_path_factory.mktemp("stores"), COUNTS)


def test_metrics_follow_the_contract(tmp_path, stores):
    """Also runs the DataLoader with a spawned worker process."""
    validation = {"bold": [write_store(tmp_path / "val.zarr", modality="bold", n_time=3, seed=7)]}
    lines = run(tmp_path, stores, validation, epochs=2, grad_accum_steps=2, num_workers=1)
    (plan,) = of_kind(lines, "plan")
    assert plan["batches_per_epoch"] == 6 and plan["total_steps"] == 6  # 3 groups x 2 epochs
    steps = of_kind(lines, "step")
    assert [s["step"] for s in steps] == list(range(1, 7))
    assert [s["epoch"] for s in steps] == [0, 0, 0, 1, 1, 1]
    assert all(s["grad_norm"] > 0 and math.isfinite(s["grad_norm"]) for s in steps[:3])
    assert steps[0]["lr"] == pytest.approx(1e-3 / 3)  # warm-up of 2 steps: above 0 at once
    for step in steps:
        assert set(step) >= {"loss", "loss_per_modality", "dummy_loss", "modalities"}
        assert set(step["loss_per_modality"]) == set(step["modalities"])
        assert not step["skipped"] and step["samples_per_s"] > 0
    assert [g["step"] for g in of_kind(lines, "grad_norms")] == [2, 4, 6]
    # every parameter is in one logged group: together they make the step's total norm
    totals = {s["step"]: s["grad_norm"] for s in steps}
    for record in of_kind(lines, "grad_norms"):
        together = math.sqrt(sum(norm**2 for norm in record["norms"].values()))
        assert together == pytest.approx(totals[record["step"]], rel=1e-4), record
    validations = of_kind(lines, "validation")
    assert [(v["step"], v["epoch"]) for v in validations] == [(3, 0), (6, 1)]
    assert set(validations[0]["loss_per_modality"]) == {"bold"}
    saved = torch.load(tmp_path / "out" / "model.pt")
    assert saved["step"] == 6 and "embed.bold.proj.weight" in saved["model"]
    saved = load_latest(tmp_path / "out" / "checkpoints")
    assert saved["config_hash"] == plan["config_hash"] == run_hash(saved["run"])
    assert saved["train_state"] == {
        "step": 6,
        "epoch": 2,
        "position": 0,
        "consecutive_skips": 0,
        "skipped_steps": 0,
        "world_size": 1,
    }


def test_a_changed_setting_sets_the_checkpoints_aside_and_trains_afresh(
    tmp_path, stores, caplog, monkeypatch
):
    """An interrupted run, then the same experiment with another ``train.lr``: the new run
    starts at step 0 and ends; the old checkpoint and metrics move to a sibling folder,
    named in the log with the change, where they still load."""
    monkeypatch.setenv(STOP_AT_STEP, "3")
    with pytest.raises(Interrupted):
        run(tmp_path, stores, epochs=1)
    monkeypatch.delenv(STOP_AT_STEP)
    folder = tmp_path / "out" / "checkpoints"
    old_hash = load_latest(folder)["config_hash"]
    with caplog.at_level(logging.WARNING, logger="bidstrain.train"):
        lines = run(tmp_path, stores, epochs=1, lr=5e-4)
    assert len(of_kind(lines, "plan")) == 1 and lines[0]["config_hash"] != old_hash
    assert [s["step"] for s in of_kind(lines, "step")] == list(range(1, 7))
    aside = folder.with_name(f"checkpoints-{old_hash}")
    moved = f"(train.lr 0.001 -> 0.0005): moved metrics.jsonl, step-00000003.pt to {aside}"
    assert moved in caplog.text
    assert "training starts from step 0" in caplog.text
    kept = load_latest(aside)
    assert kept["train_state"]["step"] == 3 and kept["run"]["train"]["lr"] == 1e-3
    assert [s["step"] for s in of_kind(records(aside / "metrics.jsonl"), "step")] == [1, 2, 3]
    assert load_latest(folder)["train_state"]["step"] == 6
    assert (folder / "trainer.lock").exists()


def test_stores_rewritten_with_the_same_content_resume_and_other_content_does_not(
    tmp_path, caplog, monkeypatch
):
    """An interrupted run; its stores written again from the same values (a forced rerun
    of normalization on unchanged data): the run resumes at step 4. Written again with
    other values: it starts from step 0, the log naming the store."""
    stores = tiny_stores(tmp_path / "stores", COUNTS)
    monkeypatch.setenv(STOP_AT_STEP, "3")
    with pytest.raises(Interrupted):
        run(tmp_path, stores, epochs=1)
    monkeypatch.delenv(STOP_AT_STEP)
    folder = tmp_path / "out" / "checkpoints"
    metadata = os.path.join(stores["bold"][0], "zarr.json")
    before = os.stat(metadata).st_mtime_ns
    assert tiny_stores(tmp_path / "stores", COUNTS) == stores  # the same values, again
    os.utime(metadata, ns=(before + 10**9, before + 10**9))  # whatever the clock's step
    with caplog.at_level(logging.INFO, logger="bidstrain.train"):
        lines = run(tmp_path, stores, epochs=1)
    assert "resumed from step 3" in caplog.text
    assert [s["step"] for s in of_kind(lines, "step")] == [1, 2, 3, 4, 5, 6]  # 1-3 kept
    assert not list(tmp_path.glob("out/checkpoints-*"))
    caplog.clear()

    write_store(tmp_path / "stores" / "bold.zarr", modality="bold", n_time=COUNTS["bold"], seed=9)
    with caplog.at_level(logging.WARNING, logger="bidstrain.train"):
        lines = run(tmp_path, stores, epochs=1)
    assert [s["step"] for s in of_kind(lines, "step")] == list(range(1, 7))
    assert f"1 store(s) rewritten with other content since ({stores['bold'][0]})" in caplog.text
    assert "training starts from step 0" in caplog.text
    assert load_latest(folder)["train_state"]["step"] == 6


def test_metrics_log_drops_lines_past_the_resumed_step(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(
        '{"kind": "plan"}\n{"kind": "step", "step": 1}\n{"kind": "step", "step": 2}\n'
        '{"kind": "step", "step": 3}\n{"kind": "st'
    )
    log = MetricsLog(path, resume_step=2)
    log.write({"kind": "plan"})
    log.close()
    assert [r.get("step") for r in records(path)] == [None, 1, 2, None]


RESUME = {"epochs": 6, "mask_ratio": 0.25, "checkpoint_every": 1000}


@pytest.fixture(scope="module")
def reference(tmp_path_factory, stores):
    """The metrics of an uninterrupted run with the settings :data:`RESUME`."""
    return run(tmp_path_factory.mktemp("reference"), stores, **RESUME)


def _cli(out, config, stores, *, shell=False, **env):
    """Start the trainer (``shell``: as ``bash -c 'exec python ...'``, the rule's form), in
    a session of its own (its process group: SLURM signals every process of a step)."""
    command = [sys.executable, *train_cli_args(out, config, stores)]
    if shell:
        command = ["bash", "-c", "exec " + shlex.join(command)]
    return subprocess.Popen(
        command,
        env=trainer_env(**env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def _rerun_resumes_and_matches(out, config, stores, reference, *, from_step):
    """Run the trainer again: it resumes from ``from_step`` and its metrics are those of
    the uninterrupted ``reference``, every step exactly once."""
    job = _cli(out, config, stores)
    output = job.communicate(timeout=120)[0]
    assert job.returncode == 0, output
    assert f"resumed from step {from_step}" in output
    assert_same_steps(records(out / "metrics.jsonl"), reference)


@pytest.mark.parametrize("shell", [False, True], ids=["trainer", "job-shell"])
def test_resume_after_sigterm_reproduces_the_uninterrupted_metrics(
    tmp_path, stores, reference, shell
):
    """SIGTERM to the trainer, or to the job's shell that exec'd it, after step 3 (the
    pause hook holds the trainer there): stop at the step boundary, checkpoint, exit 75;
    the rerun resumes and logs exactly the uninterrupted run's metrics."""
    config = train_config(**RESUME)
    job = _cli(tmp_path, config, stores, shell=shell, **{PAUSE_AT_STEP: "3"})
    output = read_until(job, "paused after step 3")
    assert (tmp_path / "checkpoints" / "paused-at-3").exists(), output
    os.kill(job.pid, signal.SIGTERM)  # the bash pid is the trainer's after exec
    output += job.communicate(timeout=120)[0]
    assert job.returncode == EXIT_INTERRUPTED, output
    assert "SIGTERM" in output and not (tmp_path / "model.pt").exists()
    stopped = load_latest(tmp_path / "checkpoints")["train_state"]
    assert stopped["step"] == 3 and 2 <= stopped["step"] < len(of_kind(reference, "step"))

    _rerun_resumes_and_matches(tmp_path, config, stores, reference, from_step=3)


@pytest.mark.parametrize(
    "signum",
    [signal.SIGTERM, pytest.param(signal.SIGUSR1, marks=pytest.mark.slow), signal.SIGINT],
    ids=["TERM", "USR1", "INT"],
)
def test_a_signal_to_every_process_of_the_job_stops_a_trainer_with_workers(
    tmp_path, stores, reference, signum
):
    """SLURM signals every process of a job step (time limit, preemption, requeue), a
    terminal's Ctrl-C every process of its group: the DataLoader workers and
    multiprocessing's resource tracker ignore it, the trainer stops at the step boundary
    with its checkpoint and exit 75, and the rerun resumes exactly."""
    config = train_config(**RESUME, num_workers=1)
    job = _cli(tmp_path, config, stores, **{PAUSE_AT_STEP: "3"})
    output = read_until(job, "paused after step 3")
    os.killpg(job.pid, signum)
    output += job.communicate(timeout=120)[0]
    assert job.returncode == EXIT_INTERRUPTED, output
    assert "Traceback" not in output and "killed by signal" not in output, output
    assert load_latest(tmp_path / "checkpoints")["train_state"]["step"] == 3
    _rerun_resumes_and_matches(tmp_path, config, stores, reference, from_step=3)


def test_stop_hook_stops_after_the_step_like_sigterm(tmp_path, stores):
    config = train_config(**RESUME)
    job = _cli(tmp_path, config, stores, **{STOP_AT_STEP: "3"})
    output = job.communicate(timeout=120)[0]
    assert job.returncode == EXIT_INTERRUPTED, output
    assert "interrupted at step 3; checkpoint written" in output
    assert [p.name for p in (tmp_path / "checkpoints").glob("step-*.pt")] == ["step-00000003.pt"]
    steps = of_kind(records(tmp_path / "checkpoints" / "metrics.jsonl"), "step")
    assert [s["step"] for s in steps] == [1, 2, 3]  # written although 3 is no logging step


def test_a_second_trainer_on_the_experiment_stops_at_once_and_kill_9_leaves_no_lock(
    tmp_path, stores, reference
):
    config = train_config(**{**RESUME, "checkpoint_every": 2})
    first = _cli(tmp_path, config, stores, **{PAUSE_AT_STEP: "3"})
    output = read_until(first, "paused after step 3")
    assert "paused after step 3" in output, output

    second = _cli(tmp_path, config, stores)
    output = second.communicate(timeout=120)[0]
    assert second.returncode == 1, output
    assert f"another trainer (pid {first.pid} on host {socket.gethostname()})" in output
    assert "Wait for it to finish, or stop it" in output

    first.kill()  # SIGKILL: no handler, no cleanup; the kernel drops the lock
    first.communicate(timeout=60)
    _rerun_resumes_and_matches(tmp_path, config, stores, reference, from_step=2)


def test_the_planned_world_size_must_be_the_real_one(tmp_path, stores):
    command = [sys.executable, *train_cli_args(tmp_path, train_config(), stores, world_size=2)]
    result = subprocess.run(command, env=trainer_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stderr
    assert "planned world size 2 (--world-size) but this run has 1 rank(s)" in result.stderr
    assert not (tmp_path / "checkpoints").exists()


def test_the_stores_file_is_checked(tmp_path):
    path = tmp_path / "stores.json"
    path.write_text(json.dumps({"training": {"bold": ["a.zarr"]}, "plan": 1}))
    assert read_stores(path) == ({"bold": ["a.zarr"]}, {})
    path.write_text(json.dumps({"training": {"bold": "a.zarr"}}))
    with pytest.raises(BidstrainError, match='"training" must map each modality'):
        read_stores(path)
    path.write_text("{")
    with pytest.raises(BidstrainError, match="cannot read the store lists"):
        read_stores(path)


def test_a_second_ctrl_c_stops_at_once_and_other_signals_never_do():
    with StopSignals() as signals:
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGINT)  # the first Ctrl-C, after SLURM's SIGTERM
        assert signals.requested
        os.kill(os.getpid(), signal.SIGUSR1)
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored


@pytest.mark.parametrize("when", ["before", "during"])
def test_waiting_for_a_stop_signal_cannot_miss_it(when):
    """Whether a Ctrl-C comes before the wait starts or while it blocks (from another
    thread, as the kernel may deliver it there), the wait returns, and counts it once: the
    next Ctrl-C is the second."""
    with StopSignals() as signals:
        sender = threading.Thread(target=os.kill, args=(os.getpid(), signal.SIGINT))
        sender.start()
        if when == "before":
            sender.join()
        signals.wait()
        sender.join()
        assert signals.requested
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)


def test_train_state_round_trips_and_counts_epochs():
    state = TrainState(world_size=2)
    for skipped in (False, True, True):
        state.record_step(skipped)
    state.end_epoch()
    restored = TrainState()
    restored.load_state_dict(state.state_dict())
    assert restored == state == TrainState(3, 1, 0, 2, 2, 2)


def test_the_run_hash_covers_settings_world_size_stores_and_their_content(tmp_path):
    """Run settings stay out (a run renamed or logging more often resumes); every other
    part of the run is named when it changes. A store rewritten with the same content is
    the same run; with other content, another."""
    training = tiny_stores(tmp_path, {"T1w": 1, "bold": 2})
    validation = {"bold": [write_store(tmp_path / "val.zarr", modality="bold", n_time=2)]}
    config = train_config()
    identity = run_identity(config, 1, training, validation)
    same = train_config(log_every=7, num_workers=2, experiment="other")
    assert run_hash(run_identity(same, 1, training, {**validation, "dwi": []})) == run_hash(
        identity
    )
    assert changes(identity, identity) == []

    changed = run_identity(
        train_config(lr=5e-4, loss={"normalize": "std"}), 2, training, validation
    )
    assert changes(identity, changed) == [
        "train.loss.normalize var -> std",
        "train.lr 0.001 -> 0.0005",
        "world size 1 -> 2",
    ]
    assert run_hash(changed) != run_hash(identity)

    extra = write_store(tmp_path / "bold2.zarr", modality="bold", n_time=2)
    more = {**training, "bold": [*training["bold"], extra]}
    assert changes(identity, run_identity(config, 1, more, {})) == [
        f"training bold stores: 1 added ({extra})",
        f"validation bold stores: 1 removed ({validation['bold'][0]})",
    ]
    # normalize reran on unchanged data: a new zarr.json, the same content
    write_store(tmp_path / "T1w.zarr", modality="T1w", n_time=1, seed=0)
    os.utime(os.path.join(training["T1w"][0], "zarr.json"), ns=(10**9, 10**9))
    assert run_hash(run_identity(config, 1, training, validation)) == run_hash(identity)
    write_store(tmp_path / "T1w.zarr", modality="T1w", n_time=1, seed=5)  # on changed data
    rewritten = run_identity(config, 1, training, validation)
    assert changes(identity, rewritten) == [
        f"1 store(s) rewritten with other content since ({training['T1w'][0]})"
    ]
    assert run_hash(rewritten) != run_hash(identity)
    assert changes(None, identity) == ["the checkpoint records no run configuration"]
    # a checkpoint from before the losses counted only the values with data records no
    # definition: it is another run, and the log says why
    earlier = {k: v for k, v in identity.items() if k != "loss_definition"}
    assert identity["loss_definition"] == DEFINITION > 1
    assert changes(earlier, identity) == [f"loss definition 1 -> {DEFINITION}"]
    assert run_hash(earlier) != run_hash(identity)
    with pytest.raises(BidstrainError, match=r"missing.zarr: cannot read the store's zarr.json"):
        run_identity(config, 1, {"bold": [str(tmp_path / "missing.zarr")]}, {})


def test_aligned_stimulus_stores_rewritten_with_the_same_content_are_the_same_run(tmp_path):
    import numpy as np
    from bidstrain.io.store import ALIGNED_ARRAYS, store_checksum, write_aligned_store

    def aligned(seed):
        features = np.random.default_rng(seed).normal(size=(6, 3))
        arrays = {name: np.arange(3.0) for name in ALIGNED_ARRAYS}
        write_aligned_store(tmp_path / "video.zarr", features, np.arange(6.0), arrays,
                            {"kind": "video"})  # fmt: skip
        return str(tmp_path / "video.zarr")

    training = tiny_stores(tmp_path, {"bold": 1})
    stimuli = {"training": {"video": [aligned(0)]}}
    identity = run_identity(train_config(), 1, training, {}, stimuli)
    assert store_checksum(stimuli["training"]["video"][0]).startswith("xxh3-128:")
    os.utime(tmp_path / "video.zarr" / "zarr.json", ns=(10**9, 10**9))
    aligned(0)  # align_stimuli reran on unchanged features
    assert run_hash(run_identity(train_config(), 1, training, {}, stimuli)) == run_hash(identity)
    aligned(1)
    assert run_hash(run_identity(train_config(), 1, training, {}, stimuli)) != run_hash(identity)


def _checkpoint(step, **extra):
    return {"model": {}, "optimizer": {}, "scheduler": {}, "train_state": {"step": step}, **extra}


def test_set_aside_moves_all_but_the_lock_and_never_overwrites(tmp_path, caplog):
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    identity = run_identity(train_config(), 1, {}, {})
    assert set_aside(folder, None, identity) is None  # nothing to move on a first run

    (folder / "trainer.lock").write_text("host 1")
    save(folder, _checkpoint(4, config_hash="0123456789abcdef"))  # records no run
    (folder / "metrics.jsonl").write_text("{}\n")
    with caplog.at_level(logging.WARNING, logger="bidstrain.train"):
        first = set_aside(folder, load_latest(folder), identity)
    assert first == tmp_path / "checkpoints-0123456789abcdef"
    assert sorted(p.name for p in first.iterdir()) == ["metrics.jsonl", "step-00000004.pt"]
    assert [p.name for p in folder.iterdir()] == ["trainer.lock"]
    assert "(the checkpoint records no run configuration" in caplog.text

    save(folder, _checkpoint(2, config_hash="0123456789abcdef"))
    second = set_aside(folder, load_latest(folder), identity)
    assert second == tmp_path / "checkpoints-0123456789abcdef-2"
    assert load_latest(first)["train_state"]["step"] == 4  # the first folder is untouched
    assert load_latest(second)["train_state"]["step"] == 2

    (folder / "step-00000009.pt").write_bytes(b"cut short")
    assert set_aside(folder, load_latest(folder), identity) == tmp_path / "checkpoints-unreadable"
    assert "(no checkpoint there is readable)" in caplog.text


def test_non_finite_steps_are_skipped_counted_and_stop_the_run_when_too_many(tmp_path):
    stores = {
        "bold": [write_store(tmp_path / "bold.zarr", modality="bold", n_time=8, nan_volume=3)]
    }
    lines = run(tmp_path / "skip", stores, epochs=2, batching="mixed")
    steps = of_kind(lines, "step")
    skipped = [s for s in steps if s["skipped"]]
    assert len(skipped) == 2  # the NaN volume once per epoch
    assert all(not math.isfinite(s["loss"]) for s in skipped)
    assert all(math.isfinite(s["loss"]) for s in steps if not s["skipped"])
    with pytest.raises(BidstrainError, match="train.max_consecutive_skips"):
        run(tmp_path / "limit", stores, epochs=1, max_consecutive_skips=0)
    with pytest.raises(BidstrainError, match=r"\(the loss of bold: NaN or Inf in its data\) "
                       r"\(train.nonfinite: stop"):  # fmt: skip
        run(tmp_path / "stop", stores, epochs=1, nonfinite="stop")


def test_shapes_must_be_multiples_of_the_patch(tmp_path, stores):
    with pytest.raises(BidstrainError, match=r"train.shapes.T1w = \[8, 8, 6\]"):
        run(tmp_path, stores, shapes={"T1w": [8, 8, 6], "bold": [8, 8, 8], "dwi": [8, 8, 8]})


@pytest.mark.parametrize("damage", ["truncated", "not a checkpoint"])
def test_an_unreadable_newest_checkpoint_is_skipped_with_a_warning(tmp_path, caplog, damage):
    state = {key: {"n": 1} for key in ("model", "optimizer", "scheduler", "train_state")}
    torch.save({**state, "config_hash": "a"}, tmp_path / "step-00000001.pt")
    torch.save({**state, "config_hash": "b"}, tmp_path / "step-00000002.pt")
    newest = tmp_path / "step-00000002.pt"
    if damage == "truncated":  # a node lost while the file was written in place
        os.truncate(newest, newest.stat().st_size // 2)
    else:
        newest.write_bytes(b"\x80\x04not a pickle")
    with caplog.at_level(logging.WARNING):
        loaded = load_latest(tmp_path)
    assert loaded["config_hash"] == "a" and loaded["path"].name == "step-00000001.pt"
    assert f"ignoring unreadable checkpoint {newest}" in caplog.text
