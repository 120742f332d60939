"""Atomic outputs: write beside the final path, then rename into place.

A job killed half-way leaves only a hidden temporary (``.<name>.tmp-<host>-<pid>``), never
a file or store that looks complete, and the next write of that path on that host through
:func:`atomic_path` (stores) removes it (its process is gone); a write that fails leaves
the previous file or store at that path untouched (Snakemake itself removes a failed job's
declared outputs: what each rule keeps is in docs/reruns.md).
A write that runs out of space (or of quota) removes its temporary and says how much was
written and how much is free.
"""

from __future__ import annotations

import errno
import glob
import os
import shutil
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bidstrain.errors import BidstrainError

#: The errors of a full filesystem: no space left, disk quota exceeded.
FULL_DISK_ERRORS = (errno.ENOSPC, errno.EDQUOT)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _size(path: Path) -> int:
    """Bytes in the files under ``path`` (a file or a directory)."""
    if not path.is_dir():
        return path.stat().st_size if path.exists() else 0
    return sum(
        (Path(root) / name).stat().st_size for root, _, names in os.walk(path) for name in names
    )


def _full_disk(final: Path, tmp: Path, error: OSError) -> BidstrainError:
    """The error for a write into ``tmp`` that failed with a full filesystem."""
    written = _size(tmp)
    _remove(tmp)
    free = shutil.disk_usage(final.parent).free
    return BidstrainError(
        f"no space left on the device ({error.strerror}) after writing {written} bytes of it; "
        f"{free} bytes ({free / 2**20:.1f} MiB) are free on the filesystem of "
        f"{final.parent}: free space (or raise the quota), or move the results to a larger "
        "filesystem, and rerun",
        path=final,
    )


def _beside(final: Path, kind: str, pid: int | str) -> Path:
    """The hidden path beside ``final`` of a writer: ``.<name>.<kind>-<host>-<pid>``."""
    return final.with_name(f".{final.name}.{kind}-{socket.gethostname()}-{pid}")


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _remove_stale(final: Path) -> None:
    """Remove what killed writers of ``final`` on this host left beside it: their
    temporaries, and the previous version a writer killed between its two renames had set
    aside (only once ``final`` exists again)."""
    for kind in ("tmp", "old") if final.exists() else ("tmp",):
        prefix = _beside(final, kind, "").name  # .<name>.<kind>-<host>-
        for path in map(Path, glob.glob(glob.escape(str(final.parent / prefix)) + "*")):
            pid = path.name[len(prefix) :]  # not a digit for host gpu-1 when this is gpu
            if pid.isdigit() and int(pid) != os.getpid() and not _running(int(pid)):
                _remove(path)


@contextmanager
def atomic_path(final: str | Path, *, remove_stale: bool = True) -> Iterator[Path]:
    """Yield a temporary path to write; move it to ``final`` only if the block succeeds.

    Works for files and directories (Zarr stores). The temporary sits in the same directory
    as ``final`` so that the rename is atomic on one filesystem. When ``final`` exists, it
    is replaced only after the new output is complete.

    Parameters
    ----------
    final : str or Path
        Where the output must appear.
    remove_stale : bool
        Remove first what killed writers of ``final`` on this host left beside it (a
        listing of its folder).

    Yields
    ------
    Path
        The temporary path to write to.

    Raises
    ------
    BidstrainError
        When the filesystem fills up (ENOSPC, EDQUOT) during the block, naming ``final``,
        the bytes written and the bytes free; the temporary is removed.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    if remove_stale:
        _remove_stale(final)
    tmp = _beside(final, "tmp", os.getpid())
    _remove(tmp)
    try:
        yield tmp
    except OSError as error:
        if error.errno in FULL_DISK_ERRORS:
            raise _full_disk(final, tmp, error) from error
        _remove(tmp)
        raise
    except BaseException:
        _remove(tmp)
        raise
    if final.is_dir() and not final.is_symlink():
        old = _beside(final, "old", os.getpid())
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old)
    else:
        os.replace(tmp, final)


def write_text_atomic(final: str | Path, text: str) -> None:
    """Write ``text`` to ``final`` atomically (see :func:`atomic_path`), without looking
    for killed writers' leftovers: a few bytes each, while listing a folder of 10,000 plan
    files for each of its files would make a parse quadratic in the subjects."""
    with atomic_path(final, remove_stale=False) as tmp:
        tmp.write_text(text)
