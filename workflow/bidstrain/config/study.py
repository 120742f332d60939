"""The configuration file of a study folder (docs/study-folder.md), and what a run without
one is told."""

from __future__ import annotations

from pathlib import Path

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
