"""Confound regression of a BOLD run, as ``nilearn.signal.clean`` does it, in two streamed passes.

The confounds and the sample mask come from
:func:`nilearn.interfaces.fmriprep.load_confounds_strategy` (config
``normalize.confounds``). For a masker without filter or detrending
(``NiftiMasker(standardize="zscore_sample", detrend=False)``), ``signal.clean``
(nilearn 0.13):

1. keeps the sample mask's volumes, of the signals and of the confounds alike;
2. standardizes the confounds: minus their mean, divided by their population std (a std
   below machine epsilon counts as 1);
3. takes a QR decomposition of them with column pivoting, keeps the columns of ``Q``
   whose ``|R_ii|`` exceeds ``100 * eps``, and removes ``Q Q' Y`` from the signals ``Y``;
4. z-scores each voxel: minus its mean, divided by its sample std (ddof 1).

The confounds being centered, ``Q' 1 = 0``: the residual keeps each voxel's mean, and with
``B = Q' Y`` (one row per confound, one column per voxel) and the kept volumes' centered
sum of squares ``S``::

    residual variance = (S - sum(B ** 2)) / (n_kept - ddof)
    z[t] = (y[t] - mean - Q[t] B) / sqrt(residual variance)

So pass 1 accumulates ``B`` beside the per-voxel moments, and pass 2 streams the
residuals (:meth:`ConfoundRegression.residuals`) that become ``z``; the image is never
held, nor is any float64 copy of it. Volumes outside the sample mask are
not written: the store's ``time`` coordinate holds the onsets of the volumes kept.
``B`` and the products are computed on batches of :data:`BATCH_VOLUMES` volumes and
tiles of :data:`TILE_VOXELS` voxels, on one BLAS thread (the other core decompresses).

Every sum and product is float64 (``B`` of the deviations from the first kept volume);
only the stored z-scores are float32, within 2.4e-7 of nilearn run in float64
(``NiftiMasker(dtype=np.float64)``). nilearn's default keeps int16 and float32 images in
float32 and sums each voxel's mean over time in float32, which moves its z-scores by
several 1e-5 at scanner scale (more for longer runs or smaller temporal variation).

A held-out run regresses its own confounds (pass 1 is then ``B`` only) and is z-scored
with the statistics of the training runs.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bidstrain.errors import BidstrainError
from bidstrain.normalize.image import ImageInfo, Options
from bidstrain.normalize.masking import mask_file
from bidstrain.normalize.nifti_stream import NiftiLayout

log = logging.getLogger(__name__)

#: Config ``normalize.confounds.strategy`` values: none, or nilearn's denoise strategies.
STRATEGIES = ("none", "simple", "scrubbing", "compcor", "ica_aroma")
#: Volumes per matrix product (measured: 16 about 1.2x slower per pass than 32 and half
#: its memory; 4, the read block, about 2x slower).
BATCH_VOLUMES = 16
#: Voxels per tile of the products, so that their float64 operands stay in cache.
TILE_VOXELS = 2**13


@dataclass(frozen=True)
class RunConfounds:
    """A run's confounds, ready for the regression.

    Attributes
    ----------
    table : Path
        The confounds table (fMRIPrep's ``desc-confounds_timeseries.tsv``).
    strategy : str
        The denoise strategy they were loaded with.
    columns : tuple of str
        The confounds regressed out.
    kept : ndarray of bool, shape (n_volumes,)
        The volumes of the sample mask (all when nilearn gives none).
    basis : ndarray, shape (n_kept, k), float64
        Orthonormal columns spanning the standardized confounds over the kept volumes
        (:func:`confound_basis`).
    """

    table: Path
    strategy: str
    columns: tuple[str, ...]
    kept: np.ndarray
    basis: np.ndarray

    @property
    def n_kept(self) -> int:
        """Volumes kept."""
        return int(self.kept.sum())


def confound_basis(confounds: np.ndarray) -> np.ndarray:
    """Orthonormal basis of the confounds' span, exactly as ``nilearn.signal.clean`` builds it.

    Parameters
    ----------
    confounds : ndarray, shape (n_kept, n_confounds)
        The confounds of the kept volumes.

    Returns
    -------
    ndarray, shape (n_kept, k), float64
        ``Q`` of a pivoted QR decomposition of the standardized confounds, without the
        columns whose ``|R_ii|`` is at most ``100 * eps`` (collinear confounds).
    """
    from scipy import linalg

    confounds = np.asarray(confounds, dtype=np.float64)
    centered = confounds - confounds.mean(axis=0)
    std = centered.std(axis=0)
    std[std < np.finfo(np.float64).eps] = 1.0
    q, r, _ = linalg.qr(centered / std, mode="economic", pivoting=True)
    return np.ascontiguousarray(q[:, np.abs(np.diag(r)) > np.finfo(np.float64).eps * 100.0])


def load_run_confounds(
    image: str | Path,
    table: str | Path,
    strategy: str,
    options: Mapping[str, Any],
    n_volumes: int,
    ddof: int,
    subject: str | None = None,
) -> RunConfounds:
    """Load a run's confounds and sample mask with nilearn's ``load_confounds_strategy``.

    nilearn finds the table next to ``image`` from its name; ``table`` is that file, named
    by the workflow so that a change of it reruns the job.

    Parameters
    ----------
    image : str or Path
        The run (fMRIPrep's ``..._desc-preproc_bold.nii.gz``).
    table : str or Path
        Its confounds table.
    strategy : str
        One of :data:`STRATEGIES` but ``none`` (config ``normalize.confounds.strategy``).
    options : mapping
        Keyword arguments of ``load_confounds_strategy`` (``motion``, ``wm_csf``,
        ``global_signal``, ``fd_threshold``...; config ``normalize.confounds.options``).
    n_volumes : int
        Volumes of the run.
    ddof : int
        Delta degrees of freedom of the z-score.
    subject : str, optional
        For messages.

    Raises
    ------
    BidstrainError
        When the table is missing or not next to the image, nilearn cannot load the
        strategy (a column it needs is missing: nilearn's message), the table's rows are
        not the run's volumes, a confound holds n/a beyond the first row, or the sample
        mask leaves fewer than ``ddof + 2`` volumes, or the confounds leave fewer than
        ``ddof + 1`` degrees of freedom to the signal.
    """
    if strategy not in STRATEGIES[1:]:
        raise BidstrainError(
            f"confounds strategy {strategy!r} is not one of {', '.join(STRATEGIES[1:])}"
        )
    image, table = Path(image), Path(table)
    if not table.is_file() or table.parent.resolve() != image.parent.resolve():
        raise BidstrainError(
            f"the confounds table must exist next to the run {image.name} (nilearn reads it "
            "from there)",
            path=table,
            subject=subject,
        )
    frame, sample_mask = _nilearn_confounds(image, table, strategy, options, subject)
    if len(frame) != n_volumes:
        raise BidstrainError(
            f"the confounds table has {len(frame)} rows but the run {image.name} has "
            f"{n_volumes} volumes",
            path=table,
            subject=subject,
        )
    kept = np.ones(n_volumes, dtype=bool)
    if sample_mask is not None:
        kept[:] = False
        kept[np.asarray(sample_mask, dtype=np.int64)] = True
    if kept.sum() < ddof + 2:
        raise BidstrainError(
            f"strategy {strategy!r} keeps {int(kept.sum())} of {n_volumes} volumes "
            f"(non-steady-state and scrubbed volumes removed); at least {ddof + 2} are "
            "needed (ddof + 2); relax the options (fd_threshold, std_dvars_threshold, scrub)",
            path=table,
            subject=subject,
        )
    values = frame.to_numpy(dtype=np.float64)[kept]
    finite = np.isfinite(values).all(axis=0)
    bad = [name for name, ok in zip(frame.columns, finite, strict=True) if not ok]
    if bad:
        raise BidstrainError(
            f"confounds {', '.join(bad)} hold n/a or infinite values in kept volumes",
            path=table,
            subject=subject,
        )
    basis = confound_basis(values)
    left = int(kept.sum()) - 1 - basis.shape[1]  # residual degrees of freedom
    if left < ddof + 1:
        raise BidstrainError(
            f"strategy {strategy!r} keeps {int(kept.sum())} of {n_volumes} volumes and "
            f"regresses {basis.shape[1]} independent confounds out of them: {max(left, 0)} "
            f"degrees of freedom are left to the signal, at least {ddof + 1} are needed "
            "(the z-scores would be zeros); use a strategy with fewer confounds for a run "
            "this short, or leave it out",
            path=table,
            subject=subject,
        )
    return RunConfounds(table, strategy, tuple(frame.columns), kept, basis)


def _nilearn_confounds(
    image: Path, table: Path, strategy: str, options: Mapping[str, Any], subject: str | None
) -> tuple[Any, np.ndarray | None]:
    """nilearn's ``load_confounds_strategy`` of the run: its confounds (a DataFrame) and
    sample mask; nilearn's warnings logged, and its notice of an option the strategy does
    not use raised (a misspelt option would otherwise be dropped without a word)."""
    from nilearn.interfaces.fmriprep import load_confounds_strategy

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", UserWarning)
            warnings.simplefilter("ignore", RuntimeWarning)  # "all volumes": load_run_confounds
            frame, sample_mask = load_confounds_strategy(
                str(image), denoise_strategy=strategy, **dict(options)
            )
    except (ValueError, KeyError, TypeError) as error:
        raise BidstrainError(
            f"nilearn cannot load confounds strategy {strategy!r} "
            f"(options {dict(options)}) from this table: {error}",
            path=table,
            subject=subject,
        ) from None
    messages = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    unused = [m for m in messages if "not needed for the selected" in m]
    for message in set(messages) - set(unused):
        log.warning("sub-%s: %s: nilearn: %s", subject, table, message)
    if unused:
        raise BidstrainError(
            f"config normalize.confounds.options: {unused[0]} (nilearn)",
            path=table,
            subject=subject,
        )
    return frame, sample_mask


def fixed_mask_index(layout: NiftiLayout, info: ImageInfo, options: Options) -> np.ndarray:
    """Stored positions of the voxels the regression is fitted on in pass 1.

    A mask file is known before the image is read: its voxels. A computed mask (``epi``,
    ``head``) or ``none``: every voxel of the grid (``8 k`` bytes each for ``k``
    confounds).
    """
    mask = mask_file(layout, info, options)
    if mask is not None:
        return layout.stored_index(mask)
    return np.arange(layout.n_grid, dtype=np.intp)


class ConfoundRegression:
    """The regression of one run's confounds, fitted in pass 1 and applied in pass 2.

    Parameters
    ----------
    confounds : RunConfounds
        From :func:`load_run_confounds`.
    layout : NiftiLayout
        The run.
    index : ndarray of int
        Stored positions of the voxels to fit (:func:`fixed_mask_index`, or a known mask).

    Notes
    -----
    Memory: ``B`` (``8 k`` bytes per fitted voxel), a batch of :data:`BATCH_VOLUMES`
    gathered stored volumes and, in pass 2, their float64 residuals.
    """

    def __init__(self, confounds: RunConfounds, layout: NiftiLayout, index: np.ndarray):
        self.confounds = confounds
        self.index = np.asarray(index, dtype=np.intp)
        self.coef = np.zeros((confounds.basis.shape[1], self.index.size), dtype=np.float64)
        self._dtype = layout.dtype.newbyteorder("=")
        self._batch = np.empty((BATCH_VOLUMES, self.index.size), dtype=self._dtype)
        self._n_batch = 0
        self._fitted = 0  # kept volumes added to coef so far
        self._shift: np.ndarray | None = None

    @property
    def kept(self) -> np.ndarray:
        """Volumes kept (bool, one per volume of the run)."""
        return self.confounds.kept

    def select(self, start: int, values: np.ndarray) -> np.ndarray:
        """The kept volumes of a block read at volume ``start``."""
        rows = self.kept[start : start + values.shape[0]]
        return values if rows.all() else values[rows]

    def _batches(self, values: np.ndarray, gathered: bool = False):
        """Gather kept volumes into the batch (their voxels of ``index``, or all of them
        when ``gathered``); yield each time it is full."""
        row = 0
        while row < values.shape[0]:
            n = min(values.shape[0] - row, BATCH_VOLUMES - self._n_batch)
            out = self._batch[self._n_batch : self._n_batch + n]
            if gathered:
                out[...] = values[row : row + n]
            else:
                np.take(values[row : row + n], self.index, axis=1, out=out, mode="clip")
            self._n_batch += n
            row += n
            if self._n_batch == BATCH_VOLUMES:
                yield

    def accumulate(self, values: np.ndarray) -> None:
        """Pass 1: add kept volumes (stored values, whole grid, in time order) to ``B``."""
        for _ in self._batches(values):
            self._flush()

    def _flush(self) -> None:
        """Add the gathered batch to ``B = Q' (Y - shift)`` (``Q' 1 = 0``: any shift)."""
        from threadpoolctl import threadpool_limits

        n, batch = self._n_batch, self._batch[: self._n_batch]
        if not n:
            return
        if self._shift is None:  # the first kept volume: smaller sums, same B
            self._shift = batch[0].astype(np.float64)
        q = self.confounds.basis[self._fitted : self._fitted + n].T
        with threadpool_limits(1, user_api="blas"):
            for tile in range(0, self.index.size, TILE_VOXELS):
                cols = slice(tile, tile + TILE_VOXELS)
                deviations = batch[:, cols] - self._shift[cols]
                self.coef[:, cols] += q @ deviations
        self._fitted += n
        self._n_batch = 0

    def restrict(self, index: np.ndarray) -> None:
        """Keep ``B`` of the voxels at stored positions ``index`` only (the final mask's)."""
        self._flush()
        if self._fitted != self.confounds.n_kept:
            raise RuntimeError(f"{self._fitted} of {self.confounds.n_kept} volumes fitted")
        index = np.asarray(index, dtype=np.intp)
        if np.array_equal(index, self.index):  # the usual case: no copy of B
            return
        lookup = np.full(int(self.index.max(initial=-1)) + 1, -1, dtype=np.intp)
        lookup[self.index] = np.arange(self.index.size)
        columns = lookup[index]
        if (columns < 0).any():
            raise RuntimeError("restrict: voxels outside the fitted ones")
        self.coef, self.index = np.ascontiguousarray(self.coef[:, columns]), index
        self._batch = np.empty((BATCH_VOLUMES, self.index.size), dtype=self._dtype)

    def residual_variance(self, variance: np.ndarray, layout: NiftiLayout, ddof: int) -> np.ndarray:
        """Per-voxel variance after the regression, from the kept volumes' ``variance``.

        ``variance`` is in real units, over the voxels of :meth:`restrict`'s ``index``.
        """
        explained = np.einsum("ij,ij->j", self.coef, self.coef) * layout.slope**2
        residual = variance - explained / (self.confounds.n_kept - ddof)
        return np.maximum(residual, 0.0)

    def residuals(self, blocks: Iterable[tuple[int, np.ndarray]], center: np.ndarray):
        """Pass 2: the residuals ``stored - center - Q[t] B`` of the kept volumes.

        ``blocks`` are the run's ``(start, masked)`` blocks of stored values, in order, of
        the voxels of :meth:`restrict`'s ``index``
        (:func:`bidstrain.normalize.passes.masked_blocks`); ``center`` is per voxel of
        that ``index``, in stored units (see
        :func:`bidstrain.normalize.passes.zscore_parameters`).

        Yields
        ------
        positions : ndarray of int
            The source volumes of the rows (kept volumes only).
        residuals : ndarray, shape (len(positions), n_voxel), float64
            A reused buffer: valid until the next item is requested.
        """
        from threadpoolctl import threadpool_limits

        kept = np.flatnonzero(self.kept)
        residual = np.empty((BATCH_VOLUMES, self.index.size), dtype=np.float64)
        written = 0

        def batch_residuals():
            n, batch = self._n_batch, self._batch[: self._n_batch]
            q = self.confounds.basis[written : written + n]
            with threadpool_limits(1, user_api="blas"):
                for tile in range(0, self.index.size, TILE_VOXELS):
                    cols = slice(tile, tile + TILE_VOXELS)
                    np.subtract(batch[:, cols], center[cols], out=residual[:n, cols])
                    residual[:n, cols] -= q @ self.coef[:, cols]
            self._n_batch = 0
            return kept[written : written + n], residual[:n]

        for start, values in blocks:
            for _ in self._batches(self.select(start, values), gathered=True):
                positions, rows = batch_residuals()
                yield positions, rows
                written += positions.size
        if self._n_batch:
            yield batch_residuals()
