"""The schema of the configuration (``workflow/schemas/config.schema.yaml``): every key,
its description and its default; :func:`validate_config` checks a configuration against
it and fills the defaults."""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from bidstrain.errors import BidstrainError


def _with_defaults(validator_class):
    """Extend a jsonschema validator so that it fills ``default`` values while validating."""
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, subschema in properties.items():
                if "default" in subschema and name not in instance:
                    instance[name] = copy.deepcopy(subschema["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


def _key_path(error: jsonschema.ValidationError) -> str:
    path = ".".join(str(part) for part in error.absolute_path)
    if error.validator == "additionalProperties":
        extra = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        return ".".join(filter(None, [path, ",".join(extra)]))
    return path or "<top level>"


def _message(error: jsonschema.ValidationError) -> str:
    """The validator's message; a value that does not match a pattern, is of another
    type, or matches none of a key's alternatives (``0.8`` quoted for ``time.tr``), also
    gets the key's description, which says in words what the key asks for."""
    description = error.schema.get("description")
    if error.validator in ("pattern", "type", "oneOf", "anyOf") and description:
        return f"{error.message} ({' '.join(description.split())})"
    return error.message


#: The JSON Schema of the configuration: every key, its description and its default.
SCHEMA_PATH = Path(__file__).resolve().parents[2] / "schemas" / "config.schema.yaml"


def load_schema(schema_path: str | Path = SCHEMA_PATH) -> dict[str, Any]:
    """The schema, as a mapping."""
    # libyaml's loader where PyYAML has it: the schema is read at every parse
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return yaml.load(Path(schema_path).read_text(), Loader=loader)


@functools.cache
def _validator(schema_path: Path) -> jsonschema.Validator:
    """The validator of a schema file, built once per process: a job validates several
    sections, each against the whole schema (parsing it costs about 15 ms). The schema
    is never modified (defaults are copied into the configuration)."""
    return _with_defaults(jsonschema.Draft202012Validator)(load_schema(schema_path))


def validate_config(
    config: dict[str, Any], schema_path: str | Path = SCHEMA_PATH
) -> dict[str, Any]:
    """Validate ``config`` in place against the JSON Schema, filling defaults.

    Parameters
    ----------
    config : dict
        The configuration as Snakemake loaded it; defaults are written into it.
    schema_path : str or Path, optional
        The schema; :data:`SCHEMA_PATH` by default.

    Returns
    -------
    dict
        The same ``config``, with every default filled.

    Raises
    ------
    BidstrainError
        Naming the offending key (for example ``normalize.ddof``) and what is wrong, for the
        first problem found, listing every other one after it.
    """
    validator = _validator(Path(schema_path).resolve())
    errors = sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        lines = [f"config key '{_key_path(e)}': {_message(e)}" for e in errors]
        raise BidstrainError(
            f"invalid configuration (every key is documented in {schema_path}):\n  "
            + "\n  ".join(lines)
        )
    return config
