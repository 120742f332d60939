"""Sanity checks: each check passes on good data and trips on the failure it exists for."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml
import zarr
from bidstrain.checks import Check
from bidstrain.checks.__main__ import run_checks
from bidstrain.checks.loss import (
    N_BATCHES,
    _padding_only,
    check_loss_scale,
    zero_prediction_losses,
)
from bidstrain.checks.plan import check_counts, check_schedule
from bidstrain.checks.quality import check_quality
from bidstrain.checks.scan import scan_store
from bidstrain.checks.summary import raise_on_failure, summary_tsv, write_summary
from bidstrain.config import ChecksJobConfig, TrainConfig, train_keys, validate_config
from bidstrain.errors import BidstrainError
from bidstrain.io.store import consolidate, create_store
from bidstrain.modalities import MODALITIES
from bidstrain.train.data import volume_dataset
from bidstrain.train.sampler import batch_sampler
from test_average import ellipsoid, random_raw, write_bold_store
from train_support import tiny_stores, train_config, write_store

REPO = Path(__file__).resolve().parents[1]
GRID = (5, 6, 4)


def default_config(**train) -> dict:
    """What the checks job reads (the content of its settings file) of the workflow
    defaults, with a tiny model grid that patches tile (as the plan requires) and
    ``train`` overrides."""
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    validate_config(config)
    config["train"].update(shapes={"T1w": [6, 6, 6], "bold": [6, 6, 6], "dwi": [6, 6, 6]})
    config["train"].update(patch_size=3)
    config["train"].update(train)
    checked = TrainConfig.from_dict(config["train"]).checked()
    # world_size: the plan's, which the rule passes next to the sections
    return {"checks": config["checks"], "train": checked, "ddof": 1, "world_size": 1}


def save_nifti(path: Path, data: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(data.astype(np.float32), np.eye(4)), path)
    return path


def write_t1w_store(path: Path, raw: np.ndarray, mask: np.ndarray, source: Path) -> Path:
    """A T1w store z-scored within the mask (per-volume statistics)."""
    values = raw[mask].astype(np.float64)
    mean, std = values.mean(), values.std(ddof=1)
    with create_store(path, mask=mask, affine=np.eye(4), time=np.zeros(1)) as writer:
        writer.write(0, ((values - mean) / std)[None])
        writer.add_variable("mean", ("time",), np.array([mean], dtype=np.float32))
        writer.add_variable("std", ("time",), np.array([std], dtype=np.float32))
        writer.attrs.update(
            modality="T1w",
            subject="01",
            session="",
            entities={"sub": "01"},
            source_path=str(source),
            source_size=1,
            repetition_time=None,
            ddof=1,
            n_zero_variance=0,
            n_nonfinite=0,
            stats_dim="time",
            stats_from=[str(source)],
        )
    return path


def tiny_dataset(root: Path, *, bold_normalized: bool = True, n_bold: int = 3) -> dict:
    """Raw NIfTI images, their stores and a manifest: the inputs of :func:`run_checks`."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    mask = ellipsoid()
    manifest, bold = {}, []
    for n in range(n_bold):
        raw = random_raw(rng)
        source = save_nifti(root / f"sub-0{n}_bold.nii", raw)
        store = root / f"sub-0{n}_bold.zarr"
        write_bold_store(
            store,
            raw.astype(np.float32),
            mask,
            subject=f"0{n}",
            normalize=bold_normalized,
            source_path=str(source),
        )
        bold.append(str(store))
        manifest[str(source.resolve())] = {"n_volumes": "12", "shape": "5x6x4x12"}
    t1w_raw = rng.uniform(200, 2000, GRID)
    source = save_nifti(root / "sub-01_T1w.nii", t1w_raw)
    t1w = str(write_t1w_store(root / "sub-01_T1w.zarr", t1w_raw, mask, source))
    manifest[str(source.resolve())] = {"n_volumes": "1", "shape": "5x6x4"}
    return {"bold": bold, "T1w": [t1w], "manifest": manifest}


