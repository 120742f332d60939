"""The stimulus features that come with BOLD windows (``train.stimuli``).

Each BOLD sample (a window of ``W`` frames starting at frame ``t`` of a store) also
carries the aligned features of the same frames, rows ``t .. t + W`` of the store's
aligned store of each kind (:mod:`bidstrain.stimuli.alignment`: one row per frame of the
BOLD store, parcel stores sharing the frames of their voxel store), as ``(n, W,
features)`` under the kind's name in the batch, in the order of the batch's BOLD samples.

The aligned stores are small (a few hundred values per frame): each is read once, on
first use, and kept in memory by the process that reads it (a DataLoader worker reads its
own).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from bidstrain.errors import BidstrainError
from bidstrain.io.store import read_aligned_store
from bidstrain.modalities import MODALITIES, STIMULUS_KINDS

BOLD = MODALITIES.index("bold")


class StimulusWindows:
    """The aligned features of ``kinds`` of BOLD stores, read by window.

    Parameters
    ----------
    aligned : mapping
        ``{BOLD store: {kind: aligned store}}`` (the ``stimuli`` of the trainer's store
        file, :attr:`bidstrain.plan.Plan.trained_stimuli`), for the stores the trainer
        reads.
    kinds : sequence of str
        ``train.stimuli``.
    """

    def __init__(self, aligned: Mapping[str, Mapping[str, str]], kinds: Sequence[str]):
        self.kinds = tuple(k for k in STIMULUS_KINDS if k in kinds)
        self.aligned = {os.path.normpath(bold): dict(stores) for bold, stores in aligned.items()}
        self._features: dict[str, np.ndarray] = {}
        #: ``{kind: features}`` once :meth:`check` ran
        self.n_features: dict[str, int] = {}

    def __getstate__(self) -> dict:
        # a worker reads the stores it needs itself rather than unpickling every one
        return {**self.__dict__, "_features": {}}

    def store(self, bold: str, kind: str) -> str:
        """The aligned store of ``kind`` of the BOLD store ``bold``.

        Raises
        ------
        BidstrainError
            Naming the BOLD store when it has none.
        """
        path = self.aligned.get(os.path.normpath(bold), {}).get(kind)
        if path is None:
            raise BidstrainError(
                f"train.stimuli {list(self.kinds)}: this BOLD run has no aligned {kind} "
                "stimulus store (its events.tsv names no stimulus of that kind; rerun the "
                "workflow so that the plan lists the run's aligned stores)",
                path=bold,
            )
        return path

    def features(self, bold: str, kind: str) -> np.ndarray:
        """The aligned features ``(frames, features)`` float32 of a BOLD store, read once."""
        path = self.store(bold, kind)
        if path not in self._features:
            self._features[path] = np.ascontiguousarray(
                read_aligned_store(path).features, dtype=np.float32
            )
        return self._features[path]

    def check(self, paths: Sequence[str], volumes: Sequence[int]) -> dict[str, int]:
        """Check that every BOLD store of ``paths`` (with ``volumes`` frames each) has an
        aligned store of each kind with one row per frame, and that the stores of a kind
        agree on their features.

        Returns
        -------
        dict
            ``{kind: features}``.

        Raises
        ------
        BidstrainError
            Naming the store without stimuli, with another number of rows than its BOLD
            store's frames, or with another number of features than the others.
        """
        n_features: dict[str, tuple[int, str]] = {}
        for bold, n_time in zip(paths, volumes, strict=True):
            for kind in self.kinds:
                values = self.features(bold, kind)
                path = self.store(bold, kind)
                if values.shape[0] != n_time:
                    raise BidstrainError(
                        f"the aligned {kind} features have {values.shape[0]} rows but the BOLD "
                        f"store {bold} has {n_time} frames (rerun the align_stimuli job)",
                        path=path,
                    )
                first = n_features.setdefault(kind, (values.shape[1], path))
                if first[0] != values.shape[1]:
                    raise BidstrainError(
                        f"{values.shape[1]} {kind} features here, {first[0]} in {first[1]}: "
                        "the stores of one kind must come from the same feature settings",
                        path=path,
                    )
        self.n_features = {kind: n for kind, (n, _) in n_features.items()}
        return self.n_features

    def windows(self, layout, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        """The features of the BOLD samples among ``indices`` (global indices of their
        first frames in ``layout``, a :class:`~bidstrain.train.data.StoreLayout`):
        ``{kind: (n_bold, window, features)}`` in the order of ``indices``; empty when no
        sample is BOLD."""
        indices = np.asarray(indices, dtype=np.int64)
        store, time = layout.locate(indices)
        bold = np.flatnonzero(layout.modality[store] == BOLD)
        if bold.size == 0:
            return {}
        out = {}
        for kind in self.kinds:
            rows = [
                self.features(layout.paths[store[i]], kind)[
                    time[i] : time[i] + layout.window[store[i]]
                ]
                for i in bold
            ]
            out[kind] = torch.from_numpy(np.stack(rows))
        return out

    def lists(self, bold: Sequence[str]) -> dict[str, list[str]]:
        """``{kind: [aligned store, ...]}`` of the BOLD stores ``bold``, in their order
        (what identifies a run's stimulus input in a checkpoint)."""
        return {kind: [self.store(path, kind) for path in bold] for kind in self.kinds}
