"""Where training stands: the counters a checkpoint saves and a resumed run continues from."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any


@dataclass
class TrainState:
    """Position in training, saved with every checkpoint.

    Attributes
    ----------
    step : int
        Optimizer steps done (skipped ones included: each uses its slot of the schedule).
    epoch : int
        Current epoch (0-based).
    position : int
        Batch groups (optimizer steps) of ``epoch`` already consumed.
    consecutive_skips : int
        Non-finite steps in a row up to ``step``.
    skipped_steps : int
        Non-finite steps in all.
    world_size : int
        Ranks of the run; the batch order and the schedule depend on it.
    """

    step: int = 0
    epoch: int = 0
    position: int = 0
    consecutive_skips: int = 0
    skipped_steps: int = 0
    world_size: int = 1

    def record_step(self, skipped: bool) -> None:
        """Count one optimizer step (``skipped``: its loss or gradient was not finite)."""
        self.step += 1
        self.position += 1
        self.consecutive_skips = self.consecutive_skips + 1 if skipped else 0
        self.skipped_steps += int(skipped)

    def end_epoch(self) -> None:
        """Move to the start of the next epoch."""
        self.epoch += 1
        self.position = 0

    def state_dict(self) -> dict[str, int]:
        """The counters as a plain dict (what a checkpoint holds)."""
        return asdict(self)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        for field in fields(self):
            setattr(self, field.name, int(state[field.name]))
