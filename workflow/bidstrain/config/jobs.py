"""What a job reads of the configuration, from the file or param its rule passes: typed
again by the job (keys left out take their schema defaults), and what changed since the
previous parse."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
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


#: Items a phrase names before ``and N more``.
NAMED = 3
#: Characters up to which a changed list is shown whole (``[1, 2] -> [1, 3]``); a longer
#: one is told by its entries added and removed.
SHOWN = 60
#: What a key missing on one side reads as.
ABSENT = "(absent)"


def setting_changes(old: Any, new: Any) -> list[str]:
    """What differs between two plain values (settings, and the plan's files as JSON
    holds them), one phrase per difference, nested keys dotted.

    A scalar, or a short list, reads ``lr 0.001 -> 0.002`` (``loss.normalize var ->
    std``); a longer list, by its entries added and removed (``training.bold: 1 added
    (x.zarr), 1 removed (y.zarr)``); a list of entries that each name a different
    ``store`` (a subject's normalize spec), store by store (``[x.zarr].stats_from [] ->
    ["y.zarr"]``). A top-level list's phrases have no key.
    """
    return list(_changes(old, new, ""))


def named(items: Sequence[Any]) -> str:
    """The first :data:`NAMED` of ``items``, comma-separated, then ``and N more``."""
    more = f" and {len(items) - NAMED} more" if len(items) > NAMED else ""
    return ", ".join(_item(item) for item in items[:NAMED]) + more


def _changes(old: Any, new: Any, key: str) -> Iterator[str]:
    """The phrases of :func:`setting_changes` under ``key`` (empty at the top)."""
    if old == new:
        return
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        for name in sorted(set(old) | set(new)):
            inner = f"{key}.{name}" if key else str(name)
            yield from _changes(old.get(name, ABSENT), new.get(name, ABSENT), inner)
    elif isinstance(old, list) and isinstance(new, list):
        before, after = _by_store(old), _by_store(new)
        if before is not None and after is not None:
            yield from _entry_changes(before, after, key)
        elif max(len(_shown(old)), len(_shown(new))) > SHOWN:
            yield from _membership(old, new, key, lambda value: json.dumps(value, sort_keys=True))
        else:
            yield f"{key} {_shown(old)} -> {_shown(new)}".lstrip()
    else:
        yield f"{key} {_shown(old)} -> {_shown(new)}".lstrip()


def _by_store(items: list) -> dict[str, Any] | None:
    """``{store: entry}`` when every entry is a mapping that names a different store."""
    if not items or not all(
        isinstance(i, Mapping) and isinstance(i.get("store"), str) for i in items
    ):
        return None
    entries = {item["store"]: item for item in items}
    return entries if len(entries) == len(items) else None


def _entry_changes(before: dict[str, Any], after: dict[str, Any], key: str) -> list[str]:
    """Each kept store's own changes, then the stores added and removed; their order only
    when nothing else changed."""
    changed = [
        change
        for store, entry in after.items()
        if store in before
        for change in _changes(before[store], entry, f"{key}[{store}]")
    ]
    if not changed or set(before) != set(after):
        changed += _membership(list(before), list(after), key, str)
    return changed


def _membership(old: list, new: list, key: str, identity) -> Iterator[str]:
    """Entries of ``new`` not in ``old`` (added), of ``old`` not in ``new`` (removed), or
    the same entries otherwise ordered or repeated (entries compared by ``identity``)."""
    label = f"{key}: " if key else ""
    before, after = [identity(v) for v in old], [identity(v) for v in new]
    kept_before, kept_after = set(before), set(after)
    added = [value for value, i in zip(new, after, strict=True) if i not in kept_before]
    removed = [value for value, i in zip(old, before, strict=True) if i not in kept_after]
    if added:
        yield f"{label}{len(added)} added ({named(added)})"
    if removed:
        yield f"{label}{len(removed)} removed ({named(removed)})"
    if not added and not removed:
        same = Counter(before) == Counter(after)
        yield f"{label}the same entries " + ("in another order" if same else "repeated otherwise")


def _item(value: Any) -> str:
    return value if isinstance(value, str) else _shown(value)


def _shown(value: Any) -> str:
    return json.dumps(value) if isinstance(value, list | tuple | Mapping) else str(value)


def _time_fields(time: Mapping[str, Any] | None) -> dict[str, Any]:
    """The ``time`` of a model expectation's plain form (absent: runs at their own TR)."""
    if time is None:
        return {}
    return {"tr": time["tr"], "time_method": str(time["method"])}
