"""Learning is measured against a baseline: the baseline loss, masked-token training and
validation, the summary record, the warning and ``train.learning.strict``."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from bidstrain.train.loop import train
from bidstrain.train.losses import baseline_loss, normalized_mse
from bidstrain.train.metrics import MetricsLog, learning_summary
from bidstrain.train.model import MultiModalAutoencoder
from train_support import (
    metrics_records,
    train_cli_args,
    train_config,
    trainer_env,
    write_store,
)

#: A tiny model that can learn the stores' pattern within seconds.
LEARNING = {
    "epochs": 12,
    "warmup_steps": 5,
    "lr": 3e-3,
    "batch_size": 4,
    "embed_dim": 32,
    "mask_ratio": 0.5,
    "checkpoint_every": 1000,
    "log_every": 1000,
}


def stores(root, *, structure: float, offset: int = 0) -> dict[str, list[str]]:
    """A bold and a dwi store of 48 volumes each (``offset`` changes the seeds)."""
    return {
        modality: [
            write_store(
                root / f"{modality}-{offset}.zarr",
                modality=modality,
                n_time=48,
                seed=offset + index,
                structure=structure,
            )
        ]
        for index, modality in enumerate(("bold", "dwi"))
    }


def summary_of(tmp_path, *, structure: float, **overrides) -> dict:
    out = tmp_path / "out"
    train(
        train_config(**{**LEARNING, **overrides}),
        stores(tmp_path, structure=structure),
        stores(tmp_path, structure=structure, offset=10),
        model_out=out / "model.pt",
        metrics_out=out / "metrics.jsonl",
        checkpoint_dir=out / "checkpoints",
    )
    records = metrics_records(out / "metrics.jsonl")
    assert [r["kind"] for r in records].count("summary") == 1
    assert records[-1]["kind"] == "summary"
    validations = [r for r in records if r["kind"] == "validation"]
    assert len(validations) == LEARNING["epochs"]
    for record in validations:
        assert set(record["baseline_per_modality"]) == {"bold", "dwi"}
    return records[-1]


# ---- the baseline ------------------------------------------------------------------------


@pytest.mark.parametrize("normalize", ["var", "std", "none"])
def test_the_baseline_is_the_loss_of_predicting_the_mean(normalize):
    target = 3.0 + 2.0 * torch.randn(4, 1, 6, 6, 6, generator=torch.Generator().manual_seed(0))
    got = baseline_loss(target, normalize=normalize, eps=1e-6)
    var = target.var(unbiased=False)
    expected = {"var": var / (var + 1e-6), "std": var / torch.sqrt(var + 1e-6), "none": var}
    assert float(got) == pytest.approx(float(expected[normalize]), rel=1e-5)
    if normalize == "var":
        assert float(got) == pytest.approx(1.0, abs=1e-5)


def test_the_baseline_with_dataset_statistics_predicts_the_dataset_mean_on_masked_voxels():
    target = torch.arange(8, dtype=torch.float32).reshape(1, 1, 2, 2, 2)
    where = target >= 4  # values 4..7
    got = baseline_loss(target, normalize="var", eps=0.0, target_stats=(5.0, 2.0), where=where)
    expected = ((torch.tensor([4.0, 5, 6, 7]) - 5.0) ** 2).mean() / 2.0
    assert float(got) == pytest.approx(float(expected))


# ---- masked autoencoding -----------------------------------------------------------------


def test_masked_tokens_know_their_position_and_only_they_count_in_the_loss():
    torch.manual_seed(0)
    model = MultiModalAutoencoder(train_config(mask_ratio=0.5).model, ["bold"])
    model.eval()
    volume = torch.randn(2, 1, 8, 8, 8)
    masks = model.token_masks({"bold": volume}, torch.Generator().manual_seed(1))
    assert masks["bold"].shape == (2, 8) and masks["bold"].sum(dim=1).tolist() == [4, 4]
    with torch.no_grad():
        output = model({"bold": volume}, masks=masks)
    where = output.voxel_masks["bold"]
    assert int(where.sum()) == 2 * 4 * 4**3
    expected = normalized_mse(
        output.reconstructions["bold"][where], volume[where], normalize="var", eps=1e-6
    )
    assert float(output.loss_per_modality["bold"]) == pytest.approx(float(expected), rel=1e-6)
    # Two masked tokens of one sample differ only by their position: the mask token gets
    # the position embedding, so their reconstructions differ.
    patches = output.reconstructions["bold"][0, 0].unfold(0, 4, 4).unfold(1, 4, 4).unfold(2, 4, 4)
    masked = masks["bold"][0].nonzero().flatten().tolist()
    flat = patches.reshape(8, -1)
    assert not torch.allclose(flat[masked[0]], flat[masked[1]])
    # The same generator seed masks the same tokens (validation is comparable across epochs).
    again = model.token_masks({"bold": volume}, torch.Generator().manual_seed(1))
    assert torch.equal(again["bold"], masks["bold"])


# ---- the summary -------------------------------------------------------------------------


def test_summary_compares_the_final_loss_with_the_baseline():
    validations = [
        {
            "kind": "validation",
            "step": step,
            "loss_per_modality": {"bold": loss, "T1w": 1.0},
            "baseline_per_modality": {"bold": 1.0, "T1w": 1.0},
        }
        for step, loss in ((10, 0.7), (20, 0.5), (30, 0.6))
    ]
    summary = learning_summary(
        validations, modalities=["T1w", "bold", "dwi"], max_ratio=0.9, strict=False, step=30
    )
    assert summary["modalities"]["bold"] == {
        "best": 0.5,
        "final": 0.6,
        "baseline": 1.0,
        "ratio": 0.6,
        "status": "pass",
    }
    assert summary["modalities"]["T1w"]["status"] == "warn"
    assert summary["unvalidated"] == ["dwi"]
    strict = learning_summary(validations, modalities=["T1w"], max_ratio=0.9, strict=True, step=30)
    assert strict["modalities"]["T1w"]["status"] == "fail"


def test_a_resumed_run_drops_the_earlier_summary(tmp_path):
    path = tmp_path / "metrics.jsonl"
    lines = [{"kind": "plan"}, {"kind": "step", "step": 1}, {"kind": "summary", "step": 1}]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    MetricsLog(path, resume_step=1).close()
    assert [json.loads(line)["kind"] for line in path.read_text().splitlines()] == ["plan", "step"]


# ---- learning, end to end ----------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.slow  # about 90 s of training
def test_a_model_on_learnable_structure_beats_the_baseline(tmp_path):
    summary = summary_of(tmp_path, structure=2.0)
    for modality, values in summary["modalities"].items():
        assert values["status"] == "pass", (modality, values)
        assert values["ratio"] < 0.8
        assert values["baseline"] == pytest.approx(1.0, abs=1e-3)


@pytest.mark.slow
@pytest.mark.integration
def test_a_model_on_pure_noise_does_not_beat_the_baseline_and_warns(tmp_path, caplog):
    with caplog.at_level("WARNING", logger="bidstrain.train"):
        summary = summary_of(tmp_path, structure=0.0)
    for modality, values in summary["modalities"].items():
        assert values["ratio"] > 0.9, (modality, values)
        assert values["status"] == "warn"
        assert f"{modality}: final validation loss" in caplog.text
    assert "WARNING: did not learn" in caplog.text


@pytest.mark.integration
def test_strict_learning_exits_non_zero_after_writing_the_model(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    config = train_config(**{**LEARNING, "epochs": 2, "learning": {"strict": True}})
    args = train_cli_args(
        out,
        config,
        stores(tmp_path, structure=0.0),
        validation=stores(tmp_path, structure=0.0, offset=10),
    )
    result = subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, env=trainer_env()
    )
    assert result.returncode == 1, result.stderr
    assert "the model did not learn" in result.stderr
    assert "train.learning.strict: false" in result.stderr
    assert (out / "model.pt").is_file() and (out / "model.json").is_file()
    summary = metrics_records(out / "metrics.jsonl")[-1]
    assert summary["kind"] == "summary" and summary["strict"] is True
    assert {v["status"] for v in summary["modalities"].values()} == {"fail"}


def _learning_records(bold: float, t1w: tuple[float, float]) -> list[dict]:
    """Metrics of two validations (steps 10 and 20; baselines 1.0), T1w's losses ``t1w``
    and BOLD's ``bold`` at both, with one step line and the summary (max_ratio 0.9)."""
    validations = [
        {
            "kind": "validation",
            "step": step,
            "epoch": step // 10 - 1,
            "loss": 1.0,
            "loss_per_modality": {"bold": bold, "T1w": loss},
            "baseline_per_modality": {"bold": 1.0, "T1w": 1.0},
        }
        for step, loss in zip((10, 20), t1w, strict=True)
    ]
    step = {
        "kind": "step",
        "step": 20,
        "epoch": 1,
        "lr": 1e-3,
        "loss": 1.0,
        "loss_per_modality": {"bold": 1.0},
        "dummy_loss": 0.0,
        "grad_norm": 1.0,
        "skipped": False,
        "modalities": ["bold"],
        "samples_per_s": 1.0,
        "seconds_per_step": 1.0,
    }
    summary = learning_summary(
        validations, modalities=["T1w", "bold"], max_ratio=0.9, strict=False, step=20
    )
    return [
        {"kind": "plan", "total_steps": 20, "warmup_steps": 1, "lr": 1e-3, "min_lr_ratio": 0.1},
        step,
        *validations,
        summary,
    ]