def by_name(checks: list[Check]) -> dict[str, Check]:
    return {check.name: check for check in checks}


def run_on(data: dict, config: dict) -> dict[str, Check]:
    stores = data["T1w"] + data["bold"]
    typed = ChecksJobConfig.from_dict(config)
    return by_name(run_checks(stores, [], stores, data["manifest"], typed))


def test_the_checks_read_only_the_train_keys_their_settings_file_holds(tmp_path):
    """The checks job types its settings file's train keys (``checked()``) and the rest
    at their defaults: a key it reads must be among them, or a user's value is silently
    replaced by the default. Every other train key set away from its default (the model,
    the optimizer, the run...) must give the checks the settings file gives."""
    data = tiny_dataset(tmp_path)
    config = default_config(batch_size=2, patch_size=2, mask_ratio=0.9)
    others = {
        "embed_dim": 16,
        "depth": 1,
        "heads": 1,
        "lr": 0.5,
        "weight_decay": 0.3,
        "clip_grad_norm": 0.1,
        "bf16": True,
        "dummy_loss": {"enabled": False, "scale": 0.5, "freeze_absent": False},
        "heldout": {"ses": ["9"]},
        "find_unused_parameters": True,
        "nonfinite": "stop",
        "max_consecutive_skips": 0,
        "checkpoint_every": 3,
        "log_every": 2,
        "num_workers": 1,
        "prefetch_factor": 4,
        "pin_memory": False,
        "activation_checkpointing": True,
        "compile": True,
        "learning": {"max_ratio": 0.5, "strict": True},
        "experiment": "other",
        "loggers": ["jsonl", "tensorboard"],
    }
    every = set(train_keys("hashed")) | set(train_keys("run"))
    assert set(others) == every - set(train_keys("checked"))
    full = {**TrainConfig.with_defaults(config["train"]).settings(), **others}
    from_file = {**config, "train": TrainConfig.with_defaults(full).checked()}
    checks = run_on(data, from_file)
    assert run_on(data, {**config, "train": full}) == checks
    # the token grid is the configured one: 6**3 voxels in patches of 2**3
    assert checks["initial_loss"].values["losses"]["bold"]["tokens"] == 27


def test_every_check_passes_on_good_data(tmp_path):
    checks = run_on(tiny_dataset(tmp_path), default_config(batch_size=2))
    assert list(checks) == [
        "scale_table",
        "normalization",
        "bold_quality",
        "sample_counts",
        "training_plan",
        "initial_loss",
    ]
    assert {name: c.status for name, c in checks.items()} == dict.fromkeys(checks, "pass")
    table = checks["scale_table"].values
    assert set(table["raw"]) == set(table["normalized"]) == {"bold", "T1w"}
    assert set(table["raw"]["bold"]) == {"min", "max", "mean", "std", "p1", "p99", "mse_zero"}
    assert table["raw"]["bold"]["mse_zero"] > 1e5  # scanner scale
    assert 0.5 < table["normalized"]["bold"]["mse_zero"] < 1.5
    assert checks["sample_counts"].values["samples"] == {"T1w": 1, "bold": 36}
    stores = checks["normalization"].values["stores"]
    assert all(s["max_raw_error"] < 1e-4 for s in stores)


def test_bold_left_at_scanner_scale_next_to_normalized_t1w_fails(tmp_path):
    data = tiny_dataset(tmp_path, bold_normalized=False)
    config = default_config(batch_size=2)
    config["train"]["loss"]["normalize"] = "none"
    checks = run_on(data, config)
    scale = checks["scale_table"]
    assert scale.status == "fail"
    assert "normalized bold" in scale.message and "checks.max_scale_ratio 100" in scale.message
    assert scale.values["ratio"] > 1e5
    normalization = checks["normalization"]
    assert normalization.status == "fail"
    assert "sub-00 task-rest run-1 bold" in normalization.message
    assert (
        "not z-scored" in normalization.message
        and "checks.stats_tolerance" in normalization.message
    )
    loss = checks["initial_loss"]
    assert (
        loss.status == "fail" and "bold" in loss.message and "train.loss.normalize" in loss.message
    )
    # the scale-invariant loss is what keeps training balanced despite the data
    config["train"]["loss"]["normalize"] = "var"
    assert run_on(data, config)["initial_loss"].status == "pass"


