"""Checks figures: the per-modality scale table and the summary of every check."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from bidstrain.errors import BidstrainError
from bidstrain.report.figure import STATUS_COLOURS, new_figure

#: Scale-table statistics drawn as bars (all positive, so a log axis shows them).
SCALE_STATISTICS = (("mse_zero", "zero-prediction MSE = mean(x²)"), ("std", "std"))
_KINDS = (("raw", "#4c72b0"), ("normalized", "#dd8452"))
_MESSAGE_WIDTH = 125
_COLUMN_WIDTHS = (0.18, 0.07, 0.75)


def read_summary(path: str | Path) -> dict[str, Any]:
    """Read ``results/checks/<experiment>/summary.json`` and check it has the agreed layout."""
    summary = json.loads(Path(path).read_text())
    if not isinstance(summary.get("checks"), list):
        raise BidstrainError("checks summary has no 'checks' list", path=path)
    return summary


def scale_values(summary: dict[str, Any], path: str | Path | None = None) -> dict[str, Any]:
    """The ``values`` of the ``scale_table`` check."""
    for check in summary["checks"]:
        if check["name"] == "scale_table":
            return check["values"]
    raise BidstrainError(
        "checks summary has no 'scale_table' check (was checks.py changed?)", path=path
    )


def allowed_band(values: dict[str, Any]) -> tuple[float, float]:
    """Range of zero-prediction MSE the normalized modalities may span.

    The check allows a ratio of at most ``max_scale_ratio`` between modalities: from the
    smallest normalized ``mse_zero`` up to ``max_scale_ratio`` times it.
    """
    smallest = min(stats["mse_zero"] for stats in values["normalized"].values())
    return smallest, smallest * values["max_scale_ratio"]


def scale_figure(values: dict[str, Any]) -> Figure:
    """Log-scale bars of the scale table, raw vs normalized, with the allowed MSE band."""
    modalities = sorted(values["normalized"])
    fig = new_figure(
        5.0 + 1.6 * len(modalities),
        4.2,
        f"Scale per modality, raw vs normalized (max_scale_ratio {values['max_scale_ratio']:g})",
    )
    axes = fig.subplots(1, len(SCALE_STATISTICS))
    positions = np.arange(len(modalities))
    width = 0.38
    for ax, (statistic, label) in zip(axes, SCALE_STATISTICS, strict=True):
        for offset, (kind, colour) in zip((-width / 2, width / 2), _KINDS, strict=True):
            heights = [values[kind].get(m, {}).get(statistic, np.nan) for m in modalities]
            bars = ax.bar(positions + offset, heights, width, color=colour, label=kind)
            ax.bar_label(bars, fmt="%.3g", fontsize=7, padding=2)
        if statistic == "mse_zero":
            low, high = allowed_band(values)
            ax.axhspan(low, high, color="#5aae61", alpha=0.2, label="allowed for normalized")
        ax.set_yscale("log")
        ax.margins(y=0.25)
        ax.set_xticks(positions, modalities)
        ax.set_xlabel("modality")
        unit = "units" + ("²" if statistic == "mse_zero" else "")
        ax.set_ylabel(f"{statistic} (raw: each modality's {unit}; normalized: unitless)")
        ax.set_title(label)
        ax.legend(loc="upper right")
    return fig


def summary_figure(summary: dict[str, Any]) -> Figure:
    """The checks as a table: name, status (coloured pass/warn/fail) and message."""
    checks = summary["checks"]
    rows = [
        [check["name"], check["status"], textwrap.fill(check["message"], _MESSAGE_WIDTH)]
        for check in checks
    ]
    lines = [row[2].count("\n") + 1 for row in rows]
    total_lines = sum(lines) + 1  # with the header row
    height = 1.2 + 0.3 * total_lines
    verdict = "passed" if summary.get("passed") else "FAILED"
    counts = {s: sum(c["status"] == s for c in checks) for s in STATUS_COLOURS}
    fig = new_figure(
        11.0,
        height,
        f"Checks {verdict}: " + ", ".join(f"{n} {status}" for status, n in counts.items() if n),
    )
    ax = fig.subplots()
    ax.axis("off")
    table = ax.table(
        cellText=rows,
        colLabels=["check", "status", "message"],
        colWidths=_COLUMN_WIDTHS,
        cellLoc="left",
        bbox=(0.0, 0.0, 1.0, 1.0),
    )
    table.auto_set_font_size(False)
    table.set_fontsize(8)
    for (row, column), cell in table.get_celld().items():
        cell.PAD = 0.006 / _COLUMN_WIDTHS[column]  # the same padding in every column
        cell.set_height((lines[row - 1] if row else 1) / total_lines)
        if row == 0:
            cell.set_text_props(fontweight="bold")
            continue
        status = checks[row - 1]["status"]
        cell.set_facecolor(STATUS_COLOURS.get(status, "white") if column < 2 else "white")
    fig.legend(
        handles=[Patch(color=c, label=s) for s, c in STATUS_COLOURS.items()],
        loc="outside lower center",
        ncols=len(STATUS_COLOURS),
    )
    return fig
