"""Voxels of a run kept in a temporary file, so that the image is decompressed once.

A BOLD run is streamed two or three times (:mod:`bidstrain.normalize.passes`): the
statistics of the whole grid (pass 1), those of the resampled frames (when resampled),
then the z-scores. The passes after the first read only the voxels of the mask. Pass 1
writes the stored values of the voxels the mask will be taken from (:func:`cache_plan`)
to an unnamed temporary file (``tempfile.TemporaryFile``: in ``$TMPDIR``, removed when
closed or when the process dies), and the later passes read them back instead of
decompressing the image again: for a 96x96x96x300 int16 ``.nii.gz`` with 230,000 voxels
in the mask, about 160 MB written and read back through the page cache instead of
531 MB decompressed (about 1 s) per pass.

Which voxels pass 1 keeps, before it knows the mask:

- a mask file: its voxels;
- ``epi``: the voxels of the first block's mean volume above a lowered EPI threshold,
  dilated by :data:`MARGIN_VOXELS` voxels (:func:`_epi_candidates`; the mask of the whole
  run's mean differs from the first block's by a few voxels at its edge);
- ``none`` (and ``head``): none (the whole grid: writing 530 MB through the page cache
  costs about what it saves).

When the final mask is not inside the kept voxels, or when they are more than
:data:`MAX_FRACTION` of the grid, nothing is kept by pass 1. A resampled run then keeps
the mask's voxels in its frame pass for the z-score pass, as before. Should the file fail
to be written (a full disk), the cache is dropped with a warning and the next pass
decompresses the image. Either way the store is the same: the cache holds the stored
values themselves.

Disk: ``itemsize`` bytes per kept voxel and volume; memory: one block of them.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable, Iterator

import numpy as np

from bidstrain.normalize.image import Options
from bidstrain.normalize.masking import dilate, gap_threshold
from bidstrain.normalize.nifti_stream import NiftiLayout

log = logging.getLogger(__name__)

#: Dilation (voxels) of the first block's bright voxels, the voxels pass 1 keeps for
#: ``epi``: nilearn's mask lies within this distance of its thresholded volume.
MARGIN_VOXELS = 2
#: Voxels are kept for ``epi`` above this fraction of the way from the first block's dark
#: voxels (its 20th percentile) to its EPI threshold.
CANDIDATE_THRESHOLD = 0.5
#: The first block's EPI threshold is estimated on every this-many-th voxel.
CANDIDATE_STRIDE = 4
#: Pass 1 keeps nothing when the voxels to keep are more than this fraction of the grid.
MAX_FRACTION = 0.5


class MaskedCache:
    """Stored values of some voxels, written block after block by one pass, read by the next.

    Parameters
    ----------
    index : ndarray of int
        Flat stored positions of the voxels kept (:meth:`NiftiLayout.stored_index`).
    dtype : numpy.dtype
        Their stored type (native byte order).
    n_volumes : int
        Volumes of the run: the cache is complete when all were appended.
    """

    def __init__(self, index: np.ndarray, dtype: np.dtype, n_volumes: int):
        self.index = np.asarray(index, dtype=np.intp)
        self.dtype = np.dtype(dtype)
        self.n_volumes = n_volumes
        self._written = 0
        self._file = tempfile.TemporaryFile(prefix="bidstrain-masked-")

    @property
    def complete(self) -> bool:
        """Whether every volume was appended (and the file is still usable)."""
        return self._file is not None and self._written == self.n_volumes

    def append(self, masked: np.ndarray) -> None:
        """Write the next volumes, ``(n, index.size)``, in order; on a write error, drop the
        cache (warning) so that the next pass reads the image."""
        if self._file is None:
            return
        try:
            self._file.write(np.ascontiguousarray(masked, dtype=self.dtype).data)
        except OSError as error:
            log.warning("cannot keep the masked voxels in a temporary file (%s): the "
                        "next pass decompresses the image again", error)  # fmt: skip
            self.close()
            return
        self._written += masked.shape[0]

    def append_grid(self, values: np.ndarray) -> np.ndarray | None:
        """Write the kept voxels of the next whole-grid volumes, ``(n, n_grid)``, and
        return them (None once the cache is dropped; the volumes of the write that drops
        it are still returned, so check :attr:`complete` before trusting what was
        computed from them)."""
        if self._file is None:
            return None
        kept = np.take(values, self.index, axis=1, mode="clip")  # indices valid
        self.append(kept)
        return kept

    def columns(self, index: np.ndarray) -> np.ndarray | None:
        """The columns of the cached voxels at stored positions ``index``; None when one
        of them is not cached."""
        index = np.asarray(index, dtype=np.intp)
        if np.array_equal(index, self.index):
            return np.arange(index.size)
        lookup = np.full(max(int(self.index.max(initial=-1)), int(index.max(initial=-1))) + 1, -1)
        lookup[self.index] = np.arange(self.index.size)
        columns = lookup[index]
        return None if (columns < 0).any() else columns

    def blocks(self, block_volumes: int, index: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(start, masked)`` of ``block_volumes`` volumes (the last may be shorter)
        of the voxels at stored positions ``index`` (all cached), as
        :func:`bidstrain.normalize.nifti_stream.iter_blocks` after ``index``; ``masked``
        is a reused buffer, valid until the next block is requested."""
        if not self.complete:
            raise RuntimeError("the masked-voxel cache is incomplete")
        columns = self.columns(index)
        if columns is None:
            raise RuntimeError("voxels outside the masked-voxel cache")
        identity = np.array_equal(index, self.index)
        buffer = np.empty((block_volumes, self.index.size), dtype=self.dtype)
        masked = buffer if identity else np.empty((block_volumes, columns.size), self.dtype)
        self._file.seek(0)
        for start in range(0, self.n_volumes, block_volumes):
            n = min(block_volumes, self.n_volumes - start)
            view = memoryview(buffer[:n]).cast("B")
            if self._file.readinto(view) != view.nbytes:
                raise RuntimeError("the masked-voxel cache file ends early")
            if not identity:
                np.take(buffer[:n], columns, axis=1, out=masked[:n], mode="clip")
            yield start, masked[:n]

    def close(self) -> None:
        """Remove the file."""
        if self._file is not None:
            self._file.close()
            self._file = None