def test_statistics_that_do_not_reproduce_the_raw_image_fail(tmp_path):
    data = tiny_dataset(tmp_path)
    raw = nib.load(tmp_path / "sub-00_bold.nii").get_fdata() * 1.5  # the image changed
    save_nifti(tmp_path / "sub-00_bold.nii", raw)
    check = run_on(data, default_config(batch_size=2))["normalization"]
    assert check.status == "fail"
    assert "data * std + mean differs from the raw image" in check.message
    assert "sub-00_bold.nii" in check.message and "std at voxel" in check.message


def test_missing_statistics_and_nonfinite_data_fail(tmp_path):
    data = tiny_dataset(tmp_path)
    shutil.rmtree(Path(data["bold"][1]) / "std")
    store = Path(data["bold"][2])
    raw = random_raw(np.random.default_rng(9))
    raw[2, 3, 2, 4] = np.nan
    write_bold_store(store, raw, ellipsoid(), subject="02", source_path=str(tmp_path / "x.nii"))
    zarr.open_array(store / "data", mode="r+")[4, 10] = np.inf
    checks = run_on(data, default_config(batch_size=2))
    message = checks["normalization"].message
    assert checks["normalization"].status == "fail"
    assert "sub-01_bold.zarr: incomplete store: missing ['std']" in message
    assert "saved statistics are missing" in message
    assert "sub-02 task-rest run-1 bold" in message
    assert "the saved mean/std hold NaN or Inf" in message and "data holds 1 NaN/Inf" in message
    assert "x.nii cannot be read" in message
    assert checks["sample_counts"].status == "fail" and "not run" in checks["sample_counts"].message


def check_heldout_run(folder: Path, train_raw: np.ndarray, heldout_raw: np.ndarray) -> Check:
    """The normalization check of a held-out store z-scored with ``train_raw``'s statistics."""
    folder.mkdir()
    mask = ellipsoid()
    source = save_nifti(folder / "heldout.nii", heldout_raw)
    series = train_raw[mask].T
    mean, std = series.mean(axis=0), series.std(axis=0, ddof=1)
    with create_store(
        folder / "heldout.zarr", mask=mask, affine=np.eye(4), time=np.arange(12) * 2.0
    ) as w:
        w.write(0, (heldout_raw[mask].T - mean) / std)
        w.add_variable("mean", ("voxel",), mean.astype(np.float32))
        w.add_variable("std", ("voxel",), std.astype(np.float32))
        w.attrs.update(
            modality="bold",
            subject="01",
            session="",
            entities={"sub": "01", "task": "rest", "run": "2"},
            source_path=str(source),
            source_size=1,
            repetition_time=2.0,
            ddof=1,
            n_zero_variance=0,
            n_nonfinite=0,
            stats_dim="voxel",
            stats_from=["run-1"],
            heldout=True,
        )
    scan = scan_store(folder / "heldout.zarr", sample_voxels=50)
    assert np.abs(scan.moments_mean).max() > 0.01  # not z-scored by its own statistics
    from bidstrain.checks.normalization import check_normalization
    from bidstrain.checks.scan import raw_head

    manifest = {str(source.resolve()): {"n_volumes": "12", "shape": "5x6x4x12"}}
    return check_normalization(
        [scan],
        {},
        {scan.path: raw_head(scan)},
        training=set(),
        manifest=manifest,
        ddof=1,
        tolerance=1e-3,
    )


