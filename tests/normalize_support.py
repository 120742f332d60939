"""Normalization options for the tests that call the normalizers directly, and a disk that
fills up under the masked-voxel cache."""

from __future__ import annotations

import dataclasses

import bidstrain.normalize.masked_cache as masked_cache
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


def fill_the_disk_after(monkeypatch, writes: int) -> None:
    """Make every masked-voxel cache file (:mod:`bidstrain.normalize.masked_cache`) fail
    its writes after the first ``writes``, as a full disk does."""
    temporary_file = masked_cache.tempfile.TemporaryFile

    class FillsUp:
        def __init__(self, **kwargs):
            self.file, self.writes = temporary_file(**kwargs), 0

        def write(self, data):
            self.writes += 1
            if self.writes > writes:
                raise OSError(28, "No space left on device")
            return self.file.write(data)

        def close(self):
            self.file.close()

    monkeypatch.setattr(masked_cache.tempfile, "TemporaryFile", FillsUp)
