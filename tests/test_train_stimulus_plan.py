"""train.stimuli in the plan and the workflow: the trainer's store file lists each BOLD
store's aligned stores, the train rule waits for them, and the bad configurations are
named (the naturalistic demo)."""

from __future__ import annotations

import json

import pytest
import yaml
from bidstrain import paths
from bidstrain.dataset.bids import BidsIndex
from bidstrain.errors import BidstrainError
from bidstrain.plan import Plan
from conftest import REPO, run_snakemake
from stimuli_support import copy_dataset, make_film_bids
from test_plan import typed_config
from test_stimuli_alignment import align

STIMULI = {"enabled": True, "video_size": [8, 6], "delays": [0, 2]}
HELDOUT = {"mask": "none", "heldout": {"run": ["2"]}}


@pytest.fixture(scope="module")
def film(tmp_path_factory):
    return make_film_bids(tmp_path_factory)


def _plan(root, kinds=(), section=STIMULI, **overrides):
    config = typed_config(
        root,
        modalities=["bold"],
        normalize=HELDOUT,
        stimuli=section,
        train={"stimuli": list(kinds)},
        **overrides,
    )
    return Plan.build(config, BidsIndex.build(root))


def test_the_trainer_gets_the_aligned_stores_of_every_bold_store_it_reads(film):
    plan = _plan(film, ["text", "video"])
    lists = plan.store_lists()
    read = [*lists["training"]["bold"], *lists["validation"]["bold"]]
    assert sorted(lists["stimuli"]) == sorted(read)
    runs, averages = plan.aligned_run_stimuli, plan.aligned_average_stimuli
    for store, kinds in lists["stimuli"].items():
        assert list(kinds) == ["text", "video"]
        name = store.split("/")[-1].removesuffix(".zarr")
        expected = runs.get(store) or averages[name.split("_desc")[0]]
        assert kinds == {k: expected[k] for k in ("text", "video")}
    assert plan.trained_stimulus_stores == sorted(
        {p for kinds in lists["stimuli"].values() for p in kinds.values()}
    )
    assert _plan(film).store_lists()["stimuli"] == {}


def test_train_stimuli_without_the_stimuli_stage_is_a_config_error(film):
    with pytest.raises(BidstrainError, match=r"train.stimuli is \['video'\] but stimuli.enabled"):
        _plan(film, ["video"], section={"enabled": False})


def test_an_unknown_kind_is_refused_by_the_schema(film):
    with pytest.raises(BidstrainError, match="train.stimuli"):
        _plan(film, ["smell"])


def test_a_run_without_stimuli_of_a_kind_is_named(film, tmp_path):
    root = copy_dataset(film, tmp_path)
    events = root / "sub-02" / "func" / "sub-02_task-movie_run-1_events.tsv"
    events.write_text("onset\tduration\ttrial_type\tstim_file\n0\t20\tfilm\tfilm.mp4\n")
    plan = _plan(root, ["video", "text"], average={"mode": "per_subject"})
    with pytest.raises(BidstrainError, match=r"the BOLD run sub-02 task-movie run-1 has no text"):
        plan.store_lists()


@pytest.mark.integration
def test_the_train_rule_waits_for_the_aligned_stores(film, tmp_path):
    """A dry run of target train: its job lists the aligned stores among its inputs,
    after the align_stimuli job."""
    config = {
        "modalities": ["bold"],
        "normalize": HELDOUT,
        "stimuli": STIMULI,
        "train": {"stimuli": ["video", "text"]},
    }
    extra = tmp_path / "extra.yaml"
    extra.write_text(yaml.safe_dump(config))
    configs = [str(REPO / "config" / "config.yaml"), str(extra)]
    workdir = tmp_path / "work"
    workdir.mkdir()
    result = run_snakemake(
        workdir, "train", "--dry-run", "--configfile", *configs, config={"bids_dir": film}
    )
    out = result.stdout
    train_job = out[out.index("rule train:") :]
    stores = json.loads((workdir / paths.plan_stores("demo")).read_text())["stimuli"]
    aligned = sorted({p for kinds in stores.values() for p in kinds.values()})
    assert aligned and all(path in train_job.split("output:")[0] for path in aligned)
    assert out.index("rule align_stimuli:") < out.index("rule train:")


@pytest.mark.integration
@pytest.mark.slow  # the workflow through training on the naturalistic demo
def test_snakemake_train_with_stimuli_on_the_naturalistic_demo(film, tmp_path):
    """The whole chain: features, alignment, checks (the initial loss with the kinds),
    training with video and text beside the BOLD windows, and model.json."""
    train = {
        "stimuli": ["video", "text"],
        "window": 2,
        "epochs": 2,
        "warmup_steps": 0,
        "shapes": {"bold": [8, 8, 8]},
        "patch_size": 4,
    }
    align(film, tmp_path, "train", train=train)
    checks = json.loads((tmp_path / paths.checks_summary("demo")).read_text())["checks"]
    (loss,) = [c for c in checks if c["name"] == "initial_loss"]
    assert set(loss["values"]["losses"]) == {"bold", "video", "text"}
    description = json.loads((tmp_path / paths.trained_model_description("demo")).read_text())
    recorded = description["preparation"]["stimuli"]
    assert set(recorded) == {"video", "text"}
    assert recorded["video"]["features"] == 8 * 6 * 2  # the 8x6 grey frame at 2 delays
    assert recorded["video"]["delays"] == [0, 2]
    records = [json.loads(line) for line in open(tmp_path / paths.training_metrics("demo"))]
    (last,) = [r for r in records if r["kind"] == "validation"][-1:]
    assert set(last["loss_per_modality"]) == {"bold", "video", "text"}
