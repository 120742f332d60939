"""Tokens of voxel windows (tubelets) and parcel windows (parcel series): shapes, the
fold back, the masked values, and the same model as before for single frames."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from bidstrain.errors import BidstrainError
from bidstrain.train.model import build_module
from bidstrain.train.tokens import (
    PatchEmbedding,
    ReconstructionHead,
    SeriesEmbedding,
    SeriesHead,
    channel_groups,
)
from train_support import train_config

SHAPES = {"T1w": [8, 8, 8], "bold": [8, 8, 4], "dwi": [4, 8, 8]}


def window_model(**model):
    torch.manual_seed(0)
    return build_module(train_config(shapes=SHAPES, **model), ["T1w", "bold"], n_parcels=5)


def test_single_frames_keep_the_parameter_names_and_shapes_of_a_volume_model():
    frame = window_model()
    names = {name: tuple(p.shape) for name, p in frame.named_parameters()}
    assert names["embed.bold.proj.weight"] == (16, 1, 4, 4, 4)
    assert names["embed.bold.position"] == (1, 2 * 2 * 1, 16)
    assert names["head.bold.proj.weight"] == (4**3, 16)
    for modality in ("T1w", "bold"):
        assert names[f"embed.{modality}.proj.weight"][1] == 1


def test_patch_embedding_of_one_frame_is_the_conv3d_of_the_volume():
    torch.manual_seed(1)
    embed = PatchEmbedding([8, 8, 4], 4, 16)
    volume = torch.randn(3, 1, 8, 8, 4)
    expected = embed.proj(volume).flatten(2).transpose(1, 2) + embed.position
    torch.testing.assert_close(embed(volume), expected)


def test_tubelet_tokens_are_float64_dot_products_in_time_then_space_order():
    torch.manual_seed(2)
    frames, pf, patch, shape = 6, 2, 4, (8, 4, 4)
    embed = PatchEmbedding(shape, patch, 8, frames, pf)
    window = torch.randn(2, frames, *shape)
    tokens = embed(window).detach().double().numpy()
    w = embed.proj.weight.detach().double().numpy()  # (dim, pf, p, p, p)
    b = embed.proj.bias.detach().double().numpy()
    pos = embed.position.detach().double().numpy()[0]
    x = window.double().numpy()
    assert tokens.shape == (2, 3 * 2, 8)
    for t in range(3):
        for gx in range(2):
            tube = x[:, t * pf : (t + 1) * pf, gx * patch : (gx + 1) * patch]
            expected = np.einsum("nfxyz,dfxyz->nd", tube, w) + b + pos[t * 2 + gx]
            np.testing.assert_allclose(tokens[:, t * 2 + gx], expected, atol=1e-5)


def test_tubelet_head_folds_each_token_onto_its_frames_and_voxels():
    frames, pf, patch, shape = 4, 2, 2, (4, 2, 2)
    head = ReconstructionHead(shape, patch, 4, frames, pf)
    masked = torch.zeros(1, 2 * 2, dtype=torch.bool)
    masked[0, 3] = True  # time token 1, space token 1
    flags = head.voxels(masked)[0].numpy()
    expected = np.zeros((frames, *shape), dtype=bool)
    expected[2:4, 2:4] = True
    np.testing.assert_array_equal(flags, expected)
    # The head writes token k's values exactly where voxels() flags token k.
    with torch.no_grad():
        head.norm.weight.zero_()
        head.norm.bias.fill_(1.0)
        head.proj.weight.zero_()
        head.proj.bias.copy_(torch.arange(pf * patch**3, dtype=torch.float32))
    tokens = torch.zeros(1, 4, 4)
    out = head(tokens)[0].detach().numpy()
    tube = np.arange(pf * patch**3, dtype=np.float32).reshape(pf, patch, patch, patch)
    np.testing.assert_array_equal(out[2:4, 2:4], tube)
    np.testing.assert_array_equal(out[0:2, 0:2], tube)


def test_series_head_and_flags_put_each_token_on_its_parcel_and_frames():
    frames, pf, parcels = 4, 2, 3
    head = SeriesHead(parcels, 4, frames, pf)
    masked = torch.zeros(1, parcels * 2, dtype=torch.bool)
    masked[0, 1 * 2 + 1] = True  # parcel 1, time token 1
    expected = np.zeros((frames, parcels), dtype=bool)
    expected[2:4, 1] = True
    np.testing.assert_array_equal(head.voxels(masked)[0].numpy(), expected)
    with torch.no_grad():
        head.norm.weight.zero_()
        head.norm.bias.fill_(1.0)
        head.proj.weight.zero_()
        head.proj.bias.copy_(torch.tensor([10.0, 20.0]))
    out = head(torch.zeros(1, parcels * 2, 4))[0].detach().numpy()
    np.testing.assert_array_equal(out, np.tile([[10.0], [20.0], [10.0], [20.0]], (1, parcels)))


@pytest.mark.parametrize(
    ("channels", "per_token", "expected"),
    [(9216, 256, (36, 256)), (120, 256, (1, 120)), (300, 256, (2, 150)), (7, 1, (7, 1))],
)
def test_channel_groups_are_as_few_as_allowed_and_of_equal_size(channels, per_token, expected):
    groups, size = channel_groups(channels, per_token)
    assert (groups, size) == expected
    assert groups * size - channels < groups  # padding: less than one channel a group


@pytest.mark.parametrize(
    ("frames", "pf", "channels", "per_token", "counts"),
    [
        (6, 3, 4, 1, (4, 1, 8)),  # parcels: a parcel a token
        (4, 2, 7, 3, (3, 3, 6)),  # features in groups of 3: [0-2], [3-5], [6 + 2 zeros]
    ],
    ids=["parcels", "feature-groups"],
)
def test_series_tokens_are_float64_projections_plus_group_and_time_embeddings(
    frames, pf, channels, per_token, counts
):
    torch.manual_seed(3)
    embed = SeriesEmbedding(channels, 8, frames, pf, per_token)
    groups, size, _ = counts
    assert (embed.groups, embed.group_size, embed.n_tokens) == counts
    series = torch.randn(2, frames, channels)
    tokens = embed(series).detach().double().numpy()
    w = embed.proj.weight.detach().double().numpy()
    b = embed.proj.bias.detach().double().numpy()
    group = embed.channel.detach().double().numpy()[:, 0]
    time = embed.time.detach().double().numpy()[0]
    padding = np.zeros((2, frames, groups * size - channels))
    x = np.concatenate([series.double().numpy(), padding], axis=2)
    steps = frames // pf
    for g in range(groups):
        for t in range(steps):
            values = x[:, t * pf : (t + 1) * pf, g * size : (g + 1) * size].reshape(2, -1)
            expected = values @ w.T + b + group[g] + time[t]
            np.testing.assert_allclose(tokens[:, g * steps + t], expected, atol=1e-5)


def test_grouped_head_and_flags_put_each_token_on_its_features_and_frames():
    frames, pf, features, per_token = 4, 2, 5, 3  # groups [0-2], [3-4 + 1 zero]
    head = SeriesHead(features, 4, frames, pf, per_token)
    masked = torch.zeros(1, 2 * 2, dtype=torch.bool)
    masked[0, 1 * 2 + 0] = True  # group 1, time token 0
    expected = np.zeros((frames, features), dtype=bool)
    expected[0:2, 3:5] = True
    np.testing.assert_array_equal(head.voxels(masked)[0].numpy(), expected)
    with torch.no_grad():
        head.norm.weight.zero_()
        head.norm.bias.fill_(1.0)
        head.proj.weight.zero_()
        head.proj.bias.copy_(torch.arange(6.0))  # (frame 0: 0 1 2), (frame 1: 3 4 5)
    out = head(torch.zeros(1, 4, 4))[0].detach().numpy()
    np.testing.assert_array_equal(out[0], [0, 1, 2, 0, 1])
    np.testing.assert_array_equal(out[1], [3, 4, 5, 3, 4])
    np.testing.assert_array_equal(out[2:], out[:2])


def test_each_token_reads_exactly_the_values_its_head_writes():
    frames, pf, features, per_token = 6, 3, 10, 4  # 3 groups of 4 (2 padded), 2 time tokens
    embed = SeriesEmbedding(features, 4, frames, pf, per_token)
    head = SeriesHead(features, 4, frames, pf, per_token)
    series = torch.randn(1, frames, features, requires_grad=True)
    tokens = embed(series)
    for k in range(embed.n_tokens):
        (read,) = torch.autograd.grad(tokens[0, k].sum(), series, retain_graph=True)
        flags = torch.zeros(1, embed.n_tokens, dtype=torch.bool)
        flags[0, k] = True
        np.testing.assert_array_equal(read[0].ne(0).numpy(), head.voxels(flags)[0].numpy())
    covered = head.voxels(torch.ones(1, embed.n_tokens, dtype=torch.bool))
    assert covered.all()  # every feature of every frame in some token


@pytest.mark.parametrize("bold_input", ["voxels", "parcels"])
def test_windows_train_with_masked_loss_dummy_and_encode(bold_input):
    model = window_model(window=4, patch_frames=2, bold_input=bold_input, mask_ratio=0.5)
    shape = (2, 4, *SHAPES["bold"]) if bold_input == "voxels" else (2, 4, 5)
    window = torch.randn(*shape)
    output = model({"bold": window})
    assert output.reconstructions["bold"].shape == window.shape
    flags = output.voxel_masks["bold"]
    assert flags.shape == window.shape
    n_tokens = model.embed["bold"].n_tokens
    assert flags.sum().item() == 2 * round(0.5 * n_tokens) * flags[0].numel() // n_tokens
    rec = output.reconstructions["bold"].detach().double()[flags]
    target = window.double()[flags]
    expected = ((rec - target) ** 2).mean() / (target.var(unbiased=False) + 1e-6)
    assert output.loss_per_modality["bold"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert model.encode("bold", window).shape == (2, 16)
    output.loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    t1w_grad = [p.grad for p in model.modality_parameters("T1w")]
    assert all(torch.allclose(g, torch.full_like(g, 1e-7)) for g in t1w_grad)


def test_patch_frames_must_divide_the_window_and_parcels_need_their_number():
    config = train_config(shapes=SHAPES, window=5, patch_frames=2)
    with pytest.raises(BidstrainError, match="patch_frames"):
        build_module(config, ["bold"])
    config = train_config(shapes=SHAPES, bold_input="parcels")
    with pytest.raises(BidstrainError, match="n_parcels"):
        build_module(config, ["bold"])
