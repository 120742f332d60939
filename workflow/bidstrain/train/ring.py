"""How much memory the training loader's batch buffers take (:mod:`.buffers`), from the
settings alone: without torch, so that the plan can check it at parse time."""

from __future__ import annotations

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


def loader_buffer_bytes(train: TrainConfig, sample_values: int, workers: int | None = None) -> int:
    """Bytes of the batch buffers one rank's loader allocates.

    Each loader process (the main process, or each of ``train.num_workers`` workers) makes
    a ring of :func:`ring_slots` buffers of ``train.batch_size`` samples of the largest
    sample's ``sample_values`` float32 values. With BOLD windows this grows with
    ``train.window`` and can exceed a node's memory: 8 workers reading 16 windows of 20
    frames on the MNI 2 mm grid hold 63 GB.

    Parameters
    ----------
    train : TrainConfig
    sample_values : int
        float32 values of the largest sample (a BOLD window: ``window x`` its grid).
    workers : int, optional
        Loader processes other than the main one; default ``train.num_workers``.
    """
    workers = train.loader.num_workers if workers is None else workers
    slots = ring_slots(
        grad_accum_steps=train.optimizer.grad_accum_steps,
        prefetch_factor=train.loader.prefetch_factor,
        workers=workers,
    )
    return max(workers, 1) * slots * train.loader.batch_size * sample_values * 4
