"""Optional experiment trackers (``train.loggers``), fed the records of ``metrics.jsonl``.

``metrics.jsonl`` is always written and stays the source of truth; the trackers receive
the same records when :class:`~bidstrain.train.metrics.MetricsSink` writes them (rank 0),
flattened by :func:`scalars` into one ``{tag: value}`` per record:

- ``tensorboard``: event files under ``results/train/<experiment>/tensorboard/``, through
  ``torch.utils.tensorboard`` (extra ``bidstrain[tensorboard]``);
- ``wandb``: a W&B run named ``<experiment>-<config hash>`` with the ``train`` config,
  under ``results/train/<experiment>/wandb/``, offline unless ``WANDB_MODE`` says
  otherwise (extra ``bidstrain[wandb]``).

A tracker listed but not installed stops the run before training, naming the extra.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bidstrain.errors import BidstrainError

LOGGERS = ("jsonl", "tensorboard", "wandb")
#: W&B project of the runs (``WANDB_PROJECT`` overrides it).
WANDB_PROJECT = "bidstrain"


def scalars(record: Mapping[str, Any]) -> tuple[int | None, dict[str, float]]:
    """A metric record as ``(step, {tag: value})`` for the trackers (finite values only).

    ``step`` records give ``train/<field>`` and ``train/loss/<modality>``; ``validation``
    records ``validation/loss``, ``validation/loss/<modality>``,
    ``validation/baseline/<modality>`` and ``validation/ratio/<modality>`` (with BOLD
    windows also ``validation/loss_shuffled_time[/bold]``); ``grad_norms``
    records ``grad_norm/<module>``; the ``summary`` ``summary/<modality>/<field>``. Other
    records (``plan``) give nothing.
    """
    kind, values = record.get("kind"), {}
    if kind == "step":
        for name in ("loss", "lr", "grad_norm", "dummy_loss", "samples_per_s", "seconds_per_step"):
            values[f"train/{name}"] = record[name]
        values["train/skipped"] = float(record["skipped"])
        for modality, loss in record["loss_per_modality"].items():
            values[f"train/loss/{modality}"] = loss
    elif kind == "validation":
        values["validation/loss"] = record["loss"]
        baselines = record.get("baseline_per_modality", {})
        for modality, loss in record["loss_per_modality"].items():
            values[f"validation/loss/{modality}"] = loss
            if modality in baselines:
                values[f"validation/baseline/{modality}"] = baselines[modality]
            if baselines.get(modality, 0) > 0:  # a baseline of 0: constant data, no ratio
                values[f"validation/ratio/{modality}"] = loss / baselines[modality]
        if "loss_shuffled_time" in record:
            values["validation/loss_shuffled_time"] = record["loss_shuffled_time"]
            for modality, loss in record["loss_shuffled_time_per_modality"].items():
                values[f"validation/loss_shuffled_time/{modality}"] = loss
    elif kind == "grad_norms":
        values = {f"grad_norm/{name}": norm for name, norm in record["norms"].items()}
    elif kind == "summary":
        for modality, summary in record["modalities"].items():
            for name in ("best", "final", "baseline", "ratio"):
                values[f"summary/{modality}/{name}"] = summary[name]
    finite = {tag: float(v) for tag, v in values.items() if math.isfinite(float(v))}
    return record.get("step"), finite


class TensorBoardTracker:
    """Scalars into TensorBoard event files in ``log_dir``."""

    def __init__(self, log_dir: str | Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise _missing("tensorboard") from None
        self._writer = SummaryWriter(log_dir=str(log_dir))

    def write(self, record: Mapping[str, Any]) -> None:
        """Add the record's scalars at its step."""
        step, values = scalars(record)
        for tag, value in values.items():
            self._writer.add_scalar(tag, value, global_step=step)

    def close(self) -> None:
        """Flush and close the event file."""
        self._writer.close()


class WandbTracker:
    """One W&B run: scalars by step, the ``summary`` record as the run summary.

    Offline unless ``WANDB_MODE`` is set (``online``, ``offline``, ``disabled``).
    """

    def __init__(self, directory: str | Path, *, name: str, config: Mapping[str, Any]):
        try:
            import wandb
        except ImportError:
            raise _missing("wandb") from None
        Path(directory).mkdir(parents=True, exist_ok=True)
        self._run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", WANDB_PROJECT),
            name=name,
            config=dict(config),
            dir=str(directory),
            mode=os.environ.get("WANDB_MODE", "offline"),
            reinit="create_new",
        )

    def write(self, record: Mapping[str, Any]) -> None:
        """Log the record's scalars at its step; a ``summary`` record updates the run
        summary."""
        step, values = scalars(record)
        if record.get("kind") == "summary":
            self._run.summary.update(values)
        elif values:
            self._run.log(values, step=step)

    def close(self) -> None:
        """Finish the run."""
        self._run.finish()


def open_trackers(
    loggers: Sequence[str],
    *,
    directory: str | Path,
    experiment: str,
    config_hash: str,
    config: Mapping[str, Any],
) -> list[TensorBoardTracker | WandbTracker]:
    """The trackers ``train.loggers`` asks for besides ``jsonl`` (always written).

    Parameters
    ----------
    loggers : sequence of str
        ``train.loggers``.
    directory : str or Path
        The experiment's folder (``results/train/<experiment>``).
    experiment, config_hash : str
        Name the W&B run ``<experiment>-<config_hash>``.
    config : mapping
        The ``train`` settings, logged to W&B.

    Raises
    ------
    BidstrainError
        An unknown logger, or a tracker whose package is not installed (naming the extra).
    """
    unknown = sorted(set(loggers) - set(LOGGERS))
    if unknown:
        raise BidstrainError(f"train.loggers: unknown logger(s) {unknown}; choose from {LOGGERS}")
    trackers: list[TensorBoardTracker | WandbTracker] = []
    if "tensorboard" in loggers:
        trackers.append(TensorBoardTracker(Path(directory) / "tensorboard"))
    if "wandb" in loggers:
        trackers.append(
            WandbTracker(Path(directory), name=f"{experiment}-{config_hash}", config=config)
        )
    return trackers


def _missing(extra: str) -> BidstrainError:
    return BidstrainError(
        f"train.loggers lists {extra}, but the {extra} package is not installed: install the "
        f"extra with `pip install 'bidstrain[{extra}]'` (or `pip install {extra}`), or remove "
        f"{extra} from train.loggers"
    )
