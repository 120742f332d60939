"""BOLD windows: which consecutive frames of a store form the samples of an epoch.

With ``train.window`` = W a BOLD sample is W consecutive frames of one store. A store's
``data`` holds only the valid frames of its run; the frames time resampling left out
(``frame_valid``, :mod:`bidstrain.io.store`) cut it into *segments* of consecutive frames
(:func:`bidstrain.io.store.read_segments`), and a window lies within one segment: it never
crosses a left-out frame nor the run's end.

Windows of a segment of L frames, with stride S (``train.window_stride``; None = W):

* count: ``max(1, (L - W + 1) // S)`` when ``L >= W``, else 0 (the segment is too short
  and left out; :func:`window_counts`). The count does not depend on the epoch, so the
  number of samples, batches and steps of an epoch is known before training;
* starts: ``o + k * S`` for ``k < count``, with an offset ``o`` drawn uniformly from
  ``0 .. L - W - (count - 1) * S`` (the slack the windows leave) for every (seed, epoch,
  segment), so each epoch sees other windows (:func:`draw_offsets`). The offsets depend
  on the seed and the epoch alone: an exact resume replays the same windows.

W = 1 with stride 1 has no slack: the samples are the frames, as for T1w and DWI volumes.
"""

from __future__ import annotations

import numpy as np
import torch

#: Third seed word of the offsets' generator: a stream apart from the batch order's
#: ``(seed, epoch)``.
_OFFSET_STREAM = 0x57


def window_counts(lengths: np.ndarray, window: np.ndarray, stride: np.ndarray) -> np.ndarray:
    """Windows of each segment (module docstring): ``max(1, (L - W + 1) // S)`` for
    ``L >= W``, else 0.

    Parameters
    ----------
    lengths, window, stride : array of int
        Per segment: its frames, and the window and stride of its store (broadcast).
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    counts = np.maximum(1, (lengths - window + 1) // stride)
    return np.where(lengths >= window, counts, 0).astype(np.int64)


def draw_offsets(slack: np.ndarray, seed: int, epoch: int) -> np.ndarray:
    """The offset of every segment's first window in ``epoch``: uniform on
    ``0 .. slack`` (inclusive), from a generator seeded by ``(seed, epoch)`` alone (not
    the batch order's, so W = 1 draws the batch order of single frames)."""
    slack = np.asarray(slack, dtype=np.int64)
    if not slack.any():
        return np.zeros_like(slack)
    rng = np.random.default_rng([seed, epoch, _OFFSET_STREAM])
    return np.floor(rng.random(slack.size) * (slack + 1)).astype(np.int64)


def shuffle_time(windows: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """``windows`` with the frames of every sample permuted in time: one permutation of
    the frame axis (axis 1) per sample, drawn from ``generator``.

    The validation loss on these (``loss_shuffled_time`` of the validation records, next
    to ``loss``) against the loss on the windows in their true order shows whether a model
    uses the order of frames.

    Parameters
    ----------
    windows : Tensor, shape (n, W, ...)
        Voxel windows ``(n, W, x, y, z)`` or parcel windows ``(n, W, P)``.
    generator : torch.Generator
        A CPU generator; the same seed gives the same permutations.

    Returns
    -------
    Tensor
        A new tensor of the same shape, device and dtype.
    """
    n, frames = windows.shape[:2]
    order = torch.argsort(torch.rand(n, frames, generator=generator), dim=1)
    index = order.to(windows.device).view(n, frames, *([1] * (windows.ndim - 2)))
    return torch.take_along_dim(windows, index.expand_as(windows), dim=1)
