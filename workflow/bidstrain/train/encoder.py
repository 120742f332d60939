"""The shared transformer encoder, with activation checkpointing and regional compilation.

:class:`Encoder` is a ``torch.nn.TransformerEncoder`` (pre-norm layers, no dropout) with
the same parameters and state-dict keys, so checkpoints do not depend on either option:

- ``checkpointing`` (``train.activation_checkpointing``): while gradients are recorded,
  each layer runs under ``torch.utils.checkpoint.checkpoint`` (non-reentrant, which DDP
  and ``torch.compile`` support), so only the layer inputs are kept and the rest is
  recomputed in the backward pass;
- :meth:`Encoder.compile_layers` (``train.compile``): ``torch.compile`` of each layer in
  place (``nn.Module.compile``), the regional compilation PyTorch recommends for repeated
  blocks: one layer is compiled and reused, and the state-dict keys stay the same.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


class Encoder(nn.TransformerEncoder):
    """``depth`` pre-norm transformer layers of width ``dim`` with ``heads`` heads."""

    def __init__(self, dim: int, depth: int, heads: int, *, checkpointing: bool = False):
        layer = nn.TransformerEncoderLayer(
            dim, heads, dim_feedforward=4 * dim, dropout=0.0, batch_first=True, norm_first=True
        )
        super().__init__(layer, depth, enable_nested_tensor=False)
        self.checkpointing = checkpointing

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        with _without_fast_path():
            if not (self.checkpointing and torch.is_grad_enabled()):
                return super().forward(tokens)
            for layer in self.layers:
                tokens = checkpoint(layer, tokens, use_reentrant=False)
            return tokens

    def compile_layers(self, **options) -> None:
        """``torch.compile`` every layer in place (``options``: ``torch.compile``'s)."""
        for layer in self.layers:
            layer.compile(**options)


@contextmanager
def _without_fast_path() -> Iterator[None]:
    """Run the layers as training runs them, in evaluation too (validation, ``embed``).

    torch's inference fast path (evaluation mode without gradients) holds every attention
    matrix of the batch, batch x heads x tokens^2 floats, on the CPU: at 4,096 tokens and
    a batch of 4, 1 GiB against 50 MiB on training's path, and 3 times slower. A model
    that trained would then run out of memory at its first validation.
    """
    enabled = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(enabled)
