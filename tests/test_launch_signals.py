"""The launcher's torchrun, signalled: SIGTERM/SIGUSR1/SIGINT reach the trainers (as
SIGTERM), the launcher
waits for them however long their checkpoint takes, and its exit status is theirs.

The trainers are two stand-ins started by the launcher's torchrun (``run_torchrun``, as
``bidstrain.train.launch`` runs it on one node with two GPUs): each blocks SIGTERM, says
it is ready, waits for SIGTERM, says so, then waits until the test releases it (a
checkpoint that takes as long as it takes) and exits 75, or 1 for a trainer told to fail.
torchrun's shutdown timeout is 0 s here, so a launcher that gave up waiting would kill
them at once and no trainer would say it finished.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from bidstrain.train.stop import EXIT_INTERRUPTED
from conftest import REPO

pytestmark = pytest.mark.integration

WAIT_S = 120

#: ``failing`` for trainers the stop reaches before they handle SIGTERM
UNPREPARED = -2

TRAINER = (
    f"UNPREPARED = {UNPREPARED}\n"
    + """
import os, signal, sys, time
from pathlib import Path

out, failing = Path(sys.argv[1]), int(sys.argv[2])
rank = int(os.environ["RANK"])
if failing == UNPREPARED:  # still importing: SIGTERM's default action ends it
    (out / f"ready{rank}").write_text(str(os.getpid()))
    signal.pause()
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
(out / f"ready{rank}").write_text(str(os.getpid()))
signal.sigwait({signal.SIGTERM})
(out / f"stopping{rank}").touch()
while not (out / "release").exists():
    time.sleep(0.05)
(out / f"finished{rank}").touch()
sys.exit(1 if rank == failing else 75)
"""
)

LAUNCHER = """
import sys
from bidstrain.train.launch import run_torchrun
sys.exit(run_torchrun(["--standalone", "--nproc-per-node", "2", *sys.argv[1:]]))
"""


def _wait_for(paths: list[Path], launcher: subprocess.Popen) -> None:
    deadline = time.monotonic() + WAIT_S
    while not all(path.exists() for path in paths):
        if launcher.poll() is not None:
            raise AssertionError(f"launcher exited {launcher.returncode} before {paths}")
        if time.monotonic() > deadline:
            raise AssertionError(f"no {paths} after {WAIT_S} s")
        time.sleep(0.05)


@pytest.mark.parametrize(
    ("signalled", "failing", "expected"),
    [
        ("launcher", 1, 1),
        pytest.param("launcher_and_trainers", -1, EXIT_INTERRUPTED, marks=pytest.mark.slow),
        pytest.param("launcher", -1, EXIT_INTERRUPTED, marks=pytest.mark.slow),
        pytest.param("launcher_usr1", -1, EXIT_INTERRUPTED, marks=pytest.mark.slow),
        pytest.param("launcher_int", -1, EXIT_INTERRUPTED, marks=pytest.mark.slow),
        pytest.param("launcher_and_trainers", 0, 1, marks=pytest.mark.slow),
    ],
)
def test_a_signalled_launcher_waits_for_its_trainers_and_exits_with_their_status(
    tmp_path, signalled, failing, expected
):
    script = tmp_path / "trainer.py"
    script.write_text(TRAINER)
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO / "workflow"),
        "TORCH_ELASTIC_SHUTDOWN_TIMEOUT": "0",
        "CUDA_VISIBLE_DEVICES": "",
    }
    launcher = subprocess.Popen(
        [sys.executable, "-c", LAUNCHER, str(script), str(tmp_path), str(failing)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        ready = [tmp_path / f"ready{rank}" for rank in (0, 1)]
        _wait_for(ready, launcher)
        sent = {"launcher_usr1": signal.SIGUSR1, "launcher_int": signal.SIGINT}
        launcher.send_signal(sent.get(signalled, signal.SIGTERM))
        if signalled == "launcher_and_trainers":  # as SLURM signals every process of a job
            for path in ready:
                os.kill(int(path.read_text()), signal.SIGTERM)
        _wait_for([tmp_path / f"stopping{rank}" for rank in (0, 1)], launcher)
        (tmp_path / "release").touch()
        output = launcher.communicate(timeout=WAIT_S)[0]
    finally:
        launcher.kill()
    assert launcher.returncode == expected, output[-3000:]
    assert (tmp_path / "finished0").exists() and (tmp_path / "finished1").exists(), output


@pytest.mark.slow
def test_trainers_stopped_before_they_handle_sigterm_count_as_interrupted(tmp_path):
    script = tmp_path / "trainer.py"
    script.write_text(TRAINER)
    env = {**os.environ, "PYTHONPATH": str(REPO / "workflow"), "CUDA_VISIBLE_DEVICES": ""}
    command = [sys.executable, "-c", LAUNCHER, str(script), str(tmp_path), str(UNPREPARED)]
    launcher = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        _wait_for([tmp_path / f"ready{rank}" for rank in (0, 1)], launcher)
        launcher.send_signal(signal.SIGTERM)
        output = launcher.communicate(timeout=WAIT_S)[0]
    finally:
        launcher.kill()
    assert launcher.returncode == EXIT_INTERRUPTED, output[-3000:]


#: A fresh interpreter (the test process may have children of other tests: a W&B service,
#: multiprocessing's resource tracker) starts a child that starts a grandchild; it prints
#: what ``child_pids`` finds, then the child's and the grandchild's process ids.
CHILDREN = """
import json, os, signal, subprocess, sys
from bidstrain.train.launch import child_pids

before = child_pids()
child = subprocess.Popen(
    [sys.executable, "-c", "import subprocess, sys; g = subprocess.Popen([sys.executable, "
     "'-c', 'import time; time.sleep(60)']); print(g.pid, flush=True); g.wait()"],
    stdout=subprocess.PIPE,
    text=True,
)
grandchild = int(child.stdout.readline())
found = child_pids()
os.kill(grandchild, signal.SIGKILL)
child.wait()
print(json.dumps([before, found, child_pids(), child.pid, grandchild]))
"""


def test_the_launcher_finds_its_own_children_only():
    result = subprocess.run(
        [sys.executable, "-c", CHILDREN],
        capture_output=True,
        text=True,
        timeout=WAIT_S,
        env={**os.environ, "PYTHONPATH": str(REPO / "workflow")},
    )
    assert result.returncode == 0, result.stderr
    before, found, after, child, grandchild = json.loads(result.stdout)
    assert before == [] and after == []
    assert found == [child] and grandchild not in found
