"""Windows and parcel input from the plan to the loader: one normalize job on the fMRIPrep
demo (scrubbed volumes, so frames are left out by the time resampling, and the demo
atlas) writes each BOLD run's segments and parcel store into its table; the trainer's
store lists name the parcel stores, the layout takes the segments from the table, and the
parcel windows hold the stores' rows, never across a left-out frame."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import zarr
from bidstrain import paths
from bidstrain.checks.scan import scan_store
from bidstrain.checks.windows import check_windows
from bidstrain.demo.generate import ATLAS_NAME, make_atlas_demo, make_fmriprep_demo
from bidstrain.errors import BidstrainError
from bidstrain.io.scans_table import read_tables
from bidstrain.io.store import read_segments, segments_of_valid
from bidstrain.plan import write_if_changed
from bidstrain.train.data import volume_dataset
from bidstrain.train.sampler import batch_sampler
from test_plan import plan_of
from test_report import assert_nontrivial_png
from train_support import metrics_records, train_cli_args, train_config, trainer_env

WINDOW = 6


@pytest.fixture(scope="module")
def normalized(tmp_path_factory):
    root = tmp_path_factory.mktemp("windows")
    bids = make_fmriprep_demo(root / "fmriprep")
    make_atlas_demo(root / "atlas")
    overrides = {
        "space": "MNI152NLin2009cAsym:res-2",
        "modalities": ["bold"],
        "normalize": {"confounds": {"strategy": "scrubbing"}},
        "time": {"tr": 0.8, "method": "linear"},
        "parcellation": {"name": ATLAS_NAME, "path": str(root / "atlas")},
        "average": {"mode": "per_subject"},
        "train": {"bold_input": "parcels", "window": WINDOW},
    }
    plan = plan_of(bids, **overrides)
    work = root / "work"
    write_if_changed({str(work / path): text for path, text in plan.files().items()})
    for subject, job in plan.jobs.items():
        command = [
            sys.executable, "-m", "bidstrain.normalize",
            "--settings", paths.PLAN_NORMALIZE_SETTINGS, "--subject", subject,
            "--ingest", paths.ingest_record(subject), "--spec", job.spec_file,
            "--out-table", job.table,
        ]  # fmt: skip
        result = subprocess.run(command, cwd=work, capture_output=True, text=True, check=False)
        assert result.returncode == 0, result.stderr
    return plan, work, bids, overrides


def test_the_table_records_segments_and_parcel_stores(normalized, monkeypatch):
    plan, work, _, _ = normalized
    monkeypatch.chdir(work)
    rows = read_tables(plan.normalized_tables)
    assert rows
    for row in rows:
        valid = zarr.open_group(row.store, mode="r")["frame_valid"][...]
        assert not valid.all()  # scrubbing left frames out
        assert row.segments == segments_of_valid(valid) and sum(row.segments) == row.volumes
        assert row.invalid_frames == int((~valid).sum())
        assert row.parcels.endswith("_desc-zscore_timeseries.zarr")
    lists = plan.store_lists()
    parcel_stores = {row.parcels for row in rows}
    for part in ("training", "validation"):
        assert set(lists[part]["bold"]) <= parcel_stores
    assert lists["training"]["bold"] and lists["validation"]["bold"]
    # the checks read the voxel stores
    assert not set(plan.training["bold"]) & parcel_stores


def test_parcel_windows_from_the_plan_hold_the_store_rows_within_segments(normalized, monkeypatch):
    plan, work, _, _ = normalized
    monkeypatch.chdir(work)
    lists = plan.store_lists()
    rows = {row.parcels: row for row in read_tables(lists["tables"])}
    config = train_config(bold_input="parcels", window=WINDOW, window_stride=2)
    dataset = volume_dataset(lists["training"], config, lists["tables"])
    layout = dataset.layout
    n_parcels = zarr.open_group(layout.paths[0], mode="r")["data"].shape[1]
    assert dataset.shapes["bold"] == (n_parcels,)
    sampler = batch_sampler(layout, config)
    for epoch in range(2):
        sampler.set_epoch(epoch)
        flat, _ = sampler.rank_batches()
        batch = dataset.batch(flat)["bold"].numpy()
        assert batch.shape == (len(flat), WINDOW, n_parcels)
        store, frame = layout.locate(np.asarray(flat))
        for n, (s, f) in enumerate(zip(store, frame, strict=True)):
            path = layout.paths[s]
            data = zarr.open_group(path, mode="r")["data"][...]
            np.testing.assert_array_equal(batch[n], data[f : f + WINDOW])
            bounds = np.cumsum((0, *rows[path].segments))
            piece = np.searchsorted(bounds, f, side="right") - 1
            assert f + WINDOW <= bounds[piece + 1], "a window crosses a left-out frame"


def test_the_windows_check_counts_left_out_frames(normalized, monkeypatch):
    plan, work, _, _ = normalized
    monkeypatch.chdir(work)
    stores = list(plan.training["bold"])
    scans = [scan_store(p, sample_voxels=10) for p in stores]
    longest = max(max(row.segments) for row in read_tables(plan.normalized_tables))
    lenient = check_windows(scans, window=longest + 1, strict=False)
    strict = check_windows(scans, window=longest + 1, strict=True)
    assert lenient.status == "warn" and strict.status == "fail"
    assert "sub-01" in strict.message and "train.window" in strict.message
    counts = strict.values["modalities"]["bold"]
    assert counts["runs_left_out"] == counts["runs"] == len(stores)
    assert counts["frames_too_short"] == sum(s.n_time for s in scans)
    assert counts["frames_invalid"] == sum(s.meta.n_invalid_frames for s in scans) > 0
    assert sum(c["runs"] for c in counts["subjects"].values()) == len(stores)
    short = check_windows(scans, window=1, strict=True)
    assert short.status == "pass"


def test_windows_of_stores_at_different_trs_fail_whatever_strict(normalized, monkeypatch):
    plan, work, _, _ = normalized
    monkeypatch.chdir(work)
    scans = [scan_store(p, sample_voxels=10) for p in plan.training["bold"]]
    assert check_windows(scans, window=2, strict=False).status == "pass"
    other = dataclasses.replace(scans[0].meta, repetition_time=1.5)
    scans[0] = dataclasses.replace(scans[0], meta=other)
    mixed = check_windows(scans, window=2, strict=False)
    assert mixed.status == "fail"
    assert re.search(
        r"2 repetition times \(0.8 s: sub-.*; 1.5 s: sub-\w+\).*set time.tr", mixed.message
    )


def test_tokens_must_divide_the_window_at_parse_time(normalized):
    _, _, bids, overrides = normalized
    train = {**overrides["train"], "window": 6, "patch_frames": 4}
    with pytest.raises(BidstrainError, match=r"train.patch_frames \(4\) must divide train.window"):
        plan_of(bids, **{**overrides, "train": train})


def test_a_model_grid_that_patches_do_not_tile_is_refused_at_parse_time(normalized):
    """By the dry run, not by the train job after normalization; parcel windows have no
    grid, and modalities that do not train are not asked."""
    _, _, bids, overrides = normalized
    shapes = {"T1w": [10, 10, 10], "bold": [12, 12, 10], "dwi": [10, 10, 10]}
    train = {**overrides["train"], "shapes": shapes, "patch_size": 4, "bold_input": "voxels"}
    message = r"train.shapes.bold = \[12, 12, 10\] is not a multiple of train.patch_size = 4"
    with pytest.raises(BidstrainError, match=message):
        plan_of(bids, **{**overrides, "train": train})
    plan_of(bids, **{**overrides, "train": {**train, "bold_input": "parcels"}})


def test_parcel_input_needs_a_parcellation(normalized):
    _, _, bids, overrides = normalized
    without = {k: v for k, v in overrides.items() if k != "parcellation"}
    with pytest.raises(BidstrainError, match="no parcellation is configured"):
        plan_of(bids, **without)
    # voxels: the trainer reads the voxel stores
    plan = plan_of(bids, **{**overrides, "train": {"bold_input": "voxels"}})
    assert json.loads(json.dumps(plan.store_lists()))["training"]["bold"] == list(
        plan.training["bold"]
    )


@pytest.mark.parametrize("bold_input", ["voxels", "parcels"])
def test_the_trainer_trains_on_windows_of_the_demo(normalized, tmp_path, bold_input):
    """A few steps on windows of 4 frames (tokens of 2), voxel and parcel input, with the
    validation losses in time order and shuffled in time."""
    plan, work, _, _ = normalized
    lists = plan.store_lists()
    if bold_input == "voxels":
        lists = {**lists, "training": plan.training, "validation": plan.validation}
    lists = {
        k: {m: list(s) for m, s in v.items()} if k in ("training", "validation") else v
        for k, v in lists.items()
    }
    config = train_config(
        window=4,
        patch_frames=2,
        bold_input=bold_input,
        shapes={"bold": [16, 16, 16]},
        epochs=1,
    )
    args = train_cli_args(tmp_path, config, lists["training"], validation=lists["validation"])
    stores_file = tmp_path / "stores.json"
    stores_file.write_text(json.dumps(lists))
    result = subprocess.run(
        [sys.executable, *args], cwd=work, env=trainer_env(), capture_output=True, text=True,
        timeout=600, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    records = metrics_records(tmp_path / "metrics.jsonl")
    steps = [r for r in records if r["kind"] == "step"]
    assert steps and all(np.isfinite(r["loss"]) for r in steps)
    (validation,) = [r for r in records if r["kind"] == "validation"]
    assert set(validation["loss_shuffled_time_per_modality"]) == {"bold"}
    assert np.isfinite(validation["loss_shuffled_time"])
    # the shuffled windows are other inputs: another loss
    assert validation["loss_shuffled_time"] != validation["loss"]
    assert (tmp_path / "model.pt").is_file()
    assert_draws_and_embeds(normalized, tmp_path, bold_input)


def assert_draws_and_embeds(normalized, out, bold_input: str) -> None:
    """The trained model's input figure, and the embed job on the plan's spec: it embeds
    the stores the trainer reads (parcel stores for parcel windows) and refuses the other
    kind, naming the difference."""
    _, work, bids, overrides = normalized
    figure = out / "model_input.png"
    command = [
        sys.executable, "-m", "bidstrain.report", "model_input",
        "--model-json", str(out / "model.json"), "--experiment", "x", "--out", str(figure),
    ]  # fmt: skip
    result = subprocess.run(command, cwd=work, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert_nontrivial_png(figure)
    train = {**overrides["train"], "bold_input": bold_input}
    plan = plan_of(bids, **{**overrides, "train": train, "embed": {"enabled": True}})
    (spec,) = (json.loads(text) for text in plan.embed_files().values())
    spec.pop("expect")  # the configuration's train settings are not this small model's
    stores = {image["store"] for image in spec["images"]}
    assert stores and stores == set(plan.store_lists()["validation"]["bold"])
    for image in spec["images"]:
        image["out"] = str(out / Path(image["out"]).name)

    def embed(images) -> subprocess.CompletedProcess:
        (out / "embed.json").write_text(json.dumps({**spec, "images": images}))
        command = [
            sys.executable, "-m", "bidstrain.embed", "--model", str(out / "model.pt"),
            "--spec", str(out / "embed.json"), "--out-table", str(out / "embeddings.tsv"),
        ]  # fmt: skip
        return subprocess.run(command, cwd=work, capture_output=True, text=True, check=False)

    result = embed(spec["images"])
    assert result.returncode == 0, result.stderr
    assert len((out / "embeddings.tsv").read_text().splitlines()) == len(stores) + 1
    rows = read_tables([str(work / table) for table in plan.normalized_tables])
    pairs = [(os.path.relpath(r.store, work), os.path.relpath(r.parcels, work)) for r in rows]
    other = dict(pairs) | {parcels: voxels for voxels, parcels in pairs}
    result = embed([{**image, "store": other[image["store"]]} for image in spec["images"]])
    kinds = ("parcels", "voxels") if bold_input == "parcels" else ("voxels", "parcels")
    assert result.returncode == 1
    assert f"model trained on {kinds[0]}; these stores hold {kinds[1]}" in result.stderr
    assert "Traceback" not in result.stderr


def dataset_parcels(path: str) -> int:
    """Parcels of a parcel store."""
    return int(zarr.open_group(path, mode="r")["data"].shape[1])


def test_cross_subject_parcel_averages_are_written_and_trained_on(normalized, monkeypatch):
    """The average jobs of a cross_subject plan, run from their argument files, write the
    parcel averages the trainer's store lists name; each frame is the mean over the
    subjects valid there (the subjects are scrubbed at different volumes)."""
    _, work, bids, overrides = normalized
    monkeypatch.chdir(work)
    plan = plan_of(bids, **{**overrides, "average": {"mode": "cross_subject", "truncate": True}})
    write_if_changed(plan.files())
    settings = json.dumps({"truncate": True})
    for group in plan.averages:
        assert group.parcel_store in plan.average_outputs
        command = [
            sys.executable, "-m", "bidstrain.average", f"@{group.members_file}",
            "--out", group.store, "--settings", settings,
        ]  # fmt: skip
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        assert result.returncode == 0, result.stderr
        # each member on its run's frame grid (the voxel store's), NaN where left out
        members = []
        for voxels, parcels in zip(group.members, group.parcel_members, strict=True):
            valid = zarr.open_group(voxels, mode="r")["frame_valid"][...]
            series = np.full((valid.size, dataset_parcels(parcels)), np.nan)
            series[valid] = zarr.open_group(parcels, mode="r")["data"][...]
            members.append((parcels.split("/")[2], series))
        n_frames = min(len(series) for _, series in members)
        by_subject = {}
        for subject, series in members:
            by_subject.setdefault(subject, []).append(series[:n_frames])
        with warnings.catch_warnings():  # frames no member holds
            warnings.simplefilter("ignore", RuntimeWarning)
            per_subject = [np.nanmean(v, axis=0) for v in by_subject.values()]
            want = np.nanmean(per_subject, axis=0)
        average = zarr.open_group(group.parcel_store, mode="r")
        frame_valid = average["frame_valid"][...]
        np.testing.assert_array_equal(frame_valid, ~np.isnan(want).all(axis=1))
        # the demo's subjects are scrubbed at different volumes: some frames average one
        assert set(average["frame_subjects"][...]) >= {1, 2}
        got = average["data"][...]
        np.testing.assert_allclose(got, want[frame_valid], atol=1e-6)
        assert read_segments(group.parcel_store) == segments_of_valid(frame_valid)
    lists = plan.store_lists()
    assert set(lists["training"]["bold"]) <= {g.parcel_store for g in plan.averages}
    config = train_config(bold_input="parcels", window=WINDOW)
    dataset = volume_dataset(lists["training"], config, lists["tables"])
    assert len(dataset) > 0 and dataset.shapes["bold"][0] == got.shape[1]
    # the windows lie in the averages' segments (in no table: read from frame_valid)
    layout = dataset.layout
    for index, path in enumerate(layout.paths):
        valid = zarr.open_group(path, mode="r")["frame_valid"][...]
        pieces = layout.segment_length[layout.segment_store == index]
        assert tuple(pieces.tolist()) == segments_of_valid(valid)


def test_the_checks_read_the_parcel_stores_the_model_reads(normalized, monkeypatch, tmp_path):
    """With ``train.bold_input: parcels`` the checks job is given every run's parcel store
    beside its voxel store: the normalization check covers them (the training runs' are
    z-scored); the initial loss reads the parcel windows. A parcel store left at scanner
    scale fails, and one whose frames are not its voxel store's is stale; both are named."""
    from bidstrain.checks.__main__ import manifest_by_image, read_settings, run_checks

    plan, work, _, _ = normalized
    monkeypatch.chdir(work)
    pairs = plan.checked_parcel_stores
    voxels, parcels = pairs[::2], pairs[1::2]
    rows = read_tables(plan.normalized_tables)
    assert dict(zip(voxels, parcels, strict=True)) == {
        os.path.relpath(r.store, work): os.path.relpath(r.parcels, work) for r in rows
    }
    arguments = plan.checks_arguments()
    assert arguments[arguments.index("--parcel-stores") + 1 :] == pairs
    for command in (
        ["bidstrain.ingest", "manifest", f"@{paths.PLAN_INGEST_ARGS}", "--out", paths.MANIFEST],
        ["bidstrain.checks", f"@{paths.plan_checks_arguments(plan.experiment)}",
         "--manifest", paths.MANIFEST, "--settings", paths.plan_checks_settings(plan.experiment),
         "--out-json", str(tmp_path / "summary.json"), "--out-tsv", str(tmp_path / "s.tsv")],
    ):  # fmt: skip
        result = subprocess.run([sys.executable, "-m", *command], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
    checks = {c["name"]: c for c in json.loads((tmp_path / "summary.json").read_text())["checks"]}
    normalization = checks["normalization"]
    # the demo's held-out parcel series are at another scale than their training runs'
    # (averaging a parcel's voxels leaves the run's own signal): a warning, per parcel
    assert normalization["status"] in ("pass", "warn"), normalization["message"]
    if normalization["status"] == "warn":
        found = normalization["message"].split("; ")
        assert all("held-out run" in w and "per-parcel mean" in w for w in found), found
    checked = {s["store"]: s for s in normalization["values"]["stores"]}
    assert set(parcels) <= set(checked)
    trained = [p for v, p in zip(voxels, parcels, strict=True) if v in plan.training["bold"]]
    assert trained and all(checked[p]["max_std_error"] < 1e-4 for p in trained)
    assert checks["initial_loss"]["status"] == "pass", checks["initial_loss"]["message"]

    config = read_settings(paths.plan_checks_settings(plan.experiment))
    manifest = manifest_by_image(paths.MANIFEST)
    training, validation = plan.training["bold"], plan.validation["bold"]
    scanner = tmp_path / "scanner.zarr"
    parcel_of = dict(zip(voxels, parcels, strict=True))
    shutil.copytree(parcel_of[training[0]], scanner)
    group = zarr.open_group(scanner, mode="r+")
    group["data"][...] = group["data"][...] * 40.0 + 900.0
    other = next(p for p in parcels if dataset_frames(p) != dataset_frames(training[1]))
    stale = {**parcel_of, training[0]: str(scanner), training[1]: other}
    result = run_checks(training, validation, plan.normalized_stores, manifest, config, (), stale)
    (normalization,) = [c for c in result if c.name == "normalization"]
    (scale,) = [c for c in result if c.name == "scale_table"]
    assert scale.values["normalized"]["bold"]["max"] > 500  # what the model reads
    assert normalization.status == "fail"
    assert f"({scanner}): per-parcel mean is off 0" in normalization.message
    assert f"({other}): " in normalization.message and "the parcel store is stale" in (
        normalization.message
    )


def dataset_frames(path: str) -> int:
    """Frames of a store (voxel or parcel)."""
    return int(zarr.open_group(path, mode="r")["data"].shape[0])
