"""Stimulus tokens (train.stimuli): one encoder sequence of a BOLD window and its stimulus
features, joint masks, per-kind losses, the dummy term and gradients of every part."""

from __future__ import annotations

import numpy as np
import torch
from bidstrain.train.distributed import Context
from bidstrain.train.model import LossSettings, MultiModalAutoencoder, mask_generator
from bidstrain.train.schedule import build_scheduler
from bidstrain.train.step import Trainer, optimizer_step
from train_support import train_config

SHAPES = {"T1w": [8, 8, 8], "bold": [8, 8, 4]}
WINDOW, PATCH_FRAMES = 4, 2
#: video: 2 tokens of 3 features a patch of frames; text: 2 of 3, the last one padded
FEATURES, PATCH_FEATURES = {"video": 6, "text": 5}, 4
SCALE = 1e-7


def make_model(stimuli=FEATURES, mask_ratio=0.5, dummy=True) -> MultiModalAutoencoder:
    torch.manual_seed(0)
    model = train_config(
        shapes=SHAPES,
        mask_ratio=mask_ratio,
        window=WINDOW,
        patch_frames=PATCH_FRAMES,
        patch_features=PATCH_FEATURES,
        stimuli=list(stimuli),
    ).model
    loss = LossSettings(dummy_scale=SCALE, dummy_enabled=dummy)
    return MultiModalAutoencoder(model, SHAPES, loss=loss, stimuli=stimuli)


