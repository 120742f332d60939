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

Modules: :mod:`.schema` (validation and defaults), :mod:`.overrides` (``--config`` and
profile values), :mod:`.sections` (the typed sections), :mod:`.jobs` (what a job reads,
typed again by the job). Outside this package no module reads a configuration value by
string key.
"""

from bidstrain.config.jobs import (
    ChecksJobConfig,
    EmbedJobConfig,
    EncodingJobConfig,
    ModelExpectation,
    NormalizeJobConfig,
    named,
    read_train_settings,
    setting_changes,
)
from bidstrain.config.overrides import TrainResources, retype_overrides
from bidstrain.config.schema import SCHEMA_PATH, validate_config
from bidstrain.config.sections import (
    CHECKED,
    RUN,
    TRAIN_ROLES,
    AverageConfig,
    AverageJobResources,
    ChecksConfig,
    Config,
    ConfoundsConfig,
    DummyLossConfig,
    EmbedConfig,
    EncodingConfig,
    FigureJobResources,
    FrozenMapping,
    GpuJobResources,
    IngestConfig,
    JobResources,
    LearningConfig,
    LoaderConfig,
    LossConfig,
    ModelConfig,
    NormalizeConfig,
    OptimizerConfig,
    ParcellationConfig,
    ReportConfig,
    ResourcesConfig,
    RunConfig,
    StimuliConfig,
    StimulusFeatureConfig,
    ThreadedJobResources,
    TimeConfig,
    TrainConfig,
    TrainJobResources,
    config_hash,
    load_section,
    to_plain,
    train_keys,
)

__all__ = [
    "EmbedJobConfig",
    "EncodingJobConfig",
    "CHECKED",
    "RUN",
    "SCHEMA_PATH",
    "TRAIN_ROLES",
    "AverageConfig",
    "AverageJobResources",
    "ChecksConfig",
    "ChecksJobConfig",
    "Config",
    "ConfoundsConfig",
    "DummyLossConfig",
    "EmbedConfig",
    "FigureJobResources",
    "FrozenMapping",
    "GpuJobResources",
    "IngestConfig",
    "JobResources",
    "LearningConfig",
    "LoaderConfig",
    "LossConfig",
    "ModelExpectation",
    "ModelConfig",
    "NormalizeConfig",
    "NormalizeJobConfig",
    "ParcellationConfig",
    "OptimizerConfig",
    "ReportConfig",
    "ResourcesConfig",
    "RunConfig",
    "StimuliConfig",
    "StimulusFeatureConfig",
    "EncodingConfig",
    "ThreadedJobResources",
    "TimeConfig",
    "TrainConfig",
    "TrainJobResources",
    "config_hash",
    "TrainResources",
    "load_section",
    "named",
    "read_train_settings",
    "retype_overrides",
    "setting_changes",
    "to_plain",
    "train_keys",
    "validate_config",
]
