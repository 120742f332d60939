"""The config: the schema is the one source of keys and defaults; the typed sections
name the same keys; each train key's role is declared once."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import pytest
import yaml
from bidstrain.config import (
    SCHEMA_PATH,
    Config,
    load_section,
    retype_overrides,
    to_plain,
    train_keys,
    validate_config,
)
from bidstrain.errors import BidstrainError
from bidstrain.modalities import MODALITIES, MODEL_INPUTS

REPO = Path(__file__).resolve().parents[1]
SCHEMA = SCHEMA_PATH


def _schema_keys(schema: dict) -> dict:
    """{key: nested keys or None} of an object schema; an object keyed by modality
    (train.shapes; train.loss.weights, keyed by modality and stimulus kind) is a mapping
    in the dataclasses: None."""
    return {
        key: _schema_keys(sub)
        if sub.get("type") == "object" and set(sub.get("properties", MODALITIES)) - {*MODEL_INPUTS}
        else None
        for key, sub in schema["properties"].items()
    }


def _dataclass_keys(cls: type) -> dict:
    """{key: nested keys or None} of a dataclass; the fields of a section that stays flat
    in the YAML (train's model, optimizer, ...) are keys of the level above."""
    hints = typing.get_type_hints(cls)
    keys = {}
    for f in dataclasses.fields(cls):
        kind = hints[f.name]
        nested = _dataclass_keys(kind) if dataclasses.is_dataclass(kind) else None
        keys.update(nested if f.metadata.get("flat") else {f.name: nested})
    return keys


def test_typed_sections_name_exactly_the_schema_keys():
    """At every level: the sections, their keys, and their nested objects (train.loss,
    train.loss.weights stays a mapping of modalities)."""
    schema = yaml.safe_load(SCHEMA.read_text())
    assert _dataclass_keys(Config) == _schema_keys(schema)


def test_defaults_live_in_the_schema_and_fill_a_minimal_config():
    config = validate_config({"bids_dir": "/data"}, SCHEMA)
    typed = Config.from_dict(config)
    assert typed.normalize.ddof == 1 and typed.train.model.shapes["bold"] == (24, 24, 24)
    assert typed.normalize.mask_option("T1w") == "auto"
    with pytest.raises(dataclasses.FrozenInstanceError):
        typed.train.optimizer.lr = 1.0  # type: ignore[misc]
    with pytest.raises(TypeError):
        typed.train.model.shapes["bold"] = (1, 1, 1)  # type: ignore[index]


#: The configurations the repository ships: the demo's, and overlays laid over a study's.
SHIPPED = ("config.yaml", "naturalistic.yaml", "train-mni2mm.yaml")


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_configs_are_valid(name):
    config = yaml.safe_load((REPO / "config" / name).read_text())
    validate_config({"bids_dir": "/data"} | config, SCHEMA)


def test_a_bad_value_names_its_key():
    with pytest.raises(BidstrainError, match=r"config key 'normalize.ddof': 'one' is not"):
        validate_config({"bids_dir": "/d", "normalize": {"ddof": "one"}}, SCHEMA)
    with pytest.raises(BidstrainError, match=r"config key 'train.typo'"):
        validate_config({"bids_dir": "/d", "train": {"typo": 1}}, SCHEMA)
    # none of a key's alternatives: its description says what they are
    with pytest.raises(BidstrainError, match=r"'time.tr': '0.8' is not valid .*\(native: keep"):
        validate_config({"bids_dir": "/d", "time": {"tr": "0.8"}}, SCHEMA)


@pytest.mark.parametrize("key", ["bids_dir", "stimuli.raw_dir"])
def test_a_dataset_path_with_braces_is_refused_saying_why(key):
    """Snakemake reads ``{x}`` in an input path as a wildcard: a dataset under a folder
    named ``br{x}`` ended the dry run in a WildcardError naming neither the folder nor
    the key."""
    config = {"bids_dir": "/data/ds", "stimuli": {"raw_dir": "/data/raw"}}
    section, _, name = key.rpartition(".")
    (config[section] if section else config)[name] = "/data/br{x}/ds"
    with pytest.raises(BidstrainError) as raised:
        validate_config(config, SCHEMA)
    message = str(raised.value)
    assert f"config key '{key}': '/data/br{{x}}/ds' does not match" in message
    assert "Snakemake reads them in a path as wildcards" in message


@pytest.mark.parametrize("name", [".", "..", "a/b", "../main", ""])
def test_an_experiment_name_is_one_folder_below_results_train(name):
    """results/train/<experiment>/: ``.`` or ``..`` would name results/train/ itself or
    results/, a slash a folder elsewhere; the message says what a name may hold."""
    with pytest.raises(BidstrainError) as raised:
        validate_config({"bids_dir": "/d", "train": {"experiment": name}}, SCHEMA)
    assert f"config key 'train.experiment': '{name}' does not match" in str(raised.value)
    assert "one folder name of letters, digits, _, . and -, neither . nor .." in str(raised.value)


@pytest.mark.parametrize("name", ["main", "...", ".x", "lr-1e-3_v2.1"])
def test_an_experiment_name_may_hold_dots(name):
    config = validate_config({"bids_dir": "/d", "train": {"experiment": name}}, SCHEMA)
    assert Config.from_dict(config).train.run.experiment == name


def test_train_key_roles_are_declared_once():
    assert {"batch_size", "epochs", "shapes", "loss"} <= set(train_keys("checked"))
    assert "lr" not in train_keys("checked")
    hashed = set(train_keys("hashed"))
    assert {"lr", "shapes", "embed_dim"} <= hashed
    assert hashed.isdisjoint({"experiment", "log_every", "num_workers"})
    every = set(to_plain(Config.from_dict(validate_config({"bids_dir": "/d"}, SCHEMA)).train))
    assert hashed | set(train_keys("run")) == every
    with pytest.raises(ValueError):
        train_keys("typo")


def test_stimulus_keys_change_the_hash_only_when_stimuli_train():
    """Models and checkpoints of image-only runs keep their hash: ``train.stimuli``,
    ``patch_features`` and the stimulus kinds' loss weights count only when stimuli come
    with the BOLD windows."""

    def hashed(**train):
        config = validate_config({"bids_dir": "/d", "train": train}, SCHEMA)
        return Config.from_dict(config).train.hashed()

    plain = hashed()
    assert "stimuli" not in plain and "patch_features" not in plain
    assert set(plain["loss"]["weights"]) == {"T1w", "bold", "dwi"}
    assert hashed(loss={"weights": {"video": 3.0}}, patch_features=8) == plain
    with_video = hashed(stimuli=["video"], window=4, patch_frames=2)
    assert with_video["stimuli"] == ["video"] and with_video["patch_features"] == 256
    assert with_video["loss"]["weights"]["video"] == 1.0
    assert hashed(stimuli=["video"], window=4, patch_frames=2, patch_features=8) != with_video


def test_job_resources_live_in_their_own_section_not_in_the_train_settings():
    config = Config.from_dict(validate_config({"bids_dir": "/d"}, SCHEMA))
    train = config.train
    settings = train.settings()
    assert "mem_mb" not in settings and "gpus" not in settings
    assert (config.resources.train.gpus, config.resources.train.mem_mb) == (0, 8000)
    assert config.resources.normalize_subject.cpus == 2
    assert config.resources.average_bold.runtime_for(30) == 10 + 3
    with pytest.raises(BidstrainError, match=r"config key 'train.gpus'"):
        validate_config({"bids_dir": "/d", "train": {"gpus": 1}}, SCHEMA)
    assert settings["shapes"]["T1w"] == [32, 32, 32]  # plain JSON types
    assert set(train.checked()) == set(train_keys("checked")) - {"patch_features"}
    assert "patch_features" not in settings  # cuts stimulus tokens only: none here
    with_video = dataclasses.replace(
        train, model=dataclasses.replace(train.model, stimuli=("video",))
    )
    assert with_video.settings()["patch_features"] == with_video.checked()["patch_features"]


@pytest.mark.parametrize("name", ["config.yaml", "naturalistic.yaml"])
def test_config_yaml_restates_no_default(name):
    """Defaults live in the schema only: every value the demos' files set differs from it."""
    schema = yaml.safe_load(SCHEMA.read_text())
    defaults = validate_config({"bids_dir": ""}, SCHEMA)

    def restated(values: dict, defaults: dict, prefix: str = "") -> list[str]:
        found = []
        for key, value in values.items():
            if isinstance(value, dict) and isinstance(defaults.get(key), dict) and value:
                found += restated(value, defaults[key], f"{prefix}{key}.")
            elif defaults.get(key) == value:
                found.append(f"{prefix}{key}")
        return found

    config = yaml.safe_load((REPO / "config" / name).read_text())
    assert restated(config, defaults) == []
    assert set(config) <= set(schema["properties"])


def test_override_strings_get_the_schema_types_and_config_file_strings_do_not():
    """``--config train='{lr: 0.002}'`` reaches the workflow as the string '0.002'."""
    overrides = {"train": {"lr": "0.002", "epochs": "7", "bf16": "true", "experiment": "2024"}}
    overrides["train"]["shapes"] = {"bold": ["16", "16", "8"]}
    config = {"bids_dir": "/d", "train": {**overrides["train"], "weight_decay": "0.1"}}
    retype_overrides(config, overrides, SCHEMA)
    train = config["train"]
    assert (train["lr"], train["epochs"], train["bf16"]) == (0.002, 7, True)
    assert train["shapes"] == {"bold": [16, 16, 8]}
    assert train["experiment"] == "2024"  # a string key keeps the string
    assert train["weight_decay"] == "0.1"  # not from the command line: left to validation
    with pytest.raises(BidstrainError, match=r"'train.weight_decay': '0.1' is not of type"):
        validate_config(config, SCHEMA)
    with_null = {"bids_dir": "/d", "train": {"epochs": "seven"}, "echo": "null"}
    retype_overrides(with_null, {"train": {"epochs": "seven"}, "echo": "null"}, SCHEMA)
    assert with_null["train"]["epochs"] == "seven" and with_null["echo"] is None
    # a key of several forms (oneOf): the word stays a word, a number becomes one
    for given, typed in (("2.0", 2.0), ("0.8", 0.8), ("native", "native")):
        config = {"bids_dir": "/d", "time": {"tr": given}}
        retype_overrides(config, {"time": {"tr": given}}, SCHEMA)
        assert config["time"]["tr"] == typed and type(config["time"]["tr"]) is type(typed)
        validate_config(config, SCHEMA)


def test_a_job_types_its_section_from_a_small_json_param():
    average = load_section("average", {"mask": "union"})
    assert (average.mask, average.affine_tolerance) == ("union", 0.001)  # a schema default
    with pytest.raises(BidstrainError, match=r"config key 'average.mask': 'both' is not one"):
        load_section("average", {"mask": "both"})
    with pytest.raises(BidstrainError, match="not a configuration section: bids_dir"):
        load_section("bids_dir", {})


def test_time_and_parcellation_sections():
    typed = Config.from_dict(validate_config({"bids_dir": "/d"}, SCHEMA))
    assert typed.time.target_tr is None and typed.time.method == "pchip"
    assert not typed.parcellation.enabled
    config = {"bids_dir": "/d", "time": {"tr": 0.8, "method": "fourier"}}
    typed = Config.from_dict(validate_config(config, SCHEMA))
    assert typed.time.target_tr == 0.8 and typed.time.method == "fourier"
    with pytest.raises(BidstrainError, match=r"config key 'time.tr'"):
        validate_config({"bids_dir": "/d", "time": {"tr": -1}}, SCHEMA)
    with pytest.raises(BidstrainError, match=r"config key 'parcellation.name'"):
        validate_config({"bids_dir": "/d", "parcellation": {"name": "a-b"}}, SCHEMA)


def test_train_resources_are_read_from_the_profiles_set_resources():
    from types import SimpleNamespace

    from bidstrain.config import TrainResources

    profile = {
        "train": {name: SimpleNamespace(raw=raw) for name, raw in
                  (("gpus_per_node", 4), ("gpu_type", "'a100'"), ("runtime", 60))},
        "normalize_subject": {"mem_mb": SimpleNamespace(raw=8000)},
    }  # fmt: skip
    assert TrainResources.from_profile(profile) == TrainResources(4, None, "a100", None)
    assert TrainResources.from_profile({}) == TrainResources()
    profile["train"]["nodes"] = SimpleNamespace(raw="2 * n")
    with pytest.raises(BidstrainError, match=r"set-resources train:nodes='2 \* n'.*constant"):
        TrainResources.from_profile(profile)


@pytest.mark.parametrize("label", ["sub-001", 1])
def test_a_subject_label_refused_says_how_to_write_it(label):
    with pytest.raises(BidstrainError, match=r"'participant_label.0'.*without \"sub-\".*\"001\""):
        validate_config({"bids_dir": "x", "participant_label": [label]})
