"""bidstrain: BIDS to normalized Zarr stores, checks, multi-modal training and reports."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("bidstrain")
except PackageNotFoundError:  # running from a source tree that was not pip-installed
    __version__ = "0.1.0+source"
