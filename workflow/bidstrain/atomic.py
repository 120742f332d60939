"""Atomic outputs: write beside the final path, then rename into place.

A job killed half-way leaves only a hidden temporary (``.<name>.tmp-<pid>``), never a file
or store that looks complete, and a failed rerun leaves the previous good output untouched.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


@contextmanager
def atomic_path(final: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write; move it to ``final`` only if the block succeeds.

    Works for files and directories (Zarr stores). The temporary sits in the same directory
    as ``final`` so that the rename is atomic on one filesystem. When ``final`` exists, it
    is replaced only after the new output is complete.

    Parameters
    ----------
    final : str or Path
        Where the output must appear.

    Yields
    ------
    Path
        The temporary path to write to.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    _remove(tmp)
    try:
        yield tmp
    except BaseException:
        _remove(tmp)
        raise
    if final.is_dir() and not final.is_symlink():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old)
    else:
        os.replace(tmp, final)


def write_text_atomic(final: str | Path, text: str) -> None:
    """Write ``text`` to ``final`` atomically (see :func:`atomic_path`)."""
    with atomic_path(final) as tmp:
        tmp.write_text(text)
