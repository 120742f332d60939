"""Process group, device and collectives: the only module that talks to
``torch.distributed``.

A run started by ``torchrun`` (``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` in the environment)
joins a process group, NCCL on GPUs and gloo on CPUs; a plain ``python -m bidstrain.train``
is a single process and every collective here is then the identity.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.distributed as dist

LOG = logging.getLogger("bidstrain.train")


@dataclass(frozen=True)
class Context:
    """Where this process trains: its rank, the number of ranks, and its device."""

    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Rank 0 writes the outputs and the log lines."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """Whether more than one rank trains (collectives are needed)."""
        return self.world_size > 1


def init() -> Context:
    """Join the process group when launched by ``torchrun`` and pick the device.

    CUDA when torch sees a GPU, else the CPU. A run planned for GPUs (more than one rank,
    or a GPU allocated through ``CUDA_VISIBLE_DEVICES``) on a machine where torch sees none
    is logged and trains on the CPU.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if torch.cuda.is_available():
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
        if world_size > 1 or os.environ.get("CUDA_VISIBLE_DEVICES"):
            LOG.warning(
                "%d rank(s) planned with GPUs but torch sees no CUDA device (torch %s, "
                "CUDA_VISIBLE_DEVICES=%s): training on the CPU",
                world_size,
                torch.__version__,
                os.environ.get("CUDA_VISIBLE_DEVICES", "unset"),
            )
    LOG.info(
        "rank %d of %d on node %s (%s)",
        rank,
        world_size,
        os.environ.get("SLURMD_NODENAME", socket.gethostname()),
        device,
    )
    if rank != 0:
        logging.getLogger("bidstrain").setLevel(logging.WARNING)  # rank 0 tells the progress
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Context(rank=rank, world_size=world_size, device=device)


def shutdown(context: Context) -> None:
    """Leave the process group (a no-op for a single process)."""
    if context.distributed and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce(tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """Reduce ``tensor`` in place across ranks (``"sum"`` or ``"max"``) and return it."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor, op={"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}[op])
    return tensor


def all_reduce_named(
    values: Mapping[str, torch.Tensor | float], device: torch.device, op: str = "sum"
) -> dict[str, float]:
    """Reduce named scalars across ranks with one collective and bring them to the host.

    Parameters
    ----------
    values : mapping
        ``{name: scalar}`` (0-d tensors or numbers); every rank passes the same names.
    device : torch.device
        Where the packed tensor lives (the process group's device).
    op : {"sum", "max"}

    Returns
    -------
    dict
        ``{name: reduced value}`` as float64-exact Python floats (one host sync).
    """
    names = sorted(values)
    packed = torch.stack(
        [torch.as_tensor(values[name], dtype=torch.float64, device=device) for name in names]
    )
    all_reduce(packed, op)
    return dict(zip(names, packed.tolist(), strict=True))


def barrier(context: Context) -> None:
    """Wait for every rank (a no-op for a single process)."""
    if context.distributed and dist.is_initialized():
        dist.barrier()
