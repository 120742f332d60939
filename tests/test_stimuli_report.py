"""The stimulus figure: principal components against scikit-learn's PCA, and a figure
whose panels share one time axis in seconds, with titles, units and legends."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from bidstrain.io.store import read_aligned_store, write_aligned_store
from bidstrain.report.stimuli import feature_components, stimulus_figure


def test_feature_components_match_scikit_learns_pca():
    from sklearn.decomposition import PCA

    rng = np.random.default_rng(0)
    latent = rng.normal(size=(80, 2)) * [3.0, 1.0]
    features = latent @ rng.normal(size=(2, 12)) + 0.01 * rng.normal(size=(80, 12))
    scores, explained = feature_components(features)
    reference = PCA(n_components=3).fit(features)
    # the third component explains under 1 %: left out
    assert scores.shape == (80, 2)
    np.testing.assert_allclose(explained, reference.explained_variance_ratio_[:2], rtol=1e-9)
    theirs = reference.transform(features)[:, :2]
    theirs /= theirs.std(axis=0)
    np.testing.assert_allclose(np.abs(scores), np.abs(theirs), atol=1e-9)
    np.testing.assert_allclose(scores.std(axis=0), 1.0)
    # signed to rise with the features' sum
    assert (
        np.corrcoef(scores[:, 0], features.sum(axis=1))[0, 1]
        * np.sign(reference.components_[0].sum())
        * np.sign(np.corrcoef(theirs[:, 0], features.sum(axis=1))[0, 1])
        > 0
    )


@pytest.mark.parametrize("method", ["delays", "hrf"])
def test_the_figure_shows_each_kind_above_bold_on_one_time_axis(tmp_path, method):
    rng = np.random.default_rng(1)
    time = np.arange(30) * 2.0
    aligned = {}
    for kind, n in (("video", 6), ("text", 4)):
        features = rng.normal(size=(30, n))
        arrays = {
            "delay": np.repeat([2, 3], n // 2) if method == "delays" else np.zeros(n, int),
            "source_feature": np.tile(np.arange(n // 2), 2),
            "constant": np.zeros(n, dtype=bool),
            **{name: np.ones(n) for name in ("mean", "std", "raw_mean", "raw_std", "raw_min",
                                                "raw_max")},
        }  # fmt: skip
        attrs = {"kind": kind, "normalized": True, "repetition_time": 2.0,
                 "delay_method": method, "decoder": {"units": f"{kind} units"}}  # fmt: skip
        write_aligned_store(tmp_path / f"{kind}.zarr", features, time, arrays, attrs)
        aligned[kind] = read_aligned_store(tmp_path / f"{kind}.zarr")
    bold = xr.Dataset(
        {"data": (("time", "voxel"), rng.normal(size=(30, 5)) * [1, 1, 3, 1, 2])},
        coords={"time": time, "i": ("voxel", np.arange(5)), "j": ("voxel", np.zeros(5, int)),
                "k": ("voxel", np.ones(5, int))},
    )  # fmt: skip
    fig = stimulus_figure(aligned, bold, "stimulus and averaged BOLD, task-movie run-1")
    axes = fig.get_axes()
    assert [ax.get_title().split(":")[0] for ax in axes] == ["video", "text", "averaged BOLD"]
    delays = "3 features (video units), z-scored, delay 2 TRs = 4 s"
    hrf = "6 features (video units), z-scored, convolved with the canonical (Glover) HRF"
    assert (delays if method == "delays" else hrf) in axes[0].get_title()
    assert axes[-1].get_xlabel() == "time from the run's start (s)"
    assert all(ax.get_ylabel() and ax.get_legend() for ax in axes)
    labels = [t.get_text() for t in axes[-1].get_legend().get_texts()]
    assert len(labels) == 3 and labels[:2] == ["voxel (2, 0, 1)", "voxel (4, 0, 1)"]
    np.testing.assert_array_equal(axes[0].get_lines()[0].get_xdata(), time)
    assert fig._suptitle.get_text() == "stimulus and averaged BOLD, task-movie run-1"
