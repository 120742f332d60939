"""bidstrain: BIDS to normalized Zarr stores, checks, multi-modal training and reports."""

# The one place the version is written: pyproject.toml reads it from here (setuptools'
# dynamic ``attr``), so that every job's process reads it without importing
# importlib.metadata (about 60 ms of each job's start).
__version__ = "0.1.0"
