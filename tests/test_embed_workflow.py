"""`snakemake embed` on (a copy of) the demo run, and what reruns it."""

from __future__ import annotations

import re
import shutil

import pandas as pd
import pytest
import xarray as xr
import yaml
from conftest import REPO, run_snakemake

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def embedded(demo_run, demo_bids, tmp_path_factory):
    """A copy of the demo run (times kept, so nothing upstream reruns) after `embed`."""
    workdir = tmp_path_factory.mktemp("embed_run") / "run"
    shutil.copytree(demo_run, workdir, symlinks=True)
    run_snakemake(workdir, "embed", config={"bids_dir": demo_bids})
    return workdir


def test_embed_writes_one_store_per_validation_image_and_the_figure(embedded, demo_bids):
    table = pd.read_csv(embedded / "results/embed/demo/embeddings.tsv", sep="\t")
    # The validation images: the held-out run 2 of every subject's sessions (BOLD), and
    # sub-03 ses-2 (train.heldout) for T1w and DWI.
    assert sorted(table["modality"].value_counts().items()) == [("T1w", 1), ("bold", 4), ("dwi", 1)]
    assert all("run-2" in store for store in table.loc[table["modality"] == "bold", "store"])
    for row in table.itertuples():
        assert row.embedding.startswith("results/embed/demo/sub-")
        assert row.embedding.endswith(f"_desc-embedding_{row.modality}.zarr")
        store = xr.open_zarr(embedded / row.embedding, consolidated=False)
        assert store["embedding"].dims == ("time", "feature")
        assert store.sizes["time"] == row.volumes
        assert store.attrs["source_store"] == row.store
    # The demo model learned: every image's loss is below its baseline.
    assert (table["loss"] < table["baseline"]).all()
    assert (embedded / "results/report/embed/demo.png").stat().st_size > 10_000
    dry = run_snakemake(embedded, "-n", "all", config={"bids_dir": demo_bids}).stdout
    assert "embed_images" not in dry  # not part of all unless embed.enabled


def test_the_report_has_the_embedding_section_when_embed_is_enabled(embedded, demo_bids, tmp_path):
    report = tmp_path / "report.html"  # outside the run
    enabled = tmp_path / "embed.yaml"  # (--config would pass `true` as a string)
    enabled.write_text("embed: {enabled: true}\n")
    configs = ["--configfile", str(REPO / "config" / "config.yaml"), str(enabled)]
    run_snakemake(embedded, "--report", str(report), *configs, config={"bids_dir": demo_bids})
    html = report.read_text()
    assert "6. Embedding" in html and "results/report/embed/demo.png" in html
    # (the description is a JSON string in the page: its line breaks are "\n")
    assert "embedding on." in " ".join(html.replace("\\n", " ").split())


def test_a_changed_lr_reruns_training_then_embed(embedded, demo_bids, tmp_path):
    dry = run_snakemake(embedded, "-n", "embed", config={"bids_dir": demo_bids}).stdout
    assert "embed_images" not in dry  # up to date
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config["train"]["lr"] = 0.002
    changed_config = tmp_path / "config.yaml"
    changed_config.write_text(yaml.safe_dump(config))
    result = run_snakemake(
        embedded,
        "-n",
        "embed",
        "--configfile",
        str(changed_config),
        config={"bids_dir": demo_bids},
    )
    changed = result.stdout + result.stderr
    assert "rule train:" in changed and "rule embed_images:" in changed
    assert "rule normalize" not in changed
    # the parse names the changed key; a rerun reason shows only the settings' hash
    assert "bidstrain: train settings changed: lr 0.001 -> 0.002" in changed
    reasons = [line for line in changed.splitlines() if line.strip().startswith("reason:")]
    assert reasons and max(len(line) for line in reasons) < 300, reasons


def test_changed_resources_rerun_nothing(embedded, demo_bids):
    resources = (
        "{train: {mem_mb: 9000, cpus: 1, runtime: 5}, embed_images: {mem_mb: 3000},"
        " normalize_subject: {mem_mb: 3000, cpus: 1}, checks: {runtime: 99}}"
    )
    dry = run_snakemake(
        embedded, "-n", "embed", config={"bids_dir": demo_bids, "resources": resources}
    )
    planned = set(re.findall(r"^\s*(?:local)?rule (\w+):$", dry.stdout, re.M))
    assert planned <= {"embed"}, dry.stdout
