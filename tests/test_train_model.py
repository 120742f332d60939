"""The model, the dummy loss, freezing absent modalities, and one guarded optimizer step."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from bidstrain.io.store import open_store, to_grid
from bidstrain.train.data import VolumeDataset, dataset_statistics
from bidstrain.train.distributed import Context
from bidstrain.train.encoder import Encoder
from bidstrain.train.losses import baseline_loss, normalized_mse, sample_losses
from bidstrain.train.model import LossSettings, MultiModalAutoencoder
from bidstrain.train.resample import fit_to_shape
from bidstrain.train.schedule import build_scheduler
from bidstrain.train.step import GradientArrivals, Trainer, optimizer_step
from train_support import train_config, write_store

SHAPES = {"T1w": [8, 8, 8], "bold": [8, 8, 4], "dwi": [4, 8, 8]}
SCALE = 1e-7


def make_model(**loss) -> MultiModalAutoencoder:
    torch.manual_seed(0)
    model = train_config(shapes=SHAPES, mask_ratio=0.0).model
    return MultiModalAutoencoder(model, SHAPES, loss=LossSettings(dummy_scale=SCALE, **loss))


def bold_batch(seed: int = 0) -> dict[str, torch.Tensor]:
    return {"bold": torch.randn(2, 1, 8, 8, 4, generator=torch.Generator().manual_seed(seed))}


def make_trainer(model, **config) -> Trainer:
    config = train_config(**config)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.optimizer.lr, weight_decay=config.optimizer.weight_decay
    )
    scheduler = build_scheduler(
        optimizer,
        total_steps=1000,
        warmup_steps=config.optimizer.warmup_steps,
        min_lr_ratio=config.optimizer.min_lr_ratio,
    )
    return Trainer(model, model, optimizer, scheduler, Context(0, 1, torch.device("cpu")), config)


def test_reconstructions_have_the_input_shapes_and_parameters_group_by_module_name():
    model = make_model()
    batch = {m: torch.randn(3, 1, *shape) for m, shape in SHAPES.items()}
    output = model(batch)
    for modality, volume in batch.items():
        assert output.reconstructions[modality].shape == volume.shape
    assert set(output.loss_per_modality) == set(SHAPES)
    assert output.dummy_loss.item() == 0.0
    bold_ids = {id(p) for p in model.modality_parameters("bold")}
    names = {n for n, p in model.named_parameters() if id(p) in bold_ids}
    assert names and all(n.startswith(("embed.bold.", "head.bold.")) for n in names)


def test_with_single_modality_batches_every_parameter_gets_a_gradient_equal_to_the_scale():
    model = make_model()
    model(bold_batch()).loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    for modality in ("T1w", "dwi"):
        for param in model.modality_parameters(modality):
            torch.testing.assert_close(param.grad, torch.full_like(param, SCALE))
    assert model.head["bold"].proj.weight.grad.abs().max() > 100 * SCALE


def test_without_the_dummy_loss_absent_modalities_get_no_gradient():
    model = make_model(dummy_enabled=False)
    output = model(bold_batch())
    output.loss.backward()
    assert output.dummy_loss.item() == 0.0
    assert all(p.grad is None for p in model.modality_parameters("T1w"))


def test_gradient_arrivals_name_the_parameters_of_the_last_backward_only():
    """What the DDP check reads: a modality absent from the synchronizing micro-batch is
    missing even when an earlier micro-batch gave it a gradient."""
    model = make_model(dummy_enabled=False)
    arrivals = GradientArrivals(model)
    model({"T1w": torch.randn(2, 1, 8, 8, 8)}).loss.backward()
    arrivals.clear()
    model(bold_batch()).loss.backward()
    missing = set(arrivals.missing())
    assert missing == {
        n
        for n, _ in model.named_parameters()
        if n.startswith(("embed.T1w", "head.T1w", "embed.dwi", "head.dwi"))
    }
    assert model.embed["T1w"].proj.weight.grad is not None  # from the first backward


@pytest.mark.parametrize("freeze", [True, False])
def test_absent_modality_under_adamw_frozen_or_drifting(freeze):
    """The hazard: a constant dummy gradient of 1e-7 moves every absent parameter by about
    lr * g / (|g| + eps) = 0.9 x lr per step under Adam, all in the same direction."""
    model = make_model()
    lr = 1e-3
    trainer = make_trainer(
        model,
        lr=lr,
        weight_decay=0.0,
        warmup_steps=0,
        min_lr_ratio=1.0,
        clip_grad_norm=1e9,
        dummy_loss={"freeze_absent": freeze, "scale": SCALE},
    )
    before = torch.cat([p.detach().flatten().clone() for p in model.modality_parameters("T1w")])
    for step in range(50):
        optimizer_step(trainer, [bold_batch(step)], step=step + 1, log_norms=False)
    after = torch.cat([p.detach().flatten() for p in model.modality_parameters("T1w")])
    drift_per_step = (before - after) / 50
    if freeze:
        assert torch.equal(before, after)
    else:
        assert drift_per_step.min() > 0.85 * lr and drift_per_step.max() < 0.95 * lr


def test_logged_grad_norm_is_the_pre_clip_norm_computed_by_hand():
    model = make_model()
    reference = copy.deepcopy(model)
    batch = bold_batch()
    reference(batch).loss.backward()
    active = [p for m in ("bold",) for p in reference.modality_parameters(m)]
    active += list(reference.encoder.parameters())
    expected = torch.sqrt(sum((p.grad.double() ** 2).sum() for p in active)).item()
    trainer = make_trainer(model, clip_grad_norm=1e-3)
    result = optimizer_step(trainer, [batch], step=1, log_norms=True)
    assert result.grad_norm == pytest.approx(expected, rel=1e-5)
    assert result.grad_norm > 1e-3  # so clipping did act, after the norm was taken
    assert result.module_norms["[inactive] embed.T1w"] > 0
    assert result.module_norms["[bold] head.bold"] > 0
    assert result.modalities == ["bold"] and not result.skipped


def test_a_nan_batch_skips_the_step_and_leaves_weights_and_adam_untouched():
    model = make_model()
    trainer = make_trainer(model)
    batch = bold_batch()
    batch["bold"][1, 0, 2, 2, 2] = float("nan")
    before = copy.deepcopy(model.state_dict())
    result = optimizer_step(trainer, [batch], step=1, log_norms=False)
    assert result.skipped and not np.isfinite(result.grad_norm)
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name
    assert not trainer.optimizer.state
    assert all(p.grad is None for p in model.parameters())


def test_gradient_accumulation_averages_micro_batches():
    """Two micro-batches of 2 make the same step as one batch of 4 (plain MSE, SGD)."""
    batches = [bold_batch(1), bold_batch(2)]
    merged_batch = {"bold": torch.cat([b["bold"] for b in batches])}
    models = []
    for micro_batches in (batches, [merged_batch]):
        model = make_model(normalize="none")
        trainer = make_trainer(model, clip_grad_norm=1e9)
        trainer.optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
        trainer.scheduler = build_scheduler(
            trainer.optimizer, total_steps=10, warmup_steps=0, min_lr_ratio=1.0
        )
        result = optimizer_step(trainer, micro_batches, step=1, log_norms=False)
        assert result.samples == 4
        models.append(model)
    for a, b in zip(models[0].parameters(), models[1].parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_dataset_puts_voxels_on_the_grid_and_crops_or_pads(tmp_path):
    path = write_store(tmp_path / "bold.zarr", modality="bold", n_time=3, grid=(10, 12, 10))
    dataset = VolumeDataset({"bold": [path]}, {"bold": [8, 16, 10]})
    modality, volume = dataset[1]
    assert modality == "bold" and volume.shape == (8, 16, 10) and volume.dtype == np.float32
    assert np.all(volume[:, :2] == 0) and np.all(volume[:, -2:] == 0)  # padded
    from bidstrain.io.store import open_store, to_grid

    with open_store(path) as ds:
        full = to_grid(ds, ds["data"][1].values)
    np.testing.assert_array_equal(volume, fit_to_shape(full, (8, 16, 10)))
    np.testing.assert_array_equal(volume[:, 2:14], full[1:9])
    batch = dataset.batch([0, 2, 1])
    assert batch["bold"].shape == (3, 1, 8, 16, 10)
    with open_store(path) as ds:
        holds_data = fit_to_shape(to_grid(ds, np.ones(ds.sizes["voxel"])), (8, 16, 10)) > 0
    everything = np.stack([dataset[i][1] for i in range(3)]).astype(np.float64)
    counted = everything[:, holds_data]  # not the padding, nor the zeros outside the mask
    assert 0 < counted.shape[1] < holds_data.size
    mean, var = dataset_statistics(dataset)["bold"]
    assert mean == pytest.approx(counted.mean()) and var == pytest.approx(counted.var())


def test_activation_checkpointing_gives_the_same_loss_and_gradients():
    grads = []
    for checkpointing in (False, True):
        model = make_model()
        model.encoder.checkpointing = checkpointing
        model(bold_batch()).loss.backward()
        grads.append([p.grad.clone() for p in model.parameters() if p.grad is not None])
    for plain, recomputed in zip(*grads, strict=True):
        torch.testing.assert_close(plain, recomputed)


def test_evaluation_runs_the_layers_as_training_does():
    """torch's inference fast path would hold every attention matrix of the batch (a
    model that trains runs out of memory at its first validation); evaluation takes
    training's path, so it gives bit-identical outputs, and leaves torch's setting as it
    was."""
    encoder = Encoder(32, 2, 4).eval()
    tokens = torch.randn(3, 40, 32)
    with torch.no_grad():
        evaluated = encoder(tokens)
        fast = torch.nn.TransformerEncoder.forward(encoder, tokens)  # the fast path
        encoder.train()  # no dropout: training's path, without gradients
        trained = encoder(tokens)
    assert torch.equal(evaluated, trained)
    assert not torch.equal(fast, trained)  # the fast path is another computation
    assert torch.backends.mha.get_fastpath_enabled()


def test_the_loss_counts_the_masked_voxels_that_hold_data_only(tmp_path):
    """A 10x12x10 store (its mask inside) on a 8x16x8 grid: cropped on two axes, padded on
    one. The loss and the baseline count the masked tokens' voxels inside the store's
    mask, checked against the same computed in float64 with numpy; predictions outside
    it change nothing."""
    path = write_store(tmp_path / "bold.zarr", modality="bold", n_time=4, grid=(10, 12, 10))
    shape = (8, 16, 8)
    dataset = VolumeDataset({"bold": [path]}, {"bold": shape})
    config = train_config(shapes={"bold": list(shape)}, patch_size=4, mask_ratio=0.5).model
    torch.manual_seed(0)
    model = MultiModalAutoencoder(config, ["bold"], loss=LossSettings(dummy_enabled=False))
    batch = dataset.batch([0, 1, 2, 3])
    masks = model.token_masks(batch, torch.Generator().manual_seed(1))
    output = model(batch, masks=masks)

    with open_store(path) as ds:
        holds_data = fit_to_shape(to_grid(ds, np.ones(ds.sizes["voxel"])), shape) > 0
    tokens = masks["bold"].numpy().reshape(4, 1, 2, 4, 2)
    masked = tokens.repeat(4, axis=2).repeat(4, axis=3).repeat(4, axis=4)
    counted = masked & holds_data
    assert 0 < counted.sum() < masked.sum()  # masked tokens reach outside the data
    target = batch["bold"].numpy().astype(np.float64)[counted]
    error = output.reconstructions["bold"].detach().numpy().astype(np.float64)[counted] - target
    want = np.mean(error**2) / (target.var() + 1e-6)
    assert output.loss_per_modality["bold"].item() == pytest.approx(want, rel=1e-5)
    torch.testing.assert_close(output.voxel_masks["bold"].expand(4, 1, *shape).numpy(), counted)

    outside = torch.from_numpy(~holds_data)
    wild = output.reconstructions["bold"].detach().masked_fill(outside, 1e6)
    loss = normalized_mse(
        wild, batch["bold"], normalize="var", eps=1e-6, where=output.voxel_masks["bold"]
    )
    assert loss.item() == pytest.approx(want, rel=1e-5)
    plain = baseline_loss(batch["bold"], normalize="none", eps=0, where=output.voxel_masks["bold"])
    assert plain.item() == pytest.approx(target.var(), rel=1e-5)


def test_a_batch_with_nothing_to_count_scores_zero_and_still_back_propagates():
    model = make_model(dummy_enabled=False)
    batch = bold_batch()
    nothing = torch.zeros(2, 1, 8, 8, 4, dtype=torch.bool)
    output = model({**batch, "valid:bold": torch.zeros(2, 32, dtype=torch.uint8)})
    assert output.loss.item() == 0.0 and output.voxel_masks["bold"].shape == nothing.shape
    output.loss.backward()
    used = [*model.modality_parameters("bold"), *model.encoder.parameters()]
    assert all(p.grad is not None and not p.grad.any() for p in used)
    losses = sample_losses(
        output.reconstructions["bold"], batch["bold"], normalize="var", eps=1e-6, where=nothing
    )
    assert [value.tolist() for value in losses] == [[0.0, 0.0], [0.0, 0.0]]
