"""Normalization: one NIfTI image in, one z-scored Zarr store out, in bounded memory.

BOLD runs are z-scored per voxel over time (:mod:`~bidstrain.normalize.bold`); T1w and DWI
per volume over the voxels of a mask (:mod:`~bidstrain.normalize.volumes`); held-out BOLD
runs with the statistics pooled from the same subject's other runs
(:mod:`~bidstrain.normalize.heldout`). BOLD runs can be resampled to one repetition time
(:mod:`~bidstrain.normalize.resample_time`) and their parcels' mean time series written
beside them (:mod:`~bidstrain.normalize.parcels`). Every image is streamed
(:mod:`~bidstrain.normalize.nifti_stream`), never held whole, in the passes of
:mod:`~bidstrain.normalize.passes`; masks come from :mod:`~bidstrain.normalize.masking`.

Confounds of fMRIPrep runs are regressed out in the same passes
(:mod:`~bidstrain.normalize.confounds`); the per-voxel sums live in
:mod:`~bidstrain.normalize.moments`, and what a job is given (the image's description and
the settings) in :mod:`~bidstrain.normalize.image`.

``python -m bidstrain.normalize --subject ... --ingest ... --spec ... --out-table ...``
(:mod:`~bidstrain.normalize.__main__`) is the job of rule ``normalize_subject``: it
validates every image of one subject, writes the subject's ingest record, then normalizes
the images its ``--spec`` lists, one store each. A job imports numpy, nibabel, zarr and
isal; ``scipy.ndimage`` only to compute a mask, and nilearn only for confound regression.
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
