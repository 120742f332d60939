"""Training figures from ``metrics.jsonl``: losses (with each modality's validation
baseline, and with BOLD windows the validation loss on the same windows with their frames
shuffled in time), gradient norm, learning rate, the per-modality gradients with the dummy loss,
throughput, and whether each modality learned (the ``summary`` record against
``train.learning.max_ratio``).

The planned learning rate is the trainer's own schedule
(:func:`bidstrain.train.schedule.lr_multiplier`) evaluated with the parameters of each
``plan`` line, so the figure shows whether the rate the optimizer used is the one planned.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from bidstrain.errors import BidstrainError
from bidstrain.report.figure import STATUS_COLOURS, empty_panel, log_y, new_figure

#: Steps over which noisy series are smoothed by a rolling median (when there are more
#: than four times as many).
SMOOTHING = 25
_MODALITY_COLOURS = {"T1w": "#4c72b0", "bold": "#dd8452", "dwi": "#55a868"}
#: The learning figure's ratio axes turn logarithmic past this many decades.
LOG_RATIO_DECADES = 2
#: What the modules of a ``grad_norms`` tag are (other tags: a modality in the batch).
_ROLES = {
    "inactive": "modules of modalities absent from the batch (dummy-loss gradient only)",
    "shared": "modules every modality uses (the encoder)",
}


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """Records of a ``metrics.jsonl`` in file order (JSON ``NaN``/``Infinity`` allowed)."""
    records = []
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as error:
            raise BidstrainError(f"line {number} is not JSON: {error}", path=path) from None
    if not any(r.get("kind") == "plan" for r in records):
        raise BidstrainError("no 'plan' line (is this a bidstrain metrics file?)", path=path)
    return records


def steps_frame(records: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per optimizer step: step, lr, loss, grad_norm, skipped, dummy_loss,
    samples_per_s and a ``loss_<modality>`` column per modality (NaN where absent)."""
    rows = []
    for record in records:
        if record.get("kind") == "step":
            row = {k: v for k, v in record.items() if not isinstance(v, dict | list)}
            row.update({f"loss_{m}": v for m, v in record["loss_per_modality"].items()})
            rows.append(row)
    frame = pd.DataFrame(rows)
    return frame.sort_values("step").reset_index(drop=True) if len(frame) else frame


