"""The workflow configuration: validated against ``workflow/schemas/config.schema.yaml``,
then typed.

The schema is the one source of every key, its description and its default
(:func:`validate_config` fills the defaults). :meth:`Config.from_dict` turns the validated
mapping into frozen dataclasses, one per section; a test checks that the dataclasses and
the schema name the same keys. What a ``train`` key means to the workflow is declared
once, next to its field (:func:`train_keys`):

- ``checked``: read by the checks (changing it reruns the checks, then training);
- ``run``: changes how a run is carried out or logged, never the trained weights, so it
  stays out of the checkpoint's configuration hash.

Every other ``train`` key determines the weights: it enters the checkpoint hash. What a
job asks SLURM for (memory, time, CPUs, GPUs, nodes) lives in the ``resources`` section,
one entry per rule (:class:`ResourcesConfig`): changing it reruns nothing.
"""

from __future__ import annotations

import ast
import copy
import dataclasses
import hashlib
import json
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from bidstrain.errors import BidstrainError

CHECKED, RUN = "checked", "run"
TRAIN_ROLES = (CHECKED, RUN)


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


def _load_schema(schema_path: str | Path) -> dict[str, Any]:
    # libyaml's loader where PyYAML has it: the schema is read at every parse
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return yaml.load(Path(schema_path).read_text(), Loader=loader)


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
    schema = _load_schema(schema_path)
    validator = _with_defaults(jsonschema.Draft202012Validator)(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        lines = [f"config key '{_key_path(e)}': {e.message}" for e in errors]
        raise BidstrainError(
            f"invalid configuration (every key is documented in {schema_path}):\n  "
            + "\n  ".join(lines)
        )
    return config


# ---- Command-line overrides ------------------------------------------------------------

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
    _retype(config, overrides, _load_schema(schema_path))
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


@dataclass(frozen=True)
class ReportConfig:
    """``report``: figures."""

    sample_voxels: int
    normalize_groups: int


def _section() -> Any:
    """A field of :class:`TrainConfig` grouping ``train`` keys that stay flat in the YAML
    (``train.depth``, not ``train.model.depth``): its dataclass is built from the section
    itself, and :func:`to_plain` writes its keys back at the section's level."""
    return field(metadata={"flat": True})


@dataclass(frozen=True)
class ModelConfig:
    """The encoder and the grid it reads (``train.shapes``, ``train.patch_size``, ...)."""

    #: grid each modality is cropped or padded to, after ``resample``
    shapes: Mapping[str, tuple[int, ...]] = _role(CHECKED)
    #: integer downsampling factor per modality (block mean) before the crop or pad
    resample: Mapping[str, int] = _role(CHECKED)
    #: edge of a cubic patch (token), in voxels of the resampled grid
    patch_size: int = _role()
    #: width of the transformer encoder
    embed_dim: int = _role()
    #: number of encoder layers
    depth: int = _role()
    #: attention heads per layer
    heads: int = _role()
    #: fraction of tokens replaced by the mask token (0: a plain autoencoder)
    mask_ratio: float = _role()


@dataclass(frozen=True)
class OptimizerConfig:
    """AdamW, the warm-up and cosine schedule, and how long training runs."""

    #: passes over the training samples
    epochs: int = _role(CHECKED)
    #: peak learning rate of AdamW
    lr: float = _role()
    #: AdamW weight decay
    weight_decay: float = _role()
    #: linear warm-up length in optimizer steps
    warmup_steps: int = _role(CHECKED)
    #: final rate of the cosine as a fraction of ``lr``
    min_lr_ratio: float = _role(CHECKED)
    #: micro-batches per optimizer step
    grad_accum_steps: int = _role(CHECKED)
    #: largest gradient norm (clipped above)
    clip_grad_norm: float = _role()


@dataclass(frozen=True)
class LossConfig:
    """``train.loss``: the reconstruction loss."""

    #: divide the MSE by the target's variance (var), std, or nothing (none)
    normalize: str
    #: the target's variance from each batch or from the whole training set
    stats: str
    #: added to the divisor
    eps: float
    #: weight of each modality's loss in the total
    weights: Mapping[str, float]


@dataclass(frozen=True)
class DummyLossConfig:
    """``train.dummy_loss``: gradients for the parameters of absent modalities (DDP)."""

    #: add ``scale`` x the sum of an absent modality's parameters to the loss
    enabled: bool
    #: that factor
    scale: float
    #: drop the gradients of modalities absent from the whole global batch
    freeze_absent: bool


@dataclass(frozen=True)
class LearningConfig:
    """``train.learning``: whether each modality learned (final validation loss against
    its baseline)."""

    #: a modality whose final loss is not below ``max_ratio`` x its baseline did not learn
    max_ratio: float
    #: make that an error (non-zero exit after writing the model)
    strict: bool


@dataclass(frozen=True)
class LoaderConfig:
    """Batches: their size and mix, the held-out images, and the loader processes."""

    #: samples per rank per micro-batch
    batch_size: int = _role(CHECKED)
    #: batches mixing modalities, or one modality per batch
    batching: str = _role(CHECKED)
    #: BIDS entities selecting the T1w and DWI validation images
    heldout: Mapping[str, tuple[str, ...]] = _role()
    #: DataLoader worker processes (spawned)
    num_workers: int = _role(RUN)
    #: stores read together (shard shuffling)
    store_group: int = _role(CHECKED)
    #: samples shuffled together within a store group
    shuffle_buffer: int = _role(CHECKED)
    #: stores a loader process keeps open; a run setting, but the checks build the
    #: trainer's dataset with it
    max_open_stores: int = _role(RUN, CHECKED)
    #: batches each worker reads ahead
    prefetch_factor: int = _role(RUN)
    #: pinned memory for GPU runs
    pin_memory: bool = _role(RUN)


@dataclass(frozen=True)
class RunConfig:
    """The run: its name, seed, logging, checkpoints and numerics."""

    #: name of the run under results/train/
    experiment: str = _role(RUN)
    #: seed of the initialization, the batch order and the token masks
    seed: int = _role(CHECKED)
    #: where metrics go besides metrics.jsonl
    loggers: tuple[str, ...] = _role(RUN)
    #: DDP option
    find_unused_parameters: bool = _role()
    #: a step with a non-finite loss is skipped, or stops the run
    nonfinite: str = _role()
    #: more skipped steps in a row than this stop the run
    max_consecutive_skips: int = _role()
    #: optimizer steps between checkpoints
    checkpoint_every: int = _role(RUN)
    #: optimizer steps between progress lines
    log_every: int = _role(RUN)
    #: bf16 autocast on GPUs
    bf16: bool = _role()
    #: recompute each encoder layer's activations in the backward pass
    activation_checkpointing: bool = _role(RUN)
    #: torch.compile each encoder layer
    compile: bool = _role(RUN)


@dataclass(frozen=True)
class TrainConfig:
    """``train``: the model, the optimization and the training job, in sections (roles:
    module doc). The YAML keys stay flat (``train.lr``): :meth:`from_dict` takes the
    section as the YAML writes it, :func:`to_plain` gives it back."""

    model: ModelConfig = _section()
    optimizer: OptimizerConfig = _section()
    loss: LossConfig = _role(CHECKED)
    dummy_loss: DummyLossConfig = _role()
    loader: LoaderConfig = _section()
    run: RunConfig = _section()
    learning: LearningConfig = _role(RUN)

    @classmethod
    def from_dict(cls, train: Mapping[str, Any]) -> TrainConfig:
        """Type a ``train`` section (every key present: schema defaults filled)."""
        return _build(cls, train)

    @classmethod
    def with_defaults(cls, train: Mapping[str, Any]) -> TrainConfig:
        """Type some ``train`` keys (a job's settings file, a model's description), the
        others at their schema defaults.

        Raises
        ------
        BidstrainError
            Naming a key that is unknown or has a wrong value.
        """
        return cls.from_dict(validate_config({"bids_dir": "", "train": dict(train)})["train"])

    def settings(self) -> dict[str, Any]:
        """What the trainer reads: every key, as plain JSON types."""
        return to_plain(self)

    def checked(self) -> dict[str, Any]:
        """The keys the checks read, as plain JSON types."""
        return self._keys(CHECKED)

    def hashed(self) -> dict[str, Any]:
        """The keys that determine the trained weights, as plain JSON types."""
        return self._keys("hashed")

    def _keys(self, role: str) -> dict[str, Any]:
        plain = to_plain(self)
        return {key: plain[key] for key in train_keys(role)}


@dataclass(frozen=True)
class JobResources:
    """What a rule's jobs ask SLURM for (``resources.<rule>``)."""

    #: memory in MB
    mem_mb: int
    #: time limit in minutes
    runtime: int


@dataclass(frozen=True)
class ThreadedJobResources(JobResources):
    """A job's resources, with its threads."""

    #: threads of the job (SLURM CPUs per task)
    cpus: int


@dataclass(frozen=True)
class GpuJobResources(ThreadedJobResources):
    """A job's resources, with its GPUs."""

    #: GPUs (0: the CPU)
    gpus: int


@dataclass(frozen=True)
class TrainJobResources(GpuJobResources):
    """The training job's resources: per node, on ``nodes`` nodes."""

    #: nodes (one torchrun each)
    nodes: int


@dataclass(frozen=True)
class AverageJobResources(JobResources):
    """An average job's resources; its time grows with its members."""

    #: minutes added per averaged store
    runtime_per_member: float

    def runtime_for(self, members: int) -> int:
        """The time limit of an average of ``members`` stores."""
        return self.runtime + int(self.runtime_per_member * members)


@dataclass(frozen=True)
class FigureJobResources(JobResources):
    """A normalization figure group's resources; its time grows with its subjects."""

    #: minutes added per subject of the group
    runtime_per_subject: float

    def runtime_for(self, subjects: int) -> int:
        """The time limit of a group of ``subjects`` subjects."""
        return self.runtime + int(self.runtime_per_subject * subjects)


@dataclass(frozen=True)
class ResourcesConfig:
    """``resources``: what each rule's jobs ask for (changing it reruns nothing)."""

    #: a subject's normalize job
    normalize_subject: ThreadedJobResources
    #: an average job
    average_bold: AverageJobResources
    #: the checks job
    checks: JobResources
    #: the training job (``gpus`` and ``nodes``: per node, and the SLURM profile's
    #: ``set-resources`` of rule ``train`` wins)
    train: TrainJobResources
    #: the embed job
    embed_images: GpuJobResources
    #: the coverage, checks, training and embedding figures
    report: JobResources
    #: a normalization figure group's job
    report_normalize: FigureJobResources
    #: an average's figure
    report_average: JobResources
    #: the model input figure
    report_model_input: JobResources


@dataclass(frozen=True)
class NormalizeJobConfig:
    """What every normalize job reads (the file ``Plan.normalize_settings`` writes): how
    to check the subject's images, and how to normalize them. Each image's mask and
    statistics come from the job's own spec, so a changed mask, held-out selection or
    heldout rule reruns only the subjects it concerns."""

    #: the dataset
    bids_dir: str
    #: the ``ingest`` section
    ingest: IngestConfig
    #: the ``normalize`` section (its masks and held-out selection: see the spec)
    normalize: NormalizeConfig

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> NormalizeJobConfig:
        """Type the content of the normalize jobs' settings file (keys it leaves out of
        ``ingest`` and ``normalize`` take their schema defaults).

        Raises
        ------
        BidstrainError
            When a key is missing, unknown or of a wrong value.
        """
        if not isinstance(values, Mapping) or set(values) != _NORMALIZE_JOB_KEYS:
            found = sorted(values) if isinstance(values, Mapping) else type(values).__name__
            raise BidstrainError(
                f"the normalize settings must hold exactly {sorted(_NORMALIZE_JOB_KEYS)}, "
                f"got {found}"
            )
        plain = validate_config(copy.deepcopy(dict(values)))
        return cls(
            bids_dir=plain["bids_dir"],
            ingest=_build(IngestConfig, plain["ingest"]),
            normalize=_build(NormalizeConfig, plain["normalize"]),
        )


_NORMALIZE_JOB_KEYS = {f.name for f in dataclasses.fields(NormalizeJobConfig)}


@dataclass(frozen=True)
class ChecksJobConfig:
    """What the checks job reads (the file ``Plan.checks_settings`` writes): only what
    the checks depend on, so that no other change reruns them."""

    #: the ``checks`` section
    checks: ChecksConfig
    #: the ``train`` keys of role ``checked``, the others at their schema defaults
    train: TrainConfig
    #: ``normalize.ddof``
    ddof: int
    #: ranks of the training job (nodes x GPUs per node)
    world_size: int

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> ChecksJobConfig:
        """Type the content of the checks job's settings file.

        Raises
        ------
        BidstrainError
            When a section or key is missing, unknown or of a wrong value.
        """
        if not isinstance(values, Mapping) or set(values) != _CHECKS_JOB_KEYS:
            found = sorted(values) if isinstance(values, Mapping) else type(values).__name__
            raise BidstrainError(
                f"the checks settings must hold exactly {sorted(_CHECKS_JOB_KEYS)}, got {found}"
            )
        plain = validate_config({"bids_dir": "", "checks": dict(values["checks"])})
        return cls(
            checks=_build(ChecksConfig, plain["checks"]),
            train=TrainConfig.with_defaults(values["train"]),
            ddof=int(values["ddof"]),
            world_size=int(values["world_size"]),
        )


_CHECKS_JOB_KEYS = {f.name for f in dataclasses.fields(ChecksJobConfig)}


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
    resources: ResourcesConfig

    @classmethod
    def from_dict(cls, config: Mapping[str, Any]) -> Config:
        """Type a configuration that :func:`validate_config` accepted (defaults filled)."""
        return _build(cls, config)


#: The dataclass of each section of :class:`Config`, by key.
_SECTIONS = {
    name: kind
    for name, kind in typing.get_type_hints(Config).items()
    if dataclasses.is_dataclass(kind)
}


def load_section(name: str, values: Mapping[str, Any]) -> Any:
    """Type one section of the configuration as a job receives it (a small JSON param):
    keys it leaves out take their schema defaults.

    Raises
    ------
    BidstrainError
        Naming a key that is unknown or has a wrong value (``average.mask``, say).
    """
    if name not in _SECTIONS or not isinstance(values, Mapping):
        raise BidstrainError(f"not a configuration section: {name} = {values!r:.200}")
    plain = validate_config({"bids_dir": "", name: copy.deepcopy(dict(values))})
    return _build(_SECTIONS[name], plain[name])


def train_keys(role: str) -> tuple[str, ...]:
    """Keys of the ``train`` section by role.

    Parameters
    ----------
    role : str
        ``"checked"`` or ``"run"`` (see the module docstring), or ``"hashed"``: the keys
        that determine the trained weights (no ``run`` role), the only ones in a
        checkpoint's configuration hash.

    Returns
    -------
    tuple of str
        The keys, in the order of :class:`TrainConfig`.
    """
    if role not in (*TRAIN_ROLES, "hashed"):
        raise ValueError(f"unknown train key role {role!r}")
    fields = _train_fields(TrainConfig)
    if role == "hashed":
        return tuple(f.name for f in fields if RUN not in f.metadata["roles"])
    return tuple(f.name for f in fields if role in f.metadata["roles"])


def _train_fields(cls: type) -> list[dataclasses.Field]:
    """The fields of the ``train`` keys, the flat sections' fields in their place."""
    hints = typing.get_type_hints(cls)
    fields = []
    for f in dataclasses.fields(cls):
        fields += _train_fields(hints[f.name]) if f.metadata.get("flat") else [f]
    return fields


def to_plain(value: Any) -> Any:
    """A config dataclass (or part of one) as plain JSON types: dicts, lists, scalars."""
    if dataclasses.is_dataclass(value):
        plain = {}
        for f in dataclasses.fields(value):
            item = to_plain(getattr(value, f.name))
            plain.update(item if f.metadata.get("flat") else {f.name: item})
        return plain
    if isinstance(value, Mapping):
        return {key: to_plain(item) for key, item in value.items()}
    if isinstance(value, tuple | list):
        return [to_plain(item) for item in value]
    return value


def setting_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """What differs between two plain settings mappings, one phrase per differing leaf
    (nested keys dotted): ``lr 0.001 -> 0.002``, ``loss.normalize var -> std``."""
    return [
        f"{key} {_shown(old_value)} -> {_shown(new_value)}"
        for key, old_value, new_value in _differing(old, new)
    ]


def _differing(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = ""):
    """``(key, old value, new value)`` of every differing leaf; nested keys dotted."""
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, "(absent)"), new.get(key, "(absent)")
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            yield from _differing(a, b, f"{prefix}{key}.")
        elif a != b:
            yield f"{prefix}{key}", a, b


def _shown(value: Any) -> str:
    return json.dumps(value) if isinstance(value, list | tuple | Mapping) else str(value)


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


class FrozenMapping(Mapping):
    """A read-only mapping of a config section (``train.shapes``, ``normalize.heldout``):
    unlike ``types.MappingProxyType`` it pickles, so a spawned process receives the
    configuration."""

    __slots__ = ("_items",)

    def __init__(self, items: Mapping[str, Any]):
        self._items = dict(items)

    def __getitem__(self, key: str) -> Any:
        return self._items[key]

    def __iter__(self):
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"FrozenMapping({self._items!r})"


def _freeze(value: Any) -> Any:
    if isinstance(value, Mapping):
        return FrozenMapping({key: _freeze(item) for key, item in value.items()})
    if isinstance(value, list | tuple):
        return tuple(_freeze(item) for item in value)
    return value


def _build(cls: type, values: Mapping[str, Any]) -> Any:
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        value = values if f.metadata.get("flat") else values[f.name]
        kind = hints[f.name]
        kwargs[f.name] = _build(kind, value) if dataclasses.is_dataclass(kind) else _freeze(value)
    return cls(**kwargs)
