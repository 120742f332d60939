"""Report figures: computations, readability (titles, labels, legends) and the CLI,
against tiny inputs that follow the inter-stage contracts (tests/report_data.py)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib.image
import matplotlib.pyplot as plt
import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import report_data as rd
import zarr
from bidstrain.demo.generate import DemoSpec, _ellipsoid, bold_run
from bidstrain.errors import BidstrainError, run_cli
from bidstrain.io.scans_table import StoreRow, write_table
from bidstrain.io.store import consolidate, create_store, open_store, to_grid
from bidstrain.normalize import ImageInfo, normalize_volumes
from bidstrain.report import TRAINING_FIGURES
from bidstrain.report.__main__ import main
from bidstrain.report.average import average_figure, subject_correlations, time_course
from bidstrain.report.checks import allowed_band, scale_figure, scale_values, summary_figure
from bidstrain.report.figure import log_y, save_figure, slice_row
from bidstrain.report.ingest import (
    MAX_ROWS,
    NUMBERS_SHOWN,
    coverage_figure,
    coverage_table,
    session_table,
    sessions_missing,
)
from bidstrain.report.normalize import normalization_figure, raw_values, temporal_snr
from bidstrain.report.train import (
    gradient_norms_by_tag,
    planned_lr,
    read_metrics,
    steps_frame,
    training_figures,
)
from bidstrain.train.expectation import Preparation
from bidstrain.train.schedule import lr_multiplier
from matplotlib.figure import Figure
from normalize_support import image_options
from test_average import ellipsoid, random_raw
from test_average import write_bold_store as write_average_bold_store


@pytest.fixture(autouse=True)
def close_figures():
    """Close what a test drew and did not save (pyplot keeps every open figure)."""
    yield
    plt.close("all")


def assert_readable(fig: Figure) -> None:
    """Every panel that draws data has a title and axis labels, and a legend when it draws
    more than one labelled series; the figure has a title."""
    assert fig._suptitle is not None and fig._suptitle.get_text()
    panels = [ax for ax in fig.get_axes() if ax.axison and not hasattr(ax, "_colorbar")]
    assert panels
    for ax in panels:
        drawn = ax.lines or ax.images or ax.patches or ax.collections or ax.tables
        if not drawn or not (np.size(ax.get_xticks()) or np.size(ax.get_yticks())):
            continue
        where = f"panel {ax.get_title()!r}"
        assert ax.get_title(), f"untitled panel with {ax.get_xlabel()!r}"
        assert ax.get_xlabel() and ax.get_ylabel(), f"{where} lacks an axis label"
        labelled = [h for h in ax.get_legend_handles_labels()[1] if not h.startswith("_")]
        if len(labelled) > 1:
            assert ax.get_legend() is not None, f"{where}: {len(labelled)} series, no legend"


def assert_nontrivial_png(path: Path, min_height: int = 300, min_width: int = 400) -> None:
    """A decodable PNG of a reasonable size with varied pixels (not blank, not constant)."""
    assert path.is_file(), f"{path} missing"
    pixels = matplotlib.image.imread(path)
    assert pixels.shape[0] >= min_height and pixels.shape[1] >= min_width, pixels.shape
    assert pixels[..., :3].std() > 0.05, f"{path} is nearly blank"
    rgb = np.rint(pixels[..., :3] * 255).astype(np.uint32)
    colours = np.unique(rgb[..., 0] << 16 | rgb[..., 1] << 8 | rgb[..., 2])
    assert len(colours) > 50, f"{path} has only {len(colours)} colours"


# ---- ingestion ----------------------------------------------------------------------


def _manifest(n_subjects: int, missing_every: int = 7) -> pd.DataFrame:
    acquisitions = [("T1w", "", ""), ("bold", "rest", "1"), ("bold", "rest", "2"), ("dwi", "", "")]
    rows = []
    for number in range(1, n_subjects + 1):
        for index, (modality, task, run) in enumerate(acquisitions):
            if (number * 4 + index) % missing_every == 0:
                continue
            row = {"subject": f"{number:03d}", "session": "", "task": task, "run": run}
            rows.append({**row, "modality": modality})
    return pd.DataFrame(rows)


def test_coverage_table_counts_sessions_and_missing_images():
    manifest = pd.DataFrame(
        [
            {"subject": "01", "session": "", "task": "", "run": "", "modality": "T1w"},
            {"subject": "01", "session": "", "task": "rest", "run": "1", "modality": "bold"},
            {"subject": "02", "session": "1", "task": "", "run": "", "modality": "T1w"},
            {"subject": "02", "session": "2", "task": "", "run": "", "modality": "T1w"},
            {"subject": "02", "session": "1", "task": "", "run": "", "modality": "dwi"},
        ]
    )
    table = coverage_table(manifest)
    assert list(table.columns) == ["T1w", "bold task-rest run-1", "dwi"]
    assert table.loc["sub-01"].tolist() == [1, 1, 0]
    assert table.loc["sub-02"].tolist() == [2, 0, 1]
    # sub-02's session 2 lacks the DWI of its session 1: missing, although no cell is 0
    assert sessions_missing(session_table(manifest)) == {"sub-02"}
    title = coverage_figure(manifest[manifest["modality"] != "bold"]).get_suptitle()
    assert "2 subjects, 2 with missing images" in title  # sub-01 no dwi, sub-02 ses-2 no dwi


def test_coverage_figure_with_100_subjects_lists_everyone_in_readable_panels():
    fig = coverage_figure(_manifest(100))
    assert_readable(fig)
    heat_maps = [ax for ax in fig.get_axes() if ax.images]
    assert len(heat_maps) == 2  # 50 rows per panel
    labels = [t.get_text() for ax in heat_maps for t in ax.get_yticklabels()]
    assert labels == [f"sub-{n:03d}" for n in range(1, 101)]
    assert fig.get_figheight() < 16
    # a line between every two rows: neighbours of the same colour stay apart
    for ax in heat_maps:
        np.testing.assert_array_equal(ax.get_yticks(minor=True), np.arange(51) - 0.5)
        assert all(tick.gridline.get_visible() for tick in ax.yaxis.get_minor_ticks())


def test_coverage_figure_beyond_max_rows_shows_only_incomplete_subjects():
    manifest = _manifest(MAX_ROWS + 50)
    incomplete = (coverage_table(manifest) == 0).any(axis=1).sum()
    fig = coverage_figure(manifest)
    heat_maps = [ax for ax in fig.get_axes() if ax.images]
    shown = sum(len(ax.get_yticklabels()) for ax in heat_maps)
    assert 0 < shown == incomplete < MAX_ROWS + 50
    assert "missing" in heat_maps[0].get_title()


# ---- normalization ------------------------------------------------------------------


def test_raw_values_recover_the_image_and_tsnr_is_mean_over_std(tmp_path):
    signal = rd.shared_signal()
    store = open_store(rd.write_bold_store(tmp_path / "bold.zarr", "01", 1, signal))
    run = bold_run(rd.SPEC, np.random.default_rng(1), signal).astype(np.float32)
    expected = run[_ellipsoid(rd.SPEC.bold_shape)].T
    np.testing.assert_allclose(raw_values(store).values, expected, rtol=1e-4)
    tsnr = temporal_snr(np.array([10.0, 5.0, 1.0]), np.array([2.0, 0.0, np.nan]))
    np.testing.assert_array_equal(tsnr, [5.0, np.nan, np.nan])


def test_normalization_figure_bold_has_maps_tsnr_and_carpets(tmp_path):
    store = open_store(rd.write_bold_store(tmp_path / "bold.zarr", "01", 1, rd.shared_signal()))
    fig = normalization_figure(store, n_sample=100)
    assert_readable(fig)
    titles = [ax.get_title() for ax in fig.get_axes()]
    for expected in ("mean used: axial", "std used: coronal", "tSNR of this run: sagittal"):
        assert any(expected in title for title in titles), expected
    carpets = [ax for ax in fig.get_axes() if ax.get_title().startswith("Carpet")]
    assert len(carpets) == 2
    assert "100 of 424" in carpets[0].get_ylabel()


def test_normalization_figure_of_a_scrubbed_regressed_run(tmp_path):
    """A run whose confounds were regressed out and one of whose 11 frames was scrubbed:
    the raw panels say they show the residuals, and the carpets keep each frame at its
    time, a blank column at the left-out one."""
    rng = np.random.default_rng(5)
    raw = random_raw(rng, n_time=11)
    valid = np.arange(11) != 5
    path = write_average_bold_store(
        tmp_path / "s.zarr", raw, ellipsoid(), subject="01", valid=valid
    )
    zarr.open_group(path, mode="r+").attrs["confounds_strategy"] = "scrubbing"
    consolidate(path)
    fig = normalization_figure(open_store(path), n_sample=100)
    assert_readable(fig)
    titles = [ax.get_title() for ax in fig.get_axes()]
    assert any("tSNR of this run's confound residuals" in title for title in titles)
    assert any(title.startswith("Confound residuals + mean") for title in titles)
    assert "1 of the 11 frames of the run's grid left out" in fig._suptitle.get_text()
    for ax in (ax for ax in fig.get_axes() if ax.get_title().startswith("Carpet")):
        (image,) = ax.get_images()
        values = image.get_array()
        assert values.shape[1] == 11 and image.get_extent()[:2] == [-1.0, 21.0]
        blank = np.isnan(np.ma.filled(values.astype(float), np.nan)).all(axis=0)
        np.testing.assert_array_equal(blank, ~valid)


def test_normalization_figure_dwi_and_t1w_use_per_volume_statistics(tmp_path):
    dwi = open_store(rd.write_dwi_store(tmp_path / "dwi.zarr"))
    fig = normalization_figure(dwi)
    assert_readable(fig)
    assert any("per volume" in ax.get_title() for ax in fig.get_axes())
    mask = _ellipsoid((10, 12, 10))
    values = np.linspace(-1, 1, mask.sum(), dtype=np.float32)[None]
    with create_store(tmp_path / "t1w.zarr", mask=mask, affine=np.eye(4), time=[0.0]) as w:
        w.write(0, values)
        w.add_variable("mean", ("time",), np.array([900.0], dtype=np.float32))
        w.add_variable("std", ("time",), np.array([300.0], dtype=np.float32))
        w.attrs.update(rd._base_attrs("T1w", "01", "time"))
    fig = normalization_figure(open_store(tmp_path / "t1w.zarr"))
    assert_readable(fig)
    assert not any(ax.get_title().startswith("Carpet") for ax in fig.get_axes())


# ---- averaging ----------------------------------------------------------------------


def test_subject_correlations():
    group = np.sin(np.linspace(0, 6, 30))
    courses = [group * 3 + 1, np.zeros(30), -group, np.concatenate([group, [5.0, 6.0]])]
    np.testing.assert_allclose(subject_correlations(group, courses), [1.0, np.nan, -1.0, 1.0])


def _average_inputs(tmp_path: Path, n_subjects: int, spec: DemoSpec = rd.SPEC):
    signal = rd.shared_signal(spec.n_volumes)
    paths = []
    for number in range(n_subjects):
        course = signal if number % 10 else np.zeros_like(signal)  # every 10th: no signal
        path = tmp_path / f"sub-{number + 1:03d}.zarr"
        paths.append(rd.write_bold_store(path, f"{number + 1:03d}", number, course, spec))
    average = rd.write_average_store(tmp_path / "average.zarr", paths)
    return open_store(average), [open_store(p) for p in paths]


def test_average_figure_bars_rank_subjects_by_correlation(tmp_path):
    group, subjects = _average_inputs(tmp_path, 3)
    fig = average_figure(group, subjects, "task-rest run-1")
    assert_readable(fig)
    bars = next(ax for ax in fig.get_axes() if ax.get_title().startswith("Correlation"))
    labels = [t.get_text() for t in bars.get_yticklabels()]
    assert sorted(labels) == ["sub-001", "sub-002", "sub-003"]
    assert labels[-1] == "sub-001"  # the subject without the shared signal ranks last
    np.testing.assert_allclose(
        sorted(p.get_width() for p in bars.patches)[-1],
        max(subject_correlations(time_course(group), [time_course(s) for s in subjects])),
    )


def test_average_figure_counts_from_one_subject_and_keeps_the_legend_off_the_curves(tmp_path):
    """Every voxel with all 3 subjects: the colour bar still reads 1, 2, 3 (a single tick
    would not say that 3 is everyone)."""
    group, subjects = _average_inputs(tmp_path, 3)
    group["n_subjects"][:] = 3
    fig = average_figure(group, subjects, "task-rest run-1")
    fig.canvas.draw()
    (bar,) = [ax for ax in fig.get_axes() if ax.get_ylabel() == "subjects (count)"]
    low, high = bar.get_ylim()
    ticks = [t for t in bar.get_yticks() if low <= t <= high]
    assert ticks == [1, 2, 3]
    course = next(ax for ax in fig.get_axes() if ax.get_title().startswith("Mean over"))
    assert not course.get_legend().get_window_extent().overlaps(course.get_window_extent())


@pytest.mark.slow
def test_average_figure_with_100_subjects_aggregates(tmp_path):
    tiny = DemoSpec(bold_shape=(6, 6, 6), n_volumes=20)
    group, subjects = _average_inputs(tmp_path, 100, tiny)
    fig = average_figure(group, subjects, "task-rest")
    assert_readable(fig)
    histogram = next(ax for ax in fig.get_axes() if ax.get_title().startswith("Correlation"))
    assert sum(p.get_height() for p in histogram.patches) == 100
    listed = "".join(t.get_text() for ax in fig.get_axes() for t in ax.texts)
    assert "sub-001" in listed and "sub-091" in listed  # the flat subjects, lowest r
    assert fig.get_figheight() < 12


# ---- checks -------------------------------------------------------------------------


def test_scale_figure_draws_log_bars_and_the_allowed_band(tmp_path):
    summary = json.loads(rd.write_summary(tmp_path / "summary.json").read_text())
    values = scale_values(summary)
    assert allowed_band(values) == pytest.approx((0.98, 98.0))
    fig = scale_figure(values)
    assert_readable(fig)
    mse_ax = fig.get_axes()[0]
    assert mse_ax.get_yscale() == "log"
    bars = [p for c in mse_ax.containers for p in c]
    assert len(bars) == 6  # raw and normalized for three modalities
    assert any("allowed" in label for label in mse_ax.get_legend_handles_labels()[1])


def test_summary_figure_colours_cells_by_status(tmp_path):
    summary = json.loads(rd.write_summary(tmp_path / "summary.json").read_text())
    fig = summary_figure(summary)
    assert "FAILED" in fig._suptitle.get_text()
    cells = fig.get_axes()[0].tables[0].get_celld()
    colours = [tuple(cells[row, 1].get_facecolor()[:3]) for row in (1, 2, 3)]
    assert len(set(colours)) == 3
    assert cells[3, 1].get_text().get_text() == "fail"
    with pytest.raises(BidstrainError, match="scale_table"):
        scale_values({"passed": True, "checks": []})


# ---- training -----------------------------------------------------------------------


def _schedule_lr(step: int) -> float:
    plan = rd.PLAN
    return plan["lr"] * lr_multiplier(
        step - 1,
        total_steps=plan["total_steps"],
        warmup_steps=plan["warmup_steps"],
        min_lr_ratio=plan["min_lr_ratio"],
    )


def test_planned_lr_follows_the_schedule_and_marks_restarts(tmp_path):
    records = read_metrics(rd.write_metrics(tmp_path / "m.jsonl", _schedule_lr, restart_at=16))
    steps, rates, restarts = planned_lr(records)
    np.testing.assert_array_equal(steps, np.arange(1, 31))
    np.testing.assert_allclose(rates, [_schedule_lr(s) for s in steps])
    assert rates[0] > 0
    assert restarts == [16]


def test_steps_frame_and_gradient_norms_by_tag(tmp_path):
    records = read_metrics(rd.write_metrics(tmp_path / "m.jsonl", _schedule_lr))
    steps = steps_frame(records)
    assert len(steps) == 30 and math.isnan(steps.loc[6, "grad_norm"]) and steps.loc[6, "skipped"]
    assert steps["loss_bold"].notna().sum() == 10  # bold in every third batch
    by_tag = gradient_norms_by_tag(records)
    assert set(by_tag) == {"T1w", "bold", "dwi", "inactive"}
    assert (by_tag["inactive"]["min"] == 0).all() and (by_tag["inactive"]["max"] == 1e-9).all()


def test_training_figures_are_readable_and_mark_skipped_steps(tmp_path):
    records = read_metrics(rd.write_metrics(tmp_path / "m.jsonl", lambda s: 2 * _schedule_lr(s)))
    figures = training_figures(records, experiment="demo", clip_grad_norm=1.0)
    assert tuple(figures) == TRAINING_FIGURES
    for fig in figures.values():
        assert_readable(fig)
    grad_ax = figures["grad_norm"].get_axes()[0]
    assert grad_ax.get_yscale() == "log"
    assert any("skipped" in label for label in grad_ax.get_legend_handles_labels()[1])
    planned, used = figures["lr"].get_axes()[0].lines[:2]
    np.testing.assert_allclose(used.get_ydata(), 2 * planned.get_ydata())
    assert figures["losses"].get_axes()[0].get_yscale() == "log"
    roles = figures["modality_gradients"].get_axes()[0].get_legend_handles_labels()[1]
    assert any(label.startswith("[inactive] modules of modalities absent") for label in roles)


def test_a_log_axis_within_a_decade_labels_more_than_its_power_of_ten():
    """The dummy loss of the demo spans 5.4e-6 to 1.9e-5: matplotlib alone labels 6e-6
    and 1e-5 only."""
    fig, ax = plt.subplots()
    ax.plot([0, 1], [5.4e-6, 1.9e-5])
    log_y(ax)
    ax.set_ylim(5.4e-6, 1.9e-5)
    fig.canvas.draw()
    labels = [
        label.get_text()
        for minor in (False, True)
        for at, label in zip(
            ax.yaxis.get_ticklocs(minor=minor), ax.yaxis.get_ticklabels(minor=minor), strict=True
        )
        if 5.4e-6 <= at <= 1.9e-5 and label.get_text()
    ]
    assert len(labels) >= 4, labels


def test_the_learning_figure_says_when_nothing_was_validated(tmp_path):
    records = read_metrics(rd.write_metrics(tmp_path / "m.jsonl", _schedule_lr))
    records.append({"kind": "summary", "modalities": {}, "max_ratio": 0.8})  # no held-out run
    title = training_figures(records, experiment="demo")["learning"].get_suptitle()
    assert title.startswith("Learning not measured") and "normalize.heldout" in title
    assert "beat the baseline" not in title


@pytest.mark.parametrize("windows", [True, False])
def test_the_loss_with_frames_shuffled_in_time_is_drawn_when_recorded(tmp_path, windows):
    """Beside the validation loss and the baseline, in the losses figure and the learning
    curve (loss / baseline), and in their legends; absent from metrics without it."""
    records = read_metrics(rd.write_metrics(tmp_path / "m.jsonl", _schedule_lr, windows=windows))
    validation = [r for r in records if r["kind"] == "validation"]
    figures = training_figures(records, experiment="demo")
    losses = figures["losses"].get_axes()[0]
    curve = figures["learning"].get_axes()[-1]
    # the baseline is 1.0: the same values on both
    shuffled = [1.5 * r["loss_per_modality"]["bold"] for r in validation]
    names = {
        losses: "validation bold, frames shuffled in time",
        curve: "bold, frames shuffled in time",  # (no summary without windows: no curve)
    }
    for ax, label in names.items():
        legend = (
            [text.get_text() for text in ax.get_legend().get_texts()] if ax.get_legend() else []
        )
        drawn = [line for line in ax.lines if line.get_label() == label]
        if not windows:
            assert not drawn and not any("shuffled" in text for text in legend)
            continue
        assert label in legend
        (line,) = drawn
        np.testing.assert_array_equal(line.get_xdata(), [r["step"] for r in validation])
        np.testing.assert_allclose(line.get_ydata(), shuffled)
    labels = losses.get_legend_handles_labels()[1]
    assert "validation bold" in labels
    assert any(label.startswith("baseline") for label in labels) == windows
    assert_readable(figures["losses"])
    assert_readable(figures["learning"])


def test_the_validation_total_is_drawn_against_the_sum_of_the_baselines(tmp_path):
    """Not against a modality's baseline (1.0): the total sums several modalities, each
    weighted by ``train.loss.weights``, and so does its baseline."""
    records = read_metrics(rd.write_metrics(tmp_path / "m.jsonl", _schedule_lr, windows=True))
    validation = [r for r in records if r["kind"] == "validation"]
    figures = training_figures(records, experiment="demo", loss_weights={"bold": 2.0})
    losses = figures["losses"].get_axes()[0]
    (line,) = [
        line
        for line in losses.lines
        if line.get_label().startswith("baseline of the validation total")
    ]
    np.testing.assert_array_equal(line.get_xdata(), [r["step"] for r in validation])
    np.testing.assert_allclose(line.get_ydata(), 2.0)  # bold's baseline 1.0, weight 2
    assert line.get_label() in [t.get_text() for t in losses.get_legend().get_texts()]


def test_read_metrics_rejects_a_file_without_plan_or_with_bad_json(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"kind": "step", "step": 1}\n')
    with pytest.raises(BidstrainError, match="no 'plan' line"):
        read_metrics(path)
    path.write_text('{"kind": "plan"}\n{"kind": "st')
    with pytest.raises(BidstrainError, match="line 2 is not JSON"):
        read_metrics(path)


# ---- command line -------------------------------------------------------------------


def _table(folder: Path, store: Path, subject: str = "01") -> Path:
    """A normalize job's table listing ``store``, in ``folder`` (the subject's folder)."""
    row = StoreRow(
        str(store),
        "bold",
        "bold.nii.gz",
        False,
        30,
        100,
        (4, 5, 5),
        (),
        "sha256:0123",
    )
    write_table([row], folder / f"sub-{subject}_scans.tsv")
    return folder / f"sub-{subject}_scans.tsv"


def test_cli_writes_every_figure_as_png(tmp_path):
    summary = rd.write_summary(tmp_path / "summary.json")
    metrics = rd.write_metrics(tmp_path / "metrics.jsonl", _schedule_lr)
    store = rd.write_bold_store(tmp_path / "sub-01" / "bold.zarr", "01", 1, rd.shared_signal())
    manifest = tmp_path / "manifest.tsv"
    _manifest(5).to_csv(manifest, sep="\t", index=False)
    out = tmp_path / "report"
    main(["coverage", "--manifest", str(manifest), "--out", str(out / "coverage.png")])
    table = _table(tmp_path / "sub-01", store)
    settings = json.dumps({"sample_voxels": 500})
    main(["normalize", "--tables", str(table), "--out-dir", str(out), "--settings", settings])
    main(
        [
            "checks",
            "--summary",
            str(summary),
            "--scale-table-out",
            str(out / "scale.png"),
            "--summary-out",
            str(out / "summary.png"),
        ]
    )
    train_settings = tmp_path / "train.json"
    train_settings.write_text(json.dumps({"clip_grad_norm": 1.0}))
    main(
        [
            *("train", "--metrics", str(metrics), "--experiment", "x"),
            *("--settings", str(train_settings), "--out-dir", str(out / "t")),
        ]
    )
    for name in [
        "coverage",
        "sub-01/bold",
        "scale",
        "summary",
        *(f"t/{f}" for f in TRAINING_FIGURES),
    ]:
        assert_nontrivial_png(out / f"{name}.png", min_height=150)
    assert not list(out.rglob(".*tmp*"))  # atomic writes left no temporary


@pytest.mark.slow
def test_a_figure_group_draws_each_subjects_figures_as_drawn_alone(tmp_path):
    """The figure job of a group of subjects (tables from an argument file, as the
    workflow passes them) writes, per subject, the bytes that drawing the subject's store
    alone writes (what the per-subject figure job wrote), in the subject's folder."""
    tables = []
    for seed, subject in enumerate(["01", "02", "03"], start=1):
        folder = tmp_path / "normalized" / f"sub-{subject}"
        path = folder / "func" / f"sub-{subject}_task-rest_desc-zscore_bold.zarr"
        store = rd.write_bold_store(path, subject, seed, rd.shared_signal())
        tables.append(str(_table(folder, store, subject)))
    arguments = tmp_path / "group.args"
    arguments.write_text("".join(f"{table}\n" for table in tables))
    out = tmp_path / "group-07"
    main(
        [
            *("normalize", "--tables", f"@{arguments}", "--out-dir", str(out)),
            *("--settings", json.dumps({"sample_voxels": 300})),
        ]
    )
    drawn = sorted(str(p.relative_to(out)) for p in out.rglob("*.png"))
    expected = [f"sub-{s}/func/sub-{s}_task-rest_desc-zscore_bold.png" for s in ["01", "02", "03"]]
    assert drawn == expected
    for name in drawn:
        alone = tmp_path / "alone.png"
        store = tmp_path / "normalized" / name.replace(".png", ".zarr")
        save_figure(normalization_figure(open_store(store), n_sample=300), alone)
        assert (out / name).read_bytes() == alone.read_bytes(), name
    assert_nontrivial_png(out / drawn[0])


