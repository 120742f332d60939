"""One trainer per experiment: an exclusive kernel lock on the checkpoint directory.

The trainer takes a POSIX record lock (``fcntl.lockf``) on ``<checkpoint dir>/trainer.lock``
for its whole life and writes its host and pid into the file. The kernel drops the lock
when the process ends in any way (``kill -9`` included), so a dead trainer never leaves a
stale lock behind; the file itself stays and only tells who held it last.

Cluster filesystems: POSIX locks are coherent across nodes on NFSv4 (and NFSv3 with
``lockd``) and on Lustre mounted with ``-o flock``; Lustre's ``-o localflock`` only locks
within one node, and without either option locking fails (a clear error here). POSIX locks
belong to the process, and closing any descriptor of the file releases them: nothing else
in the trainer opens this file.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
from pathlib import Path

from bidstrain.errors import BidstrainError

LOCK_FILE = "trainer.lock"


class ExperimentLock:
    """Hold the experiment lock of ``directory`` (created if missing).

    Parameters
    ----------
    directory : str or Path
        The experiment's checkpoint directory.

    Raises
    ------
    BidstrainError
        From :meth:`acquire`, when another process holds the lock (naming its host and pid)
        or the filesystem does not support locks.
    """

    def __init__(self, directory: str | Path):
        self.path = Path(directory) / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock without waiting and write this process's host and pid into it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            holder = os.pread(fd, 4096, 0)
            os.close(fd)
            if error.errno in (errno.EACCES, errno.EAGAIN):
                raise BidstrainError(_held_message(holder), path=self.path) from None
            raise BidstrainError(
                f"cannot lock the experiment ({error.strerror}): the filesystem must support "
                "POSIX locks (NFSv4, or Lustre mounted with -o flock)",
                path=self.path,
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"host": socket.gethostname(), "pid": os.getpid()}).encode(), 0)
        self._fd = fd

    def release(self) -> None:
        """Drop the lock (the process's end drops it too)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> ExperimentLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _held_message(holder: bytes) -> str:
    try:
        who = json.loads(holder)
        name = f"pid {who['pid']} on host {who['host']}"
        stop = f"`kill {who['pid']}` on {who['host']}"
    except (ValueError, KeyError, TypeError):
        name, stop = "a trainer that is just starting", "the other trainer"
    return (
        f"another trainer ({name}) is training this experiment. Wait for it to finish, or "
        f"stop it ({stop}, or scancel its SLURM job) and run again: it writes a checkpoint "
        "this run resumes from. A trainer that died leaves no lock behind."
    )
