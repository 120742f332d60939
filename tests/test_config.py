"""The config: the schema is the one source of keys and defaults; the typed sections
name the same keys; each train key's role is declared once."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import pytest
import yaml
from bidstrain.config import SCHEMA_PATH, Config, TrainConfig, train_keys, validate_config
from bidstrain.errors import BidstrainError

REPO = Path(__file__).resolve().parents[1]
SCHEMA = SCHEMA_PATH


def _schema_keys(schema: dict) -> dict:
    """{key: nested keys or None} of an object schema, down to the typed sections."""
    return {
        key: _schema_keys(sub) if sub.get("type") == "object" and "properties" in sub else None
        for key, sub in schema["properties"].items()
    }


def _dataclass_keys(cls: type) -> dict:
    hints = typing.get_type_hints(cls)
    return {
        f.name: _dataclass_keys(hints[f.name]) if dataclasses.is_dataclass(hints[f.name]) else None
        for f in dataclasses.fields(cls)
    }


def _depth2(keys: dict) -> dict:
    """Keys of the top level and of each section (nested objects inside a section, such
    as train.loss, stay mappings in the dataclasses)."""
    return {key: sorted(value) if value else None for key, value in keys.items()}


def test_typed_sections_name_exactly_the_schema_keys():
    schema = yaml.safe_load(SCHEMA.read_text())
    assert _depth2(_dataclass_keys(Config)) == _depth2(_schema_keys(schema))


def test_defaults_live_in_the_schema_and_fill_a_minimal_config():
    config = validate_config({"bids_dir": "/data"}, SCHEMA)
    typed = Config.from_dict(config)
    assert typed.normalize.ddof == 1 and typed.train.shapes["bold"] == (24, 24, 24)
    assert typed.normalize.mask_option("T1w") == "auto"
    with pytest.raises(dataclasses.FrozenInstanceError):
        typed.train.lr = 1.0  # type: ignore[misc]
    with pytest.raises(TypeError):
        typed.train.shapes["bold"] = (1, 1, 1)  # type: ignore[index]


def test_config_yaml_is_valid():
    validate_config(yaml.safe_load((REPO / "config" / "config.yaml").read_text()), SCHEMA)


def test_a_bad_value_names_its_key():
    with pytest.raises(BidstrainError, match=r"config key 'normalize.ddof': 'one' is not"):
        validate_config({"bids_dir": "/d", "normalize": {"ddof": "one"}}, SCHEMA)
    with pytest.raises(BidstrainError, match=r"config key 'train.typo'"):
        validate_config({"bids_dir": "/d", "train": {"typo": 1}}, SCHEMA)


def test_train_key_roles_are_declared_once():
    assert set(train_keys("resource")) == {"gpus", "nodes", "runtime", "mem_mb", "cpus"}
    assert {"batch_size", "epochs", "shapes", "loss"} <= set(train_keys("checked"))
    assert "lr" not in train_keys("checked")
    hashed = set(train_keys("hashed"))
    assert {"lr", "shapes", "embed_dim"} <= hashed
    assert hashed.isdisjoint({"experiment", "gpus", "runtime", "log_every", "num_workers"})
    every = {f.name for f in dataclasses.fields(TrainConfig)}
    assert hashed | set(train_keys("resource")) | set(train_keys("run")) == every
    with pytest.raises(ValueError):
        train_keys("typo")


def test_train_settings_leave_out_job_resources():
    train = Config.from_dict(validate_config({"bids_dir": "/d"}, SCHEMA)).train
    settings = train.settings()
    assert "mem_mb" not in settings and "gpus" not in settings
    assert settings["shapes"]["T1w"] == [32, 32, 32]  # plain JSON types
    assert set(train.checked()) == set(train_keys("checked"))


def test_config_yaml_restates_no_default():
    """Defaults live in the schema only: every value config.yaml sets differs from it."""
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

    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    assert restated(config, defaults) == []
    assert set(config) <= set(schema["properties"])


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
