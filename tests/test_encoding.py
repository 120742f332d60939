"""The encoding model on the naturalistic demo (known answer), exact resume, DDP
sharding, the baselines, and the refusal of features prepared differently."""

from __future__ import annotations

import dataclasses
import json

import nibabel as nib
import numpy as np
import pytest
import torch
from bidstrain.config import load_section
from bidstrain.demo.naturalistic import NaturalisticSpec, make_naturalistic_demo, voxel_weights
from bidstrain.encoding.__main__ import run
from bidstrain.encoding.apply import feature_differences, predict_run, write_prediction
from bidstrain.encoding.apply import main as apply_main
from bidstrain.encoding.data import EncodingData, load_data, save_data, statistics_digest
from bidstrain.encoding.evaluate import score
from bidstrain.encoding.fit import Interrupted, fit, shard
from bidstrain.errors import BidstrainError
from bidstrain.io.store import open_store
from bidstrain.report.encoding import chosen_targets
from bidstrain.stimuli.align import StatsAccumulator, convolve_hrf, stack_delays
from bidstrain.train.distributed import Context

SPEC = NaturalisticSpec(duration=600.0)
DELAYS = (0, 1, 2, 3, 4, 5, 6, 7, 8)
CPU = Context(rank=0, world_size=1, device=torch.device("cpu"))


def _zscore(x: np.ndarray) -> np.ndarray:
    return (x - x.mean(axis=-1, keepdims=True)) / x.std(axis=-1, keepdims=True)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """Arrays of the demo: delayed per-TR features (run 1 trains, run 2 is held out),
    the cross-subject average of z-scored BOLD, and the true noise-free signal."""
    root = make_naturalistic_demo(tmp_path_factory.mktemp("film"), SPEC)
    truth = json.loads((root / "code" / "naturalistic_truth.json").read_text())
    raw = np.stack(
        [truth["luminance"], np.log2(truth["tone_frequency"]), [len(w) for w in truth["words"]]],
        axis=1,
    )
    tr, n = SPEC.repetition_time, SPEC.n_bins
    placed = raw  # the film starts at onset 0 and lasts the run: one row per volume
    delayed = {name: stack_delays(placed, DELAYS) for name in ("1", "2")}
    accumulator = StatsAccumulator()
    accumulator.add("1", delayed["1"])  # run 2 held out
    stats = accumulator.stats()
    averages = {}
    for name in ("1", "2"):
        bold = [
            nib.load(
                root / f"sub-{s + 1:02d}/func/sub-{s + 1:02d}_task-movie_run-{name}_bold.nii.gz"
            )
            .get_fdata()
            .reshape(-1, n)
            for s in range(SPEC.n_subjects)
        ]
        averages[name] = np.mean([_zscore(b) for b in bold], axis=0).T
    design = (raw - raw.mean(axis=0)) / raw.std(axis=0)
    signal = np.einsum("tc,cv->tv", convolve_hrf(design, tr), voxel_weights(SPEC).reshape(3, -1))
    features = {
        "kinds": ["video", "audio", "text"],
        "sizes": {"video": 1, "audio": 1, "text": 1},
        "delays": list(DELAYS),
        "method": "delays",
        "repetition_time": tr,
        "statistics": {"digest": statistics_digest(stats.mean, stats.std), "training_runs": ["1"]},
        "decoder": {"video": "mean luminance", "audio": "log2 tone", "text": "word count"},
    }
    target = {
        "average": "task-movie",
        "kind": "voxels",
        "mask": "all",
        "n_targets": signal.shape[1],
    }
    data = EncodingData(
        train_x=stats.apply(delayed["1"]).astype(np.float32),
        train_y=averages["1"].astype(np.float32),
        heldout_x=stats.apply(delayed["2"]).astype(np.float32),
        heldout_y=averages["2"].astype(np.float32),
        features=features,
        target=target,
    )
    return data, signal


def _settings(path, **encoding):
    path.write_text(json.dumps({"encoding": {"epochs": 1500, **encoding}, "seed": 3}))
    return path


