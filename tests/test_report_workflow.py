"""The report on the demo dataset: every figure after the full workflow, and the HTML
report that `snakemake --report` builds from them."""

from __future__ import annotations

import base64
import json
import re
import shutil

import pytest
from bidstrain.plan import figure_group_of
from bidstrain.report import CHECKS_FIGURES, TRAINING_FIGURES
from conftest import run_snakemake
from test_checks_workflow import with_overrides
from test_report import assert_nontrivial_png

pytestmark = pytest.mark.integration


def expected_figures(workdir):
    """Figures the report must hold, derived from the stores and files upstream wrote."""
    results = workdir / "results"
    # in the folder of the subject's figure group (64 by default), at the store's path
    stores = [p.relative_to(results / "normalized") for p in results.glob("normalized/**/*.zarr")]
    normalized = [
        f"group-{figure_group_of(store.parts[0].removeprefix('sub-'), 64):02d}/"
        f"{store.with_suffix('.png')}"
        for store in stores
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
        *(f"checks/{e}/{name}.png" for e in experiments for name in CHECKS_FIGURES),
        *(f"train/{e}/{name}.png" for e in experiments for name in TRAINING_FIGURES),
        *(f"train/{e}/model_input.png" for e in experiments),
    ]
    return sorted(f"results/report/{f}" for f in figures)


def test_every_figure_is_drawn_on_the_demo_run(demo_run):
    figures = expected_figures(demo_run)
    # 16 images in the demo, 2 averaged runs, 6 training curves and what the model sees
    assert len(figures) == 1 + 16 + 2 + 2 + 6 + 1
    report_dir = demo_run / "results/report"
    # (a figure group's figures are one directory output; Snakemake marks it with a
    # timestamp)
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
        if "/normalize/" in path:  # labelled by the image, as one job per subject did
            image = path.split("/", 5)[5].removesuffix(".png").replace("_desc-zscore_", "_")
            assert entry["labels"] == {"image": image}, (path, entry["labels"])
    for category in ("Ingestion", "Normalization", "Averaging", "Checks", "Training"):
        assert category in html


def test_removing_a_subject_redraws_no_other_groups_figures(demo_run, demo_bids, tmp_path):
    """Figure groups hang on the labels alone: without sub-02 (alone in its group), the
    other subjects' figure jobs are not planned again; what lists every subject is."""
    workdir = tmp_path / "run"
    shutil.copytree(demo_run, workdir, symlinks=True)
    args = with_overrides(tmp_path, 'exclude_participant_label: ["02"]')
    plan = run_snakemake(workdir, "-n", "all", *args, config={"bids_dir": demo_bids}).stdout
    planned = set(re.findall(r"^\s*(?:local)?rule (\w+):$", plan, re.MULTILINE))
    assert figure_group_of("02", 64) not in {figure_group_of(s, 64) for s in ("01", "03")}
    assert "report_normalize" not in planned and "normalize_subject" not in planned
    assert {"ingest", "average_bold", "checks"} <= planned, plan
