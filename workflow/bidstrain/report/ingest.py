"""Ingestion figure: which subject has which images, with missing data visible."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.colors import BoundaryNorm, ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from bidstrain.report.figure import new_figure, pages

#: Subject rows per heat-map panel; more subjects get more panels side by side.
ROWS_PER_PANEL = 50
#: Above this many subjects only the incomplete ones are drawn row by row.
MAX_ROWS = 200
#: What the numbers in the heat map's cells are, as its legend says.
NUMBERS_SHOWN = "the number of images is written in every cell with more than one"
_COLOURS = ListedColormap(["#e8594f", "#b7e0a5", "#5aae61", "#1b7837"])
_NORM = BoundaryNorm([-0.5, 0.5, 1.5, 2.5, 1e9], _COLOURS.N)


def coverage_table(manifest: pd.DataFrame) -> pd.DataFrame:
    """Images per subject (rows) and acquisition (columns), 0 where missing.

    An acquisition is a modality, with task and run for BOLD (``bold task-rest run-1``);
    a subject with two sessions has 2 in the cells that both sessions have.

    Parameters
    ----------
    manifest : DataFrame
        The ingest manifest (columns ``subject``, ``session``, ``task``, ``run``,
        ``modality``).

    Returns
    -------
    DataFrame of int
        Index ``sub-<label>``, columns ordered T1w, bold, dwi then by task and run.
    """
    return session_table(manifest).groupby(level=0).sum()


def session_table(manifest: pd.DataFrame) -> pd.DataFrame:
    """Images per (subject, session) and acquisition: :func:`coverage_table` before the
    sessions of a subject are added up (index ``(sub-<label>, session)``)."""
    order = {"T1w": 0, "bold": 1, "dwi": 2}
    keys = manifest[["modality", "task", "run"]].drop_duplicates()
    keys = keys.sort_values(
        ["modality", "task", "run"], key=lambda c: c.map(order) if c.name == "modality" else c
    )
    names = [_acquisition(*row) for row in keys.itertuples(index=False)]
    labels = manifest.apply(lambda r: _acquisition(r.modality, r.task, r.run), axis=1)
    counts = pd.crosstab(["sub-" + manifest["subject"], manifest["session"]], labels)
    return counts.reindex(columns=names, fill_value=0).astype(np.int64).sort_index()


def sessions_missing(sessions: pd.DataFrame) -> set[str]:
    """The subjects (``sub-<label>``) of ``sessions`` (:func:`session_table`) with a
    session that lacks an acquisition one of their other sessions has (their cells read 1
    where 2 would be complete)."""
    has = sessions > 0
    somewhere = has.groupby(level=0).transform("any")
    return set(has.index[(somewhere & ~has).any(axis=1)].get_level_values(0))


def _cell_borders(ax: Axes, rows: int, columns: int) -> None:
    """White lines between the cells of a heat map, so that neighbouring subjects (or
    acquisitions) with the same count stay separate rows (columns)."""
    ax.set_xticks(np.arange(columns + 1) - 0.5, minor=True)
    ax.set_yticks(np.arange(rows + 1) - 0.5, minor=True)
    ax.grid(which="minor", color="white", linewidth=1.5)
    ax.tick_params(which="minor", length=0)


def _acquisition(modality: str, task: str, run: str) -> str:
    parts = [modality, task and f"task-{task}", run and f"run-{run}"]
    return " ".join(part for part in parts if part)


def coverage_figure(manifest: pd.DataFrame) -> Figure:
    """Subjects x acquisitions heat map (missing in red) over a bar chart of completeness.

    A cell's colour says how many images it has (0, 1, 2, 3 or more); a cell with more
    than one also shows the number (:data:`NUMBERS_SHOWN`, the legend's title).

    Up to :data:`MAX_ROWS` subjects are drawn one row each, in panels of
    :data:`ROWS_PER_PANEL`; with more subjects only those missing something get a row
    (the bar chart still counts everyone).
    """
    sessions = session_table(manifest)
    table = sessions.groupby(level=0).sum()
    n_subjects, n_columns = table.shape
    in_a_session = sessions_missing(sessions)
    incomplete = table[(table == 0).any(axis=1) | table.index.isin(list(in_a_session))]
    shown = table if n_subjects <= MAX_ROWS else incomplete
    panels = pages(list(shown.index), ROWS_PER_PANEL)
    rows = min(max(len(shown), 1), ROWS_PER_PANEL)
    panel_width = 1.2 + 0.45 * n_columns
    width = max(7.0, panel_width * len(panels) + 1.0)
    height = 3.0 + 0.18 * rows + 0.08 * max(len(c) for c in table.columns)
    fig = new_figure(
        width,
        height,
        f"Ingestion coverage: {n_subjects} subjects, {len(incomplete)} with missing images",
    )
    top, bottom = fig.subfigures(2, 1, height_ratios=[2.2, height - 2.2])
    ax = top.subplots()
    present = (table > 0).sum(axis=0)
    ax.bar(range(n_columns), present.values, color="#5aae61", label="subjects with the image")
    ax.bar(
        range(n_columns),
        n_subjects - present.values,
        bottom=present.values,
        color="#e8594f",
        label="subjects missing it",
    )
    ax.set_xticks(range(n_columns), table.columns, rotation=30, ha="right")
    ax.set_ylabel("subjects")
    ax.set_xlabel("acquisition")
    ax.set_title("Subjects per acquisition")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))
    axes = np.atleast_1d(bottom.subplots(1, len(panels), squeeze=False)[0])
    for number, (panel_ax, subjects) in enumerate(zip(axes, panels, strict=True), start=1):
        values = shown.loc[list(subjects)].to_numpy() if len(subjects) else np.zeros((1, 0))
        panel_ax.imshow(values, cmap=_COLOURS, norm=_NORM, aspect="auto")
        _cell_borders(panel_ax, *values.shape)
        panel_ax.set_xticks(range(n_columns), table.columns, rotation=60, ha="right")
        names = [f"{s} *" if s in in_a_session else s for s in subjects]
        panel_ax.set_yticks(range(len(subjects)), names, fontsize=7 if rows > 30 else 9)
        panel_ax.set_xlabel("acquisition")
        panel_ax.set_ylabel("subject")
        title = "Images per subject" if len(panels) == 1 else f"Subjects, part {number}"
        if shown is incomplete and n_subjects > MAX_ROWS:
            title = f"Subjects missing images ({len(incomplete)} of {n_subjects})"
        panel_ax.set_title(title)
        for (row, column), count in np.ndenumerate(values):
            if count > 1:  # white on the darkest green (3 or more)
                colour = "white" if count > 2 else "black"
                panel_ax.text(
                    column, row, str(count), ha="center", va="center", fontsize=7, color=colour
                )
    if not len(shown):
        axes[0].text(0.5, 0.5, "every subject has every image", ha="center", va="center")
    legend = [
        Patch(color=_COLOURS(0), label="missing"),
        Patch(color=_COLOURS(1), label="1 image"),
        Patch(color=_COLOURS(2), label="2 images (e.g. 2 sessions)"),
        Patch(color=_COLOURS(3), label="3 or more"),
    ]
    title = NUMBERS_SHOWN
    if in_a_session:
        title += "; * a session lacks an image another session of the subject has"
    bottom.legend(handles=legend, loc="outside lower center", ncols=4, title=title)
    return fig
