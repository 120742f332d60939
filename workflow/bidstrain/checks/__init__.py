"""Sanity checks run before any GPU hour: data scale, normalization, BOLD quality, sample and
batch counts, the learning-rate plan, and the initial loss scale.

Each family of checks lives in its own module and returns :class:`Check` results;
:mod:`bidstrain.checks.summary` writes them to ``summary.json``/``summary.tsv`` and, with
``checks.strict``, fails on any ``fail``. ``python -m bidstrain.checks`` runs them all.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

STATUSES = ("pass", "warn", "fail")


@dataclass
class Check:
    """The outcome of one check.

    Attributes
    ----------
    name : str
        Stable identifier (``scale_table``, ``normalization``, ...).
    status : {"pass", "warn", "fail"}
    message : str
        One line for a pass; for a warn or fail, every problem found, each naming the file
        or subject, the numbers, and the config key to change.
    values : dict
        The numbers behind the status (JSON-serializable).
    """

    name: str
    status: str
    message: str
    values: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {self.status!r}")


def verdict(name: str, fails: list[str], warns: list[str], ok: str, values: dict) -> Check:
    """A :class:`Check` whose status is the worst problem found; problems join the message."""
    if fails:
        return Check(name, "fail", "; ".join(fails + warns), values)
    if warns:
        return Check(name, "warn", "; ".join(warns), values)
    return Check(name, "pass", ok, values)


def with_findings(check: Check, fails: list[str], values: dict[str, Any], ok: str) -> Check:
    """``check`` with more problems found (``fails``) and their numbers under
    ``values["stimuli"]``: the worst status of both, the problems joined, and ``ok``
    appended to a passing message."""
    merged = {**check.values, "stimuli": values}
    if not fails:
        message = check.message if check.status != "pass" else f"{check.message}; {ok}"
        return Check(check.name, check.status, message, merged)
    problems = "; ".join(fails)
    message = problems if check.status == "pass" else f"{check.message}; {problems}"
    return Check(check.name, "fail", message, merged)
