"""Reruns after a config change, as a cluster user sees them: dry runs through
``--profile profiles/slurm`` on a copy of the shared local run ``demo_run`` (a dry run
submits nothing, so the SLURM profile plans exactly what it would submit), and a forced
rerun of one rule (locally, to keep the test short: which jobs run does not depend on
the executor)."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import pytest
from conftest import run_snakemake
from rerun_support import INPUT_UPDATED, PARAMS_CHANGED, RULE, planned_jobs
from slurm_support import FINISHED

pytestmark = [pytest.mark.slurm, pytest.mark.integration]


@pytest.fixture
def rerun_dir(demo_run, tmp_path) -> Path:
    """A copy of ``demo_run``'s working dir (results and Snakemake's records) to change."""
    workdir = tmp_path / "run"
    shutil.copytree(demo_run, workdir, symlinks=True)
    return workdir


def test_changing_the_learning_rate_plans_only_training_and_its_report(
    slurm_cluster, rerun_dir, demo_bids, tmp_path
):
    jobs = planned_jobs(rerun_dir, demo_bids, tmp_path, "train:\n  lr: 0.0005\n", "slurm")
    # training's figures: its curves and what the model sees (from the new model.json)
    assert jobs == {
        ("train", PARAMS_CHANGED): 1,
        ("report_train", INPUT_UPDATED): 1,
        ("report_model_input", INPUT_UPDATED): 1,
    }, jobs


def test_changing_ddof_plans_normalization_and_everything_downstream(
    slurm_cluster, rerun_dir, demo_bids, tmp_path
):
    jobs = planned_jobs(rerun_dir, demo_bids, tmp_path, "normalize:\n  ddof: 0\n", "slurm")
    # demo: 3 subjects, the third with two sessions: one normalize job per subject (every
    # image of the subject, the held-out runs normalized with the statistics of run 1 in
    # the same job) and one figure job per figure group (the 3 labels hash to 3 groups);
    # 2 averages. Each normalize job validates
    # its subject first and rewrites its ingest record, so the manifest and the coverage
    # figure follow (the price of ingesting inside the normalize job).
    assert jobs == {
        ("normalize_subject", PARAMS_CHANGED): 3,
        ("ingest", INPUT_UPDATED): 1,
        ("report_coverage", INPUT_UPDATED): 1,
        ("average_bold", INPUT_UPDATED): 2,
        ("checks", INPUT_UPDATED): 1,
        ("train", INPUT_UPDATED): 1,
        ("report_normalize", INPUT_UPDATED): 3,
        ("report_average", INPUT_UPDATED): 2,
        ("report_checks", INPUT_UPDATED): 1,
        ("report_train", INPUT_UPDATED): 1,
        ("report_model_input", INPUT_UPDATED): 1,
    }, jobs


def test_forcerun_until_one_rule_reruns_exactly_its_jobs(rerun_dir, demo_bids):
    """`snakemake --forcerun normalize_subject --until normalize_subject` reruns the
    normalization of the 3 subjects (every store) and nothing else; on unchanged data the
    stores keep their checksums and the tables their bytes, so a later `snakemake` has
    nothing to redo (no average, no checks, no training)."""
    stores = sorted((rerun_dir / "results" / "normalized").glob("*/**/*.zarr"))
    before = {store: (store / "zarr.json").stat().st_mtime_ns for store in stores}
    result = run_snakemake(
        rerun_dir,
        "--forcerun",
        "normalize_subject",
        "--until",
        "normalize_subject",
        config={"bids_dir": demo_bids},
    )
    output = result.stdout + result.stderr
    assert Counter(FINISHED.findall(output)) == {"normalize_subject": 3}, output
    changed = {
        store for store in stores if (store / "zarr.json").stat().st_mtime_ns != before[store]
    }
    assert len(stores) == 16 and changed == set(stores)
    plan = run_snakemake(rerun_dir, "-n", config={"bids_dir": demo_bids}).stdout
    # the averages and the checks take the manifest, which lists each store's checksum
    planned = {match.group(1) for line in plan.splitlines() if (match := RULE.match(line))}
    assert planned == set(), plan