def test_the_learning_figure_colours_a_modality_that_did_not_learn():
    from bidstrain.report.figure import STATUS_COLOURS
    from bidstrain.report.train import training_figures
    from matplotlib.colors import to_hex

    records = _learning_records(1.02, (0.8, 0.4))
    figure = training_figures(records, experiment="x")["learning"]
    assert "WARNING" in figure._suptitle.get_text() and "bold" in figure._suptitle.get_text()
    bars = figure.axes[0].patches
    assert [to_hex(bar.get_facecolor()) for bar in bars] == [
        STATUS_COLOURS["pass"],
        STATUS_COLOURS["warn"],
    ]
    assert [bar.get_height() for bar in bars] == pytest.approx([0.4, 1.02])


def test_the_learning_figure_turns_logarithmic_when_a_model_diverged():
    """A BOLD loss 15,000 times its baseline: on a linear axis the baseline and max_ratio
    would sit on 0; on the log axes both stay inside the view, above its bottom."""
    from bidstrain.report.train import training_figures

    figure = training_figures(_learning_records(15000.0, (0.8, 0.4)), experiment="x")["learning"]
    for ax in figure.axes[:2]:
        assert ax.get_yscale() == "log"
        low, high = ax.get_ylim()
        assert low < 0.9 and high > 15000.0
    calm = training_figures(_learning_records(1.02, (0.8, 0.4)), experiment="x")["learning"]
    assert [ax.get_yscale() for ax in calm.axes[:2]] == ["linear", "linear"]
