"""Write the checks summary (``summary.json``, ``summary.tsv``) and turn failures into an error.

``summary.json``: ``{"passed": bool, "checks": [{"name", "status", "message", "values"}]}``;
``summary.tsv``: one row per check (``check``, ``status``, ``message``) for reading in a
terminal or a spreadsheet. A copy of both is kept in a log folder: Snakemake deletes the
outputs of a failed job, and the user needs the summary most exactly then.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np

from bidstrain.checks import Check
from bidstrain.errors import BidstrainError
from bidstrain.io.atomic import write_text_atomic


def _plain(value):
    """numpy scalars and arrays as JSON values; non-finite floats as strings."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | np.ndarray):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return str(value)
    return value


def summary_json(checks: Sequence[Check]) -> str:
    """The JSON summary of ``checks``."""
    passed = all(check.status != "fail" for check in checks)
    return json.dumps(
        {"passed": passed, "checks": [_plain(asdict(check)) for check in checks]}, indent=1
    )


def summary_tsv(checks: Sequence[Check]) -> str:
    """One row per check: ``check``, ``status``, ``message``."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter="\t", lineterminator="\n")
    writer.writerow(["check", "status", "message"])
    for check in checks:
        writer.writerow([check.name, check.status, " ".join(check.message.split())])
    return buffer.getvalue()


def write_summary(
    checks: Sequence[Check],
    json_path: str | Path,
    tsv_path: str | Path,
    *,
    copy_dir: str | Path | None = None,
) -> None:
    """Write the summary atomically, and a copy of it into ``copy_dir``."""
    write_text_atomic(json_path, summary_json(checks))
    write_text_atomic(tsv_path, summary_tsv(checks))
    if copy_dir is not None:
        Path(copy_dir).mkdir(parents=True, exist_ok=True)
        for path in (json_path, tsv_path):
            shutil.copyfile(path, Path(copy_dir) / Path(path).name)


def raise_on_failure(checks: Sequence[Check], *, summary_path: str | Path) -> None:
    """Raise a :class:`BidstrainError` listing every failed check (``checks.strict``).

    Raises
    ------
    BidstrainError
        Naming each failed check with its message, and where the full summary is.
    """
    failed = [check for check in checks if check.status == "fail"]
    if failed:
        lines = [f"check {check.name} failed: {check.message}" for check in failed]
        raise BidstrainError(
            f"{len(failed)} check(s) failed (full summary in {summary_path}; "
            "checks.strict: false records failures without stopping):\n  " + "\n  ".join(lines)
        )
