"""The workflow configuration: validated against ``workflow/schemas/config.schema.yaml``,
then typed.

The schema is the one source of every key, its description and its default
(:func:`validate_config` fills the defaults). :meth:`Config.from_dict` turns the validated
mapping into frozen dataclasses, one per section; a test checks that the dataclasses and
the schema name the same keys. What a ``train`` key means to the workflow is declared
once, next to its field (:func:`train_keys`):

- ``resource``: a SLURM job resource of the training job (changing it reruns nothing);
- ``checked``: read by the checks (changing it reruns the checks, then training);
- ``run``: changes how a run is carried out or logged, never the trained weights, so it
  stays out of the checkpoint's configuration hash.

Every other ``train`` key determines the weights: it enters the checkpoint hash.
"""

from __future__ import annotations

import ast
import copy
import dataclasses
import hashlib
import json
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from bidstrain.errors import BidstrainError

RESOURCE, CHECKED, RUN = "resource", "checked", "run"
TRAIN_ROLES = (RESOURCE, CHECKED, RUN)


def _role(*roles: str) -> Any:
    """A dataclass field of the ``train`` section carrying its roles (see module doc)."""
    return field(metadata={"roles": frozenset(roles)})


# ---- Validation --------------------------------------------------------------------------


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


#: The JSON Schema of the configuration: every key, its description and its default.
SCHEMA_PATH = Path(__file__).resolve().parents[1] / "schemas" / "config.schema.yaml"


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
    # libyaml's loader where PyYAML has it: the schema is read at every parse
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    schema = yaml.load(Path(schema_path).read_text(), Loader=loader)
    validator = _with_defaults(jsonschema.Draft202012Validator)(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        lines = [f"config key '{_key_path(e)}': {e.message}" for e in errors]
        raise BidstrainError(
            f"invalid configuration (every key is documented in {schema_path}):\n  "
            + "\n  ".join(lines)
        )
    return config


# ---- Typed sections ----------------------------------------------------------------------


@dataclass(frozen=True)
class IngestConfig:
    """``ingest``: header and sidecar validation."""

    repetition_time_mismatch: str
    repetition_time_tolerance: float


@dataclass(frozen=True)
class ConfoundsConfig:
    """``normalize.confounds``: confound regression of fMRIPrep BOLD runs
    (:mod:`bidstrain.normalize.confounds`)."""

    strategy: str
    options: Mapping[str, Any]


@dataclass(frozen=True)
class NormalizeConfig:
    """``normalize``: z-scoring into Zarr stores."""

    mask: str
    t1w_mask: str
    dwi_mask: str
    ddof: int
    nonfinite: str
    heldout: Mapping[str, tuple[str, ...]]
    block_volumes: int
    storage: str
    confounds: ConfoundsConfig

    def mask_option(self, modality: str) -> str:
        """The mask option (keyword or path pattern) of a modality's images."""
        return {"bold": self.mask, "T1w": self.t1w_mask, "dwi": self.dwi_mask}[modality]


@dataclass(frozen=True)
class AverageConfig:
    """``average``: cross-subject averaging of BOLD."""

    mode: str
    mask: str
    truncate: bool
    affine_tolerance: float
    repetition_time_tolerance: float


@dataclass(frozen=True)
class ChecksConfig:
    """``checks``: the sanity checks before training."""

    strict: bool
    max_scale_ratio: float
    stats_tolerance: float
    outlier_threshold: float
    sample_voxels: int


@dataclass(frozen=True)
class EmbedConfig:
    """``embed``: the trained model applied to normalized images (:mod:`bidstrain.embed`)."""

    enabled: bool
    participant_label: tuple[str, ...]
    batch_size: int
    gpus: int
    runtime: int
    mem_mb: int
    cpus: int


@dataclass(frozen=True)
class ReportConfig:
    """``report``: figures."""

    sample_voxels: int
    normalize_groups: int


@dataclass(frozen=True)
class TrainConfig:
    """``train``: the model, the optimization and the training job (roles: module doc)."""

    experiment: str = _role(RUN)
    gpus: int = _role(RESOURCE)
    nodes: int = _role(RESOURCE)
    epochs: int = _role(CHECKED)
    batch_size: int = _role(CHECKED)
    lr: float = _role()
    weight_decay: float = _role()
    warmup_steps: int = _role(CHECKED)
    min_lr_ratio: float = _role(CHECKED)
    grad_accum_steps: int = _role(CHECKED)
    clip_grad_norm: float = _role()
    batching: str = _role(CHECKED)
    seed: int = _role(CHECKED)
    shapes: Mapping[str, tuple[int, ...]] = _role(CHECKED)
    resample: Mapping[str, int] = _role(CHECKED)
    patch_size: int = _role()
    embed_dim: int = _role()
    depth: int = _role()
    heads: int = _role()
    mask_ratio: float = _role()
    loss: Mapping[str, Any] = _role(CHECKED)
    heldout: Mapping[str, tuple[str, ...]] = _role()
    learning: Mapping[str, Any] = _role(RUN)
    loggers: tuple[str, ...] = _role(RUN)
    dummy_loss: Mapping[str, Any] = _role()
    find_unused_parameters: bool = _role()
    nonfinite: str = _role()
    max_consecutive_skips: int = _role()
    checkpoint_every: int = _role(RUN)
    log_every: int = _role(RUN)
    num_workers: int = _role(RUN)
    store_group: int = _role(CHECKED)
    shuffle_buffer: int = _role(CHECKED)
    # a run setting, but the checks build the trainer's dataset with it
    max_open_stores: int = _role(RUN, CHECKED)
    prefetch_factor: int = _role(RUN)
    pin_memory: bool = _role(RUN)
    bf16: bool = _role()
    activation_checkpointing: bool = _role(RUN)
    compile: bool = _role(RUN)
    runtime: int = _role(RESOURCE)
    mem_mb: int = _role(RESOURCE)
    cpus: int = _role(RESOURCE)

    def settings(self) -> dict[str, Any]:
        """What the trainer reads: every key but the job resources, as plain JSON types."""
        return {key: value for key, value in to_plain(self).items() if key not in _RESOURCES}

    def checked(self) -> dict[str, Any]:
        """The keys the checks read, as plain JSON types."""
        plain = to_plain(self)
        return {key: plain[key] for key in train_keys(CHECKED)}


@dataclass(frozen=True)
class StimuliConfig:
    """``stimuli``: per-TR features of the films, sounds and transcripts a run presented
    (:mod:`bidstrain.stimuli`)."""

    enabled: bool
    video_size: tuple[int, int]
    video_colour: str
    audio_n_mels: int
    audio_window: float
    audio_hop: float
    text_method: str
    text_embeddings: str
    text_n_features: int
    delay_method: str
    delays: tuple[int, ...]
    length_tolerance: float


@dataclass(frozen=True)
class Config:
    """The whole validated configuration (:data:`SCHEMA_PATH` documents every key)."""

    bids_dir: str
    participant_label: tuple[str, ...]
    exclude_participant_label: tuple[str, ...]
    modalities: tuple[str, ...]
    tasks: tuple[str, ...]
    echo: int | None
    part: str | None
    space: str | None
    ingest: IngestConfig
    normalize: NormalizeConfig
    average: AverageConfig
    checks: ChecksConfig
    train: TrainConfig
    embed: EmbedConfig
    report: ReportConfig
    stimuli: StimuliConfig

    @classmethod
    def from_dict(cls, config: Mapping[str, Any]) -> Config:
        """Type a configuration that :func:`validate_config` accepted (defaults filled)."""
        return _build(cls, config)


def train_keys(role: str) -> tuple[str, ...]:
    """Keys of the ``train`` section by role.

    Parameters
    ----------
    role : str
        ``"resource"``, ``"checked"`` or ``"run"`` (see the module docstring), or
        ``"hashed"``: the keys that determine the trained weights (no ``resource`` or
        ``run`` role), the only ones in a checkpoint's configuration hash.

    Returns
    -------
    tuple of str
        The keys, in the order of :class:`TrainConfig`.
    """
    if role not in (*TRAIN_ROLES, "hashed"):
        raise ValueError(f"unknown train key role {role!r}")
    fields = dataclasses.fields(TrainConfig)
    if role == "hashed":
        return tuple(f.name for f in fields if not f.metadata["roles"] & {RESOURCE, RUN})
    return tuple(f.name for f in fields if role in f.metadata["roles"])


_RESOURCES = frozenset(train_keys(RESOURCE))


def to_plain(value: Any) -> Any:
    """A config dataclass (or part of one) as plain JSON types: dicts, lists, scalars."""
    if dataclasses.is_dataclass(value):
        return {f.name: to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {key: to_plain(item) for key, item in value.items()}
    if isinstance(value, tuple | list):
        return [to_plain(item) for item in value]
    return value


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


def config_hash(config: Config) -> str:
    """A short hash of the whole configuration (defaults filled): what produced a result."""
    text = json.dumps(to_plain(config), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _freeze(value: Any) -> Any:
    if isinstance(value, Mapping):
        return types.MappingProxyType({key: _freeze(item) for key, item in value.items()})
    if isinstance(value, list | tuple):
        return tuple(_freeze(item) for item in value)
    return value


def _build(cls: type, values: Mapping[str, Any]) -> Any:
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        value = values[f.name]
        kind = hints[f.name]
        kwargs[f.name] = _build(kind, value) if dataclasses.is_dataclass(kind) else _freeze(value)
    return cls(**kwargs)
