"""Storage: Zarr stores and their shards, atomic writes, NIfTI and text files, orientation, grids,
and the table of stores a normalize job writes. Imports nothing of the package but
:mod:`bidstrain.errors` and the package's version."""
