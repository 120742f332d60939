"""The report on the demo dataset: every figure after the full workflow, and the HTML
report that `snakemake --report` builds from them."""

from __future__ import annotations

import base64
import json
import re

import pytest
from bidstrain.report import CHECKS_FIGURES, TRAINING_FIGURES
from conftest import run_snakemake
from test_report import assert_nontrivial_png

pytestmark = pytest.mark.integration


def expected_figures(workdir):
    """Figures the report must hold, derived from the stores and files upstream wrote."""
    results = workdir / "results"
    normalized = [
        p.relative_to(results / "normalized").with_suffix(".png")
        for p in (results / "normalized").rglob("*.zarr")
    ]
    averages = [
        p.name.removesuffix("_desc-average_bold.zarr") + ".png"
        for p in (results / "average").glob("*.zarr")
    ]
    experiments = [p.name for p in (results / "train").iterdir() if p.is_dir()]
    figures = [
        "ingest/coverage.png",
        *(f"normalize/{p}" for p in normalized),
        *(f"average/{name}" for name in averages),
        *(f"checks/{name}.png" for name in CHECKS_FIGURES),
        *(f"train/{e}/{name}.png" for e in experiments for name in TRAINING_FIGURES),
        *(f"train/{e}/model_input.png" for e in experiments),
    ]
    return sorted(f"results/report/{f}" for f in figures)


def test_every_figure_is_drawn_on_the_demo_run(demo_run):
    figures = expected_figures(demo_run)
    # 16 images in the demo, 2 averaged runs, 6 training curves and what the model sees
    assert len(figures) == 1 + 16 + 2 + 2 + 6 + 1
    report_dir = demo_run / "results/report"
    # (a subject's figures are one directory output; Snakemake marks it with a timestamp)
    drawn = sorted(
        str(p.relative_to(demo_run))
        for p in report_dir.rglob("*")
        if p.is_file() and p.name != ".snakemake_timestamp"
    )
    assert drawn == [f for f in drawn if f.endswith(".png")]  # no temporary left behind
    assert drawn == figures
    for figure in figures:
        assert_nontrivial_png(demo_run / figure)


def test_html_report_embeds_every_figure_with_its_caption(demo_run, demo_bids, tmp_path):
    report = tmp_path / "report.html"  # outside demo_run, which tests must not modify
    run_snakemake(demo_run, "--report", str(report), config={"bids_dir": demo_bids})
    html = report.read_text()
    match = re.search(r"var results = (\{.*?\});?\s*</script>", html, re.S)
    assert match, "no results table in the HTML report"
    results = json.loads(match.group(1))
    assert sorted(results) == expected_figures(demo_run)
    for path, entry in results.items():
        assert entry["caption"].strip(), f"{path} has no caption"
        assert entry["data_uri"].startswith("data:image/png"), path
        embedded = base64.b64decode(entry["data_uri"].split("base64,", 1)[1])
        assert embedded == (demo_run / path).read_bytes(), f"{path} embedded differs"
    for category in ("Ingestion", "Normalization", "Averaging", "Checks", "Training"):
        assert category in html
