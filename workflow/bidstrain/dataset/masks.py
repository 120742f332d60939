"""The mask options of the config, without the code that computes masks: what the plan
needs at parse time (:mod:`bidstrain.normalize.masking` computes and reads masks).

``normalize.mask`` (BOLD), ``normalize.t1w_mask`` and ``normalize.dwi_mask`` take a
keyword (``epi``, ``head``, ``none``; ``auto`` the plan resolves) or a path pattern with
``{bids_dir}``, ``{subject}``, ``{session}`` and any BIDS entity key as placeholders.
"""

from __future__ import annotations

import string
from collections.abc import Mapping
from pathlib import Path

from bidstrain.errors import BidstrainError

KEYWORDS = frozenset({"epi", "head", "none"})
#: Config key of each modality's mask option, for error messages.
MASK_KEYS = {"bold": "normalize.mask", "T1w": "normalize.t1w_mask", "dwi": "normalize.dwi_mask"}
#: The computed mask of each modality (what ``auto`` means for raw data).
DEFAULT_MASKS = {"bold": "epi", "T1w": "head", "dwi": "epi"}
_ENTITY_ALIASES = {"subject": "sub", "session": "ses"}


def is_pattern(mask: str) -> bool:
    """Whether a mask config value is a path pattern rather than a keyword."""
    return mask not in KEYWORDS


def resolve_pattern(
    pattern: str, entities: Mapping[str, str], bids_dir: str | Path, config_key: str
) -> str:
    """Fill a mask path pattern for one image.

    Parameters
    ----------
    pattern : str
        The config value, with ``{placeholders}``.
    entities : mapping
        The image's BIDS entities (``sub``, ``ses``, ``task``, ``run``...).
    bids_dir : str or Path
        Value of ``{bids_dir}``.
    config_key : str
        The config key the pattern came from, for error messages.

    Raises
    ------
    BidstrainError
        When the pattern names an entity the image does not have.
    """
    values = {"bids_dir": str(bids_dir)}
    for _, name, _, _ in string.Formatter().parse(pattern):
        if name is None or name == "bids_dir":
            continue
        key = _ENTITY_ALIASES.get(name, name)
        if key not in entities:
            raise BidstrainError(
                f"config {config_key} {pattern!r} uses {{{name}}}, but the image has no "
                f"'{key}' entity (its entities: {dict(entities)})",
                subject=entities.get("sub"),
            )
        values[name] = entities[key]
    return pattern.format(**values)
