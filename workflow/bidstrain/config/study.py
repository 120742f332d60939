"""The configuration file of a study folder (docs/study-folder.md), and what a run without
one is told."""

from __future__ import annotations

from pathlib import Path

from bidstrain.config.sections import Config

#: A study folder's configuration, relative to the folder.
STUDY_CONFIG = "config/config.yaml"


def no_configuration(study: Path) -> str:
    """The message of a run in ``study`` that has no :data:`STUDY_CONFIG` and was given no
    ``--configfile``."""
    return (
        f"bidstrain: no configuration: the study folder {study} has no {STUDY_CONFIG} and "
        "no --configfile was given. Make one with `bidstrain init <study folder> --bids-dir "
        f"<dataset>` (or copy the clone's {STUDY_CONFIG} there), or pass --configfile "
        "<file>; see docs/study-folder.md."
    )


def misplaced_paths(study: Path, config: Config) -> list[str]:
    """A warning for each relative path of ``config`` (:meth:`Config.named_files`) that
    names nothing in ``study``, where the workflow reads it, but something in the current
    folder: a path written relative to where ``bidstrain init`` was run, or to a settings
    file beside it, which the first run would report missing."""
    warnings = []
    for key, path in config.named_files().items():
        here = Path(path).absolute()
        if not Path(path).is_absolute() and not (study / path).exists() and here.exists():
            warnings.append(
                f"{key} {path!r} is read from the study folder {study.absolute()}, which has "
                f"no such file; from the current folder it is {here}: write that path in "
                f"{study / STUDY_CONFIG}"
            )
    return warnings
