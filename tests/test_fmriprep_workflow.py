"""The whole workflow on fMRIPrep outputs: one preprocessed BOLD per run in the chosen
space, fMRIPrep's brain masks, confounds regressed, stores named with one ``desc``."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from bidstrain import paths
from bidstrain.dataset.bids import parse_name
from bidstrain.demo.generate import make_fmriprep_demo
from bidstrain.io.store import open_store, store_meta
from conftest import REPO, run_snakemake

pytestmark = [pytest.mark.integration, pytest.mark.slow]  # a whole workflow: a minute

SPACE = "MNI152NLin2009cAsym"


@pytest.fixture(scope="module")
def fmriprep_run(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("fmriprep")
    bids = make_fmriprep_demo(root / "fmriprep")
    workdir = root / "work"
    settings = root / "fmriprep.yaml"
    settings.write_text(
        f'space: "{SPACE}:res-2"\nmodalities: [T1w, bold]\n'
        "normalize:\n  confounds:\n    strategy: simple\n"
        # a model grid the 12 x 14 x 12 grid of res-2 fills (the checks fail a padded one)
        "train:\n  epochs: 1\n  warmup_steps: 2\n  patch_size: 4\n"
        "  shapes: {T1w: [16, 16, 16], bold: [16, 16, 16]}\n"
    )
    run_snakemake(
        workdir,
        "all",
        "--configfile",
        str(REPO / "config" / "config.yaml"),
        str(settings),
        config={"bids_dir": bids},
    )
    return bids, workdir


def test_each_run_is_taken_once_in_the_chosen_space_and_named_with_one_desc(fmriprep_run):
    bids, workdir = fmriprep_run
    stores = sorted((workdir / "results" / "normalized").glob("sub-*/**/*.zarr"))
    preproc = sorted(bids.glob(f"sub-*/func/*space-{SPACE}_res-2_desc-preproc_bold.nii.gz"))
    anat = sorted(bids.glob(f"sub-*/anat/*space-{SPACE}_res-2_desc-preproc_T1w.nii.gz"))
    assert len(stores) == len(preproc) + len(anat) > 0
    for store in stores:
        entities, _, _ = parse_name(store.name)
        assert store.name.count("_desc-") == 1 and entities["desc"] == "zscore", store
        assert entities["space"] == SPACE and entities["res"] == "2", store
        meta = store_meta(open_store(store))
        assert str(meta.source_path).startswith(str(bids))
        if not meta.heldout:  # (a held-out run's mask is that of its statistics' runs)
            assert re.search(r"desc-brain_mask\.nii\.gz$", meta.mask_source), meta.mask_source


def test_confounds_are_regressed_and_non_steady_volumes_dropped(fmriprep_run):
    bids, workdir = fmriprep_run
    stores = sorted((workdir / "results" / "normalized").glob("sub-*/func/*_bold.zarr"))
    for store in stores:
        ds = open_store(store)
        meta = store_meta(ds)
        assert meta.confounds_strategy == "simple"
        # fMRIPrep's non-steady-state first volume is not in the store; onsets kept
        assert ds.sizes["time"] < 60 and float(ds["time"][0]) > 0


def test_averages_training_and_report_run_within_the_chosen_space(fmriprep_run):
    _, workdir = fmriprep_run
    averages = sorted((workdir / "results" / "average").glob("*.zarr"))
    assert [a.name for a in averages] == [
        "task-rest_run-1_desc-average_bold.zarr",
        "task-rest_run-2_desc-average_bold.zarr",
    ]
    assert (workdir / "results" / "train" / "demo" / "model.pt").stat().st_size > 0
    assert (workdir / paths.checks_figure("demo", "summary")).exists()
