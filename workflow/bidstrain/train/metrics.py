"""``metrics.jsonl``: one JSON object per line, each with a ``kind`` (see the contract in
``docs/training.md``), and the progress line of the job log.

While training, lines go to a working file beside the checkpoints (Snakemake deletes a
job's declared outputs before it reruns, which would lose the history of an interrupted
run); the trainer copies it to the declared output at the end. On resume, lines past the
checkpoint's step are dropped first, so every optimizer step appears exactly once.

:class:`MetricsSink` is what the training loop writes to: it keeps records on rank 0 only
and writes them at flush time (logging steps, validation, before every checkpoint, at the end
and at a stop), so a step costs no file write, and a run resumed from a checkpoint finds
every step up to it; every record is complete and exact when it is kept. The same records
go to the optional trackers (:mod:`.tracking`: TensorBoard, W&B), fed at the same flushes.

The run ends with a ``summary`` record (:func:`learning_summary`): per modality the best
and final validation loss, the baseline (predicting the mean) and their ratio.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

LOG = logging.getLogger("bidstrain.train")


class MetricsLog:
    """Append metric records to a JSON-lines file.

    Parameters
    ----------
    path : str or Path
        The working metrics file.
    resume_step : int or None
        None starts a new file; an int keeps the existing lines whose ``step`` is at most
        ``resume_step`` (and the lines without a step, such as ``plan``), but not the
        ``summary`` of an earlier end: the resumed run writes its own.
    """

    def __init__(self, path: str | Path, resume_step: int | None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kept = []
        if resume_step is not None and self.path.exists():
            for line in self.path.read_text().splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut by a kill
                if record.get("step", 0) <= resume_step and record.get("kind") != "summary":
                    kept.append(line + "\n")
        self.path.write_text("".join(kept))
        self._file = self.path.open("a")

    def write(self, record: dict[str, Any]) -> None:
        """Append one record (NaN and Inf are written as JSON's ``NaN``/``Infinity``)."""
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def close(self) -> None:
        """Close the file."""
        self._file.close()


class MetricsSink:
    """The rank-aware destination of metric records.

    Rank 0 buffers the records and writes them to :class:`MetricsLog` at :meth:`flush`;
    the other ranks drop them. Records hold host values only (no tensors), so a record is
    final when emitted and flushing needs no device synchronization.

    Parameters
    ----------
    is_main : bool
        Whether this is rank 0.
    path : str or Path
        The working metrics file (rank 0).
    resume_step : int or None
        See :class:`MetricsLog`.
    trackers : iterable, optional
        Objects with ``write(record)`` and ``close()`` (:mod:`.tracking`) that receive
        every record written (rank 0).
    """

    def __init__(
        self,
        is_main: bool,
        path: str | Path,
        resume_step: int | None,
        trackers: Iterable[Any] = (),
    ):
        self._log = MetricsLog(path, resume_step) if is_main else None
        self._trackers = list(trackers) if is_main else []
        self._pending: list[dict[str, Any]] = []

    def emit(self, record: dict[str, Any]) -> None:
        """Keep ``record`` for the next :meth:`flush` (rank 0; ignored elsewhere)."""
        if self._log is not None:
            self._pending.append(record)

    def flush(self) -> None:
        """Write the kept records."""
        if self._log is not None:
            for record in self._pending:
                self._log.write(record)
                for tracker in self._trackers:
                    tracker.write(record)
            self._pending.clear()

    def close(self) -> None:
        """Flush and close the file and the trackers."""
        if self._log is not None:
            self.flush()
            self._log.close()
            for tracker in self._trackers:
                tracker.close()


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """The records of a metrics file, in order (a last line cut by a kill is skipped)."""
    records = []
    for line in Path(path).read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def learning_summary(
    records: Sequence[dict[str, Any]],
    *,
    modalities: Sequence[str],
    max_ratio: float,
    strict: bool,
    step: int,
) -> dict[str, Any]:
    """The ``summary`` record: did each modality learn?

    For every trained modality with validation data: ``best`` and ``final`` validation
    loss, the ``baseline`` of the last validation (the loss of predicting the mean),
    ``ratio = final / baseline`` and ``status``: ``pass`` when the ratio is below
    ``max_ratio`` (``train.learning.max_ratio``), else ``warn`` (``fail`` when
    ``strict``). Modalities without validation data are listed under ``unvalidated``.

    Parameters
    ----------
    records : sequence of dict
        The run's metric records (its ``validation`` records are read).
    modalities : sequence of str
        The trained modalities.
    max_ratio : float
    strict : bool
    step : int
        The last optimizer step.
    """
    summary: dict[str, dict[str, Any]] = {}
    validations = [r for r in records if r.get("kind") == "validation"]
    for modality in modalities:
        points = [
            (r["loss_per_modality"][modality], r.get("baseline_per_modality", {}).get(modality))
            for r in validations
            if modality in r["loss_per_modality"]
        ]
        if not points or points[-1][1] is None:
            continue
        final, baseline = points[-1]
        ratio = final / baseline if baseline > 0 else math.inf
        learned = ratio < max_ratio  # False for NaN
        summary[modality] = {
            "best": min(loss for loss, _ in points),
            "final": final,
            "baseline": baseline,
            "ratio": ratio,
            "status": "pass" if learned else ("fail" if strict else "warn"),
        }
    return {
        "kind": "summary",
        "step": step,
        "max_ratio": max_ratio,
        "strict": strict,
        "modalities": summary,
        "unvalidated": [m for m in modalities if m not in summary],
    }


def summary_lines(summary: dict[str, Any]) -> list[str]:
    """The summary for the job log, one line per modality."""
    lines = []
    for modality, values in summary["modalities"].items():
        verdict = {
            "pass": "learned",
            "warn": "WARNING: did not learn",
            "fail": "ERROR: did not learn",
        }[values["status"]]
        lines.append(
            f"{modality}: final validation loss {values['final']:.4f}, best {values['best']:.4f},"
            f" baseline {values['baseline']:.4f} (predicting the mean), ratio "
            f"{values['ratio']:.3f} (train.learning.max_ratio {summary['max_ratio']}): {verdict}"
        )
    for modality in summary["unvalidated"]:
        lines.append(f"{modality}: no validation data, learning not measured")
    return lines


def progress_line(
    *, step: int, total: int, loss: float, lr: float, seconds_per_step: float, skipped: int
) -> str:
    """``step 40/120 (33%) loss 0.8123 lr 8.1e-04 1.20 s/step ETA 0:01:36 skipped 0``."""
    eta = int(round(max(total - step, 0) * seconds_per_step))
    return (
        f"step {step}/{total} ({100 * step / max(total, 1):.0f}%) loss {loss:.4f} lr {lr:.2e} "
        f"{seconds_per_step:.2f} s/step ETA {eta // 3600}:{eta // 60 % 60:02d}:{eta % 60:02d} "
        f"skipped {skipped}"
    )
