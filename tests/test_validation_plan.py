"""The plan's validation and embed selections: train.heldout holds T1w and DWI images out
of training (a session or a subject), embed.participant_label picks what is embedded."""

from __future__ import annotations

import json
import logging
import shutil

import pytest
from bidstrain import paths
from bidstrain.errors import BidstrainError
from test_plan import plan_of


def test_the_demo_validates_every_modality_on_held_out_images(demo_bids):
    plan = plan_of(demo_bids)  # config.yaml: train.heldout {ses: ["2"]}
    assert set(plan.validation) == {"T1w", "bold", "dwi"}
    for modality in ("T1w", "dwi"):
        (held,) = plan.validation[modality]
        assert "sub-03/ses-2/" in held
        assert held not in plan.training[modality] and len(plan.training[modality]) == 3
    lists = plan.store_lists()
    assert lists["validation"]["T1w"] == list(plan.validation["T1w"])


def test_a_held_out_subject_and_none(demo_bids):
    plan = plan_of(demo_bids, train={"heldout": {"sub": ["01"]}})
    assert [s.split("/")[2] for s in plan.validation["dwi"]] == ["sub-01"]
    assert not any("sub-01/" in s for s in plan.training["T1w"])
    plan = plan_of(demo_bids, train={"heldout": {}})
    assert set(plan.validation) == {"bold"} and len(plan.training["T1w"]) == 4


def test_holding_out_every_image_stops_the_plan(demo_bids):
    with pytest.raises(BidstrainError, match=r"train.heldout .* selects every T1w image"):
        plan_of(demo_bids, train={"heldout": {"sub": ["01", "02", "03"]}})


def test_embed_takes_the_validation_images_or_the_chosen_subjects(demo_bids):
    plan = plan_of(demo_bids)
    stores = [image.store for image in plan.embed_images]
    assert sorted(stores) == sorted(
        [
            *(s for s in plan.stores("bold") if "run-2" in s),
            *plan.validation["T1w"],
            *plan.validation["dwi"],
        ]
    )
    assert all("run-2" in s for s in stores if s.endswith("_bold.zarr"))
    spec = json.loads(plan.embed_files()[paths.plan_embed(plan.experiment)])
    assert [image["store"] for image in spec["images"]] == stores
    assert spec["images"][0]["out"].startswith("results/embed/demo/sub-")
    assert spec["expect"]["train"]["lr"] == plan.config.train.optimizer.lr
    assert plan.embed_targets == [paths.embed_table("demo"), paths.embed_figure("demo")]
    chosen = plan_of(demo_bids, embed={"participant_label": ["02"]})
    assert {image.image.subject for image in chosen.embed_images} == {"02"}
    assert len(chosen.embed_images) == 4  # T1w, two BOLD runs, DWI
    assert chosen.embed_inputs == [paths.normalized_table("02")]


def test_run_indices_match_as_numbers_and_an_empty_selection_warns(demo_bids, tmp_path, caplog):
    """``run: ["2"]`` selects run-02 (BIDS runs are indices: run-2 and run-02 are one run);
    a selection that selects nothing is named in a warning, not silently empty."""
    padded = tmp_path / "bids"
    shutil.copytree(demo_bids, padded)
    for path in sorted(padded.rglob("*_run-[12]_*")):
        path.rename(path.with_name(path.name.replace("_run-", "_run-0")))
    plan = plan_of(padded)  # config.yaml: normalize.heldout {run: ["2"]}
    bold = [i for subject in plan.jobs.values() for i in subject.images if i.image.suffix == "bold"]
    held = [image.store for image in bold if image.heldout]
    assert len(held) == len(bold) // 2 and all("_run-02_" in store for store in held), held
    assert not caplog.records
    with caplog.at_level(logging.WARNING):
        plan = plan_of(padded, normalize={"heldout": {"run": ["3"]}})
    assert not any(image.heldout for subject in plan.jobs.values() for image in subject.images)
    (record,) = caplog.records
    assert (
        f"normalize.heldout {{run: [3]}} selects none of the {len(bold)} bold image(s)"
        in record.getMessage()
    )
    assert "run: 01, 02" in record.getMessage()