@pytest.mark.slow
def test_heldout_correlation_reaches_the_noise_ceiling_and_ridge(demo, tmp_path):
    data, signal = demo
    save_data(data, tmp_path / "data.npz")
    summary = run(_settings(tmp_path / "s.json"), tmp_path / "data.npz", tmp_path / "out", 1)
    table = np.genfromtxt(
        tmp_path / "out" / "metrics.tsv", names=True, delimiter="\t", missing_values="n/a"
    )
    responsive = np.abs(signal).sum(axis=0) > 0
    # ceiling: correlation of the true noise-free response with the measured average
    ceiling = score(signal, data.heldout_y.astype(np.float64)).correlation[responsive].mean()
    model = table["model_correlation"][responsive].mean()
    ridge = table["ridge_correlation"][responsive].mean()
    print(f"ceiling {ceiling:.3f} model {model:.3f} ridge {ridge:.3f}")
    assert ceiling - model < 0.1, (ceiling, model)
    assert ridge - model <= 0.05, (ridge, model)
    # every responsive voxel beats each of its 299 rotations: p = 1 / 300
    assert table["model_p"][responsive] == pytest.approx(1 / 300, rel=1e-5)  # 6 digits in the TSV
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["predictions"]["model"]["significant_targets"] >= responsive.sum()
    assert metrics["chance"]["rotations"] == 299
    assert np.isnan(table["mean_correlation"]).all()  # undefined, written n/a
    assert (table["mean_r2"] <= 1e-12).all()
    assert summary["mean"]["mean_correlation"] is None
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["predictions"]["model"]["mean_correlation"] == pytest.approx(
        np.nanmean(table["model_correlation"]), abs=1e-5
    )
    described = json.loads((tmp_path / "out" / "model.json").read_text())
    assert described["features"]["delays"] == list(DELAYS)
    assert described["n_features"] == data.n_features


@pytest.mark.slow
def test_scrambled_stimulus_drops_to_chance(demo, tmp_path):
    data, signal = demo
    rng = np.random.default_rng(7)
    scrambled = EncodingData(
        train_x=data.train_x[rng.permutation(len(data.train_x))],
        train_y=data.train_y,
        heldout_x=data.heldout_x[rng.permutation(len(data.heldout_x))],
        heldout_y=data.heldout_y,
        features=data.features,
        target=data.target,
    )
    save_data(scrambled, tmp_path / "data.npz")
    run(_settings(tmp_path / "s.json"), tmp_path / "data.npz", tmp_path / "out", 1)
    table = np.genfromtxt(
        tmp_path / "out" / "metrics.tsv", names=True, delimiter="\t", missing_values="n/a"
    )
    responsive = np.abs(signal).sum(axis=0) > 0
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    model = metrics["predictions"]["model"]
    print(model, table["model_p"][responsive].round(3))
    assert model["significant_targets"] == 0
    assert abs(table["model_correlation"][responsive].mean()) < model["median_null_r95"]


def _small(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(40, 5)).astype(np.float32)
    y = (x @ rng.normal(size=(5, 3)) + rng.normal(size=(40, 3))).astype(np.float32)
    features = {
        "kinds": ["video", "text"],
        "sizes": {"video": 2, "text": 3},
        "delays": [0],
        "method": "delays",
        "repetition_time": 2.0,
        "statistics": {"digest": "0123456789abcdef", "training_runs": ["task-a_run-1"]},
    }
    return EncodingData(x[:30], y[:30], x[30:], y[30:], features, {"kind": "voxels"})


def _ar1(rng, phi, shape):
    """Stationary AR(1) columns: BOLD-like autocorrelation ``phi`` per time point."""
    x = np.empty(shape)
    x[0] = rng.normal(size=shape[1]) / np.sqrt(1 - phi**2)
    for t in range(1, shape[0]):
        x[t] = phi * x[t - 1] + rng.normal(size=shape[1])
    return x