#: Given pass 1's first block of whole-grid stored values, the cache to fill (or None).
CachePlan = Callable[[np.ndarray], "MaskedCache | None"]


def cache_plan(layout: NiftiLayout, options: Options, mask: np.ndarray | None) -> CachePlan | None:
    """What pass 1 keeps of a run for the later passes (see the module's notes), given its
    mask file's mask (:func:`~bidstrain.normalize.masking.mask_file`, None for a computed
    one); None when nothing."""
    if mask is not None:
        return known_mask_plan(layout, mask)
    if options.mask == "epi":
        return lambda first: _cache(layout, _epi_candidates(layout, first))
    return None


def known_mask_plan(layout: NiftiLayout, mask: np.ndarray) -> CachePlan:
    """Pass 1 keeps the voxels of ``mask`` (on the RAS+ grid), known before the image is
    read."""
    return lambda first: _cache(layout, layout.stored_index(mask))


def _epi_candidates(layout: NiftiLayout, first: np.ndarray) -> np.ndarray:
    """Stored positions of the voxels the run's EPI mask can reach, from the first block.

    nilearn's mask lies within two voxels of the smoothed mean volume's voxels at or above
    its threshold (:func:`~bidstrain.normalize.masking.epi_mask`: erosion by 2, dilation
    by 4, erosion by 2). Here the threshold is that of the first block's unsmoothed mean
    (sorted on every :data:`CANDIDATE_STRIDE`-th voxel), lowered halfway
    (:data:`CANDIDATE_THRESHOLD`) towards the volume's dark voxels to cover the smoothing
    and the difference between the first block and the run (halfway to 0 where the
    background is 0; the same voxels whatever the intensities' offset), and the voxels
    above it are dilated by :data:`MARGIN_VOXELS`; all in numpy, so that the
    decompressing thread, which runs at most two blocks ahead, does not wait for
    ``scipy.ndimage``'s import and the mask's morphology (about 0.3 s).
    """
    mean = layout.to_grid(first.mean(axis=0, dtype=np.float64) * layout.slope + layout.inter)
    mean[~np.isfinite(mean)] = 0  # as the EPI mask treats them
    found = gap_threshold(mean.ravel()[::CANDIDATE_STRIDE])
    if found is None:
        return layout.stored_index(np.ones(layout.shape, dtype=bool))
    dark, threshold = found  # dark: the 20th percentile, where the search for a gap starts
    bright = mean >= dark + CANDIDATE_THRESHOLD * (threshold - dark)
    return layout.stored_index(dilate(bright, MARGIN_VOXELS))


def _cache(layout: NiftiLayout, index: np.ndarray) -> MaskedCache | None:
    if index.size > MAX_FRACTION * layout.n_grid:
        return None
    return MaskedCache(index, layout.dtype.newbyteorder("="), layout.n_volumes)
