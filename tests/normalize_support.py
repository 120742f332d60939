"""Normalization options for the tests that call the normalizers directly."""

from __future__ import annotations

import dataclasses

from bidstrain.config import Config, validate_config
from bidstrain.normalize import Options

#: The ``normalize`` section of the schema's defaults.
DEFAULT_NORMALIZE = Config.from_dict(validate_config({"bids_dir": ""})).normalize


def image_options(mask: str, **changes) -> Options:
    """The options of an image with ``mask`` under the default ``normalize`` section,
    with ``changes`` (``ddof``, ``block_volumes``, ...)."""
    return dataclasses.replace(Options.from_config(DEFAULT_NORMALIZE, mask), **changes)
