"""What the model sees: one volume of each modality on its store's grid, and the same
volume after the trained model's resampling and crop or pad (its ``model.json``); for a
model of parcel windows, the first window of a parcel store with its tokens; for a model
with stimulus tokens (``train.stimuli``), the features that come with that BOLD store's
first window."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from matplotlib.axes import Axes
from matplotlib.figure import Figure, SubFigure

from bidstrain.errors import BidstrainError
from bidstrain.io.store import AlignedStore, open_store, read_parcel_attrs, to_grid
from bidstrain.modalities import MODALITIES
from bidstrain.report.figure import integer_ticks, new_figure, slice_row
from bidstrain.train.expectation import preparation_of
from bidstrain.train.resample import model_view

#: Parcels of a window whose names label the rows (more: integer positions).
MAX_NAMED_PARCELS = 40
#: Feature groups of a stimulus kind whose bounds are drawn (more would hide the values).
MAX_DRAWN_GROUPS = 16


def model_input_figure(
    description: Mapping[str, Any], experiment: str, stimuli: Sequence[AlignedStore] = ()
) -> Figure:
    """Per modality, two rows of mid-slices: the first volume of its first training store
    (z-scores on the store's grid) and that volume as the model receives it, transparent
    where it holds no data (0 in the input, not counted by the loss:
    :mod:`bidstrain.train.validity`); for parcel windows, the first window of the first
    training store (:func:`parcel_window_row`).

    Parameters
    ----------
    description : mapping
        The trained model's ``model.json`` (``input``: shape and resample per modality,
        or parcels, window and frames per token; ``normalization``: the stores per
        modality).
    experiment : str
        ``train.experiment``, for the title.
    stimuli : sequence of AlignedStore
        The aligned stores of the first BOLD training store (``train.stimuli``): a row
        each, their first window (:func:`stimulus_window_row`).

    Raises
    ------
    BidstrainError
        When an aligned store has another number of rows than the drawn BOLD store has
        frames.
    """
    _check_rows(stimuli, description)
    modalities = [m for m in description["input"] if m in MODALITIES]
    heights = [4.6] * len(modalities) + [3.2] * len(stimuli)
    fig = new_figure(12.0, sum(heights), f"What the model sees, experiment {experiment}")
    rows = fig.subfigures(len(heights), 1, squeeze=False, height_ratios=heights)[:, 0]
    for row, store in zip(rows[len(modalities) :], stimuli, strict=True):
        stimulus_window_row(row, store, description)
    for row, modality in zip(rows[: len(modalities)], modalities, strict=True):
        if "parcels" in description["input"][modality]:
            parcel_window_row(row, modality, description)
            continue
        shape = description["input"][modality]["shape"]
        factor = int(description["input"][modality]["resample"])
        store = description["normalization"][modality]["stores"][0]["store"]
        with open_store(store, use_dask=False) as ds:
            mask = np.asarray(ds["mask"].values, dtype=bool)
            volume = to_grid(ds, np.asarray(ds["data"][0].values, dtype=np.float32))
        seen = model_view(volume, mask, shape, factor)
        holds_data = model_view(np.ones(mask.shape, dtype=np.float32), mask, shape, factor) > 0
        row.suptitle(
            f"{modality}: {Path(store).name}\nvolume 0; grid {mask.shape} -> resample "
            f"{factor} -> {tuple(shape)}; the loss counts the {holds_data.mean():.0%} of the "
            "model's grid that holds data"
        )
        axes = row.subplots(2, 3)
        slice_row(row, axes[0], volume, mask, label="store", unit="z-score", cmap="RdBu_r",
                  vmin=-3.0, vmax=3.0)  # fmt: skip
        slice_row(row, axes[1], seen, holds_data, label="model input", unit="z-score",
                  cmap="RdBu_r", vmin=-3.0, vmax=3.0)  # fmt: skip
    return fig


def parcel_window_row(row: SubFigure, modality: str, description: Mapping[str, Any]) -> None:
    """The first window of the first training store, parcels by frames, as the model
    receives it (the store's rows as they are), with the bounds of its time tokens
    (``patch_frames`` frames of one parcel each)."""
    record = description["input"][modality]
    window, patch_frames = int(record["window"]), int(record["patch_frames"])
    store = description["normalization"][modality]["stores"][0]["store"]
    data = zarr.open_array(Path(store) / "data", mode="r")
    values = np.asarray(data[:window], dtype=np.float32).T
    row.suptitle(
        f"{modality}: {Path(store).name}\nframes 0-{values.shape[1] - 1} of "
        f"{data.shape[0]}: {values.shape[0]} parcels x a window of {window} frames, tokens "
        f"of {patch_frames} frames"
    )
    ax = window_panel(row, values, patch_frames, 3.0, "z-score")
    names = read_parcel_attrs(store).get("parcel_names", [])
    if 0 < len(names) <= MAX_NAMED_PARCELS:
        ax.set_yticks(range(len(names)), names, fontsize="small")
        ax.set_ylabel("parcel")
    else:
        integer_ticks(ax.yaxis)
        ax.set_ylabel("parcel (store order)")


def stimulus_window_row(
    row: SubFigure, store: AlignedStore, description: Mapping[str, Any]
) -> None:
    """The features of one stimulus kind that come with the first BOLD window: features
    by frames, as the model receives them (z-scored with the training statistics unless
    ``stimuli.normalize`` is off), with the bounds of its tokens: ``patch_frames`` frames
    (vertical lines) of ``token_features`` features (horizontal lines, up to
    :data:`MAX_DRAWN_GROUPS` groups; ``model.json`` ``input``)."""
    prepared = preparation_of(description)
    window, patch_frames = prepared.window, prepared.patch_frames
    values = np.asarray(store.features[:window], dtype=np.float32).T
    features = (prepared.stimuli or {}).get(store.kind, {})
    delays = f", delays {features['delays']} TRs" if features.get("delays") else ""
    per_token = int(description["input"].get(store.kind, {}).get("token_features", 1))
    scale = "z-score" if store.normalized else "raw value"
    row.suptitle(
        f"{store.kind}: the {values.shape[0]:,} features of {_frames(values.shape[1])} of "
        f"{store.label}{delays}; tokens of {_count(patch_frames, 'frame')} x "
        f"{_count(per_token, 'feature')}"
    )
    limit = 3.0 if store.normalized else float(np.abs(values).max() or 1.0)
    ax = window_panel(row, values, patch_frames, limit, scale)
    if 1 < values.shape[0] / per_token <= MAX_DRAWN_GROUPS:
        for bound in range(per_token, values.shape[0], per_token):
            ax.axhline(bound - 0.5, color="black", linewidth=0.5)
    integer_ticks(ax.yaxis)
    ax.set_ylabel("feature")


def _check_rows(stimuli: Sequence[AlignedStore], description: Mapping[str, Any]) -> None:
    """Raise unless every aligned store has a row per frame of the BOLD store the figure
    draws (its features come with that store's windows)."""
    if not stimuli:
        return
    drawn = description["normalization"]["bold"]["stores"][0]["store"]
    frames = zarr.open_array(Path(drawn) / "data", mode="r").shape[0]
    for store in stimuli:
        if store.features.shape[0] != frames:
            raise BidstrainError(
                f"the {store.kind} features of {store.label} have {store.features.shape[0]} "
                f"rows, the BOLD store the figure draws {frames} frames ({drawn}): they do "
                "not come with its windows"
            )


def window_panel(
    row: SubFigure, values: np.ndarray, patch_frames: int, limit: float, unit: str
) -> Axes:
    """``values`` (rows by the window's frames) on a diverging scale of +-``limit``,
    with the bounds of the tokens of ``patch_frames`` frames and a colour bar; returns
    the panel for its row labels."""
    ax = row.subplots()
    image = ax.imshow(
        values,
        aspect="auto",
        cmap="RdBu_r",
        vmin=-limit,
        vmax=limit,
        interpolation="nearest",
        extent=(-0.5, values.shape[1] - 0.5, values.shape[0] - 0.5, -0.5),
    )
    for bound in range(patch_frames, values.shape[1], patch_frames):
        ax.axvline(bound - 0.5, color="black", linewidth=1.0)
    ax.set_xticks(range(values.shape[1]))
    ax.set_xlabel("frame of the window (black lines: token bounds)")
    row.colorbar(image, ax=ax, label=unit)
    return ax


def _count(n: int, noun: str) -> str:
    """``1 frame``, ``4 frames``."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _frames(n: int) -> str:
    """``frame 0``, ``frames 0-3``: the first ``n`` frames."""
    return "frame 0" if n == 1 else f"frames 0-{n - 1}"