def test_shift_null_matches_rotations_computed_one_by_one():
    from bidstrain.encoding.evaluate import SHIFT_BLOCK, shift_null

    rng = np.random.default_rng(4)
    n, n_targets = 37, 6
    predicted = _ar1(rng, 0.6, (n, n_targets))
    measured = predicted * [0, 0.2, 1, 3, 0, 0] + _ar1(rng, 0.6, (n, n_targets))
    measured[:, 4] = 5.0  # constant: undefined
    null = shift_null(predicted.astype(np.float32), measured)
    for j in range(n_targets):
        if j == 4:
            assert np.isnan(null.p[j]) and np.isnan(null.r95[j])
            continue
        rotated = [
            np.corrcoef(predicted[:, j], np.roll(measured[:, j], -k))[0, 1] for k in range(n)
        ]
        p = (1 + sum(r >= rotated[0] for r in rotated[1:])) / n
        assert null.p[j] == pytest.approx(p, abs=1e-12)
        assert null.r95[j] == pytest.approx(np.quantile(rotated[1:], 0.95), abs=1e-6)
    assert null.p[3] == pytest.approx(1 / n)  # a strong prediction beats every rotation
    # blocks of targets give the same answer as one
    wide = np.tile(measured[:, :4], (1, SHIFT_BLOCK // 2 + 1))
    blocked = shift_null(np.tile(predicted[:, :4], (1, SHIFT_BLOCK // 2 + 1)), wide)
    np.testing.assert_array_equal(blocked.p, np.tile(null.p[:4], SHIFT_BLOCK // 2 + 1))


@pytest.mark.parametrize("phi", [0.0, 0.9])
def test_shift_null_holds_its_level_where_independent_frames_do_not(phi):
    """Unrelated slow series (AR(1), 300 time points): the circular-shift test rejects
    about 5 % at p <= 0.05, whatever the autocorrelation; the bound that takes the
    frames as independent (one-sided 5 %: 1.645 / sqrt(n)) rejects 30 % at phi 0.9."""
    from bidstrain.encoding.evaluate import shift_null

    rng = np.random.default_rng(11)
    shape = (300, 4000)
    predicted, measured = _ar1(rng, phi, shape), _ar1(rng, phi, shape)
    rejected = (shift_null(predicted, measured).p <= 0.05).mean()
    assert 0.04 <= rejected <= 0.065, rejected  # binomial SD 0.0034
    naive = (score(predicted, measured).correlation > 1.645 / np.sqrt(shape[0])).mean()
    assert (naive > 0.25) if phi else (0.04 <= naive <= 0.065), naive


def test_interrupted_run_resumes_bit_for_bit(tmp_path):
    data = _small()
    config = load_section("encoding", {"epochs": 50, "checkpoint_every": 7})
    whole = fit(data, config, alpha=1.0, seed=5, context=CPU, checkpoint_dir=tmp_path / "a")
    with pytest.raises(Interrupted) as stopped:
        fit(
            data,
            config,
            alpha=1.0,
            seed=5,
            context=CPU,
            checkpoint_dir=tmp_path / "b",
            stop_after=23,
        )
    assert stopped.value.step == 23
    resumed = fit(data, config, alpha=1.0, seed=5, context=CPU, checkpoint_dir=tmp_path / "b")
    assert resumed.steps == 50
    assert np.array_equal(whole.weight, resumed.weight)
    assert np.array_equal(whole.bias, resumed.bias)


def test_other_settings_set_checkpoints_aside(tmp_path):
    data = _small()
    config = load_section("encoding", {"epochs": 10})
    with pytest.raises(Interrupted):
        fit(
            data,
            config,
            alpha=1.0,
            seed=5,
            context=CPU,
            checkpoint_dir=tmp_path / "c",
            stop_after=4,
        )
    fit(data, config, alpha=2.0, seed=5, context=CPU, checkpoint_dir=tmp_path / "c")
    assert len(list(tmp_path.glob("c-*"))) == 1


def test_shards_sum_to_the_full_gradient():
    """Every rank's share of the time points, gradients summed: the full-batch gradient."""
    data = _small()
    n, total = len(data.train_x), 3
    assert sorted(np.concatenate([shard(n, r, total) for r in range(total)])) == list(range(n))
    w = torch.zeros(3, 5, dtype=torch.float64, requires_grad=True)
    x, y = (
        torch.as_tensor(data.train_x, dtype=torch.float64),
        torch.as_tensor(data.train_y, dtype=torch.float64),
    )
    ((x @ w.T - y) ** 2).sum().backward()
    full = w.grad.clone()
    parts = []
    for rank in range(total):
        w.grad = None
        rows = shard(n, rank, total)
        ((x[rows] @ w.T - y[rows]) ** 2).sum().backward()
        parts.append(w.grad.clone())
    assert torch.allclose(sum(parts), full, rtol=1e-12)


def test_model_converges_to_ridge_in_float64(tmp_path):
    """The trained weights approach the closed-form ridge solution (numpy, float64);
    scikit-learn's Ridge's distance to it is printed beside."""
    from sklearn.linear_model import Ridge

    data = _small()
    alpha = 3.0
    fitted = fit(
        data,
        load_section("encoding", {"epochs": 3000, "lr": 0.05}),
        alpha=alpha,
        seed=0,
        context=CPU,
        checkpoint_dir=tmp_path / "r",
    )
    x, y = data.train_x.astype(np.float64), data.train_y.astype(np.float64)
    xc, yc = x - x.mean(axis=0), y - y.mean(axis=0)
    exact = np.linalg.solve(xc.T @ xc + alpha * np.eye(x.shape[1]), xc.T @ yc).T
    peer = Ridge(alpha=alpha).fit(x, y).coef_
    print(
        "max |model - exact|",
        np.abs(fitted.weight - exact).max(),
        "sklearn",
        np.abs(peer - exact).max(),
    )
    assert np.abs(fitted.weight - exact).max() < 1e-3


def test_features_prepared_differently_are_refused(tmp_path):
    data = _small()
    save_data(data, tmp_path / "data.npz")
    run(_settings(tmp_path / "s.json", epochs=50), tmp_path / "data.npz", tmp_path / "out", 1)
    model = tmp_path / "out" / "model.pt"
    other = {**data.features, "delays": [2, 3, 4], "repetition_time": 1.5}
    assert len(feature_differences(data.features, other)) == 2
    with pytest.raises(
        BidstrainError, match=r"delays: model \[0\], run \[2, 3, 4\].*repetition_time: model 2.0"
    ):
        predict_run(model, data.heldout_x, other)
    for changed in (
        {"statistics": {"digest": "f" * 16, "training_runs": ["task-a_run-2"]}},
        {"kinds": ["text", "video"]},
        {"sizes": {"video": 3, "text": 2}},
        {"method": "hrf"},
    ):
        key = next(iter(changed))
        with pytest.raises(BidstrainError, match=f"{key}: model"):
            predict_run(model, data.heldout_x, {**data.features, **changed})
    with pytest.raises(BidstrainError, match="columns: model 5"):
        predict_run(model, data.heldout_x[:, :4], data.features)
    predicted = predict_run(model, data.heldout_x, data.features)
    mask = np.zeros((2, 2, 2), bool)
    mask.flat[[0, 3, 6]] = True
    write_prediction(
        tmp_path / "pred.zarr",
        predicted,
        mask=mask,
        affine=np.diag([3.0, 3.0, 3.0, 1.0]),
        repetition_time=2.0,
        source=str(model),
    )
    store = open_store(tmp_path / "pred.zarr", use_dask=False)
    np.testing.assert_array_equal(store["mask"].values, mask)
    assert np.allclose(store["data"].values, predicted)


def test_bad_data_files_are_named(tmp_path):
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(BidstrainError, match="bad.npz.*cannot read the encoding data"):
        load_data(tmp_path / "bad.npz")
    data = _small()
    with pytest.raises(BidstrainError, match="train: features .* same time points"):
        EncodingData(
            data.train_x[:5], data.train_y, data.heldout_x, data.heldout_y, data.features, {}
        )
    with pytest.raises(BidstrainError, match="hold out runs"):
        EncodingData(
            data.train_x, data.train_y, data.heldout_x[:1], data.heldout_y[:1], data.features, {}
        )


def test_parcel_correlations_are_painted_over_their_voxels_and_tabled_by_label(tmp_path):
    from bidstrain.dataset.atlas import Atlas
    from bidstrain.encoding.evaluate import Scores, ShiftNull
    from bidstrain.encoding.outputs import write_metrics
    from bidstrain.report.encoding import parcel_values

    # table order 1, 2, 5; the model's targets in another order, parcel 2 left out
    parcel = np.array([[[-1, 0], [1, 2]], [[2, 2], [0, -1]]])
    atlas = Atlas("toy", np.array([1, 2, 5]), ("a", "b", "e"), parcel)
    painted = parcel_values(np.array([0.9, 0.3]), [5, 1], atlas)
    want = np.array([[[np.nan, 0.3], [np.nan, 0.9]], [[0.9, 0.9], [0.3, np.nan]]])
    np.testing.assert_array_equal(painted, want)
    scores = {"model": Scores(np.array([0.9, np.nan]), np.array([0.5, 0.1]), np.ones(2))}
    target = {"kind": "parcels", "parcels": [5, 1], "parcel_names": ["e", "a"]}
    nulls = {"model": ShiftNull(np.array([0.01, np.nan]), np.array([0.2, np.nan]))}
    write_metrics(tmp_path / "m.json", tmp_path / "m.tsv", scores, nulls, {}, target)
    rows = [line.split("\t") for line in (tmp_path / "m.tsv").read_text().splitlines()]
    assert rows[0] == ["parcel", "name", "model_correlation", "model_r2", "model_mse", "model_p"]
    assert rows[1] == ["5", "e", "0.9", "0.5", "1", "0.01"]
    assert rows[2] == ["1", "a", "n/a", "0.1", "1", "n/a"]
    model = json.loads((tmp_path / "m.json").read_text())["predictions"]["model"]
    assert model["tested_targets"] == 1 and model["significant_targets"] == 1
    assert model["median_null_r95"] == 0.2


def test_the_correlation_map_lies_over_the_mean_image():
    from bidstrain.report.encoding import correlation_map_figure

    mask = np.ones((6, 5, 4), bool)
    anatomy = np.arange(mask.size, dtype=float).reshape(mask.shape)
    correlation = np.linspace(-1, 1, mask.size).reshape(mask.shape)
    correlation[:, :, 0] = np.nan  # voxels outside every parcel: the anatomy alone
    above = np.zeros(mask.shape, bool)
    above[1:3, 1:3, 1:3] = True  # a 2x2x2 block: every mid-slice crosses it
    figure = correlation_map_figure(correlation.ravel(), mask, "map", anatomy, above.ravel())
    panels = [ax for ax in figure.axes if ax.images]
    assert len(panels) == 3
    for ax in panels:
        underlay, overlay = ax.images
        assert underlay.get_cmap().name == "gray" and overlay.get_alpha() == 0.75
        assert not underlay.get_array().mask.any()
        # the block's outline runs along voxel edges (x.5), around voxels 1 and 2, and
        # hatches fill it (a hole in a region would be outlined but not hatched)
        outline, hatched = ax.collections
        assert hatched.hatches == ["//"]
        points = np.concatenate([path.vertices for path in outline.get_paths()])
        assert points.min(axis=0) == pytest.approx([0.5, 0.5], abs=0.07)
        assert points.max(axis=0) == pytest.approx([2.5, 2.5], abs=0.07)
    # the sagittal and coronal mid-slices cross the plane k = 0, the axial one does not
    assert [bool(ax.images[1].get_array().mask.any()) for ax in panels] == [True, True, False]
    assert [t.get_text() for t in figure.legends[0].get_texts()] == ["above chance (FDR 5 %)"]


def test_a_run_z_scored_with_other_statistics_is_re_z_scored_with_the_models(tmp_path):
    """A run of another dataset: its aligned features took that dataset's training
    statistics; the model applies its own to the same raw features."""
    from bidstrain.encoding.apply import to_model_statistics

    rng = np.random.default_rng(4)
    model_mean, model_std = rng.normal(size=5), rng.uniform(0.5, 2, 5)
    run_mean, run_std = rng.normal(size=5), rng.uniform(0.5, 2, 5)
    data = _small()
    stats = {"digest": statistics_digest(model_mean, model_std), "training_runs": ["a"],
             "mean": model_mean.tolist(), "std": model_std.tolist()}  # fmt: skip
    data = dataclasses.replace(data, features={**data.features, "statistics": stats})
    save_data(data, tmp_path / "data.npz")
    run(_settings(tmp_path / "s.json", epochs=50), tmp_path / "data.npz", tmp_path / "out", 1)
    model = tmp_path / "out" / "model.pt"
    raw = data.heldout_x * model_std + model_mean  # the held-out features, unscaled
    other = {"digest": statistics_digest(run_mean, run_std), "training_runs": ["b"],
             "mean": run_mean.tolist(), "std": run_std.tolist()}  # fmt: skip
    theirs = ((raw - run_mean) / run_std).astype(np.float32)
    described = {**data.features, "statistics": other}
    rescaled, as_model = to_model_statistics(theirs, data.features, described)
    np.testing.assert_allclose(rescaled, data.heldout_x, atol=1e-5)
    assert as_model["statistics"] == stats
    np.testing.assert_allclose(
        predict_run(model, theirs, described),
        predict_run(model, data.heldout_x, data.features),
        atol=1e-5,
    )
    # statistics without their values (a digest alone) cannot be undone: refused
    with pytest.raises(BidstrainError, match="statistics: model"):
        predict_run(model, theirs, {**data.features, "statistics": {"digest": "f" * 16}})


def test_apply_names_a_features_argument_that_is_no_pair(tmp_path):
    arguments = ["--model", "m.pt", "--bold", "b.zarr", "--out", str(tmp_path / "p.zarr")]
    with pytest.raises(BidstrainError, match=r"KIND=STORE pairs, got \['video.zarr'\]"):
        apply_main([*arguments, "--features", "audio=a.zarr", "video.zarr"])
    assert not (tmp_path / "p.zarr").exists()


def test_the_timecourse_figure_shows_the_best_target_then_those_nearest_the_median():
    correlation = np.array([0.1, 0.5, 0.9, 0.45, 0.2, np.nan])
    assert chosen_targets(correlation, 3) == [
        ("best", 2),
        ("near the median", 3),
        ("near the median", 1),
    ]
    assert chosen_targets(np.full(3, np.nan), 3) == []
