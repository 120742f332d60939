"""The one error type that bidstrain raises for bad input, and the command-line wrapper.

A :class:`BidstrainError` names the subject and the file it is about, so that the message a
user sees on the command line (or in a Snakemake job log) says what to fix without a
traceback.
"""

from __future__ import annotations

import atexit
import gc
import logging
import os
import socket
import sys
from collections.abc import Callable, Sequence
from pathlib import Path


class BidstrainError(Exception):
    """Bad input or a failed check, with the subject and file it concerns.

    Parameters
    ----------
    message : str
        What is wrong, and where possible what to change.
    path : str or Path, optional
        The file the problem was found in.
    subject : str, optional
        The subject label (without ``sub-``).
    """

    def __init__(self, message: str, *, path: str | Path | None = None, subject: str | None = None):
        self.message = message
        self.path = None if path is None else str(path)
        self.subject = subject
        super().__init__(str(self))

    def __str__(self) -> str:
        where = [part for part in (self.subject and f"sub-{self.subject}", self.path) if part]
        return ": ".join([*where, self.message])


def relative_to_study(path: str | Path) -> str:
    """For the error about a file a configuration names: where a relative ``path`` was
    looked for (the folder the workflow runs in, the study's, not the folder of the
    file that set it), as `` (a relative path ... /abs/folder)``; empty for an absolute
    path."""
    if Path(path).is_absolute():
        return ""
    return (
        " (a relative path in the configuration is read from the study folder, "
        f"{Path.cwd()}: write it absolute, or relative to that folder)"
    )


#: How a :class:`BidstrainError` ends the traceback text that torch re-raises it with
#: when a DataLoader worker raised it.
_RERAISED = f"{__name__}.BidstrainError: "


def error_message(error: BidstrainError) -> str:
    """The message of ``error``; for one that a DataLoader worker raised (torch re-raises
    it in the main process with the worker's traceback as its text), the worker's own
    message."""
    text = str(error)
    if text.startswith("Caught BidstrainError") and _RERAISED in text:
        return text.rsplit(_RERAISED, 1)[1].strip()
    return text


def run_cli(
    main: Callable[[Sequence[str] | None], object], argv: Sequence[str] | None = None
) -> None:
    """Run a command-line entry point; turn a :class:`BidstrainError` into a clean exit.

    The error is printed as ``bidstrain: error: <message>`` on stderr and the process exits
    with status 1; any other exception keeps its traceback (it is a bug, not bad input).
    The first log line names the host and, inside a SLURM job, its job id and GPUs, so
    that every rule's log shows where it ran.

    At the process's exit (an exit handler) every object left is frozen
    (:func:`gc.freeze`): the interpreter would otherwise walk them all in its final
    garbage collections, for nothing (0.1 s of a 2.8 s normalize job). Objects are still
    freed as their references go.

    Parameters
    ----------
    main : callable
        Entry point taking the argument list.
    argv : sequence of str, optional
        Arguments; ``sys.argv[1:]`` when None.
    """
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    atexit.unregister(gc.freeze)  # once per process, however often this is called
    atexit.register(gc.freeze)
    job = {
        key: os.environ[key]
        for key in ("SLURM_JOB_ID", "CUDA_VISIBLE_DEVICES")
        if key in os.environ
    }
    logging.getLogger("bidstrain").info(
        "host=%s %s", socket.gethostname(), " ".join(f"{k}={v}" for k, v in job.items())
    )
    try:
        main(argv)
    except BidstrainError as error:
        print(f"bidstrain: error: {error_message(error)}", file=sys.stderr)
        sys.exit(1)
