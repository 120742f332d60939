"""The SLURM test cluster of tests/slurm_cluster.sh runs real batch jobs with fake GPUs, on
its one-node default partition and on its partition of two nodes; only the tests that need
it start it."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, SLURM_FIXTURES, snakemake_env


def _env_file(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)


def _sbatch_wait(*options: str, script: str, workdir: Path) -> str:
    """Run ``script`` as a batch job (``sbatch --wait``) in ``workdir``; its job id."""
    result = subprocess.run(
        [
            "sbatch",
            "--wait",
            "--parsable",
            *options,
            "--time=5",
            "--mem=100",
            f"--output={workdir / 'slurm-%j.out'}",
            f"--chdir={workdir}",
            "--wrap",
            script,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, f"sbatch failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout.strip().split(";")[0]


def _squeue_state(job_id: str) -> str:
    """The job's state as squeue lists it, finished jobs included (MinJobAge)."""
    return subprocess.run(
        ["squeue", "--states=all", "--noheader", "--format=%T", "--jobs", job_id],
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout.strip()


@pytest.mark.slurm
def test_gpu_batch_job_runs_with_slurm_allocation(slurm_cluster, tmp_path):
    out = tmp_path / "job.env"
    step = tmp_path / "step.env"
    # The batch script records its environment, then runs a job step (srun) that
    # records its own: srun inside a job must find the cluster's config too.
    script = (
        f"env | grep -E '^(SLURM_JOB_ID|SLURM_JOB_PARTITION|CUDA_VISIBLE_DEVICES)=' > {out}; "
        f"srun -n1 env | grep -E '^(SLURM_STEP_ID|CUDA_VISIBLE_DEVICES)=' > {step}"
    )
    job_id = _sbatch_wait(
        f"--partition={slurm_cluster['partition']}", "--gres=gpu:1", script=script, workdir=tmp_path
    )

    env = _env_file(out)
    assert env["SLURM_JOB_ID"] == job_id
    assert env["SLURM_JOB_PARTITION"] == slurm_cluster["partition"]
    # SLURM itself exports the GPU it allocated (one of the two fake GPUs: 0 or 1).
    assert env["CUDA_VISIBLE_DEVICES"] in {"0", "1"}

    step_env = _env_file(step)
    assert step_env["SLURM_STEP_ID"] == "0"
    assert step_env["CUDA_VISIBLE_DEVICES"] == env["CUDA_VISIBLE_DEVICES"]

    # The finished job stays visible to squeue (MinJobAge): the snakemake executor reads
    # job states from squeue because there is no accounting database for sacct.
    assert _squeue_state(job_id) == "COMPLETED"


@pytest.mark.slurm
def test_two_node_job_runs_a_task_on_each_node_with_its_own_gpu(slurm_two_nodes, tmp_path):
    nodes = slurm_two_nodes["nodes"]
    # Each node of the partition offers one GPU of its own.
    offered = subprocess.run(
        ["sinfo", "--noheader", "--Node", f"--partition={slurm_two_nodes['partition']}"]
        + ["--format=%N %G"],
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout
    assert dict(line.split() for line in offered.splitlines()) == {n: "gpu:1" for n in nodes}

    # What a multi-node training job does: the head node from the allocation's node list,
    # then one task per node through srun, each recording where it runs and its GPU.
    script = (
        'scontrol show hostnames "$SLURM_JOB_NODELIST" > hostnames; '
        "srun bash -c 'echo $SLURMD_NODENAME $SLURM_NODEID $CUDA_VISIBLE_DEVICES "
        "> task-$SLURM_PROCID'"
    )
    job_id = _sbatch_wait(
        f"--partition={slurm_two_nodes['partition']}",
        "--nodes=2",
        "--ntasks-per-node=1",
        f"--gpus-per-node={slurm_two_nodes['gpus_per_node']}",
        script=script,
        workdir=tmp_path,
    )

    assert (tmp_path / "hostnames").read_text().split() == nodes
    tasks = sorted((tmp_path / f"task-{rank}").read_text().split() for rank in (0, 1))
    # One task on each node (SLURMD_NODENAME differs), each with that node's one GPU.
    assert tasks == [[nodes[0], "0", "0"], [nodes[1], "1", "0"]]
    assert _squeue_state(job_id) == "COMPLETED"


@pytest.mark.integration
def test_tests_outside_the_slurm_marker_do_not_start_the_cluster():
    """Only tests marked ``slurm`` set up the fixtures that start the cluster: the plan of
    all the others names none of them (and a test that uses one without the marker stops
    the collection: ``conftest.pytest_collection_modifyitems``)."""
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "--setup-plan", "-p", "no:cacheprovider"]
        + ["-m", "not slurm", str(REPO / "tests")],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "tests/test_bids.py::" in result.stdout
    set_up = set(re.findall(r"^\s*SETUP\s+[SPMCF] (\w+)", result.stdout, flags=re.MULTILINE))
    assert {"demo_bids", "tmp_path"} <= set_up
    assert not set_up & (SLURM_FIXTURES | {"slurm_cluster_up"})


@pytest.mark.slurm
def test_only_snakemake_runs_on_slurm_ask_the_controller(slurm_cluster):
    """The SLURM executor plugin runs ``scontrol show config`` on every snakemake start
    (for MinJobAge). A run on SLURM gets the cluster's answer; a run without SLURM gets a
    configuration on which scontrol stops before it contacts any controller (with
    /etc/slurm/slurm.conf and no controller answering it would wait 10 s)."""
    command = ["scontrol", "show", "config"]
    slurm = subprocess.run(
        command, capture_output=True, text=True, timeout=60, env=snakemake_env(uses_slurm=True)
    )
    assert slurm.returncode == 0, slurm.stderr
    assert re.search(r"^MinJobAge\s*=\s*3600 sec", slurm.stdout, flags=re.MULTILINE)

    local = subprocess.run(
        command, capture_output=True, text=True, timeout=60, env=snakemake_env(uses_slurm=False)
    )
    assert local.returncode != 0
    assert "ClusterName needs to be specified" in local.stderr, local.stderr
