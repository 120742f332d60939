"""The embedding figure of one experiment: the embeddings of every embedded volume on
their first two principal components (colour: subject, marker: modality), and each
image's reconstruction loss against its baseline and the training's validation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from bidstrain.errors import BidstrainError
from bidstrain.io.store import EmbeddingMeta
from bidstrain.report.figure import empty_panel, new_figure, principal_components

_MARKERS = {"T1w": "s", "bold": "o", "dwi": "^"}
_MODALITY_COLOURS = {"T1w": "#4c72b0", "bold": "#dd8452", "dwi": "#55a868"}


def read_embeddings(table: str | Path) -> tuple[pd.DataFrame, list[xr.Dataset]]:
    """The embed job's table and its embedding stores (loaded: one row per volume)."""
    frame = pd.read_csv(table, sep="\t")
    if "embedding" not in frame.columns:
        raise BidstrainError("not an embed table (no 'embedding' column)", path=table)
    stores = [xr.open_zarr(path).load() for path in frame["embedding"]]
    return frame, stores


def embedding_figure(
    stores: list[xr.Dataset], summary: dict[str, Any] | None, experiment: str
) -> Figure:
    """The two panels (see the module docstring); ``summary``: the training's ``summary``
    record (its final validation ratio per modality is drawn), or None."""
    fig = new_figure(13.0, 6.0, f"Embeddings of the trained model, experiment {experiment}")
    pca_ax, loss_ax = fig.subplots(1, 2, width_ratios=[1.0, 1.3])
    if not stores:
        empty_panel(pca_ax, "Embeddings", "no image embedded")
        empty_panel(loss_ax, "Reconstruction loss", "no image embedded")
        return fig
    embeddings = np.concatenate([s["embedding"].values for s in stores]).astype(np.float64)
    scores, explained, _ = principal_components(embeddings, 2)
    metas = [EmbeddingMeta.of(s) for s in stores]
    subjects = sorted({meta.subject for meta in metas})
    # Subjects from the colour cycle after the three modality colours of the other panel.
    colours = {sub: f"C{(i + 3) % 10}" for i, sub in enumerate(subjects)}
    start = 0
    for store, meta in zip(stores, metas, strict=True):
        n = store.sizes["time"]
        points = scores[start : start + n]
        start += n
        pca_ax.scatter(
            points[:, 0],
            points[:, 1] if points.shape[1] > 1 else np.zeros(n),
            s=14,
            marker=_MARKERS.get(meta.modality, "x"),
            color=colours[meta.subject],
            alpha=0.8,
        )
    handles = [
        Line2D([], [], ls="", marker="o", color=colours[s], label=f"sub-{s}") for s in subjects
    ]
    handles += [
        Line2D([], [], ls="", marker=_MARKERS[m], color="grey", label=m)
        for m in _MARKERS
        if any(meta.modality == m for meta in metas)
    ]
    pca_ax.legend(handles=handles, loc="best", fontsize=7)
    pca_ax.set_title("Pooled encoder embedding per volume, first two principal components")
    labels = [f"PC{i + 1} ({100 * e:.0f} % of variance)" for i, e in enumerate(explained)]
    pca_ax.set_xlabel(labels[0])
    pca_ax.set_ylabel(labels[1] if len(labels) > 1 else "PC2 (none)")
    _losses(loss_ax, stores, metas, summary)
    return fig


def _losses(
    ax, stores: list[xr.Dataset], metas: list[EmbeddingMeta], summary: dict[str, Any] | None
) -> None:
    ratios = [
        float(s["loss"].mean() / s["baseline"].mean()) if s.sizes["time"] else np.nan
        for s in stores
    ]
    positions = np.arange(len(stores))
    ax.barh(
        positions,
        ratios,
        color=[_MODALITY_COLOURS.get(meta.modality, "grey") for meta in metas],
        edgecolor="black",
    )
    labels = [
        meta.label + ("" if s.sizes["time"] else " (no sample)")
        for s, meta in zip(stores, metas, strict=True)
    ]
    ax.set_yticks(positions, labels, fontsize=7)
    ax.invert_yaxis()
    ax.axvline(1.0, color="black", lw=1, label="baseline (predicting the mean)")
    trained = (summary or {}).get("modalities", {})
    if trained and not all(meta.losses_as_trained for meta in metas):
        trained = {}
        ax.plot(
            [],
            [],
            " ",
            label="training's validation not drawn: another loss definition (retrain to compare)",
        )
    for modality, values in trained.items():
        ax.axvline(
            values["ratio"],
            color=_MODALITY_COLOURS.get(modality, "grey"),
            ls="--",
            label=f"training's validation {modality} ({values['ratio']:.2f}), on its own "
            "validation stores (with average.mode cross_subject: the averages)",
        )
    ax.set_xlim(left=0)
    ax.set_xlabel("mean reconstruction loss / baseline (masked tokens)")
    ax.set_title("Reconstruction loss per image against the baseline")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), ncols=2, fontsize=7)