def batch(n_bold: int = 3, n_t1w: int = 2, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    out = {}
    if n_t1w:
        out["T1w"] = torch.randn(n_t1w, 1, *SHAPES["T1w"], generator=generator)
    if n_bold:
        out["bold"] = torch.randn(n_bold, WINDOW, *SHAPES["bold"], generator=generator)
        for kind, n in FEATURES.items():
            out[kind] = torch.randn(n_bold, WINDOW, n, generator=generator)
    return out


def test_without_stimuli_the_parameters_and_outputs_are_those_of_the_image_model():
    plain = make_model(stimuli={})
    torch.manual_seed(0)
    config = train_config(shapes=SHAPES, mask_ratio=0.5, window=WINDOW, patch_frames=PATCH_FRAMES)
    reference = MultiModalAutoencoder(config.model, SHAPES, loss=LossSettings(dummy_scale=SCALE))
    assert [n for n, _ in plain.named_parameters()] == [n for n, _ in reference.named_parameters()]
    images = {m: v for m, v in batch().items() if m in SHAPES}
    masks = plain.token_masks(images, mask_generator(0, 1))
    want = reference.token_masks(images, mask_generator(0, 1))
    assert all(torch.equal(masks[m], want[m]) for m in want)
    assert torch.equal(plain(images, masks=masks).loss, reference(images, masks=want).loss)


def test_stimulus_tokens_shapes_and_reconstructions():
    model = make_model()
    data = batch()
    assert model.inputs == ["T1w", "bold", "video", "text"]
    assert model.sequences(data) == [["T1w"], ["bold", "video", "text"]]
    for kind in FEATURES:
        assert model.embed[kind].n_tokens == 2 * WINDOW // PATCH_FRAMES
    output = model(data, masks=model.token_masks(data, mask_generator(0, 1)))
    for modality, values in data.items():
        assert output.reconstructions[modality].shape == values.shape
        assert output.voxel_masks[modality].shape == values.shape
    assert set(output.loss_per_modality) == set(data)
    assert output.dummy_loss.item() == 0.0


def test_bold_and_its_stimuli_are_one_encoder_sequence():
    """The reconstruction of a BOLD window changes when only its stimulus features
    change (and not the other way round without a shared sequence): they attend to each
    other. T1w, a sequence of its own, does not change."""
    model = make_model(mask_ratio=0.0).eval()
    data = batch()
    changed = {**data, "video": data["video"] + 1.0}
    first, second = model(data), model(changed)
    assert not torch.allclose(first.reconstructions["bold"], second.reconstructions["bold"])
    assert not torch.allclose(first.reconstructions["text"], second.reconstructions["text"])
    assert torch.equal(first.reconstructions["T1w"], second.reconstructions["T1w"])
    # one BOLD sample's stimuli do not reach another sample
    one = {**data, "video": data["video"].clone()}
    one["video"][1] += 1.0
    third = model(one)
    assert torch.equal(third.reconstructions["bold"][0], first.reconstructions["bold"][0])
    assert not torch.allclose(third.reconstructions["bold"][1], first.reconstructions["bold"][1])


def test_masks_are_drawn_over_the_joint_sequence_deterministically():
    model = make_model()
    data = batch()
    masks = model.token_masks(data, mask_generator(3, 7, 0, 1))
    again = model.token_masks(data, mask_generator(3, 7, 0, 1))
    other = model.token_masks(data, mask_generator(3, 8, 0, 1))
    assert all(torch.equal(masks[m], again[m]) for m in masks)
    assert any(not torch.equal(masks[m], other[m]) for m in masks)
    for modality in ("bold", "video", "text"):
        n_tokens = model.embed[modality].n_tokens
        assert masks[modality].shape == (3, n_tokens)
        assert (masks[modality].sum(dim=1) == max(1, round(0.5 * n_tokens))).all()
    # one draw over the joint sequence: the scores split by modality
    counts = [model.embed[m].n_tokens for m in ("bold", "video", "text")]
    generator = mask_generator(3, 7, 0, 1)
    torch.rand(2, model.embed["T1w"].n_tokens, generator=generator)  # T1w comes first
    scores = torch.rand(3, sum(counts), generator=generator)
    for modality, part in zip(("bold", "video", "text"), scores.split(counts, dim=1), strict=True):
        ranks = part.argsort(dim=1).argsort(dim=1)
        assert torch.equal(masks[modality], ranks < max(1, round(0.5 * part.shape[1])))


def test_each_kinds_loss_is_the_normalized_mse_of_its_masked_values():
    model = make_model()
    data = batch()
    output = model(data, masks=model.token_masks(data, mask_generator(0, 1)))
    for kind in FEATURES:
        where = output.voxel_masks[kind].numpy()
        pred = output.reconstructions[kind].detach().numpy().astype(np.float64)[where]
        target = data[kind].numpy().astype(np.float64)[where]
        want = np.mean((pred - target) ** 2) / (target.var() + 1e-6)
        np.testing.assert_allclose(output.loss_per_modality[kind].item(), want, rtol=1e-5)
    total = sum(output.loss_per_modality.values())
    np.testing.assert_allclose(output.loss.item(), total.item(), rtol=1e-6)


def test_a_batch_without_bold_gives_the_stimulus_parameters_the_dummy_gradient():
    model = make_model()
    images = batch(n_bold=0)
    model(images).loss.backward()
    for modality in ("bold", "video", "text"):
        for param in model.modality_parameters(modality):
            np.testing.assert_allclose(param.grad.numpy(), SCALE, rtol=1e-6)
    absent = make_model(dummy=False)
    absent(images).loss.backward()
    assert all(p.grad is None for p in absent.modality_parameters("video"))


def test_every_parameter_gets_a_gradient_from_a_batch_with_stimuli():
    model = make_model()
    data = batch()
    model(data, masks=model.token_masks(data, mask_generator(0, 1))).loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert missing == []
    for kind in FEATURES:
        grads = [p.grad for p in model.modality_parameters(kind)]
        assert all(g.abs().sum() > 0 for g in grads)  # a real gradient, not the dummy's
        assert all(g.abs().max() > 10 * SCALE for g in grads)


def test_a_step_logs_losses_and_gradient_norms_of_the_stimulus_kinds():
    model = make_model()
    config = train_config(
        shapes=SHAPES, window=WINDOW, patch_frames=PATCH_FRAMES, stimuli=list(FEATURES)
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scheduler = build_scheduler(optimizer, total_steps=10, warmup_steps=0, min_lr_ratio=0.1)
    context = Context(0, 1, torch.device("cpu"))
    trainer = Trainer(model, model, optimizer, scheduler, context, config)
    result = optimizer_step(trainer, [batch()], step=1, log_norms=True)
    assert result.modalities == ["T1w", "bold", "video", "text"]
    assert set(result.loss_per_modality) == {"T1w", "bold", "video", "text"}
    assert result.samples == 5  # the BOLD windows count once
    for kind in FEATURES:
        assert result.module_norms[f"[{kind}] embed.{kind}"] > 0
        assert result.module_norms[f"[{kind}] head.{kind}"] > 0
    images_only = optimizer_step(trainer, [batch(n_bold=0)], step=2, log_norms=True)
    assert "[inactive] embed.video" in images_only.module_norms


def test_the_stimulus_token_bench_steps_the_default_video_model(tmp_path):
    """bench/bench_stimulus_tokens.py's measured process: the default video beside BOLD
    is 36 tokens of 256 features (27 BOLD tokens), and its steps are timed."""
    import json

    from conftest import run_bench

    done = run_bench("bench_stimulus_tokens.py", "--one", "256", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    measured = json.loads(done.stdout)
    assert measured["tokens"] == 27 + 36
    assert measured["work"] > 0 and measured["peak_mib"] > 0
