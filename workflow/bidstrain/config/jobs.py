"""What a job reads of the configuration, from the file or param its rule passes: typed
again by the job (keys left out take their schema defaults), and what changed since the
previous parse."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bidstrain.config.sections import (
    ChecksConfig,
    EmbedConfig,
    EncodingConfig,
    IngestConfig,
    NormalizeConfig,
    TimeConfig,
    TrainConfig,
    load_section,
)
from bidstrain.errors import BidstrainError


def _require_fields(job: type, values: Any, what: str, path: str | Path | None = None) -> None:
    """Raise unless ``values`` is a mapping whose keys are exactly the fields of the
    dataclass ``job`` (``what`` names the settings in the message, ``path`` the file)."""
    keys = sorted(field.name for field in dataclasses.fields(job))
    if not isinstance(values, Mapping) or sorted(values) != keys:
        found = sorted(values) if isinstance(values, Mapping) else type(values).__name__
        raise BidstrainError(
            f"the {what} settings must hold exactly {keys}, got {found}", path=path
        )


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
    #: the ``time`` section: the repetition time BOLD runs are resampled to, and how
    time: TimeConfig
    #: the atlas files the plan found for the ``parcellation`` section (the fields of
    #: :class:`bidstrain.dataset.atlas.AtlasFiles`), or None without a parcellation
    atlas: Mapping[str, str] | None

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> NormalizeJobConfig:
        """Type the content of the normalize jobs' settings file (keys it leaves out of
        ``ingest`` and ``normalize`` take their schema defaults).

        Raises
        ------
        BidstrainError
            When a key is missing, unknown or of a wrong value.
        """
        _require_fields(cls, values, "normalize")
        if not isinstance(values["bids_dir"], str):
            raise BidstrainError(f"bids_dir must be a path, got {values['bids_dir']!r:.200}")
        return cls(
            bids_dir=values["bids_dir"],
            ingest=load_section("ingest", values["ingest"]),
            normalize=load_section("normalize", values["normalize"]),
            time=load_section("time", values["time"]),
            atlas=values["atlas"],
        )


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
        _require_fields(cls, values, "checks")
        return cls(
            checks=load_section("checks", values["checks"]),
            train=TrainConfig.with_defaults(values["train"]),
            ddof=int(values["ddof"]),
            world_size=int(values["world_size"]),
        )


@dataclass(frozen=True)
class EncodingJobConfig:
    """What the encoding job reads (the ``--settings`` file the plan writes,
    ``Plan.encoding_settings``)."""

    #: the ``encoding`` section
    encoding: EncodingConfig
    #: ``train.seed``: the model's initial weights and the scrambled-stimulus control
    seed: int

    @classmethod
    def read(cls, path: str | Path) -> EncodingJobConfig:
        """Type the encoding job's settings file.

        Raises
        ------
        BidstrainError
            Naming the file, when it is missing or not JSON, or a section or key is
            missing, unknown or of a wrong value.
        """
        try:
            values = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise BidstrainError(f"cannot read the encoding settings: {error}", path=path) from None
        _require_fields(cls, values, "encoding", path)
        try:
            return cls(
                encoding=load_section("encoding", values["encoding"]), seed=int(values["seed"])
            )
        except (BidstrainError, TypeError, ValueError) as error:
            raise BidstrainError(f"the encoding settings: {error}", path=path) from None


def read_train_settings(path: str | Path) -> TrainConfig:
    """The typed ``train`` section of an experiment's settings file (the one
    ``Plan.job_settings`` writes, :func:`bidstrain.paths.plan_train_settings`): read by
    the trainer and by the training figures.

    Raises
    ------
    BidstrainError
        Naming the file, when it is missing or not JSON, or a key is unknown or has a
        wrong value.
    """
    try:
        content = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise BidstrainError(f"cannot read the train settings: {error}", path=path) from None
    try:
        return TrainConfig.with_defaults(content)
    except BidstrainError as error:
        raise BidstrainError(str(error), path=path) from None


@dataclass(frozen=True)
class ModelExpectation:
    """What a configuration expects of a trained model (the ``expect`` of the embed
    job's file, which the plan writes; built by
    :func:`bidstrain.train.expectation.expectation`): a model whose description differs
    is refused (:func:`bidstrain.train.expectation.differences`)."""

    #: the ``train`` keys that determine the weights (:meth:`TrainConfig.hashed`), plain
    train: Mapping[str, Any]
    #: the modalities of the configuration
    modalities: tuple[str, ...]
    #: ``normalize.ddof``
    ddof: int
    #: each modality's mask option (:meth:`NormalizeConfig.mask_option`)
    mask: Mapping[str, str]
    #: ``normalize.confounds.strategy``
    confounds_strategy: str
    #: ``time.tr``: ``native`` or the TR in seconds the runs are resampled to
    tr: float | str = "native"
    #: ``time.method``
    time_method: str = "linear"

    def to_dict(self) -> dict[str, Any]:
        """As plain JSON: ``{"train": ..., "modalities": ..., "normalize": {"ddof",
        "mask", "confounds_strategy"}}``."""
        return {
            "train": dict(self.train),
            "modalities": list(self.modalities),
            "normalize": {
                "ddof": self.ddof,
                "mask": dict(self.mask),
                "confounds_strategy": self.confounds_strategy,
            },
            "time": {"tr": self.tr, "method": self.time_method},
        }

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> ModelExpectation:
        """Type what :meth:`to_dict` wrote.

        Raises
        ------
        BidstrainError
            When a key is missing or of a wrong kind.
        """
        try:
            normalize = values["normalize"]
            return cls(
                train=dict(values["train"]),
                modalities=tuple(values["modalities"]),
                ddof=int(normalize["ddof"]),
                mask=dict(normalize["mask"]),
                confounds_strategy=str(normalize["confounds_strategy"]),
                **_time_fields(values.get("time")),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise BidstrainError(
                f"not a model expectation ({type(error).__name__}: {error}): {values!r:.200}"
            ) from None


@dataclass(frozen=True)
class EmbedJobConfig:
    """What the embed job reads of the configuration (the ``settings`` of the embed.json
    ``Plan.embed_files`` writes)."""

    #: the ``embed`` section (``batch_size``: samples per model call)
    embed: EmbedConfig
    #: ``checks.max_scale_ratio``: the scale guard's bound
    max_scale_ratio: float
    #: ``train.seed``: seeds the token masks of the reconstruction loss
    seed: int

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> EmbedJobConfig:
        """Type the embed job's settings (keys the ``embed`` section leaves out take
        their schema defaults).

        Raises
        ------
        BidstrainError
            When a key is missing, unknown or of a wrong value.
        """
        _require_fields(cls, values, "embed")
        try:
            return cls(
                embed=load_section("embed", values["embed"]),
                max_scale_ratio=float(values["max_scale_ratio"]),
                seed=int(values["seed"]),
            )
        except (TypeError, ValueError) as error:
            raise BidstrainError(f"the embed settings: {error}") from None


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


def _time_fields(time: Mapping[str, Any] | None) -> dict[str, Any]:
    """The ``time`` of a model expectation's plain form (absent: runs at their own TR)."""
    if time is None:
        return {}
    return {"tr": time["tr"], "time_method": str(time["method"])}