def test_heldout_runs_are_exempt_from_mean_and_std_but_must_reproduce_raw(tmp_path):
    rng = np.random.default_rng(3)
    baseline = rng.uniform(500, 1500, GRID)[..., None]
    runs = [baseline * (1 + 0.05 * rng.standard_normal((*GRID, 12))) for _ in range(2)]
    check = check_heldout_run(tmp_path / "same_brain", *runs)
    assert check.status == "pass", check.message
    assert check.values["stores"][0]["max_raw_error"] < 1e-4


def test_a_heldout_run_unlike_its_fitting_runs_is_a_warning(tmp_path):
    rng = np.random.default_rng(3)
    check = check_heldout_run(tmp_path / "other_brain", random_raw(rng), random_raw(rng))
    assert check.status == "warn", check.message
    assert "does not look like the runs its statistics came from" in check.message
    assert check.values["stores"][0]["heldout_median_abs_mean"] > 1


def test_ordinary_differences_between_nearly_identical_runs_are_not_outliers():
    from bidstrain.checks.quality import robust_z

    assert np.abs(robust_z([50.0, 50.0, 50.0, 54.0])).max() < 1  # MAD 0: the 10 % floor
    assert robust_z([50.0, 50.0, 50.0, 100.0])[-1] > 3.5
    np.testing.assert_array_equal(robust_z([0.0, 0.0, 0.0]), 0.0)


def test_a_bold_run_far_from_the_group_is_a_warning(tmp_path):
    rng = np.random.default_rng(4)
    mask = ellipsoid()
    scans = []
    for n in range(6):
        raw = random_raw(rng)
        if n == 5:  # ten times the temporal noise: a low tSNR run
            raw = raw.mean(axis=-1, keepdims=True) * (1 + 0.5 * rng.standard_normal(raw.shape))
        path = write_bold_store(tmp_path / f"s{n}.zarr", raw, mask, subject=f"0{n}")
        scans.append(scan_store(path, sample_voxels=50))
    check = check_quality(scans, outlier_threshold=3.5)
    assert check.status == "warn"
    assert "sub-05 task-rest run-1 bold: tsnr" in check.message
    assert "checks.outlier_threshold 3.5" in check.message
    assert "sub-00" not in check.message
    runs = check.values["runs"]
    assert runs[5]["tsnr"] < runs[0]["tsnr"] / 3 and runs[0]["mask_fraction"] == mask.mean()
    assert runs[0]["dvars"] > 0 and runs[0]["zero_variance"] == 0


def test_dvars_never_spans_a_scrubbed_volume_and_residual_tsnr_is_named(tmp_path):
    rng = np.random.default_rng(5)
    raw = random_raw(rng, n_time=11)
    raw[..., 6:] += 400.0  # a jump at the scrubbed volume 5: frames 4 and 6 are not successive
    valid = np.arange(11) != 5
    path = write_bold_store(tmp_path / "s.zarr", raw, ellipsoid(), subject="01", valid=valid)
    scan = scan_store(path, sample_voxels=50)
    assert scan.dvars.size == 8  # 10 stored volumes in two pieces of 5: 4 + 4 steps
    kept = raw[ellipsoid()][:, valid]
    steps = np.sqrt(np.square(np.diff(kept, axis=1)).mean(axis=0))
    np.testing.assert_allclose(scan.dvars, np.delete(steps, 4), rtol=1e-4)
    check = check_quality([scan], outlier_threshold=3.5)
    assert check.values["runs"][0]["tsnr_of"] == "image"
    assert "median tSNR (image)" in check.message
    zarr.open_group(path, mode="r+").attrs["confounds_strategy"] = "scrubbing"
    consolidate(path)
    check = check_quality([scan_store(path, sample_voxels=50)], outlier_threshold=3.5)
    assert check.values["runs"][0]["tsnr_of"] == "confound residuals"
    assert "median tSNR (confound residuals)" in check.message


