"""What every report figure shares: the Agg backend, saving, slice panels, paging.

Figure functions of the stage modules build and return a :class:`matplotlib.figure.Figure`
without touching the file system, so that tests can inspect titles, labels and legends;
:func:`save_figure` writes one atomically.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.axis import Axis  # noqa: E402
from matplotlib.colors import Colormap  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import LogFormatterSciNotation, MaxNLocator  # noqa: E402

from bidstrain.io.atomic import atomic_path  # noqa: E402
from bidstrain.io.orientation import RAS_ENDS  # noqa: E402

DPI = 100
#: Subjects (or rows) shown one by one before a figure aggregates or pages them.
MAX_LISTED = 40
SLICE_NAMES = ("sagittal", "coronal", "axial")
#: The grid axes of each slice of :func:`mid_slices`: (horizontal, vertical).
SLICE_AXES = {"sagittal": (1, 2), "coronal": (0, 2), "axial": (0, 1)}
VOXEL_AXES = "ijk"
STATUS_COLOURS = {"pass": "#8fd18f", "warn": "#f5d36b", "fail": "#f08a80"}

plt.rcParams.update(
    {
        "figure.dpi": DPI,
        "savefig.dpi": DPI,
        "font.size": 9,
        "axes.titlesize": 10,
        "figure.titlesize": 12,
        "legend.fontsize": 8,
    }
)


def new_figure(width: float, height: float, title: str) -> Figure:
    """A figure of ``width`` x ``height`` inches with a constrained layout and a title."""
    fig = plt.figure(figsize=(width, height), layout="constrained")
    fig.suptitle(title, fontweight="bold")
    return fig


def save_figure(fig: Figure, path: str | Path) -> None:
    """Write ``fig`` as a PNG at ``path`` atomically and release its memory."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def mid_slices(volume: np.ndarray, mask: np.ndarray) -> list[np.ndarray]:
    """Three orthogonal slices through the centre of the mask, oriented for display.

    Parameters
    ----------
    volume : ndarray, shape (x, y, z)
        Values on the store's grid.
    mask : ndarray of bool, shape (x, y, z)
        Where the values are defined; slices cut through its centre of mass.

    Returns
    -------
    list of ndarray
        Sagittal (y, z), coronal (x, z) and axial (x, y) slices, transposed so that the
        second axis of the slice is vertical (``imshow(..., origin="lower")``).
    """
    centre = np.rint(np.argwhere(mask).mean(axis=0)).astype(int) if mask.any() else None
    if centre is None:
        centre = np.array(volume.shape) // 2
    x, y, z = centre
    return [volume[x, :, :].T, volume[:, y, :].T, volume[:, :, z].T]


def integer_ticks(*axes: Axis) -> None:
    """Put the major ticks of each axis on whole numbers only (voxel, parcel or frame
    indices), never between two (``-0.5``, ``2.5``) however few the axis spans."""
    for axis in axes:
        axis.set_major_locator(MaxNLocator(nbins="auto", integer=True))


def log_y(ax: Axes) -> None:
    """A log y axis that labels ticks between the powers of ten as well when it shows at
    most one power of ten: every one within a decade, 2, 3, 4 and 6 x up to two decades
    (matplotlib's default labels them all within 0.4 decades only, which leaves a
    half-decade axis with one or two numbers)."""
    ax.set_yscale("log")
    ax.yaxis.set_minor_formatter(LogFormatterSciNotation(minor_thresholds=(1, 1)))


def orientation_labels(ax: Axes, plane: str) -> None:
    """Label the four edges of a slice panel of a store with the anatomical directions
    they face (``L``/``R``, ``P``/``A``, ``I``/``S``), and its axes with the voxel index
    (ticks on whole voxels, :func:`integer_ticks`).

    Stores are in RAS+ voxel order (:data:`bidstrain.io.orientation.RAS_ENDS`) and
    :func:`mid_slices` keeps the index order, with ``origin="lower"``: the low index is
    left and bottom. So the coronal and axial panels show the subject's right on the
    right (neurological convention) and the sagittal panel shows anterior on the right.
    """
    horizontal, vertical = SLICE_AXES[plane]
    style = {
        "transform": ax.transAxes,
        "fontsize": 9,
        "fontweight": "bold",
        "color": "black",
        "bbox": {"boxstyle": "round,pad=0.15", "facecolor": "white", "alpha": 0.7, "lw": 0},
    }
    low, high = RAS_ENDS[horizontal]
    ax.text(0.02, 0.5, low, ha="left", va="center", **style)
    ax.text(0.98, 0.5, high, ha="right", va="center", **style)
    low, high = RAS_ENDS[vertical]
    ax.text(0.5, 0.02, low, ha="center", va="bottom", **style)
    ax.text(0.5, 0.98, high, ha="center", va="top", **style)
    ax.set_xlabel(f"voxel {VOXEL_AXES[horizontal]}")
    ax.set_ylabel(f"voxel {VOXEL_AXES[vertical]}")
    integer_ticks(ax.xaxis, ax.yaxis)


