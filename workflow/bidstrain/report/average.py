"""Averaging figure of one task (and run): the group maps and how well subjects agree."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import xarray as xr
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from bidstrain.io.store import store_meta, to_grid
from bidstrain.report.figure import MAX_LISTED, new_figure, slice_row

#: With more subjects than :data:`MAX_LISTED`, the lowest correlations listed by name.
N_LOWEST = 10


def time_course(ds: xr.Dataset) -> np.ndarray:
    """Mean over the store's mask of every volume (float64, one value per time point)."""
    return ds["data"].mean("voxel", dtype=np.float64).values


def course_on(ds: xr.Dataset, times: np.ndarray) -> np.ndarray:
    """A store's :func:`time_course` at the frame onsets ``times`` (an average's): NaN
    at the frames the store does not hold (left out, or past its end). A subject's row
    ``i`` is not the average's frame ``i`` when their left-out frames differ."""
    course = time_course(ds)
    own = ds["time"].values.astype(np.float64)
    tolerance = 1e-6 * (store_meta(ds).repetition_time or 1.0)
    position = np.clip(np.searchsorted(own, times - tolerance), 0, own.size - 1)
    return np.where(np.abs(own[position] - times) <= tolerance, course[position], np.nan)


def subject_correlations(group_course: np.ndarray, courses: Sequence[np.ndarray]) -> np.ndarray:
    """Pearson correlation of each subject's time course with the group's, over the
    frames both hold (finite values; courses on the group's frames, :func:`course_on`).

    Courses longer than the group's are cut to its length; a flat course, or one sharing
    fewer than 3 frames with the group, has correlation NaN.
    """
    n = group_course.size
    correlations = np.full(len(courses), np.nan)
    for index, course in enumerate(courses):
        course = np.asarray(course[:n], dtype=np.float64)
        both = np.isfinite(course) & np.isfinite(group_course[: course.size])
        a, b = course[both], group_course[: course.size][both]
        if a.size >= 3 and a.std() > 0 and b.std() > 0:
            correlations[index] = np.corrcoef(a, b)[0, 1]
    return correlations


def average_figure(group: xr.Dataset, subjects: Sequence[xr.Dataset], title: str) -> Figure:
    """Group mean and ``n_subjects`` maps, time courses and per-subject correlations.

    Parameters
    ----------
    group : xarray.Dataset
        The average store (with ``n_subjects``).
    subjects : sequence of xarray.Dataset
        The subject stores that went into it.
    title : str
        Figure title (the task and run).

    Returns
    -------
    Figure
        Up to :data:`MAX_LISTED` subjects get a bar each; with more, a histogram of the
        correlations and the :data:`N_LOWEST` lowest by name.
    """
    labels = [store_meta(ds).label(full=False) for ds in subjects]
    group_course = time_course(group)
    times = group["time"].values.astype(np.float64)
    courses = [course_on(ds, times) for ds in subjects]
    correlations = subject_correlations(group_course, courses)
    listed = len(subjects) <= MAX_LISTED
    bottom_height = max(3.0, 0.22 * len(subjects) + 1.2) if listed else 3.5
    meta = store_meta(group)
    fig = new_figure(
        12.0,
        2.5 * 2 + bottom_height + 0.6,
        f"{title}: average of {_members(len(meta.subjects), len(subjects))}, "
        f"{group.sizes['voxel']} voxels in the group mask",
    )
    maps, bottom = fig.subfigures(2, 1, height_ratios=[5.0, bottom_height])
    map_rows = maps.subfigures(2, 1)
    mask = group["mask"].values
    slice_row(
        map_rows[0],
        map_rows[0].subplots(1, 3),
        to_grid(group, group["mean"].values, np.nan),
        mask,
        label="group mean",
        unit="raw units",
    )
    counts = group["n_subjects"].values
    # from 1 to every subject of the average, whatever the mask holds: a map where all
    # of them contribute everywhere shows the top colour, not the only one
    n_min = min(int(counts.min()), 1)
    n_max = max(int(counts.max()), len(meta.subjects))
    slice_row(
        map_rows[1],
        map_rows[1].subplots(1, 3),
        to_grid(group, counts.astype(np.float32), np.nan),
        mask,
        label="n_subjects",
        unit="subjects (count)",
        cmap=plt.get_cmap("viridis", min(n_max - n_min + 1, 256)),
        vmin=n_min - 0.5,
        vmax=n_max + 0.5,
        counts=True,
    )
    if listed:
        course_ax, correlation_ax = bottom.subplots(1, 2, width_ratios=[1.4, 1.0])
        _correlation_bars(correlation_ax, labels, correlations)
    else:
        course_ax, correlation_ax, list_ax = bottom.subplots(1, 3, width_ratios=[1.4, 0.7, 0.3])
        _correlation_histogram(correlation_ax, list_ax, labels, correlations)
    _time_courses(course_ax, group, group_course, courses)
    return fig