def test_batch_size_larger_than_the_data_fails(tmp_path):
    data = tiny_dataset(tmp_path)
    stores = {"bold": data["bold"], "T1w": data["T1w"]}
    check, n_batches = check_counts(stores, batch_size=64, batching="mixed", world_size=1)
    assert check.status == "fail" and n_batches == 1
    assert "train.batch_size 64 is larger than the 37 samples" in check.message
    check, _ = check_counts(stores, batch_size=4, batching="single_modality", world_size=1)
    assert check.status == "warn" and "T1w has 1 samples" in check.message
    check, n_batches = check_counts(stores, batch_size=4, batching="mixed", world_size=2)
    assert check.status == "pass" and n_batches == math.ceil(math.ceil(37 / 2) / 4)


def test_the_trainer_schedule_passes_a_sane_plan():
    check = check_schedule(
        batches_per_epoch=100,
        epochs=3,
        grad_accum_steps=2,
        lr=1e-3,
        warmup_steps=10,
        min_lr_ratio=0.1,
    )
    assert check.status == "pass", check.message
    assert check.values["total_steps"] == 150
    assert check.values["first_lr"] > 0 and check.values["peak_lr"] == pytest.approx(1e-3)


def test_a_warmup_longer_than_the_run_fails_and_a_long_one_warns():
    plan = dict(batches_per_epoch=10, epochs=2, grad_accum_steps=1, lr=1e-3, min_lr_ratio=0.1)
    check = check_schedule(warmup_steps=50, **plan)
    assert check.status == "fail"
    assert "train.warmup_steps 50 is not shorter than the run's 20 optimizer steps" in check.message
    check = check_schedule(warmup_steps=5, **plan)
    assert check.status == "warn" and "25% of the 20-step run" in check.message


def test_schedules_with_the_classic_bugs_fail():
    plan = dict(
        batches_per_epoch=50,
        epochs=4,
        grad_accum_steps=1,
        lr=1e-3,
        warmup_steps=10,
        min_lr_ratio=0.0,
    )

    def zero_start(step, *, total_steps, warmup_steps, min_lr_ratio):
        return step / warmup_steps if step < warmup_steps else 1.0

    check = check_schedule(multiplier=zero_start, **plan)
    assert check.status == "fail" and "learning rate is 0 at step 0 of 200" in check.message

    def restarting(step, *, total_steps, warmup_steps, min_lr_ratio):  # cosine with period
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        return 0.5 * (1 + math.cos(math.pi * (step - warmup_steps) / 50)) + 1e-3

    check = check_schedule(multiplier=restarting, **plan)
    assert check.status == "fail" and "rises again after the warm-up" in check.message

    def unclamped(step, *, total_steps, warmup_steps, min_lr_ratio):
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        return (
            0.5 * (1 + math.cos(math.pi * (step - warmup_steps) / (total_steps - warmup_steps)))
            + 1e-3
        )

    check = check_schedule(multiplier=unclamped, **plan)
    assert check.status == "fail" and "rises again after the planned end" in check.message

    def late_scheduler(optimizer, **schedule):  # a LambdaLR whose first rate is 0
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: step / 10)

    check = check_schedule(build=late_scheduler, **{**plan, "min_lr_ratio": 0.1})
    assert (
        check.status == "fail" and "the trainer's scheduler gives lr 0 at step 0" in check.message
    )


def test_summary_files_and_the_strict_error(tmp_path):
    checks = [
        Check("scale_table", "pass", "fine", {"ratio": np.float64(2.0), "bad": float("nan")}),
        Check(
            "training_plan",
            "fail",
            "lr is 0 at step 0\n(train.warmup_steps)",
            {"steps": np.arange(2)},
        ),
    ]
    write_summary(
        checks,
        tmp_path / "out/summary.json",
        tmp_path / "out/summary.tsv",
        copy_dir=tmp_path / "logs",
    )
    summary = json.loads((tmp_path / "logs/summary.json").read_text())
    assert summary["passed"] is False
    assert summary["checks"][0] == {
        "name": "scale_table",
        "status": "pass",
        "message": "fine",
        "values": {"ratio": 2.0, "bad": "nan"},
    }
    assert summary["checks"][1]["values"] == {"steps": [0, 1]}
    rows = (tmp_path / "out/summary.tsv").read_text().splitlines()
    assert rows == summary_tsv(checks).splitlines()
    assert rows[2] == "training_plan\tfail\tlr is 0 at step 0 (train.warmup_steps)"
    with pytest.raises(
        BidstrainError, match=r"(?s)1 check\(s\) failed.*check training_plan failed: lr is 0"
    ):
        raise_on_failure(checks, summary_path="logs/summary.json")
    raise_on_failure(checks[:1], summary_path="x")
    with pytest.raises(ValueError, match="status must be one of"):
        Check("x", "ok", "")


