"""How many batch buffers a loader process holds, and the bytes of a loader's buffers.

Without torch, so that the plan checks them at parse time against the training job's
memory (:mod:`bidstrain.train.buffers` allocates them).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from bidstrain.config import TrainConfig


def ring_slots(*, grad_accum_steps: int, prefetch_factor: int, workers: int) -> int:
    """Buffers a loader process needs so that no batch still in use is overwritten.

    The training step reads the ``grad_accum_steps`` batches of its group; the main
    process writes the next batch only when the step asks for it, so one more buffer is
    enough. A worker writes while the step runs: up to ``prefetch_factor`` batches beyond
    the newest one the step holds. On a GPU the copy from a page-locked buffer does not
    block, but every optimizer step ends by reading its losses back to the host
    (:func:`bidstrain.train.distributed.all_reduce_named`), so a buffer's copy is done
    before the main process writes it again.
    """
    return grad_accum_steps + 1 + (prefetch_factor if workers > 0 else 0)


def page_locked_bytes(nbytes: int) -> int:
    """Bytes torch's page-locked memory allocator takes for a block of ``nbytes``: the
    next power of two (its caching host allocator rounds every block up to one)."""
    return 0 if nbytes <= 0 else 1 << (nbytes - 1).bit_length()


def loader_bytes(
    train: TrainConfig, sample_values: int, *, workers: int, pinned: bool = False
) -> int:
    """Bytes of the batch buffers one loader allocates: in each of its processes (its
    ``workers``, or the main process without any) a ring of :func:`ring_slots` buffers of
    ``train.batch_size`` samples of the largest size, float32.

    With ``pinned`` (a GPU run with ``train.pin_memory``) the main process's buffers are
    page-locked, and the DataLoader copies every batch of a worker to page-locked memory:
    up to ``train.prefetch_factor`` batches per worker read ahead, and the
    ``train.grad_accum_steps`` batches the step holds; each page-locked block counts as
    :func:`page_locked_bytes` of a whole batch. The training loader runs
    ``train.num_workers`` workers, the validation loader none; a rank has both
    (:func:`~bidstrain.train.data.make_loader`). Not counted: the rest of the process
    (model, chunk cache).

    Parameters
    ----------
    train : TrainConfig
        ``train.batch_size``, ``train.grad_accum_steps``, ``train.prefetch_factor``.
    sample_values : int
        float32 values of the loader's largest sample: ``prod(train.shapes[m])`` for a
        volume, ``train.window x prod(train.shapes["bold"])`` for a BOLD voxel window,
        ``train.window x parcels`` for a parcel window.
    workers : int
        The loader's worker processes.
    pinned : bool
        Page-locked batches (a GPU run with ``train.pin_memory``).
    """
    slots = ring_slots(
        grad_accum_steps=train.optimizer.grad_accum_steps,
        prefetch_factor=train.loader.prefetch_factor,
        workers=workers,
    )
    batch = 4 * train.loader.batch_size * sample_values
    if workers == 0:
        return slots * (page_locked_bytes(batch) if pinned else batch)
    copies = workers * train.loader.prefetch_factor + train.optimizer.grad_accum_steps
    return workers * slots * batch + (copies * page_locked_bytes(batch) if pinned else 0)


def validity_bytes(voxels: int) -> int:
    """Bytes of a sample's validity bits on a grid of ``voxels`` (or parcels)
    (:mod:`bidstrain.train.validity`: one bit per voxel)."""
    return -(-voxels // 8)


def validity_words(voxels: int) -> int:
    """float32 words that hold a sample's :func:`validity_bytes`."""
    return -(-validity_bytes(voxels) // 4)


def largest_sample(train: TrainConfig, modalities: Iterable[str]) -> int:
    """float32 values of the largest sample of ``modalities`` from the settings alone,
    with its :func:`validity_words`: ``prod(train.shapes[m])`` for a volume, ``train.window
    x prod(train.shapes["bold"])`` for a BOLD voxel window (0 without modalities).

    BOLD is skipped with ``train.bold_input: parcels``: the parcel count is known only from
    the parcel stores (after normalization), and a parcel window (``train.window x
    parcels``: 20 frames of 1,000 parcels are 80 kB) is far below a volume of the model
    grid; with parcels alone the result is 0 (the buffers are negligible).
    """
    sizes = [0]
    for modality in modalities:
        voxels = math.prod(train.model.shapes[modality])
        if modality != "bold":
            sizes.append(voxels + validity_words(voxels))
        elif train.model.bold_input != "parcels":
            sizes.append(train.model.window * voxels + validity_words(voxels))
    return max(sizes)
