"""Start the trainer as the training job needs it: ``python -m bidstrain.train.launch``.

::

    python -m bidstrain.train.launch --nodes N --gpus-per-node G [--module M] -- <arguments>

``--module`` picks the job (``bidstrain.train``, the default, or ``bidstrain.encoding``).

- one node, at most one GPU: the trainer itself (``exec``), one process;
- one node, G GPUs: torch's elastic launcher (``torchrun --standalone``) run in this
  process, one trainer per GPU;
- N nodes (inside a SLURM allocation of N nodes): this process becomes ``srun`` (exec),
  which starts one launcher per node (``--ntasks-per-node=1``, ``--cpus-per-task`` passed
  explicitly: SLURM 22.05 no longer hands it down to job steps); each runs torchrun with
  ``--nnodes N --nproc-per-node G`` and a c10d rendezvous on the allocation's first node
  (its ``NodeAddr`` from ``scontrol``) with the job id as rendezvous id. This is the
  recipe of torchtitan's ``multinode_trainer.slurm``. The Snakemake rule marks the job
  with the SLURM executor plugin's ``mpi`` resource, which makes its job step run the
  rule's command as it is instead of wrapping it in ``srun -n1``
  (snakemake-executor-plugin-slurm-jobstep, ``run_job``: "No need to prepend srun, as
  this will happen inside of the job's shell command").

Exit status: the trainer's. torchrun itself exits 1 when a trainer fails, whatever its
code; run in this process, its failures are read back: when every failed trainer exited
75 (stopped by SIGTERM/SIGUSR1 after writing its checkpoint), the launcher exits 75 too.
SIGUSR1, which torchrun does not forward, is turned into SIGTERM for it.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from collections.abc import Sequence

from bidstrain.errors import BidstrainError, run_cli
from bidstrain.train.stop import EXIT_INTERRUPTED

#: Rendezvous port on the first node: 29500 plus the job id modulo this, so two training
#: jobs that share a first node do not meet at the same port.
PORT_SPREAD = 1000
_ON_NODE = "BIDSTRAIN_LAUNCH_ENDPOINT"
#: The jobs this launcher starts (``--module``): the trainer and the encoding model.
TRAINERS = ("bidstrain.train", "bidstrain.encoding")


def rendezvous_endpoint(nodelist: str, job_id: str) -> str:
    """``<address>:<port>`` of the first node of a SLURM allocation.

    Parameters
    ----------
    nodelist : str
        The job's node list (compressed, e.g. ``n[1-2]``).
    job_id : str
        ``SLURM_JOB_ID``.
    """
    hosts = _scontrol("show", "hostnames", nodelist).split()
    if not hosts:
        raise BidstrainError(f"SLURM_JOB_NODELIST {nodelist!r} names no node")
    fields = dict(
        item.split("=", 1)
        for item in _scontrol("show", "node", hosts[0], "-o").split()
        if "=" in item
    )
    address = fields.get("NodeAddr") or hosts[0]
    return f"{address}:{29500 + int(job_id) % PORT_SPREAD}"


def allocation(job_id: str) -> dict[str, str]:
    """``scontrol show job`` of the running job: ``NodeList``, ``CPUs/Task``...

    Read from SLURM rather than the environment: the executor plugin's job step removes
    the allocation's ``SLURM_*`` variables but the job id before running the rule.
    """
    fields = _scontrol("show", "job", "-o", job_id).split()
    return dict(item.split("=", 1) for item in fields if "=" in item)


def _scontrol(*args: str) -> str:
    try:
        return subprocess.run(
            ["scontrol", *args], check=True, capture_output=True, text=True
        ).stdout
    except (OSError, subprocess.CalledProcessError) as error:
        raise BidstrainError(f"scontrol {' '.join(args)} failed: {error}") from None


def torchrun_arguments(
    nodes: int,
    gpus_per_node: int,
    endpoint: str | None,
    job_id: str,
    trainer: Sequence[str],
    module: str = "bidstrain.train",
) -> list[str]:
    """Arguments of ``torch.distributed.run`` for one node of the job (``module``: the
    trainer, ``bidstrain.train`` or ``bidstrain.encoding``)."""
    processes = ["--nproc-per-node", str(max(1, gpus_per_node))]
    if nodes == 1:
        return ["--standalone", *processes, "-m", module, *trainer]
    rendezvous = ["--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint, "--rdzv-id", job_id]
    return ["--nnodes", str(nodes), *processes, *rendezvous, "-m", module, *trainer]


def run_torchrun(arguments: Sequence[str]) -> int:
    """Run torch's elastic launcher in this process; the exit status of its trainers."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    signal.signal(signal.SIGUSR1, lambda *_: os.kill(os.getpid(), signal.SIGTERM))
    try:
        run(parse_args(list(arguments)))
    except ChildFailedError as error:
        codes = {failure.exitcode for failure in error.failures.values()}
        return EXIT_INTERRUPTED if codes == {EXIT_INTERRUPTED} else 1
    except SignalException:
        # torchrun passed the signal to its trainers and waited for them: they stop at a
        # step boundary and write a checkpoint, as when signalled directly.
        return EXIT_INTERRUPTED
    return 0


def main(argv: Sequence[str] | None = None) -> None:
    """Launch the trainer (see the module docstring)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    split = argv.index("--") if "--" in argv else len(argv)
    parser = argparse.ArgumentParser(prog="python -m bidstrain.train.launch")
    parser.add_argument("--nodes", type=int, required=True)
    parser.add_argument("--gpus-per-node", type=int, required=True)
    parser.add_argument("--module", default="bidstrain.train", choices=TRAINERS)
    args = parser.parse_args(argv[:split])
    trainer = argv[split + 1 :]
    if args.nodes == 1 and args.gpus_per_node <= 1:
        os.execv(sys.executable, [sys.executable, "-m", args.module, *trainer])
    job_id = os.environ.get("SLURM_JOB_ID", "0")
    if args.nodes > 1 and _ON_NODE not in os.environ:
        if "SLURM_JOB_ID" not in os.environ:
            raise BidstrainError(
                f"resources.train.nodes is {args.nodes}: run inside a SLURM allocation"
            )
        job = allocation(job_id)
        os.environ[_ON_NODE] = rendezvous_endpoint(job["NodeList"], job_id)
        cpus = job.get("CPUs/Task", "1")
        srun = ["srun", f"--nodes={args.nodes}", "--ntasks-per-node=1", f"--cpus-per-task={cpus}"]
        os.execvp(
            "srun", [*srun, "--kill-on-bad-exit=1", sys.executable, "-m", __spec__.name, *argv]
        )
    endpoint = os.environ.get(_ON_NODE)
    sys.exit(
        run_torchrun(
            torchrun_arguments(
                args.nodes, args.gpus_per_node, endpoint, job_id, trainer, args.module
            )
        )
    )


if __name__ == "__main__":
    run_cli(main)