@pytest.mark.parametrize("storage", ["float16", "bitround-7", "bitround-3"])
def test_reduced_precision_widens_the_tolerance_but_scanner_scale_still_fails(tmp_path, storage):
    from bidstrain.average.cohort import average_stores
    from bidstrain.checks.normalization import check_normalization
    from bidstrain.checks.scan import raw_head
    from bidstrain.io.store import open_store

    rng = np.random.default_rng(5)
    mask, manifest, stores = ellipsoid(), {}, {}
    for n in range(3):
        raw = random_raw(rng, n_time=40)
        source = save_nifti(tmp_path / f"sub-0{n}_bold.nii", raw)
        manifest[str(source.resolve())] = {"n_volumes": "40", "shape": "5x6x4x40"}
        for kind, kwargs in {
            "exact": {},
            "rounded": {"storage": storage},
            "scanner": {"storage": storage, "normalize": False},
        }.items():
            path = tmp_path / f"{kind}-{n}.zarr"
            write_bold_store(
                path,
                raw.astype(np.float32),
                mask,
                subject=f"0{n}",
                source_path=str(source),
                **kwargs,
            )
            stores.setdefault(kind, []).append(str(path))
    rounding = np.abs(
        open_store(stores["rounded"][0]).data.values - open_store(stores["exact"][0]).data.values
    ).max()
    tolerance = 1e-4
    assert rounding > tolerance  # the rounding alone is above checks.stats_tolerance
    average = str(average_stores(stores["rounded"], tmp_path / "average.zarr"))
    assert open_store(average).attrs["storage"] == storage

    def check(paths: list[str]) -> Check:
        scans = [scan_store(path, sample_voxels=50) for path in paths]
        heads = {scan.path: raw_head(scan) for scan in scans if not scan.is_average}
        return check_normalization(
            scans, {}, heads, training={average}, manifest=manifest, ddof=1, tolerance=tolerance
        )

    passed = check([*stores["rounded"], average])
    assert passed.status == "pass", passed.message
    failed = check(stores["scanner"])
    assert failed.status == "fail"
    assert "not z-scored" in failed.message and f"rounding of storage {storage}" in failed.message


def test_the_initial_loss_looks_at_every_modality_however_rare(tmp_path):
    """One T1w volume among 80 BOLD volumes falls late in epoch 0 (seed 1): the check
    still reads a batch holding it, and reads at most N_BATCHES batches per modality."""
    stores = tiny_stores(tmp_path, {"T1w": 1, "bold": 80, "dwi": 3})
    train = train_config(batch_size=2, seed=1)
    layout = volume_dataset(stores, train).layout
    held = []  # the modalities of each batch of epoch 0, in the trainer's order
    for batch in batch_sampler(layout, train):
        store, _ = layout.locate(np.asarray(batch))
        held.append({MODALITIES[code] for code in layout.modality[store]})
    assert all("T1w" not in modalities for modalities in held[:N_BATCHES])  # read before
    losses = zero_prediction_losses(stores, train)
    expected = {m: min(N_BATCHES, sum(m in h for h in held)) for m in ("T1w", "bold", "dwi")}
    assert {m: v["batches"] for m, v in losses.items()} == expected
    assert expected["T1w"] == 1 and expected["bold"] == N_BATCHES
    for values in losses.values():  # loss: var, so a zero prediction scores about 1
        assert 0.5 < values["loss"] < 1.5
    check = check_loss_scale(stores, train, max_ratio=100)
    assert check.status == "pass" and "T1w 1" in check.message
    assert "(1 batch)" in check.message and f"({N_BATCHES} batches)" in check.message