def _members(n_subjects: int, n_runs: int) -> str:
    """``3 subjects (4 runs: each subject's sessions averaged first)``, or ``3 subjects
    (one run each)``: the map's ``n_subjects`` counts subjects, the bars count runs."""
    subjects = f"{n_subjects} subject" + ("" if n_subjects == 1 else "s")
    if n_runs == n_subjects:
        return f"{subjects} (one run each)"
    return f"{subjects} ({n_runs} runs: each subject's sessions averaged first)"


def _time_courses(
    ax: Axes, group: xr.Dataset, group_course: np.ndarray, courses: Sequence[np.ndarray]
) -> None:
    time = group["time"].values
    stacked = np.stack(courses)
    low, median, high = np.nanpercentile(stacked, [10, 50, 90], axis=0)
    ax.fill_between(time, low, high, color="#9ecae1", label="subjects, 10th-90th percentile")
    ax.plot(time, median, color="#3182bd", lw=1, label="subjects, median")
    ax.plot(time, group_course, color="black", lw=2, label="group average")
    ax.set_title("Mean over the mask per volume")
    ax.set_xlabel("time (s)")
    ax.set_ylabel("mean z-score (unitless)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))  # off the curves


def _correlation_bars(ax: Axes, labels: Sequence[str], correlations: np.ndarray) -> None:
    order = np.argsort(np.nan_to_num(correlations, nan=-2.0))[::-1]
    positions = np.arange(len(order))
    colours = ["#e8594f" if not r > 0 else "#3182bd" for r in correlations[order]]
    bars = ax.barh(positions, np.nan_to_num(correlations[order]), color=colours)
    ax.bar_label(
        bars,
        labels=[f"{r:.2f}" if np.isfinite(r) else "n/a (flat)" for r in correlations[order]],
        padding=2,
        fontsize=7,
    )
    ax.set_yticks(positions, [labels[i] for i in order], fontsize=8)
    ax.invert_yaxis()
    # room right of the longest bar for its number
    ax.set_xlim(min(-0.1, float(np.nanmin(correlations, initial=0.0)) - 0.05), 1.15)
    ax.axvline(0, color="grey", lw=0.8)
    ax.set_title("Correlation with the group time course")
    ax.set_xlabel("Pearson r (unitless)")
    ax.set_ylabel("subject run")


def _correlation_histogram(
    ax: Axes, list_ax: Axes, labels: Sequence[str], correlations: np.ndarray
) -> None:
    finite = correlations[np.isfinite(correlations)]
    ax.hist(finite, bins=30, range=(min(-0.1, float(finite.min(initial=0.0))), 1.0))
    ax.set_title(f"Correlation with the group time course, {len(labels)} runs")
    ax.set_xlabel("Pearson r (unitless)")
    ax.set_ylabel("subject runs")
    order = np.argsort(np.nan_to_num(correlations, nan=-2.0))[:N_LOWEST]
    lowest = "\n".join(f"{labels[i]}  {correlations[i]:5.2f}" for i in order)
    list_ax.axis("off")
    list_ax.text(
        0.0,
        1.0,
        f"lowest {len(order)}, r:\n{lowest}",
        transform=list_ax.transAxes,
        va="top",
        family="monospace",
    )
