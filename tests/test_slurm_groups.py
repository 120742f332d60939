"""Many subjects, few SLURM jobs: the SLURM profile puts the per-subject rules in group
``subject`` and ``--group-components subject=N`` packs N subjects into one SLURM job."""

from __future__ import annotations

from collections import Counter, defaultdict

import pytest
import xarray as xr
from bidstrain.demo import DemoSpec, make_demo
from bidstrain.store import open_store
from conftest import run_snakemake
from slurm_support import FINISHED, LOCAL_RULE, slurm_snakemake

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

N_SUBJECTS = 12
GROUP_SIZE = 4


def test_twelve_subjects_in_groups_of_four_run_as_three_slurm_jobs_with_identical_stores(
    slurm_cluster, tmp_path
):
    """`snakemake --profile profiles/slurm normalize` with 12 subjects and a group size of 4:
    the normalize jobs of all 12 subjects (each ingests its subject first) run as 3 SLURM
    jobs (not 12), each holding every job of its 4 subjects, and the stores equal, values and
    attributes, those of an ungrouped run. The ungrouped run is local (one process per
    job, as the SLURM executor runs each job of a group) to keep the test short. T1w only
    and tiny images: what is tested is the packing, not the data."""
    bids = make_demo(
        tmp_path / "bids",
        DemoSpec(
            n_subjects=N_SUBJECTS,
            t1w_shape=(8, 8, 8),
            modalities=("T1w",),
            sessions_subject=False,
        ),
    )
    config = {"bids_dir": bids, "modalities": "[T1w]"}
    grouped = tmp_path / "grouped"
    grouped.mkdir()
    with slurm_snakemake(
        grouped, "normalize", "--group-components", f"subject={GROUP_SIZE}", config=config
    ) as run:
        assert run.wait(timeout=300) == 0, run.output()
        jobs = run.jobs()

    assert len(jobs) == N_SUBJECTS // GROUP_SIZE, jobs
    assert {job.state for job in jobs} == {"COMPLETED"}, jobs
    assert all(job.comment.startswith("rule_subject_") for job in jobs), jobs
    assert {job.job_id for job in jobs} == run.submitted_job_ids()
    local_rules = set(LOCAL_RULE.findall(run.output()))
    assert local_rules == {"normalize"}, local_rules  # the target, which runs nothing
    finished = Counter(rule for rule in FINISHED.findall(run.output()) if rule not in local_rules)
    assert finished == {"normalize_subject": N_SUBJECTS}, finished

    # Each SLURM job ran the jobs of its 4 subjects, ingestion and normalization in one
    # log each (the logs name the SLURM job).
    subjects_of_job = defaultdict(set)
    for subject in range(1, N_SUBJECTS + 1):
        log = (grouped / "logs" / "normalize" / f"sub-{subject:02d}.log").read_text()
        assert f"sub-{subject:02d}: 1 images valid" in log
        subjects_of_job[log.split("SLURM_JOB_ID=")[1].split()[0]].add(subject)
    assert set(subjects_of_job) == {job.job_id for job in jobs}
    assert sorted(len(subjects) for subjects in subjects_of_job.values()) == [GROUP_SIZE] * 3

    ungrouped = tmp_path / "ungrouped"
    ungrouped.mkdir()
    run_snakemake(ungrouped, "normalize", config=config)
    stores = sorted(
        path.relative_to(grouped) for path in grouped.glob("results/normalized/**/*.zarr")
    )
    assert len(stores) == N_SUBJECTS
    for store in stores:
        xr.testing.assert_identical(
            open_store(grouped / store).load(), open_store(ungrouped / store).load()
        )