def test_parcel_averages_are_checked_per_parcel(tmp_path):
    """A parcel average of z-scored runs passes; one of runs left at scanner scale fails
    per parcel; one with a parcel some run does not cover records it (its mean is then
    not checked) and passes."""
    from bidstrain.average.parcels import average_parcel_stores
    from bidstrain.checks.normalization import check_normalization
    from test_average_parcels import parcel_store

    def average(name: str, scale: float = 1.0, empty: tuple[int, ...] = ()) -> str:
        stores, voxels = [], []
        for n in range(2):
            path, _, voxel_store = parcel_store(
                tmp_path / f"{name}-{n}.zarr", f"0{n}", "", 30, seed=n, empty=empty if n else ()
            )
            group = zarr.open_group(path, mode="r+")
            data = group["data"][...].astype(np.float64)
            zscored = (data - data.mean(0)) / np.where(
                data.std(0, ddof=1) > 0, data.std(0, ddof=1), 1
            )
            group["data"][...] = (zscored * scale).astype(np.float32)
            stores.append(path)
            voxels.append(voxel_store)
        out = str(tmp_path / f"{name}-average.zarr")
        average_parcel_stores(stores, out, voxel_stores=voxels)
        return out

    def check(path: str) -> Check:
        scan = scan_store(path, sample_voxels=10)
        assert scan.is_parcels and scan.unit == "parcel" and scan.n_voxel == 4
        return check_normalization(
            [scan], {}, {}, training={path}, manifest={}, ddof=1, tolerance=1e-4
        )

    passed = check(average("good"))
    assert passed.status == "pass", passed.message
    failed = check(average("scanner", scale=50.0))
    assert failed.status == "fail" and "per-parcel std of the average" in failed.message
    partial = average("partial", empty=(1,))
    assert scan_store(partial, sample_voxels=10).n_partial_parcels == 1
    assert check(partial).status == "pass"


def test_a_modality_of_constant_data_fails_the_initial_loss(tmp_path):
    """All parcels outside the brain mask leave stores of zeros: the model could learn
    nothing, and the trainer's loss/baseline ratio would divide by zero."""
    stores = tiny_stores(tmp_path, {"T1w": 4, "bold": 8})
    for path in stores["bold"]:
        data = zarr.open_group(path, mode="r+")["data"]
        data[...] = 0
    for normalize in ("var", "none"):
        train = train_config(batch_size=2, seed=1, loss={"normalize": normalize})
        check = check_loss_scale(stores, train, max_ratio=100)
        assert check.status == "fail", check.message
        assert "the training data of bold are constant" in check.message


def test_padding_only_chance_is_the_share_of_mask_draws_missing_every_data_token():
    """Exact against every draw of 3 masked tokens of 6, 2 of them holding data."""
    from itertools import combinations

    from bidstrain.checks.loss import padding_only_chance

    draws = list(combinations(range(6), 3))
    missing = sum(not {0, 1} & set(draw) for draw in draws) / len(draws)
    assert padding_only_chance(np.array([2]), 6, 0.5) == pytest.approx(missing) == 0.2
    assert padding_only_chance(np.array([2, 2]), 6, 0.5) == pytest.approx(0.04)
    assert padding_only_chance(np.array([4]), 6, 0.5) == 0.0  # 3 masked of 2 empty
    assert padding_only_chance(np.array([0]), 6, 0.0) == 0.0  # no mask: every token counts