def test_model_input_figure_shows_the_store_and_the_model_grid(tmp_path):
    store = rd.write_bold_store(tmp_path / "bold.zarr", "01", 1, rd.shared_signal())
    description = {
        "input": {"bold": {"shape": [8, 8, 8], "resample": 2}},
        "normalization": {"bold": {"stores": [{"store": str(store)}]}},
    }
    out = tmp_path / "model_input.png"
    path = tmp_path / "model.json"
    path.write_text(json.dumps(description))
    main(["model_input", "--model-json", str(path), "--experiment", "x", "--out", str(out)])
    assert_nontrivial_png(out, min_height=300)
    from bidstrain.report.model_input import model_input_figure

    with open_store(store) as ds:
        mask = ds["mask"].values
    # the blocks of 2^3 that hold a voxel of the mask, centred on the 8^3 grid
    sides = -(-np.asarray(mask.shape) // 2)
    assert (sides <= 8).all()  # padded, not cropped
    blocks = np.argwhere(mask) // 2 + (8 - sides) // 2
    grid = np.zeros((8, 8, 8), dtype=bool)
    grid[tuple(blocks.T)] = True
    assert 0 < grid.mean() < 1
    title = model_input_figure(description, "x").subfigs[0]._suptitle.get_text()
    assert f"the loss counts the {grid.mean():.0%} of the model's grid that holds" in title


def test_cli_reports_a_missing_store_without_traceback(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        table = _table(tmp_path, tmp_path / "no.zarr")
        run_cli(main, ["normalize", "--tables", str(table), "--out-dir", "x", "--settings", "{}"])
    assert exit_info.value.code == 1
    error = capsys.readouterr().err
    assert "bidstrain: error:" in error and "no.zarr" in error and "Traceback" not in error


def test_cli_types_the_report_section_and_names_a_wrong_key(tmp_path, capsys):
    """The normalize figures read the config's report section as the job types it: a
    wrong value is refused naming the key, before any figure is drawn."""
    table = _table(tmp_path, tmp_path / "no.zarr")
    settings = json.dumps({"sample_voxels": 0})
    with pytest.raises(SystemExit) as exit_info:
        run_cli(
            main, ["normalize", "--tables", str(table), "--out-dir", "x", "--settings", settings]
        )
    assert exit_info.value.code == 1
    error = capsys.readouterr().err
    assert "report.sample_voxels" in error and "Traceback" not in error
    assert not (tmp_path / "x").exists()


def test_cli_names_a_missing_train_settings_file(tmp_path, capsys):
    metrics = rd.write_metrics(tmp_path / "metrics.jsonl", _schedule_lr)
    missing = tmp_path / "plan" / "train.json"
    with pytest.raises(SystemExit) as exit_info:
        run_cli(
            main,
            [
                *("train", "--metrics", str(metrics), "--experiment", "x"),
                *("--settings", str(missing), "--out-dir", str(tmp_path / "t")),
            ],
        )
    assert exit_info.value.code == 1
    error = capsys.readouterr().err
    assert "train settings" in error and str(missing) in error and "Traceback" not in error
    assert not (tmp_path / "t").exists()


# ---- orientation, legends and numbers that agree -------------------------------------


def _marked_t1w(tmp_path: Path) -> Path:
    """A T1w stored LAS (voxel axis 0 runs to the subject's left) whose only bright voxels
    are three rods on the subject's right, front and top: each crosses one mid-plane of
    the RAS+ store, at the right-anterior-superior side of that plane."""
    shape = (20, 24, 22)
    data = np.random.default_rng(0).normal(100, 1, shape).astype(np.float32)
    right, front, top = 2, 20, 18  # file indices: i = 2 is near the right edge in LAS
    data[right, front, :] = 1000  # along S/I: crosses the axial mid-plane
    data[right, :, top] = 1000  # along A/P: crosses the coronal mid-plane
    data[:, front, top] = 1000  # along L/R: crosses the sagittal mid-plane
    affine = np.diag([-2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = [19.0, -23.0, -21.0]
    path = tmp_path / "sub-01_T1w.nii.gz"
    nib.save(nib.Nifti1Image(data, affine), path)
    store = tmp_path / "t1w.zarr"
    normalize_volumes(path, store, ImageInfo("T1w", "01"), image_options(mask="none"))
    return store


def test_slice_panels_label_each_edge_with_the_direction_of_a_known_marker(tmp_path):
    ds = open_store(_marked_t1w(tmp_path))
    assert ds.attrs["source_orientation"] == "LAS"
    volume, mask = to_grid(ds, ds["data"].values[0], np.nan), ds["mask"].values
    fig = plt.figure()
    axes = fig.subplots(1, 3)
    slice_row(fig, axes, volume, mask, label="T1w", unit="z-score")
    # the marker's side of each panel (horizontal, vertical), as the subject has it
    expected = {"sagittal": ("A", "S"), "coronal": ("R", "S"), "axial": ("R", "A")}
    opposite = {"A": "P", "S": "I", "R": "L"}
    for ax, plane in zip(axes, ("sagittal", "coronal", "axial"), strict=True):
        image = np.ma.filled(ax.images[0].get_array().astype(float), np.nan)
        row, column = np.unravel_index(np.nanargmax(image), image.shape)  # origin lower
        marker_right = column > image.shape[1] / 2
        marker_top = row > image.shape[0] / 2
        letters = {(t.get_position(), t.get_text()) for t in ax.texts}
        right = next(text for (x, y), text in letters if x > 0.9)
        left = next(text for (x, y), text in letters if x < 0.1)
        upper = next(text for (x, y), text in letters if y > 0.9)
        lower = next(text for (x, y), text in letters if y < 0.1)
        horizontal, vertical = expected[plane]
        assert (right if marker_right else left) == horizontal, plane
        assert (left if marker_right else right) == opposite[horizontal], plane
        assert (upper if marker_top else lower) == vertical, plane
        assert (lower if marker_top else upper) == opposite[vertical], plane
        assert ax.get_xlabel().startswith("voxel ") and ax.get_ylabel().startswith("voxel ")


def test_slice_panels_of_a_small_grid_tick_whole_voxels_only():
    volume = np.arange(8 * 6 * 4, dtype=float).reshape(8, 6, 4)  # the demo encoding's grid
    fig = plt.figure(figsize=(11.0, 3.8), layout="constrained")
    axes = fig.subplots(1, 3)
    slice_row(fig, axes, volume, np.ones(volume.shape, bool), label="r", unit="r")
    fig.canvas.draw()
    for axis in (axis for ax in axes for axis in (ax.xaxis, ax.yaxis)):
        low, high = sorted(axis.get_view_interval())
        ticks = axis.get_majorticklocs()
        shown = ticks[(ticks >= low) & (ticks <= high)]
        assert len(shown) >= 2 and np.all(shown == np.round(shown)), ticks


def test_coverage_numbers_are_written_exactly_where_the_legend_says():
    rows = [
        {"subject": "01", "session": "", "task": "rest", "run": "1", "modality": "bold"},
        {"subject": "01", "session": "", "task": "", "run": "", "modality": "T1w"},
        {"subject": "02", "session": "", "task": "", "run": "", "modality": "T1w"},
    ]
    rows += [  # sub-03: two sessions; sub-04: three
        {"subject": s, "session": str(n), "task": t, "run": r, "modality": m}
        for s, sessions in (("03", 2), ("04", 3))
        for n in range(1, sessions + 1)
        for t, r, m in (("rest", "1", "bold"), ("", "", "T1w"))
    ]
    manifest = pd.DataFrame(rows)
    table = coverage_table(manifest)
    fig = coverage_figure(manifest)
    (heat_map,) = [ax for ax in fig.get_axes() if ax.images]
    written = {(round(t.get_position()[1]), round(t.get_position()[0])): t.get_text()
               for t in heat_map.texts}  # fmt: skip
    cells = table.to_numpy()
    assert written == {(r, c): str(n) for (r, c), n in np.ndenumerate(cells) if n > 1}
    assert set(written.values()) == {"2", "3"}
    (legend,) = [legend for sub in fig.subfigs for legend in sub.legends]
    assert legend.get_title().get_text() == NUMBERS_SHOWN
    labels = [t.get_text() for t in legend.get_texts()]
    assert labels[0] == "missing" and labels[-1] == "3 or more"


def test_average_title_counts_subjects_and_runs_and_bars_carry_their_values(tmp_path):
    signal = rd.shared_signal(rd.SPEC.n_volumes)
    paths = [  # sub-003 has two sessions: 3 subjects, 4 runs
        rd.write_bold_store(tmp_path / f"{n}.zarr", subject, n, signal)
        for n, subject in enumerate(["001", "002", "003", "003"])
    ]
    group = open_store(rd.write_average_store(tmp_path / "average.zarr", paths))
    subjects = [open_store(p) for p in paths]
    fig = average_figure(group, subjects, "task-rest run-1")
    title = fig._suptitle.get_text()
    assert "average of 3 subjects (4 runs: each subject's sessions averaged first)" in title
    bars = next(ax for ax in fig.get_axes() if ax.get_title().startswith("Correlation"))
    values = subject_correlations(time_course(group), [time_course(s) for s in subjects])
    shown = [float(t.get_text()) for t in bars.texts]
    np.testing.assert_allclose(sorted(shown), sorted(values), atol=0.005)
    three = average_figure(group, subjects[:3], "task-rest run-1")._suptitle.get_text()
    assert "average of 3 subjects (one run each)" in three


def test_a_parcel_window_row_names_its_parcels_on_integer_rows(tmp_path):
    from bidstrain.report.model_input import model_input_figure
    from test_average_parcels import parcel_store

    store, _, _ = parcel_store(tmp_path / "p.zarr", "01", "1", 12, parcels=(3, 5, 8, 9))
    description = {
        "input": {"bold": {"parcels": 4, "window": 6, "patch_frames": 2}},
        "normalization": {"bold": {"stores": [{"store": store}]}},
    }
    fig = model_input_figure(description, "x")
    ax = fig.subfigs[0].axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["p3", "p5", "p8", "p9"]
    assert list(ax.get_yticks()) == [0, 1, 2, 3]
    save_figure(fig, tmp_path / "model_input.png")
    assert_nontrivial_png(tmp_path / "model_input.png", min_height=300)


def test_the_model_input_figure_draws_the_stimulus_features_of_the_first_window(tmp_path):
    from bidstrain.io.store import read_aligned_store
    from bidstrain.report.model_input import model_input_figure
    from test_average_parcels import parcel_store
    from train_support import write_aligned

    store, _, _ = parcel_store(tmp_path / "p.zarr", "01", "1", 12)
    description = {
        "input": {
            "bold": {"parcels": 4, "window": 6, "patch_frames": 2},
            "video": {"features": 5, "window": 6, "patch_frames": 2, "token_features": 3},
        },
        "normalization": {"bold": {"stores": [{"store": store}]}},
        "preparation": Preparation(
            2.0, "none", 6, 6, 2, "parcels", stimuli={"video": {"delays": [2, 3]}}
        ).to_json(),
    }
    features = np.arange(12 * 5, dtype=np.float32).reshape(12, 5) / 60
    video = read_aligned_store(write_aligned(tmp_path / "video.zarr", features, "video", store))
    fig = model_input_figure(description, "x", [video])
    row = fig.subfigs[1]
    assert row._suptitle.get_text().startswith("video: the 5 features of frames 0-5 of ")
    assert "delays [2, 3] TRs; tokens of 2 frames x 3 features" in row._suptitle.get_text()
    one = {**description, "input": {**description["input"], "video": {"token_features": 1}}}
    single = model_input_figure(one, "x", [video]).subfigs[1]._suptitle.get_text()
    assert single.endswith("tokens of 2 frames x 1 feature")
    (image,) = row.axes[0].get_images()
    np.testing.assert_array_equal(image.get_array(), features[:6].T)  # features by frames
    lines = row.axes[0].get_lines()
    assert [line.get_xdata()[0] for line in lines[:2]] == [1.5, 3.5]  # frames of a token
    assert [line.get_ydata()[0] for line in lines[2:]] == [2.5]  # features 0-2, 3-4
    save_figure(fig, tmp_path / "model_input.png")
    assert_nontrivial_png(tmp_path / "model_input.png", min_height=500)
    short = read_aligned_store(write_aligned(tmp_path / "short.zarr", features[:10], "text", store))
    with pytest.raises(BidstrainError, match="text features of .* have 10 rows, the BOLD store"):
        model_input_figure(description, "x", [short])


def test_encoding_metrics_without_the_chance_test_ask_for_a_rerun(tmp_path):
    """A metrics.json of an earlier encoding job (no ``chance``), whose outputs Snakemake
    keeps as up to date: the report names the file and the rerun, not a KeyError."""
    from bidstrain.report.__main__ import main

    (tmp_path / "model.json").write_text(json.dumps({"target": {"kind": "voxels"}}))
    (tmp_path / "metrics.json").write_text(json.dumps({"predictions": {"model": {}}}))
    arguments = ["encoding", "--encoding-dir", str(tmp_path), "--bold", "a.zarr"]
    outputs = ["--timecourse-out", "t.png", "--map-out", "m.png"]
    with pytest.raises(BidstrainError, match=r"metrics.json: holds no circular-shift test .*"
                       r"--forcerun encoding_model"):  # fmt: skip
        main([*arguments, "--targets", "3", *outputs])


def test_encoding_timecourses_name_parcels_by_label_as_the_metrics_do():
    from bidstrain.report.encoding import chance_line, timecourse_figure

    rng = np.random.default_rng(0)
    measured = rng.standard_normal((20, 3))
    names = ["parcel 3 tone_low", "parcel 5 luminance", "parcel 8 words"]
    metrics = {
        "predictions": {
            "model": {"tested_targets": 3, "significant_targets": 1, "median_null_r95": 0.41}
        },
        "chance": {"rotations": 19, "smallest_p": 0.05, "false_discovery_rate": 0.05},
    }
    fig = timecourse_figure(
        measured, measured, measured, np.array([0.1, 0.9, 0.5]), np.array([0.6, 0.05, 0.1]),
        n=2, repetition_time=2.0, names=names, chance=chance_line(metrics, "parcel"),
    )  # fmt: skip
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == [
        "parcel 5 luminance (best): r = 0.90, p = 0.05",
        "parcel 8 words (near the median): r = 0.50, p = 0.1",
    ]
    assert fig.get_suptitle().splitlines()[1:] == [
        "chance: r above 0.41 in 5 % of 19 rotations of the measured series",
        "(median over parcels); 1 of 3 parcels above chance (FDR 5 %)",
    ]
    metrics["chance"]["smallest_p"] = 0.1  # 10 held-out frames
    metrics["chance"]["rotations"] = 9
    assert chance_line(metrics, "voxel").splitlines()[-1] == (
        "none can be: 10 held-out frames give no p below 0.1"
    )
    # the same predictions: RidgeCV's thin dashed line shows over the model's broad one
    model, ridge = (
        next(line for line in fig.axes[0].lines if line.get_label().startswith(name))
        for name in ("encoding model", "RidgeCV")
    )
    assert ridge.get_linestyle() == "--" and ridge.get_linewidth() < model.get_linewidth()
    assert fig.axes[0].lines.index(ridge) > fig.axes[0].lines.index(model)
    assert ridge.get_label() == "RidgeCV (within 0 of the model in these panels)"
