"""How a modality becomes tokens and comes back: one embedding and one head per kind.

Two kinds of input, each an embedding (``input -> (n, tokens, dim)``) and a head
(``(n, tokens, dim) -> input``) with the same three attributes the model relies on:
``n_tokens``, ``forward`` and, for the head, ``voxels`` (token flags as value flags,
shaped like the input: the values the masked loss counts).

- Images and voxel windows ``(n, W, x, y, z)`` (:class:`PatchEmbedding`,
  :class:`ReconstructionHead`): tubelets of ``patch_frames`` frames by ``patch**3``
  voxels; the frames of a tubelet are the input channels of a Conv3d, so one frame
  (``W = patch_frames = 1``) is exactly the 3D patch embedding of a single volume. Tokens
  are ordered time token first, then space token; one learned position embedding covers
  every (time, space) pair.
- Channel series ``(n, W, C)`` (:class:`SeriesEmbedding`, :class:`SeriesHead`): a token
  is ``patch_frames`` consecutive values of a group of consecutive channels, projected
  linearly, plus a learned group embedding and a learned time-position embedding.
  Parcel windows (``C`` = parcels) take one parcel a group (as BrainLM); stimulus
  features (``C`` = features) take up to ``train.patch_features`` features a group
  (:func:`channel_groups`), so that a 64x48 video is tens of tokens a frame, not
  thousands.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn


class PatchEmbedding(nn.Module):
    """Tubelets of ``patch_frames x patch**3`` plus a learned position embedding:
    ``(n, frames, x, y, z) -> (n, tokens, dim)``. Masked tokens (``masked``: bool
    ``(n, tokens)``) are replaced by ``mask_token`` before the position is added, so the
    encoder knows where each masked token is."""

    def __init__(
        self, shape: Sequence[int], patch: int, dim: int, frames: int = 1, patch_frames: int = 1
    ):
        super().__init__()
        self.grid = tuple(n // patch for n in shape)
        self.frames, self.patch_frames = frames, patch_frames
        self.time_tokens = frames // patch_frames
        self.n_tokens = self.time_tokens * math.prod(self.grid)
        self.proj = nn.Conv3d(patch_frames, dim, kernel_size=patch, stride=patch)
        self.position = nn.Parameter(torch.zeros(1, self.n_tokens, dim))
        nn.init.trunc_normal_(self.position, std=0.02)

    def forward(
        self,
        volume: torch.Tensor,
        masked: torch.Tensor | None = None,
        mask_token: torch.Tensor | None = None,
    ) -> torch.Tensor:
        n, tubes = volume.shape[0], volume.shape[2:]
        stacked = volume.reshape(n * self.time_tokens, self.patch_frames, *tubes)
        tokens = self.proj(stacked).flatten(2).transpose(1, 2).reshape(n, self.n_tokens, -1)
        if masked is not None:
            tokens = torch.where(masked[..., None], mask_token.to(tokens.dtype), tokens)
        return tokens + self.position


class ReconstructionHead(nn.Module):
    """Tokens back to voxels: a linear map to ``patch_frames * patch**3`` values per
    token, then the tubelets folded back: ``(n, tokens, dim) -> (n, frames, x, y, z)``."""

    def __init__(
        self, shape: Sequence[int], patch: int, dim: int, frames: int = 1, patch_frames: int = 1
    ):
        super().__init__()
        self.grid = tuple(n // patch for n in shape)
        self.patch, self.patch_frames = patch, patch_frames
        self.time_tokens = frames // patch_frames
        self.norm = nn.LayerNorm(dim)
        self.proj = nn.Linear(dim, patch_frames * patch**3)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        n, p, f, t, (gx, gy, gz) = (
            tokens.shape[0],
            self.patch,
            self.patch_frames,
            self.time_tokens,
            self.grid,
        )
        patches = self.proj(self.norm(tokens)).reshape(n, t, gx, gy, gz, f, p, p, p)
        patches = patches.permute(0, 1, 5, 2, 6, 3, 7, 4, 8)
        return patches.reshape(n, t * f, gx * p, gy * p, gz * p)

    def voxels(self, masked: torch.Tensor) -> torch.Tensor:
        """Token flags ``(n, tokens)`` as voxel flags ``(n, frames, x, y, z)``."""
        flags = masked.reshape(masked.shape[0], self.time_tokens, *self.grid)
        flags = flags.repeat_interleave(self.patch_frames, dim=1)
        for axis in (2, 3, 4):
            flags = flags.repeat_interleave(self.patch, dim=axis)
        return flags


def channel_groups(channels: int, per_token: int) -> tuple[int, int]:
    """How :class:`SeriesEmbedding` cuts ``channels`` into tokens of at most
    ``per_token`` consecutive channels: as few groups as that allows, of equal size, the
    last one zero-padded (fewer than ``groups`` padded channels).

    Returns
    -------
    groups, size : int
        ``ceil(channels / per_token)`` groups of ``ceil(channels / groups)`` channels.
    """
    groups = -(-channels // max(1, per_token))
    return groups, -(-channels // groups)


class SeriesEmbedding(nn.Module):
    """Tokens of ``patch_frames`` values of a group of channels: ``(n, frames, channels)
    -> (n, groups * frames / patch_frames, dim)``, group-major (all time tokens of group
    0 first), with ``patch_channels`` channels at most a group (:func:`channel_groups`;
    1: a token per channel). Each token is a linear projection of its values plus a
    learned group embedding and a learned time-position embedding; masked tokens are
    replaced by ``mask_token`` before both are added."""

    def __init__(
        self, channels: int, dim: int, frames: int, patch_frames: int, patch_channels: int = 1
    ):
        super().__init__()
        self.channels, self.patch_frames = channels, patch_frames
        self.groups, self.group_size = channel_groups(channels, patch_channels)
        self.time_tokens = frames // patch_frames
        self.n_tokens = self.groups * self.time_tokens
        self.proj = nn.Linear(patch_frames * self.group_size, dim)
        self.channel = nn.Parameter(torch.zeros(self.groups, 1, dim))
        self.time = nn.Parameter(torch.zeros(1, self.time_tokens, dim))
        nn.init.trunc_normal_(self.channel, std=0.02)
        nn.init.trunc_normal_(self.time, std=0.02)

    def forward(
        self,
        series: torch.Tensor,
        masked: torch.Tensor | None = None,
        mask_token: torch.Tensor | None = None,
    ) -> torch.Tensor:
        n, t, f = series.shape[0], self.time_tokens, self.patch_frames
        g, s = self.groups, self.group_size
        padded = nn.functional.pad(series, (0, g * s - self.channels))
        values = padded.reshape(n, t, f, g, s).permute(0, 3, 1, 2, 4).reshape(n, g, t, f * s)
        tokens = self.proj(values)  # (n, groups, time, dim)
        if masked is not None:
            flags = masked.reshape(n, g, t, 1)
            tokens = torch.where(flags, mask_token.to(tokens.dtype), tokens)
        return (tokens + self.channel + self.time).reshape(n, self.n_tokens, -1)


class SeriesHead(nn.Module):
    """Tokens back to values: ``(n, groups * time tokens, dim) -> (n, frames,
    channels)``, a linear map to the ``patch_frames x group`` values of each token (the
    groups of :class:`SeriesEmbedding`, padding dropped)."""

    def __init__(
        self, channels: int, dim: int, frames: int, patch_frames: int, patch_channels: int = 1
    ):
        super().__init__()
        self.channels, self.patch_frames = channels, patch_frames
        self.groups, self.group_size = channel_groups(channels, patch_channels)
        self.time_tokens = frames // patch_frames
        self.norm = nn.LayerNorm(dim)
        self.proj = nn.Linear(dim, patch_frames * self.group_size)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        values = self.proj(self.norm(tokens))
        return self._unfold(values.reshape(tokens.shape[0], self.groups, self.time_tokens, -1))

    def voxels(self, masked: torch.Tensor) -> torch.Tensor:
        """Token flags ``(n, tokens)`` as value flags ``(n, frames, channels)``."""
        n = masked.shape[0]
        flags = masked.reshape(n, self.groups, self.time_tokens, 1)
        return self._unfold(flags.expand(-1, -1, -1, self.patch_frames * self.group_size))

    def _unfold(self, values: torch.Tensor) -> torch.Tensor:
        """``(n, groups, time tokens, patch_frames * group)`` -> ``(n, frames, channels)``."""
        n, g, t, f, s = (
            values.shape[0],
            self.groups,
            self.time_tokens,
            self.patch_frames,
            self.group_size,
        )
        frames = values.reshape(n, g, t, f, s).permute(0, 2, 3, 1, 4).reshape(n, t * f, g * s)
        return frames[..., : self.channels]
