"""An allocation that fails while the model runs, told as what to change.

torch raises :class:`torch.OutOfMemoryError` when a GPU (or another accelerator) has no
memory left, and a plain ``RuntimeError`` (``DefaultCPUAllocator: can't allocate
memory``) on the CPU; either way its traceback names neither the sequence length nor the
settings behind it. :func:`out_of_memory_explained` turns both into a
:class:`~bidstrain.errors.BidstrainError` that does, so a job's log ends with one line a
user can act on.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from bidstrain.errors import BidstrainError
from bidstrain.train.model import MultiModalAutoencoder, describe_sequence

#: What torch's CPU allocator says when an allocation fails.
CPU_OUT_OF_MEMORY = "can't allocate memory"
#: Characters of torch's own message kept in the error.
TORCH_MESSAGE_CHARS = 300


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is torch's report of an allocation that failed."""
    return isinstance(error, torch.OutOfMemoryError) or (
        isinstance(error, RuntimeError) and CPU_OUT_OF_MEMORY in str(error)
    )


@contextmanager
def out_of_memory_explained(
    model: MultiModalAutoencoder, batch_size: int, batch_key: str, resources: str
) -> Iterator[None]:
    """Raise an allocation failure of the block as a :class:`BidstrainError` that names the
    model's longest encoder sequence, the batch and the settings that shrink them.

    Parameters
    ----------
    model : MultiModalAutoencoder
        The model that runs in the block.
    batch_size : int
        Samples the model reads at once, set by the config key ``batch_key``.
    batch_key : str
        ``train.batch_size`` or ``embed.batch_size``.
    resources : str
        The ``resources`` section of the job (``train``, ``embed_images``).
    """
    try:
        yield
    except RuntimeError as error:
        if not is_out_of_memory(error):
            raise
        said = " ".join(str(error).split())[:TORCH_MESSAGE_CHARS]
        longest = max(model.sequence_tokens(), key=lambda sequence: sum(sequence.values()))
        shorter = "a larger train.patch_size or train.patch_frames"
        if model.stimuli:
            shorter += (
                "; a larger train.patch_features, or fewer stimulus features: a smaller "
                "stimuli.video_size, fewer stimuli.delays or stimuli.text_n_features"
            )
        accumulate = (
            " (a larger train.grad_accum_steps keeps the batch the optimizer sees)"
            if batch_key == "train.batch_size"
            else ""
        )
        raise BidstrainError(
            f"out of memory ({said}). The model's longest encoder sequence is "
            f"{describe_sequence(longest)}, read {batch_size} samples at a time "
            f"({batch_key}): attention's memory grows with the square of a sequence's "
            f"length and with the batch. Shorten the sequences ({shorter}), lower "
            f"{batch_key}{accumulate}, or run it with more memory (resources.{resources}"
            ".mem_mb asks SLURM for more; a GPU with more memory)"
        ) from None
