"""The SLURM test cluster of tests/slurm_cluster.sh runs real batch jobs with fake GPUs."""

from __future__ import annotations

import subprocess
from pathlib import Path


def _env_file(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)


def test_gpu_batch_job_runs_with_slurm_allocation(slurm_cluster, tmp_path):
    out = tmp_path / "job.env"
    step = tmp_path / "step.env"
    # The batch script records its environment, then runs a job step (srun) that
    # records its own: srun inside a job must find the cluster's config too.
    script = (
        f"env | grep -E '^(SLURM_JOB_ID|SLURM_JOB_PARTITION|CUDA_VISIBLE_DEVICES)=' > {out}; "
        f"srun -n1 env | grep -E '^(SLURM_STEP_ID|CUDA_VISIBLE_DEVICES)=' > {step}"
    )
    result = subprocess.run(
        [
            "sbatch",
            "--wait",
            "--parsable",
            f"--partition={slurm_cluster['partition']}",
            "--gres=gpu:1",
            "--time=5",
            "--mem=100",
            f"--output={tmp_path / 'slurm-%j.out'}",
            f"--chdir={tmp_path}",
            "--wrap",
            script,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, f"sbatch failed:\n{result.stdout}\n{result.stderr}"
    job_id = result.stdout.strip().split(";")[0]

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
    state = subprocess.run(
        ["squeue", "--states=all", "--noheader", "--format=%T", "--jobs", job_id],
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout.strip()
    assert state == "COMPLETED"