def planned_lr(records: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Planned learning rate per 1-based step, following every (re)start's plan.

    Each ``plan`` line governs the steps logged after it, up to the next plan (the last
    one up to its ``total_steps``); step ``s`` uses ``lr * lr_multiplier(s - 1, ...)``.

    Returns
    -------
    steps : ndarray of int
    lr : ndarray of float
    restarts : list of int
        First step after each plan line but the first (a resumed or restarted run).
    """
    from bidstrain.train.schedule import lr_multiplier  # imports torch: only when drawn

    segments: list[tuple[dict[str, Any], int]] = []
    last_step = 0
    for record in records:
        if record.get("kind") == "plan":
            segments.append((record, last_step + 1))
        elif "step" in record:
            last_step = max(last_step, int(record["step"]))
    steps, rates = [], []
    for index, (plan, first) in enumerate(segments):
        last = segments[index + 1][1] - 1 if index + 1 < len(segments) else plan["total_steps"]
        for step in range(first, last + 1):
            steps.append(step)
            rates.append(
                plan["lr"]
                * lr_multiplier(
                    step - 1,
                    total_steps=plan["total_steps"],
                    warmup_steps=plan["warmup_steps"],
                    min_lr_ratio=plan["min_lr_ratio"],
                )
            )
    restarts = [first for _, first in segments[1:]]
    return np.array(steps, dtype=np.int64), np.array(rates, dtype=np.float64), restarts


def gradient_norms_by_tag(records: list[dict[str, Any]]) -> dict[str, pd.DataFrame]:
    """Per tag (``[bold]``, ``[inactive]``, ``[shared]`` ...) of the ``grad_norms`` lines,
    the median, minimum and maximum over the tag's modules at each logged step."""
    values: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for record in records:
        if record.get("kind") == "grad_norms":
            for key, norm in record["norms"].items():
                tag = key.split("]", 1)[0].lstrip("[")
                values[tag].append((int(record["step"]), float(norm)))
    return {
        tag: pd.DataFrame(pairs, columns=["step", "norm"])
        .groupby("step")["norm"]
        .agg(["median", "min", "max"])
        for tag, pairs in sorted(values.items())
    }


def training_figures(
    records: list[dict[str, Any]],
    *,
    experiment: str,
    clip_grad_norm: float | None = None,
    loss_weights: Mapping[str, float] | None = None,
) -> dict[str, Figure]:
    """The training figures, by name (:data:`bidstrain.report.TRAINING_FIGURES`).

    Parameters
    ----------
    records : list of dict
        The lines of ``metrics.jsonl`` (:func:`read_metrics`).
    experiment : str
        ``train.experiment``, for the titles.
    clip_grad_norm : float, optional
        ``train.optimizer.clip_grad_norm``, drawn over the gradient norm.
    loss_weights : mapping, optional
        ``train.loss.weights``: each modality's weight in the validation total, which its
        baseline takes too; a modality it lacks weighs 1, as in training.
    """
    steps = steps_frame(records)
    if steps.empty:
        raise BidstrainError(f"experiment {experiment}: metrics have no 'step' line")
    validation = [r for r in records if r.get("kind") == "validation"]
    return {
        "losses": _losses(steps, validation, experiment, loss_weights or {}),
        "grad_norm": _grad_norm(steps, experiment, clip_grad_norm),
        "lr": _learning_rate(steps, records, experiment),
        "modality_gradients": _modality_gradients(steps, records, experiment),
        "throughput": _throughput(steps, experiment),
        "learning": _learning(records, experiment),
    }


def _smoothed(ax: Axes, x: pd.Series, y: pd.Series, colour: str, label: str) -> None:
    """Thin raw series and, past :data:`SMOOTHING` points, a thick rolling median."""
    if len(y) > 4 * SMOOTHING:
        ax.plot(x, y, color=colour, lw=0.6, alpha=0.35)
        median = y.rolling(SMOOTHING, center=True, min_periods=1).median()
        ax.plot(x, median, color=colour, lw=1.8, label=f"{label} (rolling median)")
    else:
        ax.plot(x, y, color=colour, lw=1.2, marker=".", label=label)


def _positive(values: pd.Series) -> pd.Series:
    """Values a log axis can draw (others NaN)."""
    return values.where(np.isfinite(values) & (values > 0))


def _losses(
    steps: pd.DataFrame,
    validation: list[dict[str, Any]],
    experiment: str,
    weights: Mapping[str, float],
) -> Figure:
    fig = new_figure(10.0, 5.0, f"Training loss, experiment {experiment}")
    ax = fig.subplots()
    modalities = sorted(c[len("loss_") :] for c in steps.columns if c.startswith("loss_"))
    # the totals sum what each batch held (training) and every validated modality
    # (validation): the validation total has a baseline of its own (the same sum of the
    # modalities' baselines), and with one modality the total is that modality's line
    totals = len(modalities) > 1
    if totals:
        label = "train total: sum over the batch's modalities"
        _smoothed(ax, steps["step"], _positive(steps["loss"]), "black", label)
    for modality in modalities:
        present = steps[["step", f"loss_{modality}"]].dropna()
        _smoothed(
            ax,
            present["step"],
            _positive(present[f"loss_{modality}"]),
            _MODALITY_COLOURS.get(modality, "grey"),
            f"train {modality}",
        )
    if validation and totals:
        ax.plot(
            [r["step"] for r in validation],
            [r["loss"] for r in validation],
            "k--o",
            label="validation total: weighted sum over the validated modalities",
        )
        _total_baseline(ax, validation, weights)
    if validation:
        for modality, points in _per_modality(validation, "loss_per_modality").items():
            ax.plot(
                *zip(*points, strict=True),
                "--s",
                color=_MODALITY_COLOURS.get(modality, "grey"),
                label=f"validation {modality}",
            )
        _shuffled_in_time(ax, validation)
        _baselines(ax, validation)
    log_y(ax)
    ax.set_title("Loss per optimizer step (per-modality lines where the modality was in the batch)")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (normalized MSE, unitless)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig


def _per_modality(validation: list[dict[str, Any]], key: str) -> dict[str, list[tuple[int, float]]]:
    """Per modality (sorted), ``(step, record[key][modality])`` of the validations whose
    ``key`` holds it; empty when none does."""
    series: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for record in validation:
        for modality, value in record.get(key, {}).items():
            series[modality].append((record["step"], value))
    return dict(sorted(series.items()))


def _shuffled_in_time(ax: Axes, validation: list[dict[str, Any]]) -> None:
    """The validation loss on the windows with their frames shuffled in time, beside the
    one in true order (same colour, dash-dot, crosses): a model that uses time is clearly
    worse on them (``loss_shuffled_time_per_modality``: BOLD windows, ``train.window`` > 1)."""
    for modality, points in _per_modality(validation, "loss_shuffled_time_per_modality").items():
        ax.plot(
            *zip(*points, strict=True),
            "-.x",
            color=_MODALITY_COLOURS.get(modality, "grey"),
            label=f"validation {modality}, frames shuffled in time",
        )


def _total_baseline(
    ax: Axes, validation: list[dict[str, Any]], weights: Mapping[str, float]
) -> None:
    """The baseline of the validation total, black and dotted: the validated modalities'
    baselines summed with the weights of their losses in the total, at the validations
    that recorded a baseline for each of them."""
    points = [
        (r["step"], sum(weights.get(m, 1.0) * b for m, b in r["baseline_per_modality"].items()))
        for r in validation
        if r.get("baseline_per_modality")
        and set(r["baseline_per_modality"]) == set(r["loss_per_modality"])
    ]
    if points:
        ax.plot(
            *zip(*points, strict=True),
            "k:",
            lw=2,
            label="baseline of the validation total (the same sum of their baselines)",
        )


def _baselines(ax: Axes, validation: list[dict[str, Any]]) -> None:
    """Each modality's validation baseline (the loss of predicting the mean) as a dotted
    line; one grey line when they all agree within 1 % (1.0 under ``var``)."""
    series = _per_modality(validation, "baseline_per_modality")
    values = [v for points in series.values() for _, v in points]
    if not values:
        return
    if max(values) <= 1.01 * min(values):
        ax.axhline(
            float(np.mean(values)),
            color="grey",
            ls=":",
            lw=2,
            label="baseline (predicting the mean), every modality",
        )
        return
    for modality, points in series.items():
        ax.plot(
            *zip(*points, strict=True),
            ":",
            lw=2,
            color=_MODALITY_COLOURS.get(modality, "grey"),
            label=f"baseline {modality} (predicting the mean)",
        )


def _grad_norm(steps: pd.DataFrame, experiment: str, clip: float | None) -> Figure:
    fig = new_figure(10.0, 4.5, f"Gradient norm before clipping, experiment {experiment}")
    ax = fig.subplots()
    finite = steps[np.isfinite(steps["grad_norm"]) & ~steps["skipped"].astype(bool)]
    _smoothed(ax, finite["step"], _positive(finite["grad_norm"]), "#4c72b0", "total norm")
    skipped = steps[steps["skipped"].astype(bool) | ~np.isfinite(steps["grad_norm"])]
    for number, step in enumerate(skipped["step"]):
        ax.axvline(
            step,
            color="#e8594f",
            lw=1,
            alpha=0.7,
            label=f"skipped step, non-finite ({len(skipped)})" if number == 0 else None,
        )
    if clip is not None:
        ax.axhline(clip, color="grey", ls=":", label=f"clip_grad_norm = {clip:g}")
    log_y(ax)
    ax.set_title(
        f"Pre-clip total gradient norm per optimizer step ({len(skipped)} skipped, non-finite)"
    )
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("L2 norm of all gradients (unitless)")
    ax.legend(loc="upper right")
    return fig


def _learning_rate(steps: pd.DataFrame, records: list[dict[str, Any]], experiment: str) -> Figure:
    planned_steps, planned, restarts = planned_lr(records)
    fig = new_figure(10.0, 4.5, f"Learning rate, planned vs used, experiment {experiment}")
    ax = fig.subplots()
    ax.plot(
        planned_steps,
        planned,
        color="grey",
        lw=3,
        alpha=0.6,
        label="planned (bidstrain.train.schedule)",
    )
    ax.plot(
        steps["step"], steps["lr"], color="#dd8452", lw=1, marker=".", ms=3, label="used (metrics)"
    )
    for number, step in enumerate(restarts):
        ax.axvline(
            step - 0.5,
            color="black",
            ls=":",
            label="restart (new plan line)" if number == 0 else None,
        )
    ax.set_title("Learning rate per optimizer step")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("learning rate")
    ax.legend(loc="upper right")
    return fig


def _modality_gradients(
    steps: pd.DataFrame, records: list[dict[str, Any]], experiment: str
) -> Figure:
    fig = new_figure(12.0, 4.5, f"Per-modality gradients and dummy loss, experiment {experiment}")
    norm_ax, dummy_ax = fig.subplots(1, 2, width_ratios=[1.5, 1.0])
    by_tag = gradient_norms_by_tag(records)
    if by_tag:
        for tag, frame in by_tag.items():
            colour = _MODALITY_COLOURS.get(tag, "#e8594f" if tag == "inactive" else "grey")
            style = "--" if tag == "inactive" else "-"
            zeros = int((frame["max"] <= 0).sum())
            label = f"[{tag}] {_ROLES.get(tag, f'{tag} modules, {tag} in the batch')}"
            label += f" ({zeros} logged steps all 0)" if zeros else ""
            norm_ax.plot(
                frame.index,
                _positive(frame["median"]),
                style,
                color=colour,
                marker=".",
                label=label,
            )
            norm_ax.fill_between(
                frame.index,
                _positive(frame["min"]),
                _positive(frame["max"]),
                color=colour,
                alpha=0.15,
            )
        log_y(norm_ax)
        norm_ax.set_title("Module gradient norms by role (line: median, band: min-max)")
        norm_ax.set_xlabel("optimizer step")
        norm_ax.set_ylabel("L2 norm of the module's gradients")
        norm_ax.legend(loc="best", fontsize=7)
    else:
        empty_panel(norm_ax, "Module gradient norms", "no grad_norms lines in the metrics")
    dummy = _positive(steps["dummy_loss"].astype(float))
    if dummy.notna().any():
        _smoothed(dummy_ax, steps["step"], dummy, "#8172b3", "dummy loss")
        log_y(dummy_ax)
        dummy_ax.set_title("Dummy loss added for absent modalities")
        dummy_ax.set_xlabel("optimizer step")
        dummy_ax.set_ylabel("dummy loss (unitless)")
        dummy_ax.legend(loc="best")
    else:
        empty_panel(
            dummy_ax,
            "Dummy loss",
            "0 at every step (train.dummy_loss disabled\nor every modality in every batch)",
        )
    return fig


def _throughput(steps: pd.DataFrame, experiment: str) -> Figure:
    fig = new_figure(10.0, 4.0, f"Throughput, experiment {experiment}")
    ax = fig.subplots()
    _smoothed(ax, steps["step"], steps["samples_per_s"].astype(float), "#55a868", "samples/s")
    median = float(np.nanmedian(steps["samples_per_s"]))
    if math.isfinite(median):
        ax.axhline(median, color="grey", ls=":", label=f"median {median:.3g} samples/s")
    ax.set_ylim(bottom=0)
    ax.set_title("Training samples per second")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("samples / s")
    ax.legend(loc="lower right")
    return fig


def _learning(records: list[dict[str, Any]], experiment: str) -> Figure:
    """Final validation loss / baseline per modality, coloured by the summary's status,
    and the ratio after every validation, against ``train.learning.max_ratio``."""
    summary = next((r for r in reversed(records) if r.get("kind") == "summary"), None)
    failing = [m for m, v in (summary or {}).get("modalities", {}).items() if v["status"] != "pass"]
    if summary is None:
        title = f"Learning, experiment {experiment}: no summary (run interrupted?)"
    elif not summary["modalities"]:
        title = (
            f"Learning not measured, experiment {experiment}: no validation data (hold out "
            "runs or subjects: normalize.heldout)"
        )
    elif failing:
        title = f"WARNING, experiment {experiment}: {', '.join(failing)} did not beat the baseline"
    else:
        title = f"Learning, experiment {experiment}: every validated modality beat the baseline"
    if summary is not None and summary["modalities"] and summary.get("unvalidated"):
        title += f" (not validated: {', '.join(summary['unvalidated'])})"
    fig = new_figure(12.0, 4.5, title)
    bar_ax, curve_ax = fig.subplots(1, 2, width_ratios=[1.0, 1.5])
    if summary is None or not summary["modalities"]:
        reason = "no summary line" if summary is None else "no validation data"
        empty_panel(bar_ax, "Final validation loss / baseline", reason)
        empty_panel(curve_ax, "Validation loss / baseline", reason)
        return fig
    max_ratio = summary["max_ratio"]
    modalities = list(summary["modalities"])
    values = [summary["modalities"][m] for m in modalities]
    bars = bar_ax.bar(
        modalities,
        [v["ratio"] for v in values],
        color=[STATUS_COLOURS[v["status"]] for v in values],
        edgecolor="black",
    )
    bar_ax.bar_label(
        bars,
        labels=[f"{v['ratio']:.2f}\n{v['status']}" for v in values],
        fontsize=8,
        padding=2,
    )
    for ax in (bar_ax, curve_ax):
        ax.axhline(1.0, color="black", lw=1, label="baseline (predicting the mean)")
        ax.axhline(max_ratio, color="#e8594f", ls="--", label=f"max_ratio {max_ratio:g}")
        ax.set_ylabel("validation loss / baseline")
    curves = [1.0, max_ratio]
    for modality in modalities:
        colour = _MODALITY_COLOURS.get(modality, "grey")
        curve = _to_baseline(records, modality)
        curve_ax.plot(*curve, "-o", color=colour, label=modality)
        shuffled = _to_baseline(records, modality, "loss_shuffled_time_per_modality")
        if shuffled[0]:
            curve_ax.plot(
                *shuffled, "-.x", color=colour, label=f"{modality}, frames shuffled in time"
            )
        curves += curve[1] + shuffled[1]
    _ratio_scale(bar_ax, curve_ax, [v["ratio"] for v in values], curves)
    bar_ax.set_title("Final validation loss / baseline")
    bar_ax.set_xlabel("modality")
    bar_ax.legend(loc="upper left", fontsize=8)
    curve_ax.set_title("Validation loss / baseline after every epoch")
    curve_ax.set_xlabel("optimizer step")
    curve_ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    if summary["unvalidated"]:
        fig.text(
            0.01,
            0.01,
            f"not validated (no validation data): {', '.join(summary['unvalidated'])}",
            fontsize=8,
        )
    return fig


def _ratio_scale(bar_ax: Axes, curve_ax: Axes, bars: list[float], curves: list[float]) -> None:
    """Linear axes from 0, or log axes when the ratios of the bars and of the curves
    (with 1 and ``max_ratio``) span more than :data:`LOG_RATIO_DECADES` decades: a model
    that diverged (a ratio of 15,000) would otherwise flatten the baseline and
    ``max_ratio`` onto 0. The bar panel keeps headroom above its tallest bar for the
    bar's label and the legend."""
    shown = [r for r in bars + curves if math.isfinite(r) and r > 0]
    low, high = min(shown), max(shown)
    tallest = max(bars)
    if high / low <= 10**LOG_RATIO_DECADES:
        bar_ax.set_ylim(0, max(1.2, 1.6 * tallest))
        curve_ax.set_ylim(bottom=0)
        return
    for ax in (bar_ax, curve_ax):
        log_y(ax)
        ax.set_ylim(bottom=low / 2)
    # as 1.6 x the tallest bar on a linear axis: 60 % more of the axis above it
    bar_ax.set_ylim(top=tallest * (2 * tallest / low) ** 0.6)


def _to_baseline(
    records: list[dict[str, Any]], modality: str, key: str = "loss_per_modality"
) -> tuple[list[int], list[float]]:
    """Steps and ``record[key][modality]`` / the baseline of the validations that have
    both."""
    points = [
        (r["step"], r[key][modality] / r["baseline_per_modality"][modality])
        for r in records
        if r.get("kind") == "validation"
        and modality in r.get(key, {})
        and r.get("baseline_per_modality", {}).get(modality)
    ]
    return [s for s, _ in points], [v for _, v in points]
