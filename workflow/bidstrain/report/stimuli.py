"""The stimulus beside the brain: an average's aligned stimulus features over time, one
panel per kind (their first principal components), above the averaged BOLD of a few
voxels of the same run, on one time axis in seconds."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import xarray as xr
from matplotlib.figure import Figure

from bidstrain.io.store import AlignedStore
from bidstrain.modalities import STIMULUS_KINDS
from bidstrain.report.figure import new_figure, principal_components

#: Principal components drawn per kind, and voxels of BOLD.
N_COMPONENTS = 3
N_VOXELS = 3
#: Components explaining less of a kind's variance are not drawn.
MIN_EXPLAINED = 0.01


def feature_components(
    features: np.ndarray, n: int = N_COMPONENTS
) -> tuple[np.ndarray, np.ndarray]:
    """The scores of the first ``n`` principal components of ``features`` (rows: time)
    that explain at least :data:`MIN_EXPLAINED` of the variance, each scaled to unit
    variance and signed to rise with the features' sum (its largest loading positive
    where that does not vary), and the fraction of the variance each explains.

    Returns
    -------
    scores : ndarray, shape (n_time, k), k <= n
    explained : ndarray, shape (k,)
    """
    scores, explained, components = principal_components(features, n)
    k = int((explained >= MIN_EXPLAINED).sum())  # the fractions only decrease
    scores, components = scores[:, :k], components[:k]
    loading_sum = components.sum(axis=1)
    largest = components[np.arange(k), np.abs(components).argmax(axis=1)]
    sign = np.where(np.abs(loading_sum) > 1e-9, np.sign(loading_sum), np.sign(largest))
    return scores * sign / np.sqrt(np.mean(scores**2, axis=0)), explained[:k]


def _first_delay(store: AlignedStore) -> tuple[np.ndarray, int]:
    """The columns of the store's first delay (all of them with the hrf method)."""
    delays = store.arrays["delay"]
    first = int(delays.min())
    return store.features[:, delays == first].astype(np.float64), first


def _strongest_voxels(bold: xr.Dataset, n: int = N_VOXELS) -> np.ndarray:
    """The ``n`` voxels of highest variance over time: in an average of z-scored runs,
    those where the subjects agree most."""
    data = np.asarray(bold["data"].values, dtype=np.float64)
    return np.argsort(data.var(axis=0))[::-1][:n]


def stimulus_figure(aligned: Mapping[str, AlignedStore], bold: xr.Dataset, title: str) -> Figure:
    """One panel per stimulus kind (first principal components of the features at the
    first delay) and one of BOLD (the strongest voxels), sharing the time axis.

    Parameters
    ----------
    aligned : mapping of str to AlignedStore
        The run's aligned stores by kind.
    bold : xarray.Dataset
        Its BOLD store (:func:`~bidstrain.io.store.open_store`).
    title : str
        The figure's title.
    """
    kinds = [kind for kind in STIMULUS_KINDS if kind in aligned]
    fig = new_figure(11, 2.2 * (len(kinds) + 1), title)
    axes = fig.subplots(len(kinds) + 1, 1, sharex=True)
    for ax, kind in zip(axes, kinds, strict=False):
        store = aligned[kind]
        features, first = _first_delay(store)
        scores, explained = feature_components(features)
        tr = store.repetition_time
        for c in range(scores.shape[1]):
            ax.plot(store.time, scores[:, c], lw=1.2,
                    label=f"PC{c + 1} ({100 * explained[c]:.0f} % of variance)")  # fmt: skip
        scale = "z-scored" if store.normalized else "raw scale"
        if store.delay_method == "hrf":
            delay = "convolved with the canonical (Glover) HRF"
        else:
            delay = f"delay {first} TR{'' if first == 1 else 's'} = {first * tr:g} s"
        ax.set_title(
            f"{kind}: {features.shape[1]} features ({store.decoder['units']}), {scale}, {delay}"
        )
        ax.set_ylabel("PC score (unit var.)")
        ax.legend(loc="upper right", ncols=3)
        ax.grid(alpha=0.3)
    ax = axes[-1]
    data = bold["data"]
    for v in _strongest_voxels(bold):
        ijk = (int(bold.i.values[v]), int(bold.j.values[v]), int(bold.k.values[v]))
        ax.plot(bold.time.values, data.values[:, v], lw=1.2, label=f"voxel {ijk}")
    ax.set_title(f"averaged BOLD: the {N_VOXELS} voxels of highest variance over time")
    ax.set_ylabel("BOLD (z-score)")
    ax.set_xlabel("time from the run's start (s)")
    ax.legend(loc="upper right", ncols=3)
    ax.grid(alpha=0.3)
    return fig
