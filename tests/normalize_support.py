"""Normalization options for the tests that call the normalizers directly."""

from __future__ import annotations

import dataclasses

from bidstrain.config import Config, validate_config
from bidstrain.normalize import Options

_DEFAULTS = Config.from_dict(validate_config({"bids_dir": ""}))
#: The ``normalize`` and ``time`` sections of the schema's defaults.
DEFAULT_NORMALIZE, DEFAULT_TIME = _DEFAULTS.normalize, _DEFAULTS.time


def image_options(mask: str, **changes) -> Options:
    """The options of an image with ``mask`` under the default ``normalize`` and ``time``
    sections,
    with ``changes`` (``ddof``, ``block_volumes``, ...)."""
    return dataclasses.replace(
        Options.from_config(DEFAULT_NORMALIZE, DEFAULT_TIME, mask), **changes
    )
