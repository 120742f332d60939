"""Normalization figure of one store: did z-scoring do what it should, and where?

Raw values are recovered as ``data * std + mean`` (the store's layout guarantees it);
broadcasting by dimension name makes that one expression for BOLD (statistics per
voxel) and for T1w/DWI (statistics per volume).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import dask
import numpy as np
import xarray as xr
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from bidstrain.io.scans_table import read_tables
from bidstrain.io.store import open_store, store_meta, to_grid
from bidstrain.report.figure import new_figure, slice_row

#: Voxels drawn in histograms and carpet plots (a random sample, fixed seed).
SAMPLE_VOXELS = 2000
#: Rows of a carpet plot: more sampled voxels are averaged in groups (sorted by mean).
CARPET_ROWS = 400


def sample_voxels(n_voxel: int, n_sample: int, seed: int = 0) -> np.ndarray:
    """Sorted indices of ``min(n_voxel, n_sample)`` voxels drawn without replacement."""
    rng = np.random.default_rng(seed)
    if n_voxel <= n_sample:
        return np.arange(n_voxel)
    return np.sort(rng.choice(n_voxel, size=n_sample, replace=False))


def raw_values(ds: xr.Dataset) -> xr.DataArray:
    """Raw (scanner-unit) values of a store, lazily: ``data * std + mean``."""
    return ds["data"] * ds["std"] + ds["mean"]


def temporal_snr(mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """tSNR = mean / std per voxel, NaN where the std is 0 or not finite."""
    mean = np.asarray(mean, dtype=np.float64)
    std = np.asarray(std, dtype=np.float64)
    valid = np.isfinite(std) & (std > 0)
    return np.where(valid, mean / np.where(valid, std, 1.0), np.nan)


def normalization_figure(
    ds: xr.Dataset, *, n_sample: int = SAMPLE_VOXELS, title: str | None = None
) -> Figure:
    """Histogram raw vs normalized, statistics maps, tSNR and carpet plots of one store.

    Parameters
    ----------
    ds : xarray.Dataset
        An open store (:func:`bidstrain.io.store.open_store`).
    n_sample : int
        Voxels sampled for the histograms and carpet plots.
    title : str, optional
        Figure title; by default the source file name.

    Returns
    -------
    Figure
        For statistics per voxel (BOLD): maps of the mean and std used (for a held-out
        run, those fitted on the subject's other runs) and of the run's own tSNR. For statistics per
        volume (T1w, DWI): raw and normalized temporal-mean maps and the per-volume mean
        and std. Carpet plots whenever the store has more than one volume.
    """
    meta = store_meta(ds)
    per_voxel = meta.per_voxel
    n_time, n_voxel = ds["data"].shape
    sample = sample_voxels(n_voxel, n_sample)
    normalized = ds["data"].isel(voxel=sample).values.astype(np.float32)
    raw = raw_values(ds.isel(voxel=sample)).transpose("time", "voxel").values.astype(np.float32)
    mask = ds["mask"].values
    name = Path(meta.source_path).name
    title = title or f"Normalization of {name}"
    heights = {"hist": 2.6, "maps": 2.3, "volumes": 2.3, "carpet": 3.0}
    details = (
        f"{meta.modality}, sub-{meta.subject}: {n_time} "
        f"volume{'s' if n_time > 1 else ''} x {n_voxel} voxels in the mask, "
        f"{meta.n_zero_variance} zero-variance, {meta.n_nonfinite} "
        f"non-finite; statistics per {'voxel' if per_voxel else 'volume'}"
    )
    fitted_on = [Path(p).name for p in meta.stats_from]
    if fitted_on and name not in fitted_on:
        details += f"\nheld out: statistics fitted on {', '.join(fitted_on)}"
    # a run whose confounds were regressed out stores its residuals: "raw" is residual + mean
    regressed = meta.confounds_strategy != "none"
    frame_valid = ds["frame_valid"].values if per_voxel and "frame_valid" in ds else None
    if regressed:
        details += (
            f"\nconfounds regressed out ({meta.confounds_strategy}): the raw values and the "
            "tSNR below are those of the residuals plus the mean"
        )
    if frame_valid is not None and not frame_valid.all():
        details += (
            f"\n{int((~frame_valid).sum())} of the {frame_valid.size} frames of the run's "
            "grid left out (the carpet plots' blank columns)"
        )
    if per_voxel:
        own = raw_values(ds)
        own_mean, own_std = dask.compute(own.mean("time"), own.std("time", ddof=1))
        tsnr_of = "this run's confound residuals" if regressed else "this run"
        maps = [
            ("mean used", "raw units", ds["mean"].values, "gray"),
            ("std used", "raw units", ds["std"].values, "magma"),
            (f"tSNR of {tsnr_of}", "mean / std", temporal_snr(own_mean, own_std), "viridis"),
        ]
    else:
        over = " mean over volumes" if n_time > 1 else ""
        maps = [
            (f"raw{over}", "raw units", raw_values(ds).mean("time").values, "gray"),
            (f"normalized{over}", "z-score", ds["data"].mean("time").values, "RdBu_r"),
        ]
    if not per_voxel and n_time == 1:
        mean, std = float(ds["mean"][0]), float(ds["std"][0])
        details += f"\nstatistics used: mean {mean:.4g}, std {std:.4g} (raw units)"
    rows = ["hist", *["maps"] * len(maps)]
    rows += ["volumes"] if not per_voxel and n_time > 1 else []
    rows += ["carpet"] if n_time > 1 else []
    fig = new_figure(
        12.0,
        sum(heights[r] for r in rows) + 0.3 + 0.2 * details.count("\n"),
        f"{title}\n{details}",
    )
    panels = dict(enumerate(fig.subfigures(len(rows), 1, height_ratios=[heights[r] for r in rows])))
    _histograms(panels[0].subplots(1, 2), raw, normalized, n_voxel, len(sample), regressed)
    for row, (label, unit, values, cmap) in enumerate(maps, start=1):
        grid = to_grid(ds, values, np.nan)
        axes = panels[row].subplots(1, 3)
        slice_row(panels[row], axes, grid, mask, label=label, unit=unit, cmap=cmap)
    if "volumes" in rows:
        _volume_statistics(panels[rows.index("volumes")].subplots(), ds)
    if "carpet" in rows:
        label = "time (s)" if per_voxel else "volume (index)"
        time = ds["time"].values if per_voxel else np.arange(n_time)
        if frame_valid is not None:  # one column per frame of the grid, blank where left out
            time = ds["frame_time"].values
            raw, normalized = (_on_grid(values, frame_valid) for values in (raw, normalized))
        _carpets(panels[rows.index("carpet")], raw, normalized, time, label, n_voxel)
    return fig


def _on_grid(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """``values`` (stored frames x voxels) at their rows of the run's frame grid, NaN
    in the rows of left-out frames."""
    out = np.full((valid.size, values.shape[1]), np.nan, dtype=values.dtype)
    out[valid] = values
    return out


def _histograms(
    axes: np.ndarray,
    raw: np.ndarray,
    normalized: np.ndarray,
    n_voxel: int,
    n_sample: int,
    regressed: bool,
) -> None:
    raw_ax, z_ax = axes
    sampled = f"{n_sample} of {n_voxel} voxels" if n_sample < n_voxel else f"{n_voxel} voxels"
    finite_raw = raw[np.isfinite(raw)]
    what = "Confound residuals + mean" if regressed else "Raw values"
    raw_ax.hist(finite_raw, bins=80, color="#4c72b0", label="data x std + mean")
    raw_ax.set_title(f"{what} ({sampled}, every stored volume)")
    raw_ax.set_xlabel("intensity (scanner units)")
    raw_ax.set_ylabel("count (voxel x volume)")
    raw_ax.legend()
    finite_z = normalized[np.isfinite(normalized)]
    z_ax.hist(finite_z, bins=80, density=True, color="#dd8452", label="normalized data")
    grid = np.linspace(-4, 4, 200)
    z_ax.plot(grid, np.exp(-(grid**2) / 2) / np.sqrt(2 * np.pi), "k--", label="N(0, 1)")
    z_ax.set_title(
        f"Normalized values: mean {finite_z.mean():.3g}, std {finite_z.std():.3g}"
        if finite_z.size
        else "Normalized values"
    )
    z_ax.set_xlabel("z-score (unitless)")
    z_ax.set_ylabel("density")
    z_ax.legend()


def _volume_statistics(ax: Axes, ds: xr.Dataset) -> None:
    volumes = np.arange(ds.sizes["time"])
    ax.plot(volumes, ds["mean"].values, "o-", label="mean (raw units)")
    ax.plot(volumes, ds["std"].values, "s-", label="std (raw units)")
    if "bval" in ds.coords:
        ax.set_xticks(
            volumes,
            [f"{v}\nb={b:g}" for v, b in zip(volumes, ds["bval"].values, strict=True)],
            fontsize=7,
        )
    ax.set_title("Statistics used per volume")
    ax.set_xlabel("volume (index; DWI: b-value in s/mm²)")
    ax.set_ylabel("intensity (scanner units)")
    ax.legend()


def _carpets(
    panel: Figure,
    raw: np.ndarray,
    normalized: np.ndarray,
    time: np.ndarray,
    time_label: str,
    n_voxel: int,
) -> None:
    order = np.argsort(np.nanmean(raw, axis=0))
    per_row = -(-order.size // CARPET_ROWS)
    groups = [order[start : start + per_row] for start in range(0, order.size, per_row)]
    step = float(np.median(np.diff(time)))
    extent = (time[0] - step / 2, time[-1] + step / 2, 0, order.size)
    rows = "one voxel per row" if per_row == 1 else f"mean of {per_row} voxels per row"
    raw_rows = np.stack([raw[:, g].mean(axis=1) for g in groups])
    low, high = np.nanpercentile(raw_rows, [1, 99])
    carpets = [
        ("raw", raw_rows, "gray", low, high, "intensity (scanner units)"),
        (
            "normalized",
            np.stack([normalized[:, g].mean(axis=1) for g in groups]),
            "RdBu_r",
            -3.0,
            3.0,
            "z-score",
        ),
    ]
    for ax, (kind, values, cmap, vmin, vmax, unit) in zip(
        panel.subplots(1, 2), carpets, strict=True
    ):
        image = ax.imshow(
            values,
            aspect="auto",
            cmap=cmap,
            vmin=vmin,
            vmax=vmax,
            extent=extent,
            origin="lower",
            interpolation="nearest",
        )
        panel.colorbar(image, ax=ax, label=unit)
        ax.set_title(f"Carpet plot, {kind} ({rows})")
        ax.set_xlabel(time_label)
        ax.set_ylabel(f"sampled voxel, by raw mean ({order.size} of {n_voxel})")


def normalization_figures(
    tables: Sequence[str | Path], out_dir: str | Path, *, n_sample: int = SAMPLE_VOXELS
) -> Iterator[tuple[Path, Figure]]:
    """:func:`normalization_figure` of every store of some subjects' normalize tables,
    drawn one at a time (save and close each before the next: a figure group holds
    hundreds of subjects).

    Parameters
    ----------
    tables : sequence of path
        The subjects' tables (``sub-<label>/sub-<label>_scans.tsv``, the subject folders
        side by side).
    out_dir : path
        Folder of the figures: each at its store's path relative to the folder of the
        subject folders (``sub-<label>/...``), ``.png`` for ``.zarr``.
    n_sample : int
        Voxels sampled for the histograms and carpet plots.

    Yields
    ------
    tuple of (Path, Figure)
        Output path and figure.
    """
    for table in tables:
        for row in read_tables([table]):
            relative = os.path.relpath(row.store, Path(table).parent.parent)
            path = Path(out_dir) / (relative.removesuffix(".zarr") + ".png")
            yield path, normalization_figure(open_store(row.store), n_sample=n_sample)
