"""What the model sees: one volume of each modality on its store's grid, and the same
volume after the trained model's resampling and crop or pad (its ``model.json``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from bidstrain.io.store import open_store, to_grid
from bidstrain.report.figure import new_figure, slice_row
from bidstrain.train.resample import model_view


def model_input_figure(description: Mapping[str, Any], experiment: str) -> Figure:
    """Per modality, two rows of mid-slices: the first volume of its first training store
    (z-scores on the store's grid) and that volume as the model receives it.

    Parameters
    ----------
    description : mapping
        The trained model's ``model.json`` (``input``: shape and resample per modality;
        ``normalization``: the stores per modality).
    experiment : str
        ``train.experiment``, for the title.
    """
    modalities = list(description["input"])
    fig = new_figure(12.0, 4.6 * len(modalities), f"What the model sees, experiment {experiment}")
    rows = fig.subfigures(len(modalities), 1, squeeze=False)[:, 0]
    for row, modality in zip(rows, modalities, strict=True):
        shape = description["input"][modality]["shape"]
        factor = int(description["input"][modality]["resample"])
        store = description["normalization"][modality]["stores"][0]["store"]
        with open_store(store, use_dask=False) as ds:
            mask = np.asarray(ds["mask"].values, dtype=bool)
            volume = to_grid(ds, np.asarray(ds["data"][0].values, dtype=np.float32))
        seen = model_view(volume, mask, shape, factor)
        row.suptitle(
            f"{modality}: {store}, volume 0; grid {mask.shape} -> resample {factor} -> "
            f"{tuple(shape)}"
        )
        axes = row.subplots(2, 3)
        slice_row(row, axes[0], volume, mask, label="store", unit="z-score", cmap="RdBu_r",
                  vmin=-3.0, vmax=3.0)  # fmt: skip
        slice_row(row, axes[1], seen, seen != 0, label="model input", unit="z-score",
                  cmap="RdBu_r", vmin=-3.0, vmax=3.0)  # fmt: skip
    return fig
