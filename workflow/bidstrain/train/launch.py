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

Exit status: the trainers'. torchrun itself exits 1 when a trainer fails, whatever its
code; run in this process, its failures are read back: when every failed trainer exited
75 (stopped by a stop signal after writing its checkpoint), the launcher exits 75, and 1
when one of them failed otherwise.

Signals: SIGTERM, SIGUSR1 and SIGINT (a Ctrl-C) to the launcher are passed on to its
trainers as SIGTERM, and the launcher goes on waiting for them, so their exit codes
decide its own. torchrun's own handling of SIGTERM and SIGINT is switched off
(``--signals-to-handle``): it would raise in the
launcher, stop waiting, lose the trainers' exit codes and kill them 30 s later
(``TORCH_ELASTIC_SHUTDOWN_TIMEOUT``) whatever SLURM's grace time. A signal that comes
before the trainers are started stops the launcher with status 75 (nothing to save), as
does one that ends trainers still importing, before their stop handler exists.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from bidstrain.errors import BidstrainError, run_cli
from bidstrain.train.stop import EXIT_INTERRUPTED, STOP_SIGNALS

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


#: The signals torchrun handles itself (its default less SIGTERM and SIGINT, which the
#: launcher passes on to the trainers as SIGTERM: see the module docstring).
TORCHRUN_SIGNALS = "SIGHUP,SIGQUIT"


def child_pids() -> list[int]:
    """Process ids of this process's children (the trainers torchrun started), from /proc."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue  # gone, or not readable
        if parent == os.getpid():
            children.append(int(stat.parent.name))
    return children


def run_torchrun(arguments: Sequence[str]) -> int:
    """Run torch's elastic launcher in this process; the exit status of its trainers."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    stopping = []

    def stop_trainers(signum: int, _frame: object) -> None:
        trainers = child_pids()
        if not trainers:
            raise SignalException(f"stopped by signal {signum}", sigval=signal.Signals(signum))
        stopping.append(signum)
        for pid in trainers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    for stop_signal in STOP_SIGNALS:
        signal.signal(stop_signal, stop_trainers)
    try:
        run(parse_args(["--signals-to-handle", TORCHRUN_SIGNALS, *arguments]))
    except ChildFailedError as error:
        # a trainer still importing when the stop came has no handler yet: SIGTERM ends it
        # (exit code -15) before it trained a step, with nothing to save
        interrupted = {EXIT_INTERRUPTED, -signal.SIGTERM} if stopping else {EXIT_INTERRUPTED}
        codes = {failure.exitcode for failure in error.failures.values()}
        return EXIT_INTERRUPTED if codes <= interrupted else 1
    except SignalException:
        return EXIT_INTERRUPTED  # before any trainer started, or SIGHUP/SIGQUIT
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
