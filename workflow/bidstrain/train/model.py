"""A multi-modal masked autoencoder: one patch embedding and one reconstruction head per
modality around a shared transformer encoder.

Parameters belong to a modality through module names: ``embed[<modality>]`` (patch
projection and position embedding) and ``head[<modality>]``; ``encoder`` (and
``mask_token`` when masking) are shared. :meth:`MultiModalAutoencoder.modality_parameters`
is the one place that maps a modality to its parameters.

Token kinds (3D patches, tubelets of voxel windows, parcel series) live in
:mod:`bidstrain.train.tokens`.

Stimulus features (``train.stimuli``: video, audio, text, ``(n, window, features)`` for
each BOLD window) are series of tokens of ``train.patch_features`` consecutive features,
with their own ``embed[<kind>]`` and ``head[<kind>]``. A BOLD sample's tokens and its
stimulus tokens go through the encoder as one sequence (BOLD first, then the kinds in
:data:`STIMULUS_KINDS` order), so that each is reconstructed from the other's context;
T1w and DWI stay sequences of their own.

The loss is computed inside :meth:`~MultiModalAutoencoder.forward`, including the dummy
term for modalities absent from the batch, so that every parameter receives a gradient in
every step. DDP needs that: with ``find_unused_parameters=False`` a parameter without a
gradient raises "Expected to have finished reduction in the prior iteration", and a dummy
term added outside ``forward`` breaks ``find_unused_parameters=True`` ("marked ready
twice").
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from bidstrain.config import ModelConfig, TrainConfig
from bidstrain.errors import BidstrainError
from bidstrain.modalities import MODALITIES, STIMULUS_KINDS
from bidstrain.train.encoder import Encoder
from bidstrain.train.losses import normalized_mse
from bidstrain.train.tokens import (
    PatchEmbedding,
    ReconstructionHead,
    SeriesEmbedding,
    SeriesHead,
)
from bidstrain.train.validity import is_valid_key, split


@dataclass(frozen=True)
class LossSettings:
    """How :meth:`MultiModalAutoencoder.forward` turns reconstructions into a loss
    (``train.loss`` and ``train.dummy_loss``)."""

    normalize: str = "var"
    eps: float = 1e-6
    weights: Mapping[str, float] | None = None
    target_stats: Mapping[str, tuple[float, float]] | None = None
    dummy_enabled: bool = True
    dummy_scale: float = 1e-7


@dataclass
class ModelOutput:
    """What one forward pass returns.

    Attributes
    ----------
    loss : Tensor
        Weighted sum of the per-modality losses plus the dummy term (what backward uses).
    loss_per_modality : dict
        ``{modality: scalar tensor}`` for the modalities in the batch (unweighted).
    dummy_loss : Tensor
        The dummy term alone (0 when every modality is present or the dummy is disabled).
    reconstructions : dict
        ``{modality: tensor}`` shaped like the inputs.
    voxel_masks : dict
        ``{modality: bool tensor}`` broadcastable to the inputs, True on the values the
        loss counts: those that hold data (:mod:`bidstrain.train.validity`) and, under
        masking, of masked tokens; for the modalities with either (every value of the
        others counts).
    """

    loss: torch.Tensor
    loss_per_modality: dict[str, torch.Tensor]
    dummy_loss: torch.Tensor
    reconstructions: dict[str, torch.Tensor]
    voxel_masks: dict[str, torch.Tensor]


def mask_generator(seed: int, *keys: int) -> torch.Generator:
    """A CPU generator seeded by ``train.seed`` and ``keys`` (step, rank, micro-batch):
    the token masks are a function of where they are drawn, not of what was drawn
    before, so a run resumed on any number of restarts masks exactly as an uninterrupted
    one, on every rank."""
    state = np.random.SeedSequence([seed, *keys]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


class MultiModalAutoencoder(nn.Module):
    """Per-modality embeddings and heads around a shared transformer encoder.

    Parameters
    ----------
    model : ModelConfig
        ``train.shapes`` (each side a multiple of ``patch_size``), ``patch_size``,
        ``embed_dim``, ``depth``, ``heads`` and ``mask_ratio``: the fraction of tokens
        replaced by a learned mask token in training (0 disables masking and creates no
        mask token). The loss then counts the voxels of the masked tokens only: the
        identity is no solution, the model must predict from context.
        BOLD reads ``window`` frames in tokens of ``patch_frames`` frames, as voxel
        tubelets or (``bold_input: parcels``) as parcel series (:mod:`bidstrain.train.tokens`).
    modalities : sequence of str
        The modalities with an embedding and a head.
    loss : LossSettings
    n_parcels : int, optional
        Parcels of a parcel window (required when ``bold_input`` is ``parcels``).
    stimuli : mapping, optional
        ``{kind: features}`` of the stimulus kinds that come with BOLD windows
        (``train.stimuli``): tokens of ``patch_frames`` frames of ``patch_features``
        consecutive features.
    """

    def __init__(
        self,
        model: ModelConfig,
        modalities: Sequence[str],
        loss: LossSettings | None = None,
        n_parcels: int | None = None,
        stimuli: Mapping[str, int] | None = None,
    ):
        super().__init__()
        self.modalities = [m for m in MODALITIES if m in modalities]
        self.stimuli = [k for k in STIMULUS_KINDS if k in (stimuli or {})]
        if self.stimuli and "bold" not in self.modalities:
            raise BidstrainError(
                f"stimulus kinds {self.stimuli} come with BOLD windows, but the model has no "
                "BOLD (train.stimuli needs BOLD training stores)"
            )
        self.mask_ratio = model.mask_ratio
        self.loss_settings = loss or LossSettings()
        pairs = {m: _tokenizer(model, m, n_parcels) for m in self.modalities}
        for kind in self.stimuli:
            sizes = (
                stimuli[kind],
                model.embed_dim,
                model.window,
                model.patch_frames,
                model.patch_features,
            )
            pairs[kind] = (SeriesEmbedding(*sizes), SeriesHead(*sizes))
        self.embed = nn.ModuleDict({m: embed for m, (embed, _) in pairs.items()})
        self.head = nn.ModuleDict({m: head for m, (_, head) in pairs.items()})
        dim = model.embed_dim
        self.encoder = Encoder(dim, model.depth, model.heads)
        if model.mask_ratio > 0:
            self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))

    @property
    def inputs(self) -> list[str]:
        """Every modality with an embedding and a head: the image modalities, then the
        stimulus kinds."""
        return [*self.modalities, *self.stimuli]

    def sequence_tokens(self) -> list[dict[str, int]]:
        """The tokens of each encoder sequence of a sample (:func:`encoder_sequences`)."""
        return encoder_sequences({m: self.embed[m].n_tokens for m in self.inputs}, self.stimuli)

    def modality_parameters(self, modality: str) -> Iterator[nn.Parameter]:
        """Parameters that only ``modality`` uses: ``embed[modality]`` and ``head[modality]``."""
        yield from self.embed[modality].parameters()
        yield from self.head[modality].parameters()

    def parameter_groups(self) -> dict[str, tuple[str, list[nn.Parameter]]]:
        """``{name: (owner, parameters)}``, every parameter in one group, with owner a
        modality (or stimulus kind) or ``"shared"`` (the encoder, and the mask token when
        masking), for per-module gradient norms."""
        groups = {}
        for modality in self.inputs:
            groups[f"embed.{modality}"] = (modality, list(self.embed[modality].parameters()))
            groups[f"head.{modality}"] = (modality, list(self.head[modality].parameters()))
        groups["encoder"] = ("shared", list(self.encoder.parameters()))
        if hasattr(self, "mask_token"):
            groups["mask_token"] = ("shared", [self.mask_token])
        return groups

    def sequences(self, batch: Mapping[str, torch.Tensor]) -> list[list[str]]:
        """The modalities of ``batch`` whose tokens make one encoder sequence: BOLD with
        the stimulus kinds of the batch, each other modality alone, in batch order.

        Raises
        ------
        BidstrainError
            When the batch holds stimulus features without BOLD, or not one row per BOLD
            sample.
        """
        kinds = [k for k in self.stimuli if k in batch]
        if kinds and "bold" not in batch:
            raise BidstrainError(f"a batch with stimulus features {kinds} but no BOLD window")
        for kind in kinds:
            if batch[kind].shape[0] != batch["bold"].shape[0]:
                raise BidstrainError(
                    f"{batch[kind].shape[0]} {kind} windows for {batch['bold'].shape[0]} BOLD "
                    "windows: each BOLD sample carries its stimulus features"
                )
        return [
            [modality, *kinds] if modality == "bold" else [modality]
            for modality in batch
            if modality not in self.stimuli and not is_valid_key(modality)
        ]

    def token_masks(
        self, batch: Mapping[str, torch.Tensor], generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        """Which tokens to mask: per sample exactly ``round(mask_ratio * tokens)`` of each
        modality's tokens (at least one), bool ``(n, tokens)`` per modality; ``{}``
        without masking.

        The scores of one encoder sequence (:meth:`sequences`: BOLD and its stimulus
        tokens together) are drawn at once over the joint sequence, and each modality
        masks its lowest-scored tokens, so every modality keeps tokens to reconstruct and
        context to reconstruct them from; a sequence of one modality draws exactly as a
        model without stimuli.

        ``generator`` (a CPU generator, :func:`mask_generator`) gives the same masks on
        every call with the same seed: training and validation draw from one; by default
        the global torch RNG draws them.
        """
        if self.mask_ratio <= 0:
            return {}
        masks = {}
        for sequence in self.sequences(batch):
            counts = [self.embed[m].n_tokens for m in sequence]
            volume = batch[sequence[0]]
            if generator is None:
                scores = torch.rand(volume.shape[0], sum(counts), device=volume.device)
            else:
                scores = torch.rand(volume.shape[0], sum(counts), generator=generator)
            for modality, part in zip(sequence, scores.split(counts, dim=1), strict=True):
                n_masked = max(1, round(self.mask_ratio * part.shape[1]))
                ranks = part.argsort(dim=1).argsort(dim=1)
                masks[modality] = (ranks < n_masked).to(volume.device)
        return masks

    def forward(
        self,
        batch: Mapping[str, torch.Tensor],
        masks: Mapping[str, torch.Tensor] | None = None,
    ) -> ModelOutput:
        """Reconstruct every modality of ``batch`` (``{modality: (n, 1, x, y, z)}``; BOLD
        ``(n, window, x, y, z)`` or ``(n, window, parcels)``; stimulus kinds ``(n, window,
        features)``, one per BOLD sample), each encoder sequence (:meth:`sequences`) as
        its own sub-batch through the shared encoder, and compute the loss.

        ``masks`` (:meth:`token_masks`) masks those tokens; by default random ones are
        drawn in training mode, none in eval mode. The loss of a modality counts the
        values that hold data (the batch's :mod:`~bidstrain.train.validity` keys; every
        value without one) and, when masked, of its masked tokens only.
        """
        settings = self.loss_settings
        weights = settings.weights or {}
        stats = settings.target_stats or {}
        batch, valid = split(batch)
        if masks is None:
            masks = self.token_masks(batch) if self.training else {}
        reconstructions, losses, voxel_masks = {}, {}, {}
        mask_token = getattr(self, "mask_token", None)
        for sequence in self.sequences(batch):
            tokens = [self.embed[m](batch[m], masks.get(m), mask_token) for m in sequence]
            encoded = self.encoder(torch.cat(tokens, dim=1) if len(tokens) > 1 else tokens[0])
            parts = encoded.split([t.shape[1] for t in tokens], dim=1)
            for modality, part in zip(sequence, parts, strict=True):
                reconstructions[modality] = self.head[modality](part)
                counted = valid.get(modality)
                if modality in masks:
                    voxels = self.head[modality].voxels(masks[modality])
                    counted = voxels if counted is None else voxels & counted
                if counted is not None:
                    voxel_masks[modality] = counted
                losses[modality] = normalized_mse(
                    reconstructions[modality],
                    batch[modality],
                    normalize=settings.normalize,
                    eps=settings.eps,
                    target_stats=stats.get(modality),
                    where=voxel_masks.get(modality),
                )
        total = sum(weights.get(m, 1.0) * loss for m, loss in losses.items())
        dummy = self.dummy_loss(absent=[m for m in self.inputs if m not in batch])
        return ModelOutput(total + dummy, losses, dummy.detach(), reconstructions, voxel_masks)

    def encode(
        self,
        modality: str,
        volume: torch.Tensor,
        stimuli: Mapping[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """The pooled embedding of each sample, without masking: ``(n, 1, x, y, z)`` (or
        a BOLD window) ``-> (n, dim)``, the mean of the encoder's output tokens of
        ``modality``.

        ``stimuli`` (``{kind: (n, window, features)}``, the BOLD windows' features of the
        model's stimulus kinds) join the BOLD tokens in one sequence, as in training;
        the embedding is still the mean of the BOLD tokens' outputs.
        """
        batch = {modality: volume, **(stimuli or {})}
        (sequence,) = self.sequences(batch)
        tokens = [self.embed[m](batch[m]) for m in sequence]
        encoded = self.encoder(torch.cat(tokens, dim=1) if len(tokens) > 1 else tokens[0])
        return encoded[:, : tokens[0].shape[1]].mean(dim=1)

    def dummy_loss(self, absent: Sequence[str]) -> torch.Tensor:
        """``scale * sum`` of the parameters of the ``absent`` modalities: a gradient of
        exactly ``scale`` on each of their elements, so DDP sees every parameter used."""
        settings = self.loss_settings
        reference = next(self.parameters())
        dummy = torch.zeros((), dtype=torch.float32, device=reference.device)
        if not settings.dummy_enabled:
            return dummy
        for modality in absent:
            for param in self.modality_parameters(modality):
                dummy = dummy + settings.dummy_scale * param.sum()
        return dummy


def encoder_sequences(tokens: Mapping[str, int], kinds: Sequence[str]) -> list[dict[str, int]]:
    """The sequences the encoder reads of a sample, as tokens per modality: BOLD with the
    stimulus kinds of ``train.stimuli`` (:meth:`MultiModalAutoencoder.sequences`), each
    other modality alone.

    Parameters
    ----------
    tokens : mapping
        A sample's tokens per modality and stimulus kind.
    kinds : sequence of str
        The stimulus kinds whose tokens join BOLD's.
    """
    joined = [m for m in ("bold", *kinds) if m in tokens]
    alone = [{m: n} for m, n in tokens.items() if m not in joined]
    return alone + ([{m: tokens[m] for m in joined}] if joined else [])


def describe_sequence(sequence: Mapping[str, int]) -> str:
    """``26,640 tokens (bold 16, video 24,576, text 2,048)``."""
    parts = ", ".join(f"{m} {n:,}" for m, n in sequence.items())
    return f"{sum(sequence.values()):,} tokens ({parts})"


def _tokenizer(
    model: ModelConfig, modality: str, n_parcels: int | None
) -> tuple[nn.Module, nn.Module]:
    """The embedding and the head of ``modality``: BOLD reads windows, the rest volumes."""
    dim, patch = model.embed_dim, model.patch_size
    if modality != "bold":
        shape = model.shapes[modality]
        return PatchEmbedding(shape, patch, dim), ReconstructionHead(shape, patch, dim)
    model.check_window_tokens()
    frames, patch_frames = model.window, model.patch_frames
    if model.bold_input == "parcels":
        if n_parcels is None:
            raise BidstrainError(
                "train.bold_input is parcels but the number of parcels is unknown: "
                "build_module needs n_parcels (the parcel stores' parcel dimension)"
            )
        return (
            SeriesEmbedding(n_parcels, dim, frames, patch_frames),
            SeriesHead(n_parcels, dim, frames, patch_frames),
        )
    shape = model.shapes[modality]
    return (
        PatchEmbedding(shape, patch, dim, frames, patch_frames),
        ReconstructionHead(shape, patch, dim, frames, patch_frames),
    )


def build_module(
    config: TrainConfig,
    modalities: Sequence[str],
    target_stats=None,
    n_parcels=None,
    stimuli: Mapping[str, int] | None = None,
) -> MultiModalAutoencoder:
    """The model of the ``train`` settings ``config`` for ``modalities`` (on the CPU);
    ``target_stats``: the dataset statistics of ``train.loss.stats: dataset``;
    ``n_parcels``: the parcels of a parcel window (``train.bold_input: parcels``);
    ``stimuli``: the features of each kind of ``train.stimuli``.
    Training and :func:`bidstrain.train.description.load_model` build it here.

    Raises
    ------
    BidstrainError
        When ``train.patch_frames`` does not divide ``train.window``, or parcels are
        the BOLD input and ``n_parcels`` is not given.
    """
    settings = LossSettings(
        normalize=config.loss.normalize,
        eps=config.loss.eps,
        weights=config.loss.weights,
        target_stats=target_stats,
        dummy_enabled=config.dummy_loss.enabled,
        dummy_scale=config.dummy_loss.scale,
    )
    return MultiModalAutoencoder(
        config.model, modalities, loss=settings, n_parcels=n_parcels, stimuli=stimuli
    )
