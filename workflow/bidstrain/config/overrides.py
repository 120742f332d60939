"""Values that reach the configuration from the command line: ``--config`` overrides
(typed again by the schema) and the SLURM profile's ``set-resources``."""

from __future__ import annotations

import ast
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from bidstrain.config.schema import SCHEMA_PATH, load_schema
from bidstrain.errors import BidstrainError

#: The Python types of the JSON Schema scalar types an override's string may become.
_SCALAR_TYPES = {
    "number": (int, float),
    "integer": (int,),
    "boolean": (bool,),
    "null": (type(None),),
}


def retype_overrides(
    config: dict[str, Any], overrides: Mapping[str, Any], schema_path: str | Path = SCHEMA_PATH
) -> dict[str, Any]:
    """Give the scalars of ``--config`` overrides the types the schema wants, in place.

    Snakemake parses a nested ``--config`` value such as ``train='{lr: 0.002}'`` with
    YAML's BaseLoader, so every scalar inside it is a string (``'0.002'``), which the schema
    then refuses. Only a string of ``overrides`` (Snakemake's parsed ``--config``) that is
    still in ``config`` at the same place, where the schema wants a number, an integer, a
    boolean or null, is parsed again with YAML; it is replaced when that gives one of the
    wanted types. A string from a config file is never touched, and a value that still
    does not fit is left for :func:`validate_config` to name.

    Parameters
    ----------
    config : dict
        The merged configuration (config files and overrides), changed in place.
    overrides : mapping
        The ``--config`` entries as Snakemake parsed them.
    schema_path : str or Path, optional
        The schema; :data:`SCHEMA_PATH` by default.

    Returns
    -------
    dict
        The same ``config``.
    """
    _retype(config, overrides, load_schema(schema_path))
    return config


def _retype(value: Any, override: Any, schema: Mapping[str, Any]) -> Any:
    if isinstance(override, Mapping) and isinstance(value, dict):
        for key, item in override.items():
            if key in value:
                value[key] = _retype(value[key], item, _property(schema, key))
        return value
    if isinstance(override, list) and isinstance(value, list) and value == override:
        return [
            _retype(v, o, schema.get("items", {})) for v, o in zip(value, override, strict=True)
        ]
    if isinstance(override, str) and value == override:
        return _scalar(value, schema)
    return value


def _property(schema: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    extra = schema.get("additionalProperties")
    return schema.get("properties", {}).get(key, extra if isinstance(extra, Mapping) else {})


def _scalar(text: str, schema: Mapping[str, Any]) -> Any:
    alternatives = [*schema.get("oneOf", ()), *schema.get("anyOf", ())]
    if alternatives:  # time.tr: the word native, or a number
        if any(text == a.get("const") or text in a.get("enum", ()) for a in alternatives):
            return text
        for alternative in alternatives:
            parsed = _scalar(text, alternative)
            if not isinstance(parsed, str):
                return parsed
        return text
    wanted = schema.get("type", [])
    wanted = [wanted] if isinstance(wanted, str) else list(wanted)
    if None in schema.get("enum", ()):
        wanted.append("null")
    kinds = [_SCALAR_TYPES[kind] for kind in wanted if kind in _SCALAR_TYPES]
    if not kinds:
        return text
    try:
        parsed = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if "number" in wanted and isinstance(parsed, str):
        try:  # YAML 1.1 reads 1e-4 (no dot) as a string
            parsed = float(text)
        except ValueError:
            return text
    fits = any(isinstance(parsed, types) for types in kinds)
    # a YAML boolean is an int to Python, never a number to the schema
    if not fits or (isinstance(parsed, bool) and "boolean" not in wanted):
        return text
    return parsed


@dataclass(frozen=True)
class TrainResources:
    """What the SLURM profile sets for the training job (``set-resources: train:``) that
    the plan needs at parse time; None (``""`` for the GPU type) where it sets nothing."""

    gpus_per_node: int | None = None
    nodes: int | None = None
    gpu_type: str = ""
    mem_mb: int | None = None

    @classmethod
    def from_profile(cls, overwrite_resources: Mapping[str, Mapping[str, Any]]) -> TrainResources:
        """The training job's entries of Snakemake's ``set-resources`` (its
        ``overwrite_resources``: ``{rule: {name: resource}}``, each resource's ``raw``
        value as the profile wrote it).

        Raises
        ------
        BidstrainError
            When an entry the plan reads is not a constant (:func:`constant_resource`).
        """
        entries = overwrite_resources.get("train", {})
        values = {
            name: constant_resource(f"train:{name}", entries[name].raw)
            for name in ("gpus_per_node", "nodes", "gpu_type", "mem_mb")
            if name in entries
        }
        return cls(**{**values, "gpu_type": values.get("gpu_type") or ""})


def constant_resource(name: str, raw: int | str | None) -> int | str | None:
    """The value of a ``--set-resources`` entry as the profile wrote it (Snakemake keeps
    strings as Python expressions, e.g. ``"'a100'"``).

    Raises
    ------
    BidstrainError
        When the entry is not a constant (the plan needs it at parse time).
    """
    if not isinstance(raw, str):
        return raw
    try:
        return ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        raise BidstrainError(
            f"set-resources {name}={raw!r}: the workflow reads this at parse time, so it "
            "must be a constant (a number or a quoted string)"
        ) from None
