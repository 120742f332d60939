"""Jobs on several CPU ranks (gloo), joined as torchrun would join them: for the DDP tests
of the trainer and of the encoding model."""

from __future__ import annotations

import socket
import subprocess
import sys

from train_support import train_cli_args, trainer_env


def free_port() -> int:
    """A TCP port on 127.0.0.1 that no process listens on now (for the rendezvous)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch_ranks(args: list[str], world_size: int, **env: str) -> tuple[list[int], list[str]]:
    """``python *args`` on ``world_size`` processes at once, one a rank.

    With more than one rank, each gets ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE`` and a
    fresh ``MASTER_ADDR``/``MASTER_PORT``, and no GPU (the ranks join over gloo on the
    CPU); a single rank runs without them. ``env`` is added to each process's
    environment (:func:`train_support.trainer_env`), for example a test stop hook.

    Returns
    -------
    list of int, list of str
        Exit statuses and outputs (stdout and stderr together), rank 0 first.
    """
    port = str(free_port())
    jobs = []
    for rank in range(world_size):
        ranks = {"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world_size)}
        ranks.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port, CUDA_VISIBLE_DEVICES="")
        jobs.append(
            subprocess.Popen(
                [sys.executable, *args],
                env=trainer_env(**(ranks if world_size > 1 else {}), **env),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    outputs = [job.communicate(timeout=180)[0] for job in jobs]
    return [job.returncode for job in jobs], outputs


def launch_trainer(out, config, stores, world_size, *, validation=None, stimuli=None, **env):
    """The trainer (:func:`train_support.train_cli_args`) on ``world_size`` ranks
    (:func:`launch_ranks`); their exit statuses and outputs, rank 0 first."""
    args = train_cli_args(
        out, config, stores, world_size=world_size, validation=validation, stimuli=stimuli
    )
    return launch_ranks(args, world_size, **env)
