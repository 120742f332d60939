"""Stopping at a step boundary: SIGTERM/SIGUSR1/SIGINT, and two hooks that only tests use.

A signal sets a flag; the next optimizer step reduces it over the ranks, so every rank
stops after the same step. The trainer then writes one checkpoint and exits with status 75.
SIGINT is a terminal's Ctrl-C (or ``bidstrain run`` passing one on): the first stops as
SIGTERM does, a second stops at once, without a checkpoint (``KeyboardInterrupt``).

Test hooks (environment variables read by the tests only, never set by the workflow):

``BIDSTRAIN_TEST_STOP_AT_STEP=N``
    After optimizer step N, every rank stops exactly as if SIGTERM had arrived during it:
    one checkpoint, exit 75. Makes an interruption independent of the machine's speed.
``BIDSTRAIN_TEST_PAUSE_AT_STEP=N``
    After optimizer step N (its metrics written), rank 0 creates
    ``<checkpoint dir>/paused-at-<N>``, and every rank logs ``paused after step N`` and
    waits, without polling or timeout, until a stop signal reaches it; then the same
    stop. A test signals the trainer (or ``scontrol requeue``s its job) at a known step.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

LOG = logging.getLogger("bidstrain.train")
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)
#: Exit status of a trainer stopped by one of :data:`STOP_SIGNALS` after writing its
#: checkpoint (``EX_TEMPFAIL``): run the same command again to resume.
EXIT_INTERRUPTED = 75
STOP_AT_STEP = "BIDSTRAIN_TEST_STOP_AT_STEP"
PAUSE_AT_STEP = "BIDSTRAIN_TEST_PAUSE_AT_STEP"


def ignore_stop_signals(worker_id: int | None = None) -> None:
    """Ignore :data:`STOP_SIGNALS` in this process: a DataLoader worker's
    ``worker_init_fn``. SLURM signals every process of a job step, a terminal's Ctrl-C
    every process of its group; the trainer stops at a step boundary on its own, and
    needs its workers alive until then."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)


def start_resource_tracker() -> None:
    """Start multiprocessing's resource tracker (which the DataLoader's queues register
    their semaphores with) with :data:`STOP_SIGNALS` blocked, so that it starts with them
    blocked and survives a signal to the job's processes (it unblocks SIGTERM and SIGINT
    and ignores them; SIGUSR1, which would kill it, stays blocked). A signal that reaches
    this process meanwhile is delivered when they are unblocked."""
    from multiprocessing import resource_tracker

    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        resource_tracker.ensure_running()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


class StopSignals:
    """Turn :data:`STOP_SIGNALS` into a flag read at step boundaries, and a second SIGINT
    into ``KeyboardInterrupt`` (handlers restored on exit)."""

    def __init__(self):
        self.requested = False
        self._interrupted = False
        self._previous = {}

    def _handle(self, signum, frame) -> None:
        if signum == signal.SIGINT:
            if self._interrupted:
                raise KeyboardInterrupt  # a second Ctrl-C: stop now, without a checkpoint
            self._interrupted = True
        self.requested = True
        again = " (Ctrl-C again stops at once, without it)" if signum == signal.SIGINT else ""
        LOG.warning(
            "received %s: stopping at the next step boundary, after a checkpoint%s",
            signal.Signals(signum).name,
            again,
        )

    def __enter__(self) -> StopSignals:
        for signum in STOP_SIGNALS:
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def wait(self) -> None:
        """Block until one of :data:`STOP_SIGNALS` arrives (return at once if one already
        did).

        Python's C-level handler writes every caught signal's number to the wakeup file
        descriptor, whichever thread the kernel delivered it to; blocking on a read of that
        pipe therefore cannot miss a signal that arrives just before the read. A signal
        whose handler already ran is not handled twice.
        """
        read_end, write_end = os.pipe()
        os.set_blocking(write_end, False)
        previous = signal.set_wakeup_fd(write_end)
        try:
            while not self.requested:
                for signum in os.read(read_end, 64):
                    if signum in STOP_SIGNALS and not self.requested:
                        self._handle(signum, None)
        finally:
            signal.set_wakeup_fd(previous)
            os.close(read_end)
            os.close(write_end)


@dataclass(frozen=True)
class TestStops:
    """The test-only stop hooks of the environment (see the module docstring)."""

    __test__ = False  # not a pytest test class

    stop_at: int | None = None
    pause_at: int | None = None

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] = os.environ) -> TestStops:
        """Read :data:`STOP_AT_STEP` and :data:`PAUSE_AT_STEP`."""
        return cls(
            stop_at=int(environ[STOP_AT_STEP]) if environ.get(STOP_AT_STEP) else None,
            pause_at=int(environ[PAUSE_AT_STEP]) if environ.get(PAUSE_AT_STEP) else None,
        )

    def stops_after(self, step: int) -> bool:
        """Whether a hook stops training after optimizer step ``step``."""
        return step in (self.stop_at, self.pause_at)

    def stop(self, step: int, signals: StopSignals, marker_dir: Path, is_main: bool) -> None:
        """Apply the hook of ``step`` (see :meth:`stops_after`): pause until a signal for
        :data:`PAUSE_AT_STEP`, return at once for :data:`STOP_AT_STEP`."""
        if step == self.pause_at:
            if is_main:
                (marker_dir / f"paused-at-{step}").touch()
            LOG.warning("paused after step %d (%s): waiting for a stop signal", step, PAUSE_AT_STEP)
            signals.wait()
        else:
            LOG.warning("stopping after step %d (%s)", step, STOP_AT_STEP)