def test_a_grid_mostly_padding_warns_that_its_batches_teach_nothing(tmp_path):
    """An 8x6x4 store in a 24^3 model grid of 8^3 tokens: one token of 27 holds data, so
    about 5 % of batches of 4 mask none of it. The loss does not count the padding, so
    such a batch scores nothing (a warning, whatever the statistics); stimulus features
    count their zeros, and there the loss would divide by eps (a failure)."""
    stores = {
        "bold": [write_store(tmp_path / "bold.zarr", modality="bold", n_time=40, grid=(8, 6, 4))]
    }
    padded = {"shapes": {"bold": [24, 24, 24]}, "patch_size": 8, "batch_size": 4}
    check = check_loss_scale(stores, train_config(**padded), max_ratio=100)
    assert check.status == "warn", check.message
    assert "of bold batches would mask only tokens without data (only 4% of its" in check.message
    assert "teaches bold nothing. Fit train.shapes.bold and train.patch_size" in check.message
    losses = check.values["losses"]["bold"]
    assert losses["padding_only"] == pytest.approx((13 / 27) ** 4)
    assert losses["tokens_with_data"] == pytest.approx(1 / 27)
    dataset_variance = train_config(**padded, loss={"stats": "dataset"})
    assert check_loss_scale(stores, dataset_variance, max_ratio=100).status == "warn"
    fitted = train_config(shapes={"bold": [8, 8, 8]}, patch_size=4, batch_size=4)
    passed = check_loss_scale(stores, fitted, max_ratio=100)
    assert passed.status == "pass", passed.message
    assert passed.values["losses"]["bold"]["padding_only"] == 0.0
    t1w = {"padding_only": 0.01, "tokens_with_data": 0.1, "on_grid": True}
    assert "Fit train.shapes.T1w and" in _padding_only("T1w", t1w)  # its key's case
    series = {**t1w, "on_grid": False}
    assert "teaches bold nothing. Most parcels have no voxel" in _padding_only("bold", series)
    message = _padding_only("video", series, "var")
    assert "has a variance of 0, and the var-normalized loss divides by train.loss.eps" in message


def test_long_encoder_sequences_warn_naming_their_tokens():
    """BOLD and its stimulus kinds make one sequence; each image modality its own."""
    from bidstrain.checks.loss import MAX_SEQUENCE_TOKENS, long_sequences

    tokens = {"bold": 8, "video": 12288, "audio": 160, "T1w": 27}
    warning = long_sequences(tokens, ["video", "audio"])
    assert warning.startswith(
        "the encoder reads sequences of 12,456 tokens (bold 8, video 12,288, audio 160), "
        f"above {MAX_SEQUENCE_TOKENS:,}"
    )
    assert "T1w" not in warning and "stimuli.video_size" in warning
    assert "a larger train.patch_features" in warning
    assert long_sequences({"bold": 8, "T1w": 27}, []) == ""  # BOLD alone is short
    assert long_sequences({"T1w": MAX_SEQUENCE_TOKENS + 1}, []).startswith(
        f"the encoder reads sequences of {MAX_SEQUENCE_TOKENS + 1:,} tokens (T1w"
    )


def test_tokens_with_data_cut_features_as_the_model_groups_them():
    """5 features in groups of 3 (the second padded), 4 frames in tokens of 2: 4 tokens."""
    from bidstrain.checks.loss import tokens_with_data
    from bidstrain.train.tokens import SeriesHead

    data = torch.zeros(3, 4, 5, dtype=torch.bool)
    data[0, 3, 4] = True  # group 1, time token 1
    data[1, 0, 0] = data[1, 1, 2] = True  # both in group 0, time token 0
    held, n_tokens = tokens_with_data(data, 4, 2, 3)
    assert n_tokens == 4 and held.tolist() == [1, 1, 0]
    head = SeriesHead(5, 4, 4, 2, 3)  # the model's own cut, token by token
    for sample in range(3):
        flags = [
            bool((head.voxels(torch.eye(4, dtype=torch.bool)[k][None])[0] & data[sample]).any())
            for k in range(4)
        ]
        assert sum(flags) == held[sample]