def slice_row(
    fig: Figure,
    axes: Sequence[Axes],
    volume: np.ndarray,
    mask: np.ndarray,
    *,
    label: str,
    unit: str,
    cmap: str | Colormap = "gray",
    vmin: float | None = None,
    vmax: float | None = None,
    counts: bool = False,
    underlay: np.ndarray | None = None,
) -> None:
    """Draw the three mid-slices of ``volume`` on ``axes`` with one shared colour bar.

    Panels are titled ``<label>: <plane>`` and their edges labelled with the anatomical
    directions (:func:`orientation_labels`; ``volume`` is on a store's RAS+ grid); the
    colour bar is labelled with ``unit``.

    Voxels outside ``mask`` are transparent. ``vmin``/``vmax`` default to the 1st and
    99th percentiles inside the mask, so that a few extreme voxels do not wash the map out;
    with ``counts`` the colour bar ticks whole numbers only (:func:`integer_ticks`). With
    ``underlay`` (a volume on the same grid: the anatomy, a mean image), it is drawn in
    grey beneath, and ``volume`` over it, slightly transparent, where it is finite.
    """
    inside = volume[mask]
    finite = inside[np.isfinite(inside)]
    if finite.size:
        low, high = np.percentile(finite, [1, 99])
    else:
        low, high = 0.0, 1.0
    vmin = low if vmin is None else vmin
    vmax = high if vmax is None else vmax
    if vmax <= vmin:
        vmax = vmin + 1.0
    shown = np.ma.masked_where(~mask, volume)
    below = mid_slices(underlay, mask) if underlay is not None else [None] * len(SLICE_NAMES)
    grey = np.percentile(underlay[mask], [1, 99]) if underlay is not None else None
    image = None
    for ax, name, plane, plane_mask, anatomy in zip(
        axes, SLICE_NAMES, mid_slices(shown, mask), mid_slices(mask, mask), below, strict=True
    ):
        if anatomy is not None:
            ax.imshow(np.ma.masked_where(~plane_mask, anatomy), cmap="gray", vmin=grey[0],
                      vmax=grey[1], origin="lower", interpolation="nearest")  # fmt: skip
        image = ax.imshow(
            np.ma.masked_where(~plane_mask | ~np.isfinite(plane), plane),
            cmap=cmap,
            vmin=vmin,
            vmax=vmax,
            origin="lower",
            interpolation="nearest",
            alpha=None if anatomy is None else 0.75,
        )
        ax.set_title(f"{label}: {name}")
        orientation_labels(ax, name)
        ax.tick_params(labelsize=7)
    bar = fig.colorbar(image, ax=list(axes), label=unit, shrink=0.9)
    if counts:
        integer_ticks(bar.ax.yaxis)


def pages(items: Sequence, per_page: int) -> list[Sequence]:
    """Split ``items`` into consecutive pages of at most ``per_page`` (at least one page)."""
    return [items[start : start + per_page] for start in range(0, max(len(items), 1), per_page)]


def empty_panel(ax: Axes, title: str, message: str) -> None:
    """A panel that says why it has nothing to show (instead of blank axes)."""
    ax.set_title(title)
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, wrap=True)
    ax.set_xticks([])
    ax.set_yticks([])


def principal_components(values: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The first ``n`` principal components of ``values`` (rows: samples), fewer when
    there are fewer samples or columns.

    Returns
    -------
    scores : ndarray, shape (n_samples, k)
        The centred values projected on each component (as scikit-learn's
        ``PCA.transform``, up to the sign).
    explained : ndarray, shape (k,)
        The fraction of the variance each explains (0 for constant values).
    components : ndarray, shape (k, n_columns)
        The unit loadings.
    """
    centred = values - values.mean(axis=0)
    u, s, vt = np.linalg.svd(centred, full_matrices=False)
    total = float((s**2).sum())
    explained = s**2 / total if total > 0 else np.zeros_like(s)
    n = min(n, len(s))
    return u[:, :n] * s[:n], explained[:n], vt[:n]
