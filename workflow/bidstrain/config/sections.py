"""The typed sections of the configuration: frozen dataclasses that name exactly the
schema's keys (a test checks it), each field documented where it is declared. What a
``train`` key means to the workflow is declared next to its field (:func:`train_keys`);
see the package docstring."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from bidstrain.config.schema import validate_config
from bidstrain.errors import BidstrainError
from bidstrain.modalities import MODALITIES

CHECKED, RUN = "checked", "run"
TRAIN_ROLES = (CHECKED, RUN)


def _role(*roles: str) -> Any:
    """A dataclass field of the ``train`` section carrying its roles (see module doc)."""
    return field(metadata={"roles": frozenset(roles)})


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
    min_subjects: int
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
    patch_size: int = _role(CHECKED)
    #: what a BOLD sample holds: ``voxels`` (the model grid) or ``parcels`` (time series)
    bold_input: str = _role(CHECKED)
    #: consecutive frames of a BOLD run in one sample (1: one volume)
    window: int = _role(CHECKED)
    #: frames in one token of a BOLD window (divides ``window``)
    patch_frames: int = _role(CHECKED)
    #: stimulus feature kinds that come with each BOLD window (none: images alone)
    stimuli: tuple[str, ...] = _role(CHECKED)
    #: stimulus features in one token (consecutive features of one kind)
    patch_features: int = _role(CHECKED)
    #: width of the transformer encoder
    embed_dim: int = _role()
    #: number of encoder layers
    depth: int = _role()
    #: attention heads per layer
    heads: int = _role()
    #: fraction of tokens replaced by the mask token (0: a plain autoencoder)
    mask_ratio: float = _role(CHECKED)

    def check_patch_grid(self, modalities: Iterable[str]) -> None:
        """Raise unless every side of ``shapes`` of the trained ``modalities`` on a voxel
        grid (BOLD with ``bold_input: parcels`` is not) is a multiple of ``patch_size``:
        a token is a cube of ``patch_size`` voxels."""
        for modality in modalities:
            if modality == "bold" and self.bold_input == "parcels":
                continue
            shape = list(self.shapes[modality])
            if any(n % self.patch_size for n in shape):
                raise BidstrainError(
                    f"config train.shapes.{modality} = {shape} is not a multiple of "
                    f"train.patch_size = {self.patch_size} on every axis (change one of them)"
                )

    def check_window_tokens(self) -> None:
        """Raise unless ``patch_frames`` divides ``window``: a token holds
        ``patch_frames`` frames of a window."""
        if self.patch_frames < 1 or self.window % self.patch_frames:
            raise BidstrainError(
                f"config train.patch_frames ({self.patch_frames}) must divide train.window "
                f"({self.window}): a token holds patch_frames frames of a window"
            )


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
    #: frames between two windows' starts (None: ``window``, side by side)
    window_stride: int | None = _role(CHECKED)
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

    #: name of the run under results/train/: one folder name, neither ``.`` nor ``..``
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
        """What the trainer reads: every key, as plain JSON types (``patch_features``
        only with ``train.stimuli``: :meth:`_used`)."""
        return self._used(to_plain(self))

    def checked(self) -> dict[str, Any]:
        """The keys the checks read, as plain JSON types."""
        return self._used(self._keys(CHECKED))

    def hashed(self) -> dict[str, Any]:
        """The keys that determine the trained weights, as plain JSON types.

        Without ``train.stimuli`` neither that key, ``patch_features`` nor the stimulus
        kinds' loss weights are kept: they change nothing then, so the hash (and the
        checkpoints and models it guards) is that of the same configuration without
        those keys.
        """
        keys = self._used(self._keys("hashed"))
        if not self.model.stimuli:
            del keys["stimuli"]
            weights = keys["loss"]["weights"]
            keys["loss"]["weights"] = {m: w for m, w in weights.items() if m in MODALITIES}
        return keys

    def _used(self, keys: dict[str, Any]) -> dict[str, Any]:
        """``keys`` without ``patch_features`` when no stimulus kind trains: it cuts
        stimulus tokens only, so a run without them keeps its job settings files (and
        reruns nothing) whatever its value; a job that reads them fills in the default."""
        if not self.model.stimuli:
            keys.pop("patch_features", None)
        return keys

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
    #: a stimulus file's feature job
    stimulus_features: JobResources
    #: the job aligning the stimulus features with the BOLD runs
    align_stimuli: JobResources
    #: the encoding model's training and validation job (one node)
    encoding: GpuJobResources
    #: a job applying the encoding model to a run's features
    encoding_apply: JobResources


@dataclass(frozen=True)
class TimeConfig:
    """``time``: BOLD runs at one repetition time (:mod:`bidstrain.normalize.resample_time`)."""

    tr: float | str
    method: str

    @property
    def target_tr(self) -> float | None:
        """The repetition time to resample to in seconds; None keeps each run's own."""
        return None if self.tr == "native" else float(self.tr)

    def settings(self) -> dict[str, Any]:
        """The keys that decide what a normalize job writes: ``method`` only where runs
        are resampled, so that changing it at the native TR reruns nothing."""
        return {"tr": self.tr} if self.target_tr is None else dataclasses.asdict(self)


