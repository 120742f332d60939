"""Normalization: one NIfTI image in, one z-scored Zarr store out, in bounded memory.

BOLD runs are z-scored per voxel over time (:mod:`~bidstrain.normalize.bold`); T1w and DWI
per volume over the voxels of a mask (:mod:`~bidstrain.normalize.volumes`); held-out BOLD
runs with the statistics pooled from the same subject's other runs
(:mod:`~bidstrain.normalize.heldout`). BOLD runs can be resampled to one repetition time
(:mod:`~bidstrain.normalize.resample_time`) and their parcels' mean time series written
beside them (:mod:`~bidstrain.normalize.parcels`). Every image is streamed
(:mod:`~bidstrain.normalize.nifti_stream`), never held whole, in the passes of
:mod:`~bidstrain.normalize.passes`; masks come from :mod:`~bidstrain.normalize.masking`.

``python -m bidstrain.normalize {bold,T1w,dwi} --image ... --ingest ... --out ...`` runs
one job of the workflow (:mod:`~bidstrain.normalize.__main__`). A job imports numpy,
nibabel, zarr and isal, and nilearn only to compute an ``epi`` mask.
"""

from bidstrain.normalize.bold import normalize_bold
from bidstrain.normalize.heldout import normalize_with_stats, pooled_statistics
from bidstrain.normalize.image import ImageInfo, Options
from bidstrain.normalize.volumes import normalize_volumes

__all__ = [
    "ImageInfo",
    "Options",
    "normalize_bold",
    "normalize_volumes",
    "normalize_with_stats",
    "pooled_statistics",
]
