"""Figures of the encoding model: held-out predicted against measured time courses (the
best voxels or parcels and some near the median correlation), and the map of held-out
prediction correlation over the anatomy (three slices with orientation letters): each
voxel's own, or for a model of parcels each parcel's painted over its voxels
(:func:`parcel_values`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from bidstrain.dataset.atlas import Atlas
from bidstrain.encoding.evaluate import FDR
from bidstrain.report.figure import mid_slices, new_figure, slice_row


def read_table(path: str | Path) -> dict[str, np.ndarray]:
    """The columns of an encoding ``metrics.tsv`` (``n/a`` as NaN)."""
    table = np.genfromtxt(path, names=True, delimiter="\t", missing_values="n/a", dtype=float)
    return {name: np.atleast_1d(table[name]) for name in table.dtype.names}


def chosen_targets(correlation: np.ndarray, n: int) -> list[tuple[str, int]]:
    """``n`` targets to show: the best, then those nearest the median correlation."""
    finite = np.flatnonzero(np.isfinite(correlation))
    if not finite.size:
        return []
    order = finite[np.argsort(correlation[finite])]
    best = int(order[-1])
    median = np.median(correlation[finite])
    near = [int(i) for i in order[np.argsort(np.abs(correlation[order] - median))] if i != best]
    return [("best", best)] + [("near the median", i) for i in near[: max(n - 1, 0)]]


def chance_line(metrics: Mapping[str, Any], kind: str) -> str:
    """What chance is for the model, for a title (two or three lines), from ``metrics.json``: the
    median over targets of the 95th percentile of r under the circular-shift null, and
    how many targets beat it at the false discovery rate, or why none can."""
    model, chance = metrics["predictions"]["model"], metrics["chance"]
    if model.get("median_null_r95") is None:
        return "chance: undefined (no target's correlation is defined)"
    rate = chance["false_discovery_rate"]
    lines = [
        f"chance: r above {model['median_null_r95']:.2f} in 5 % of {chance['rotations']} "
        "rotations of the measured series",
        f"(median over {kind}s); {model['significant_targets']} of {model['tested_targets']} "
        f"{kind}s above chance (FDR {rate * 100:g} %)",
    ]
    if chance["smallest_p"] > rate:
        lines.append(
            f"none can be: {chance['rotations'] + 1} held-out frames give no p below "
            f"{chance['smallest_p']:.2g}"
        )
    return "\n".join(lines)


def timecourse_figure(
    measured: np.ndarray,
    predicted: np.ndarray,
    ridge: np.ndarray,
    correlation: np.ndarray,
    p: np.ndarray,
    *,
    n: int,
    repetition_time: float,
    names: Sequence[str] | None = None,
    chance: str | None = None,
) -> Figure:
    """Held-out measured BOLD and the model's (and RidgeCV's) prediction, one panel per
    chosen target (:func:`chosen_targets`), titled with ``names[target]`` (the rows of
    ``metrics.tsv``: ``voxel 89``, ``parcel 3 tone_low``; by default the voxel's
    position), its correlation and its circular-shift p-value ``p``; ``chance``: a line
    for the figure's title (:func:`chance_line`).

    The model's line is broad and pale, RidgeCV's thin and dashed over it, so that both
    show where they coincide (as a ridge regression and a linear model trained alike
    do); the legend gives the largest gap between them in the panels.
    """
    names = names if names is not None else [f"voxel {i}" for i in range(measured.shape[1])]
    chosen = chosen_targets(correlation, n)
    title = "Encoding model: held-out prediction"
    if chance is not None:
        title += "\n" + chance
    fig = new_figure(9.0, 2.2 * max(len(chosen), 1), title)
    axes = fig.subplots(max(len(chosen), 1), 1, squeeze=False)[:, 0]
    time = np.arange(measured.shape[0]) * repetition_time
    shown = [index for _, index in chosen]
    gap = float(np.abs(predicted[:, shown] - ridge[:, shown]).max(initial=0.0))
    ridge_label = f"RidgeCV (within {gap:.2g} of the model in these panels)"
    for ax, (why, index) in zip(axes, chosen, strict=False):
        ax.plot(time, measured[:, index], color="black", lw=1.2, label="measured (average)")
        ax.plot(
            time, predicted[:, index], color="tab:red", lw=4.0, alpha=0.4, label="encoding model"
        )
        ax.plot(time, ridge[:, index], color="navy", lw=1.0, ls="--", label=ridge_label)
        ax.set_title(f"{names[index]} ({why}): r = {correlation[index]:.2f}, p = {p[index]:.2g}")
        ax.set_ylabel("BOLD (z)")
    axes[0].legend(loc="lower left", bbox_to_anchor=(0.0, 1.12), ncol=3, fontsize=8)
    axes[-1].set_xlabel("time in the held-out runs (s)")
    return fig


def parcel_values(values: np.ndarray, labels: Sequence[int], atlas: Atlas) -> np.ndarray:
    """Each parcel's value (``values[i]`` of the parcel of label ``labels[i]``) painted
    over the atlas's voxels on its grid, NaN outside every parcel (and in parcels
    ``labels`` does not list)."""
    position = {int(label): i for i, label in enumerate(labels)}
    per_parcel = np.full(atlas.n_parcels + 1, np.nan)  # the last: outside every parcel
    for slot, label in enumerate(atlas.indices):
        if int(label) in position:
            per_parcel[slot] = values[position[int(label)]]
    return per_parcel[atlas.parcel]


def correlation_map_figure(
    correlation: np.ndarray,
    mask: np.ndarray,
    title: str,
    anatomy: np.ndarray | None = None,
    above: np.ndarray | None = None,
) -> Figure:
    """The held-out correlation of each voxel on the average's grid: three mid-slices
    with orientation letters, a diverging scale from -1 to 1, over ``anatomy`` (the
    average's mean image, in grey) where given; voxels without a correlation (outside
    every parcel) show the anatomy alone. ``above`` (one bool per voxel of ``mask``, as
    ``correlation``): the voxels above chance, outlined in black and hatched."""
    volume = np.full(mask.shape, np.nan)
    volume[mask] = correlation
    fig = new_figure(11.0, 3.8, title)
    axes = fig.subplots(1, 3)
    slice_row(
        fig,
        axes,
        volume,
        mask,
        label="r",
        unit="held-out correlation",
        cmap="RdBu_r",
        vmin=-1.0,
        vmax=1.0,
        underlay=anatomy,
    )
    if above is not None and np.any(above):
        outlined = np.zeros(mask.shape)
        outlined[mask] = above
        for ax, plane in zip(axes, mid_slices(outlined, mask), strict=True):
            if plane.any():  # the edges of the voxels, not a line through their centres
                limits = ax.get_xlim(), ax.get_ylim()
                padded = np.kron(np.pad(plane, 1), np.ones((8, 8)))
                edges = (np.arange(padded.shape[1]) + 0.5) / 8 - 1.5
                rows = (np.arange(padded.shape[0]) + 0.5) / 8 - 1.5
                ax.contour(edges, rows, padded, levels=[0.5], colors="black", linewidths=1.0)
                # hatched inside, so that an island and a hole read differently
                ax.contourf(edges, rows, padded, levels=[0.5, 1.5], colors="none", hatches=["//"])
                ax.set_xlim(limits[0])
                ax.set_ylim(limits[1])
        key = Patch(facecolor="none", edgecolor="black", hatch="//")
        fig.legend([key], [f"above chance (FDR {FDR * 100:g} %)"], loc="outside lower center")
    return fig