@dataclass(frozen=True)
class ParcellationConfig:
    """``parcellation``: the atlas whose parcels' mean time series the normalize job writes
    (:mod:`bidstrain.dataset.atlas`, :mod:`bidstrain.normalize.parcels`)."""

    name: str | None
    path: str | None
    labels: str | None
    space: str | None
    resolution: str | None
    desc: str | None = None

    @property
    def enabled(self) -> bool:
        """Whether parcel time series are written."""
        return self.name is not None


@dataclass(frozen=True)
class StimulusFeatureConfig:
    """The ``stimuli`` keys that determine a stimulus file's features, and nothing else
    (so that changing the delay reruns no feature job): flat in the YAML
    (``stimuli.video_size``), and what a feature job is given."""

    video_size: tuple[int, int]
    video_colour: str
    audio_n_mels: int
    audio_window: float
    audio_hop: float
    audio_rate: int
    text_method: str
    text_embeddings: str
    text_n_features: int

    @classmethod
    def defaults(cls, **changes: Any) -> StimulusFeatureConfig:
        """The schema's defaults (the one source of them), with ``changes``."""
        section = _build(StimuliConfig, validate_config({"bids_dir": ""})["stimuli"])
        return dataclasses.replace(section.features, **changes)

    def of_kind(self, kind: str) -> dict[str, Any]:
        """The keys of one kind of features (``video``: ``video_size``, ``video_colour``)."""
        return {
            f.name: to_plain(getattr(self, f.name))
            for f in dataclasses.fields(self)
            if f.name.startswith(f"{kind}_")
        }


@dataclass(frozen=True)
class StimuliConfig:
    """``stimuli``: per-TR features of the films, sounds and transcripts a run presented
    (:mod:`bidstrain.stimuli`)."""

    enabled: bool
    #: the feature keys (flat in the YAML)
    features: StimulusFeatureConfig = _section()
    delay_method: str
    delays: tuple[int, ...]
    length_tolerance: float
    normalize: bool
    #: the raw dataset of the events files and stimuli/ (None: ``bids_dir``)
    raw_dir: str | None


@dataclass(frozen=True)
class EncodingConfig:
    """``encoding``: the linear encoding model from stimulus features to the averaged
    BOLD (:mod:`bidstrain.encoding`); held-out runs are ``normalize.heldout``'s."""

    enabled: bool
    #: feature kinds concatenated, in this order
    kinds: tuple[str, ...]
    #: ``voxels`` or ``parcels``
    target: str
    #: full-batch optimizer steps
    epochs: int
    lr: float
    weight_decay: float
    #: ridge penalty of the model (None: RidgeCV's choice among ``ridge_alphas``)
    alpha: float | None
    ridge_alphas: tuple[float, ...]
    checkpoint_every: int
    figure_targets: int

    def hashed(self) -> dict[str, Any]:
        """The keys that determine the model's weights, as plain JSON types: all but
        ``enabled``, ``checkpoint_every`` and ``figure_targets`` (what a checkpoint must
        share with a run to be resumed by it)."""
        unhashed = ("enabled", "checkpoint_every", "figure_targets")
        return {key: value for key, value in to_plain(self).items() if key not in unhashed}


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
    time: TimeConfig
    parcellation: ParcellationConfig
    stimuli: StimuliConfig
    encoding: EncodingConfig

    @classmethod
    def from_dict(cls, config: Mapping[str, Any]) -> Config:
        """Type a configuration that :func:`validate_config` accepted (defaults filled)."""
        return _build(cls, config)

    def named_files(self) -> dict[str, str]:
        """The files and folders the configuration names by one path, by config key: the
        atlas and its table, the word table, the raw dataset of the events. Path patterns
        (``{subject}``...: a file per image) and unset keys are left out."""
        named = {
            "parcellation.path": self.parcellation.path,
            "parcellation.labels": self.parcellation.labels,
            "stimuli.text_embeddings": self.stimuli.features.text_embeddings,
            "stimuli.raw_dir": self.stimuli.raw_dir,
        }
        return {key: path for key, path in named.items() if path and "{" not in path}


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
