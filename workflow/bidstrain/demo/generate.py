"""A deterministic demo BIDS dataset at scanner scale: T1w, BOLD and DWI for a few subjects.

The images are synthetic but shaped like real ones: an ellipsoidal "brain" at scanner
intensities (BOLD about 5,000 to 10,000, int16), 2 % temporal noise, a slow drift, slow
regional fluctuations (:data:`FLUCTUATION_AMPLITUDE`) and a task signal shared by all
subjects (:data:`TASK_AMPLITUDE`), near-zero background, every subject on the same BOLD
grid.

The data has structure a model can learn and must predict from context, so that training
on it beats the baseline of predicting the mean (``train.learning``): the task signal is
common to every voxel of a frame; slow fluctuations of a few regions
(:func:`slow_fluctuations`), each shared by neighbouring voxels and smooth over several
frames, make a frame predictable from its neighbours in time (what a model of BOLD
windows must learn, and what shuffling a window's frames destroys); T1w and DWI share an
anatomy (nested tissue ellipsoids with their own intensity and diffusivity) that each
subject only modulates.

``RepetitionTime`` lives in the top-level ``task-<task>_bold.json`` so that it is
inherited, as in many real datasets.

Run ``bidstrain-demo OUT_DIR`` (or ``python -m bidstrain.demo``) to write it.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from bidstrain.dataset.bids import bids_path
from bidstrain.io.store import create_store


@dataclass(frozen=True)
class DemoSpec:
    """Size of the demo dataset.

    Attributes
    ----------
    n_subjects : int
        Number of subjects (``sub-01`` ...); the last one has two sessions when
        ``sessions_subject`` is True.
    bold_shape : tuple of int
        BOLD voxel grid, shared by every subject.
    n_volumes : int
        BOLD volumes per run.
    t1w_shape : tuple of int
        T1w voxel grid.
    n_dwi_b0, n_dwi_b1000 : int
        DWI volumes at b=0 and b=1000.
    task : str
        The BOLD task.
    repetition_time : float
        BOLD TR in seconds.
    modalities : tuple of str
        Which of ``T1w``, ``bold``, ``dwi`` to write.
    sessions_subject : bool
        Give the last subject two sessions.
    seed : int
        Seed of every random draw.
    """

    n_subjects: int = 3
    bold_shape: tuple[int, int, int] = (20, 24, 20)
    n_volumes: int = 40
    t1w_shape: tuple[int, int, int] = (40, 48, 40)
    n_dwi_b0: int = 2
    n_dwi_b1000: int = 6
    task: str = "rest"
    repetition_time: float = 2.0
    modalities: tuple[str, ...] = ("T1w", "bold", "dwi")
    sessions_subject: bool = True
    seed: int = 0


def _ellipsoid(shape: Sequence[int], scale: float = 0.8) -> np.ndarray:
    """A centred ellipsoid mask filling ``scale`` of each axis."""
    grids = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    return sum(g**2 for g in grids) <= scale**2


def _smooth_field(rng: np.random.Generator, shape: Sequence[int]) -> np.ndarray:
    """A smooth random field in [0, 1] (the sum of a few low-frequency cosines)."""
    grids = np.meshgrid(*[np.linspace(0, np.pi, n) for n in shape], indexing="ij")
    field = sum(np.cos((1 + rng.integers(0, 2)) * g + rng.uniform(0, np.pi)) for g in grids)
    return (field - field.min()) / (np.ptp(field) + 1e-9)


def _save(data: np.ndarray, path: Path, zooms: Sequence[float]) -> None:
    affine = np.diag([*zooms[:3], 1.0])
    affine[:3, 3] = -0.5 * np.array(data.shape[:3]) * np.array(zooms[:3])
    img = nib.Nifti1Image(data, affine)
    img.header.set_xyzt_units("mm", "sec")
    img.header.set_zooms(tuple(zooms))
    img.header.set_qform(affine, code=1)
    img.header.set_sform(affine, code=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, path)


#: Peak task response as a fraction of the baseline (times the voxel's response, 0.5 to 1):
#: with 2 % noise, about half of a subject's temporal variance is the shared task signal.
TASK_AMPLITUDE = 0.04


#: Slow fluctuations of a run (:func:`slow_fluctuations`): their peak amplitude as a
#: fraction of the baseline, the regions that carry one each, the regions' width as a
#: fraction of the grid's largest side, and their time scale (Gaussian sigma, in frames).
FLUCTUATION_AMPLITUDE = 0.015
FLUCTUATION_REGIONS = 8
FLUCTUATION_WIDTH = 0.2
FLUCTUATION_FRAMES = 3.0


def slow_fluctuations(
    brain: np.ndarray, n_volumes: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """A run's slow fluctuations: Gaussian blobs at random centres (``(regions, *shape)``,
    peak 1, less their mean over the ``brain`` mask, so that they leave the brain's mean
    time course to the task signal), each with its own time course (``(n_volumes,
    regions)``: white noise smoothed by a Gaussian of :data:`FLUCTUATION_FRAMES` frames,
    unit variance). Neighbouring voxels share a blob's course; distant regions are
    independent."""
    shape = brain.shape
    grids = np.indices(shape, dtype=np.float32)
    centres = rng.uniform(0.2, 0.8, (FLUCTUATION_REGIONS, 3)) * np.asarray(shape)
    width = FLUCTUATION_WIDTH * max(shape)
    distance = sum((grids[i][None] - centres[:, i, None, None, None]) ** 2 for i in range(3))
    maps = np.exp(-distance / (2 * width**2))
    maps = (maps - maps[:, brain].mean(axis=1)[:, None, None, None]).astype(np.float32)
    pad = int(4 * FLUCTUATION_FRAMES)
    noise = rng.standard_normal((n_volumes + 2 * pad, FLUCTUATION_REGIONS))
    offsets = np.arange(-pad, pad + 1)
    kernel = np.exp(-(offsets**2) / (2 * FLUCTUATION_FRAMES**2))
    courses = np.stack(
        [np.convolve(noise[:, k], kernel, mode="valid") for k in range(FLUCTUATION_REGIONS)],
        axis=1,
    )
    courses /= courses.std(axis=0, keepdims=True)
    return maps, courses.astype(np.float32)


def bold_anatomy(spec: DemoSpec, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, float]:
    """A subject's BOLD baseline intensity (5,000 to 10,000), task-response map and
    temporal noise level (about 2 %; with the drift, the task signal and the slow
    fluctuations, 3 to 4 % of temporal variation).

    They belong to the subject's brain and scanner, not to a run: every run of a subject
    shares them, so that statistics fitted on one run normalize another (held-out runs).
    """
    baseline = (5000 + 5000 * _smooth_field(rng, spec.bold_shape)).astype(np.float32)
    response = (0.5 + 0.5 * _smooth_field(rng, spec.bold_shape)).astype(np.float32)
    return baseline, response, float(rng.uniform(0.018, 0.022))


def bold_run(
    spec: DemoSpec,
    rng: np.random.Generator,
    shared_signal: np.ndarray,
    anatomy: tuple[np.ndarray, np.ndarray, float] | None = None,
) -> np.ndarray:
    """One BOLD run as int16, shape ``bold_shape + (n_volumes,)``, at scanner scale.

    ``anatomy`` is the subject's :func:`bold_anatomy` (a new one is drawn when None); the
    noise, the drift and the :func:`slow_fluctuations` are the run's own (drawn from a
    child of ``rng``, so that what ``rng`` draws next does not depend on them). The run is
    built volume by volume in float32 so that a 96x96x96x300 run for the benchmarks needs
    about one run of int16 in memory, not one of float64.
    """
    brain = _ellipsoid(spec.bold_shape)
    baseline, response, noise_level = anatomy if anatomy is not None else bold_anatomy(spec, rng)
    maps, courses = slow_fluctuations(brain, spec.n_volumes, rng.spawn(1)[0])
    drift = np.linspace(0, rng.uniform(0.01, 0.02), spec.n_volumes, dtype=np.float32)
    out = np.empty((*spec.bold_shape, spec.n_volumes), dtype=np.int16)
    for t in range(spec.n_volumes):
        modulation = 1 + drift[t] + TASK_AMPLITUDE * shared_signal[t] * response
        modulation = modulation + FLUCTUATION_AMPLITUDE * np.tensordot(courses[t], maps, 1)
        noise = rng.standard_normal(spec.bold_shape, dtype=np.float32) * noise_level
        volume = np.where(brain, baseline * (modulation + noise), 0.0)
        background = np.abs(rng.standard_normal(spec.bold_shape, dtype=np.float32)) * 5
        out[..., t] = np.rint(volume + background).astype(np.int16)
    return out


def write_bold_store(
    path: str | Path,
    mask: np.ndarray,
    volumes: np.ndarray,
    n_time: int,
    *,
    mean: float = 0.0,
    std: float = 1.0,
    block: int = 4,
    tr: float = 2.0,
    source_path: str = "none",
    **store_options: Any,
) -> Path:
    """Write a synthetic z-scored BOLD store, as the normalizer writes one.

    Volume ``t`` is row ``t % len(volumes)`` of ``volumes`` (a few distinct volumes
    cycled keep the input's memory small), written in blocks of ``block`` volumes; the
    store also holds constant ``mean`` and ``std`` variables and the attributes of a
    normalized BOLD run of subject ``01``.

    Parameters
    ----------
    path : str or Path
        Store path (``*.zarr``); an existing store is replaced.
    mask : ndarray of bool, shape (x, y, z)
        The store's mask.
    volumes : ndarray of float32, shape (n_distinct, n_voxel)
        Distinct volumes, as rows of the masked voxels.
    n_time : int
        Volumes in the store.
    mean, std : float
        Value of every voxel of the ``mean`` and ``std`` variables.
    block : int
        Volumes per write.
    tr : float
        Seconds between volumes (the ``time`` coordinate).
    source_path : str
        The ``source_path`` attribute.
    **store_options
        Passed to :func:`bidstrain.io.store.create_store` (``storage``, ``chunk``).

    Returns
    -------
    Path
        ``path``.
    """
    path = Path(path)
    n_voxel = volumes.shape[1]
    time = np.arange(n_time, dtype=np.float64) * tr
    with create_store(path, mask=mask, affine=np.eye(4), time=time, **store_options) as writer:
        for start in range(0, n_time, block):
            rows = np.arange(start, min(start + block, n_time)) % len(volumes)
            writer.write(start, volumes[rows])
        writer.add_variable("mean", ("voxel",), np.full(n_voxel, mean, dtype=np.float32))
        writer.add_variable("std", ("voxel",), np.full(n_voxel, std, dtype=np.float32))
        writer.attrs.update(
            modality="bold",
            subject="01",
            source_path=source_path,
            ddof=1,
            n_zero_variance=0,
            stats_dim="voxel",
            stats_from=[],
        )
    return path


def t1w_image(spec: DemoSpec, rng: np.random.Generator) -> np.ndarray:
    """A T1w-like int16 volume: head, brighter white matter core, up to a few thousand."""
    head = _ellipsoid(spec.t1w_shape, 0.9)
    brain = _ellipsoid(spec.t1w_shape, 0.75)
    white = _ellipsoid(spec.t1w_shape, 0.45)
    data = 300.0 * head + 900.0 * brain + 1200.0 * white
    data = data * (0.9 + 0.2 * _smooth_field(rng, spec.t1w_shape))
    data += np.abs(rng.normal(0, 20, spec.t1w_shape))
    return np.rint(data).astype(np.int16)


def dwi_series(
    spec: DemoSpec, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A DWI series (int16), its b-values and unit b-vectors (3 x n, as in ``.bvec``).

    The anatomy is shared: cerebrospinal fluid (outer shell: bright at b=0, dark at
    b=1000), grey matter and a white-matter core, each with its own S0 and diffusivity;
    a subject modulates S0 and ADC by smooth fields of +-10 %.
    """
    n = spec.n_dwi_b0 + spec.n_dwi_b1000
    bvals = np.array([0] * spec.n_dwi_b0 + [1000] * spec.n_dwi_b1000, dtype=float)
    directions = rng.standard_normal((3, spec.n_dwi_b1000))
    directions /= np.linalg.norm(directions, axis=0)
    bvecs = np.concatenate([np.zeros((3, spec.n_dwi_b0)), directions], axis=1)
    brain = _ellipsoid(spec.bold_shape)
    grey = _ellipsoid(spec.bold_shape, 0.65)
    white = _ellipsoid(spec.bold_shape, 0.4)
    tissue_s0 = np.where(white, 0.8, np.where(grey, 1.0, 1.3))
    tissue_adc = np.where(white, 0.0007, np.where(grey, 0.0009, 0.0025))
    s0 = 3000 * tissue_s0 * (0.9 + 0.2 * _smooth_field(rng, spec.bold_shape))
    adc = tissue_adc * (0.9 + 0.2 * _smooth_field(rng, spec.bold_shape))
    data = np.empty((*spec.bold_shape, n), dtype=np.int16)
    for v in range(n):
        signal = s0 * np.exp(-bvals[v] * adc) * (1 + 0.02 * rng.standard_normal(spec.bold_shape))
        data[..., v] = np.rint(
            np.where(brain, signal, 0) + np.abs(rng.normal(0, 5, spec.bold_shape))
        )
    return data, bvals, bvecs


def make_demo(root: str | Path, spec: DemoSpec = DemoSpec()) -> Path:
    """Write the demo BIDS dataset under ``root``.

    Parameters
    ----------
    root : str or Path
        Output directory (created; existing files are overwritten).
    spec : DemoSpec
        Size and seed.

    Returns
    -------
    Path
        ``root``.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(spec.seed)
    (root / "dataset_description.json").write_text(
        json.dumps(
            {"Name": "bidstrain demo", "BIDSVersion": "1.9.0", "DatasetType": "raw"}, indent=2
        )
    )
    (root / f"task-{spec.task}_bold.json").write_text(
        json.dumps({"RepetitionTime": spec.repetition_time, "TaskName": spec.task}, indent=2)
    )
    subjects = [f"{n + 1:02d}" for n in range(spec.n_subjects)]
    rows = ["participant_id\tage\tsex"]
    rows += [f"sub-{s}\t{int(rng.integers(20, 60))}\t{rng.choice(['F', 'M'])}" for s in subjects]
    (root / "participants.tsv").write_text("\n".join(rows) + "\n")
    t = np.arange(spec.n_volumes) * spec.repetition_time
    shared_signal = np.sin(2 * np.pi * t / 40.0).astype(np.float32)
    bold_zooms = (3.0, 3.0, 3.0)
    for s in subjects:
        sessions = (
            ["1", "2"]
            if spec.sessions_subject and s == subjects[-1] and len(subjects) > 1
            else [None]
        )
        for ses in sessions:
            ids = {"sub": s, "ses": ses}
            if "T1w" in spec.modalities:
                path = root / bids_path(datatype="anat", suffix="T1w", extension=".nii.gz", **ids)
                _save(t1w_image(spec, rng), path, (1.0, 1.0, 1.0))
            if "bold" in spec.modalities:
                anatomy = bold_anatomy(spec, rng)
                for run in ("1", "2"):
                    path = root / bids_path(
                        datatype="func",
                        task=spec.task,
                        run=run,
                        suffix="bold",
                        extension=".nii.gz",
                        **ids,
                    )
                    _save(
                        bold_run(spec, rng, shared_signal, anatomy),
                        path,
                        (*bold_zooms, spec.repetition_time),
                    )
            if "dwi" in spec.modalities:
                data, bvals, bvecs = dwi_series(spec, rng)
                path = root / bids_path(datatype="dwi", suffix="dwi", extension=".nii.gz", **ids)
                _save(data, path, (*bold_zooms, 1.0))
                stem = str(path)[: -len(".nii.gz")]
                Path(stem + ".bval").write_text(" ".join(f"{b:g}" for b in bvals) + "\n")
                Path(stem + ".bvec").write_text(
                    "\n".join(" ".join(f"{x:.6f}" for x in row) for row in bvecs) + "\n"
                )
                Path(stem + ".json").write_text(json.dumps({"PhaseEncodingDirection": "j-"}))
    return root


#: The fMRIPrep demo's size: small grids, so that tests run in a second.
FMRIPREP_DEMO = DemoSpec(
    n_subjects=2,
    bold_shape=(12, 14, 12),
    n_volumes=60,
    t1w_shape=(16, 18, 16),
    modalities=("T1w", "bold"),
    sessions_subject=False,
)
#: The output spaces of the fMRIPrep demo, in fMRIPrep's ``--output-spaces`` syntax.
FMRIPREP_SPACES = ("MNI152NLin2009cAsym:res-2", "T1w")
#: The QSIPrep demo's size.
QSIPREP_DEMO = DemoSpec(
    n_subjects=2,
    bold_shape=(12, 14, 12),
    t1w_shape=(16, 18, 16),
    modalities=("T1w", "dwi"),
    sessions_subject=False,
)
#: Volumes of an fMRIPrep demo run with a head jump (framewise displacement over 0.5 mm),
#: as fractions of the run, and how many volumes later they come in each next subject (so
#: that subjects' scrubbed volumes differ, as a cross-subject average must handle).
MOTION_SPIKES = (1 / 3, 2 / 3)
SPIKE_SHIFT = 3


def _start_derivative(
    root: str | Path, spec: DemoSpec, pipeline: str, version: str
) -> tuple[Path, np.random.Generator, list[str]]:
    """What the fMRIPrep and QSIPrep generators start with: ``root`` (created) with the
    description of ``pipeline`` ``version``, the random generator of ``spec.seed`` and the
    subject labels ``01``, ``02``, ..."""
    root = Path(root)
    _write_description(root, pipeline, version)
    subjects = [f"{n + 1:02d}" for n in range(spec.n_subjects)]
    return root, np.random.default_rng(spec.seed), subjects


def _write_description(root: Path, pipeline: str, version: str) -> None:
    """A derivative dataset's ``dataset_description.json``."""
    root.mkdir(parents=True, exist_ok=True)
    description = {
        "Name": f"bidstrain demo, {pipeline} outputs",
        "BIDSVersion": "1.9.0",
        "DatasetType": "derivative",
        "GeneratedBy": [{"Name": pipeline, "Version": version}],
    }
    (root / "dataset_description.json").write_text(json.dumps(description, indent=2))


def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _space_grid(spec: DemoSpec, space: str) -> tuple[tuple[int, int, int], float]:
    """Grid and voxel size of a demo output space: ``res-<mm>`` on the BOLD grid, else a
    grid two voxels larger at 3 mm (the subject's own spaces)."""
    _, _, res = space.partition(":res-")
    if res:
        return spec.bold_shape, float(res)
    return tuple(n + 2 for n in spec.bold_shape), 3.0


def _space_entities(space: str) -> dict[str, str]:
    name, *modifiers = space.split(":")
    return {"space": name, **dict(m.split("-", 1) for m in modifiers)}


def _derivative(series: np.ndarray) -> np.ndarray:
    """Backward difference, NaN at the first volume (as fMRIPrep writes ``n/a``)."""
    return np.concatenate([[np.nan], np.diff(series)])


def fmriprep_confounds(
    rng: np.random.Generator,
    n_volumes: int,
    n_cosines: int,
    n_nonsteady: int,
    spike_shift: int = 0,
) -> tuple[dict[str, np.ndarray], dict[str, dict]]:
    """An fMRIPrep confounds table (columns) and its JSON metadata.

    Motion parameters are slow random walks with a jump at each of
    :data:`MOTION_SPIKES`, ``spike_shift`` volumes later (framewise displacement over
    0.5 mm there); ``csf``,
    ``white_matter`` and ``global_signal`` slow signals; with every ``_derivative1``,
    ``_power2`` and ``_derivative1_power2`` column, ``framewise_displacement``, ``dvars``,
    ``std_dvars``, ``cosineNN`` regressors, ``non_steady_state_outlierNN`` columns (the
    first ``n_nonsteady`` volumes) and aCompCor/tCompCor components with the metadata
    nilearn's ``compcor`` strategy reads. Columns start with NaN (``n/a``) where fMRIPrep's
    do.
    """
    n = n_volumes
    columns: dict[str, np.ndarray] = {}
    t = np.arange(n, dtype=np.float64)
    for name in ("global_signal", "csf", "white_matter"):
        columns[name] = 500 + np.cumsum(rng.normal(0, 2, n)) + 5 * np.sin(t / rng.uniform(3, 9))
    motion = {}
    for axis in "xyz":
        motion[f"trans_{axis}"] = np.cumsum(rng.normal(0, 0.02, n))
        motion[f"rot_{axis}"] = np.cumsum(rng.normal(0, 0.0003, n))
    for fraction in MOTION_SPIKES:
        motion["trans_x"][min(int(n * fraction) + spike_shift, n - 1) :] += 0.8
    columns.update(motion)
    for name in [*columns]:
        derivative = _derivative(columns[name])
        columns[f"{name}_derivative1"] = derivative
        columns[f"{name}_power2"] = columns[name] ** 2
        columns[f"{name}_derivative1_power2"] = derivative**2
    columns["framewise_displacement"] = sum(
        np.abs(_derivative(motion[f"trans_{a}"])) + 50 * np.abs(_derivative(motion[f"rot_{a}"]))
        for a in "xyz"
    )
    std_dvars = np.abs(rng.normal(1.0, 0.1, n))
    std_dvars[0] = np.nan
    columns["std_dvars"] = std_dvars
    columns["dvars"] = 20 * std_dvars
    for k in range(n_cosines):
        columns[f"cosine{k:02d}"] = np.sqrt(2 / n) * np.cos(np.pi * (t + 0.5) * (k + 1) / n)
    for k in range(n_nonsteady):
        columns[f"non_steady_state_outlier{k:02d}"] = (t == k).astype(np.float64)
    metadata: dict[str, dict] = {}
    masks = ("CSF", "CSF", "WM", "WM", "combined", "combined", "combined")
    for k, mask in enumerate(masks):
        name = f"a_comp_cor_{k:02d}"
        columns[name] = rng.normal(0, 1 / np.sqrt(n), n)
        metadata[name] = {"Method": "aCompCor", "Mask": mask, "Retained": True}
    for k in range(3):
        name = f"t_comp_cor_{k:02d}"
        columns[name] = rng.normal(0, 1 / np.sqrt(n), n)
        metadata[name] = {"Method": "tCompCor", "Retained": True}
    for values in metadata.values():
        values.update({"SingularValue": 1.0, "VarianceExplained": 0.1})
    return columns, metadata


def _write_confounds(path: Path, columns: dict[str, np.ndarray], metadata: dict) -> None:
    """Write a confounds table as fMRIPrep does (tab-separated, ``n/a`` for NaN)."""
    rows = ["\t".join(columns)]
    table = np.column_stack(list(columns.values()))
    for row in table:
        rows.append("\t".join("n/a" if np.isnan(v) else f"{v:.8g}" for v in row))
    _write_text(path, "\n".join(rows) + "\n")
    _write_text(path.with_suffix(".json"), json.dumps(metadata, indent=2))


def _standard(series: np.ndarray) -> np.ndarray:
    return ((series - series.mean()) / (series.std() + 1e-12)).astype(np.float32)


def _write_fmriprep_anat(
    root: Path, spec: DemoSpec, rng: np.random.Generator, subject: str, spaces: Sequence[str]
) -> None:
    """Anatomical outputs of one subject in every space, with the files to be ignored."""
    anat = root / f"sub-{subject}" / "anat"
    for space in spaces:
        entities = _space_entities(space)
        if entities["space"] == "T1w":  # fMRIPrep's anatomical reference has no space entity
            entities, shape, zoom = {}, spec.t1w_shape, 1.0
        else:
            shape, zoom = _space_grid(spec, space)
        ids = {"sub": subject, **entities}
        zooms = (zoom,) * 3
        _save(
            t1w_image(replace(spec, t1w_shape=shape), rng),
            root
            / bids_path(datatype="anat", desc="preproc", suffix="T1w", extension=".nii.gz", **ids),
            zooms,
        )
        brain = _ellipsoid(shape, 0.75).astype(np.uint8)
        _save(
            brain,
            root
            / bids_path(datatype="anat", desc="brain", suffix="mask", extension=".nii.gz", **ids),
            zooms,
        )
        _save(
            2 * brain,
            root / bids_path(datatype="anat", suffix="dseg", extension=".nii.gz", **ids),
            zooms,
        )
        _save(
            0.5 * brain.astype(np.float32),
            root
            / bids_path(datatype="anat", label="GM", suffix="probseg", extension=".nii.gz", **ids),
            zooms,
        )
    _write_text(anat / f"sub-{subject}_desc-preproc_T1w.json", json.dumps({"SkullStripped": False}))
    for template in {_space_entities(s)["space"] for s in spaces} - {"T1w"}:
        for source, target in ((template, "T1w"), ("T1w", template)):
            name = f"sub-{subject}_from-{source}_to-{target}_mode-image_xfm.h5"
            (anat / name).write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(64))
    _write_text(anat / f"sub-{subject}_hemi-L_pial.surf.gii", "<GIFTI/>\n")
    _write_text(
        root / f"sub-{subject}" / "figures" / f"sub-{subject}_desc-summary_T1w.html", "<p/>\n"
    )


def make_fmriprep_demo(
    root: str | Path,
    spec: DemoSpec = FMRIPREP_DEMO,
    spaces: Sequence[str] = FMRIPREP_SPACES,
    *,
    n_cosines: int = 2,
    n_nonsteady: int = 1,
    runs: Sequence[str] = ("1", "2"),
) -> Path:
    """Write an fMRIPrep-shaped output dataset under ``root``.

    Per subject, BOLD runs ``runs`` of ``spec.task``, each in every one of ``spaces`` (a
    template space ``Name:res-<mm>`` on ``spec.bold_shape`` at that voxel size, the
    ``T1w`` space on a grid two voxels larger): ``desc-preproc_bold`` (int16, the demo's
    BOLD generator, with the confounds' motion and CSF signals mixed in and
    ``n_nonsteady`` brighter first volumes) with its sidecar (``RepetitionTime``),
    ``desc-brain_mask``, ``boldref``, ``desc-aseg_dseg``; one confounds table per run
    (:func:`fmriprep_confounds`) and its JSON; a coregistration transform. Anatomical
    outputs in every space (``desc-preproc_T1w``, ``desc-brain_mask``, ``dseg``,
    ``label-GM_probseg``), ``.h5`` transforms, a surface, ``figures/``, ``log/`` and the
    subject's ``.html`` report, which a reader of the dataset must ignore. The
    description says ``DatasetType: derivative``, ``GeneratedBy`` fMRIPrep.

    Parameters
    ----------
    root : str or Path
        Output directory (created).
    spec : DemoSpec
        Subjects, grid, volumes, TR and seed (``modalities`` and ``sessions_subject`` are
        not used: T1w and BOLD, no sessions).
    spaces : sequence of str
        Output spaces, for example ``("MNI152NLin2009cAsym:res-2", "T1w")``.
    n_cosines : int
        ``cosineNN`` columns of the confounds tables.
    n_nonsteady : int
        Non-steady-state volumes at the start of every run.
    runs : sequence of str
        The ``run`` labels of each subject.

    Returns
    -------
    Path
        ``root``.
    """
    root, rng, subjects = _start_derivative(root, spec, "fMRIPrep", "23.2.1")
    _write_text(root / "logs" / "CITATION.md", "fMRIPrep demo\n")
    _write_text(root / "desc-aseg_dseg.tsv", "index\tname\n1\tcsf\n2\tbrain\n")
    t = np.arange(spec.n_volumes) * spec.repetition_time
    task_signal = np.sin(2 * np.pi * t / 40.0)
    for index, s in enumerate(subjects):
        _write_fmriprep_anat(root, spec, rng, s, spaces)
        _write_text(root / f"sub-{s}.html", "<html/>\n")
        _write_text(root / f"sub-{s}" / "log" / "20240101-000000_demo" / "fmriprep.toml", "")
        anatomy = {
            space: bold_anatomy(replace(spec, bold_shape=_space_grid(spec, space)[0]), rng)
            for space in spaces
        }
        for run in runs:
            ids = {"sub": s, "task": spec.task, "run": run}
            columns, metadata = fmriprep_confounds(
                rng, spec.n_volumes, n_cosines, n_nonsteady, SPIKE_SHIFT * index
            )
            confounds = root / bids_path(
                datatype="func", desc="confounds", suffix="timeseries", extension=".tsv", **ids
            )
            _write_confounds(confounds, columns, metadata)
            nuisance = _standard(columns["trans_x"]) + 0.5 * _standard(columns["csf"])
            signal = (task_signal + nuisance).astype(np.float32)
            func = confounds.parent
            coreg = f"sub-{s}_task-{spec.task}_run-{run}_from-boldref_to-T1w_mode-image"
            _write_text(func / f"{coreg}_desc-coreg_xfm.txt", "#Insight Transform File V1.0\n")
            _write_text(
                root
                / f"sub-{s}"
                / "figures"
                / f"sub-{s}_task-{spec.task}_run-{run}_desc-carpetplot_bold.svg",
                "<svg/>\n",
            )
            for space in spaces:
                shape, zoom = _space_grid(spec, space)
                space_spec = replace(spec, bold_shape=shape)
                data = bold_run(space_spec, rng, signal, anatomy[space])
                if n_nonsteady:
                    bright = data[..., :n_nonsteady].astype(np.float32) * 1.3
                    data[..., :n_nonsteady] = np.rint(bright).astype(np.int16)
                full = {**ids, **_space_entities(space)}
                path = root / bids_path(
                    datatype="func", desc="preproc", suffix="bold", extension=".nii.gz", **full
                )
                zooms = (zoom, zoom, zoom)
                _save(data, path, (*zooms, spec.repetition_time))
                sidecar = {
                    "RepetitionTime": spec.repetition_time,
                    "SkullStripped": False,
                    "TaskName": spec.task,
                }
                _write_text(Path(str(path)[: -len(".nii.gz")] + ".json"), json.dumps(sidecar))
                brain = _ellipsoid(shape, 0.7).astype(np.uint8)
                _save(
                    brain,
                    root
                    / bids_path(
                        datatype="func", desc="brain", suffix="mask", extension=".nii.gz", **full
                    ),
                    zooms,
                )
                _save(
                    data[..., n_nonsteady:].mean(axis=-1, dtype=np.float32),
                    root
                    / bids_path(datatype="func", suffix="boldref", extension=".nii.gz", **full),
                    zooms,
                )
                _save(
                    2 * brain,
                    root
                    / bids_path(
                        datatype="func", desc="aseg", suffix="dseg", extension=".nii.gz", **full
                    ),
                    zooms,
                )
    return root


#: The demo atlas's name and space (the fMRIPrep demo's template space).
ATLAS_NAME = "demo"
ATLAS_SPACE = "MNI152NLin2009cAsym:res-2"


def make_atlas_demo(
    root: str | Path, spec: DemoSpec = FMRIPREP_DEMO, space: str = ATLAS_SPACE
) -> Path:
    """Write a BIDS atlas dataset (TemplateFlow's layout) on the fMRIPrep demo's grid.

    ``tpl-<space>/anat/tpl-<space>_atlas-demo_res-<mm>_dseg.nii.gz`` and its ``_dseg.tsv``:
    the eight octants of the demo's brain ellipsoid (labels 1 to 8, named ``octant1`` to
    ``octant8``), a small box in a corner of the grid outside every brain mask (label 9,
    ``outside``: a parcel no run covers), and label 10 (``unused``) listed in the table
    but drawn nowhere.

    Parameters
    ----------
    root : str or Path
        Output directory of the atlas dataset (created), for example beside the demo
        dataset.
    spec : DemoSpec
        The fMRIPrep demo's spec (its ``bold_shape``).
    space : str
        A template space of the demo, ``Name:res-<mm>``.

    Returns
    -------
    Path
        ``root``.
    """
    root = Path(root)
    shape, zoom = _space_grid(spec, space)
    entities = _space_entities(space)
    grids = np.meshgrid(*[np.arange(n) >= n // 2 for n in shape], indexing="ij")
    octant = 1 + grids[0] * 1 + grids[1] * 2 + grids[2] * 4
    labels = np.where(_ellipsoid(shape, 0.85), octant, 0).astype(np.int16)
    labels[:2, :2, :2] = 9
    name = f"tpl-{entities['space']}"
    stem = root / name / "anat" / f"{name}_atlas-{ATLAS_NAME}_res-{entities['res']}_dseg"
    _save(labels, Path(f"{stem}.nii.gz"), (zoom, zoom, zoom))
    rows = [f"{i}\toctant{i}" for i in range(1, 9)] + ["9\toutside", "10\tunused"]
    _write_text(Path(f"{stem}.tsv"), "index\tname\n" + "\n".join(rows) + "\n")
    _write_text(
        root / "dataset_description.json",
        json.dumps({"Name": "bidstrain demo atlas", "BIDSVersion": "1.10.0"}),
    )
    return root


def make_qsiprep_demo(root: str | Path, spec: DemoSpec = QSIPREP_DEMO) -> Path:
    """Write a QSIPrep-shaped output dataset under ``root``.

    Per subject: ``anat/`` with ``desc-preproc_T1w``, ``desc-brain_mask``, ``dseg`` and a
    ``.h5`` transform; ``dwi/`` with ``space-T1w_desc-preproc_dwi`` (the demo's DWI
    generator) and its ``.bval``, ``.bvec``, ``.b`` and sidecar, ``space-T1w_desc-brain_mask``,
    ``space-T1w_dwiref`` and a confounds table; ``figures/`` and the ``.html`` report. The
    description says ``DatasetType: derivative``, ``GeneratedBy`` QSIPrep.

    Parameters
    ----------
    root : str or Path
        Output directory (created).
    spec : DemoSpec
        Subjects, grids, DWI volumes and seed.

    Returns
    -------
    Path
        ``root``.
    """
    root, rng, subjects = _start_derivative(root, spec, "QSIPrep", "0.19.1")
    zooms = (2.0, 2.0, 2.0)
    for s in subjects:
        anat = {"sub": s, "datatype": "anat", "extension": ".nii.gz"}
        _save(
            t1w_image(spec, rng), root / bids_path(desc="preproc", suffix="T1w", **anat), (1.0,) * 3
        )
        brain = _ellipsoid(spec.t1w_shape, 0.75).astype(np.uint8)
        _save(brain, root / bids_path(desc="brain", suffix="mask", **anat), (1.0,) * 3)
        _save(2 * brain, root / bids_path(suffix="dseg", **anat), (1.0,) * 3)
        (
            root
            / f"sub-{s}"
            / "anat"
            / f"sub-{s}_from-MNI152NLin2009cAsym_to-T1w_mode-image_xfm.h5"
        ).write_bytes(bytes(64))
        data, bvals, bvecs = dwi_series(spec, rng)
        ids = {"sub": s, "space": "T1w", "datatype": "dwi"}
        path = root / bids_path(desc="preproc", suffix="dwi", extension=".nii.gz", **ids)
        _save(data, path, (*zooms, 1.0))
        stem = str(path)[: -len(".nii.gz")]
        _write_text(Path(stem + ".bval"), " ".join(f"{b:g}" for b in bvals) + "\n")
        _write_text(
            Path(stem + ".bvec"),
            "\n".join(" ".join(f"{x:.6f}" for x in row) for row in bvecs) + "\n",
        )
        _write_text(
            Path(stem + ".b"),
            "".join(
                f"{x:.6f}\t{y:.6f}\t{z:.6f}\t{b:g}\n"
                for (x, y, z), b in zip(bvecs.T, bvals, strict=True)
            ),
        )
        _write_text(Path(stem + ".json"), json.dumps({"PhaseEncodingDirection": "j-"}))
        _save(
            _ellipsoid(spec.bold_shape, 0.7).astype(np.uint8),
            root / bids_path(desc="brain", suffix="mask", extension=".nii.gz", **ids),
            zooms,
        )
        _save(
            data[..., bvals == 0].mean(axis=-1, dtype=np.float32),
            root / bids_path(suffix="dwiref", extension=".nii.gz", **ids),
            zooms,
        )
        _write_text(
            root
            / bids_path(
                sub=s, datatype="dwi", desc="confounds", suffix="timeseries", extension=".tsv"
            ),
            "framewise_displacement\n" + "n/a\n" + "0.1\n" * (len(bvals) - 1),
        )
        _write_text(root / f"sub-{s}" / "figures" / f"sub-{s}_desc-summary_dwi.html", "<p/>\n")
        _write_text(root / f"sub-{s}.html", "<html/>\n")
    return root


def make_empty_dataset(root: str | Path, n_subjects: int) -> Path:
    """Write a BIDS tree of empty image files, for planning and dry runs at scale.

    Per subject ``sub-NNNN`` (zero-padded to four digits): a T1w, two BOLD runs of task
    ``rest`` and a DWI, with sidecars and ``.bval``/``.bvec``. No image can be opened:
    only what reads no voxel (the index, the plan, a Snakemake dry run) works on it.

    Parameters
    ----------
    root : str or Path
        Dataset root (created).
    n_subjects : int
        Number of subjects.

    Returns
    -------
    Path
        ``root``.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset_description.json").write_text(
        json.dumps({"Name": "empty", "BIDSVersion": "1.9.0"})
    )
    (root / "task-rest_bold.json").write_text(json.dumps({"RepetitionTime": 2.0}))
    (root / "participants.tsv").write_text(
        "participant_id\n" + "".join(f"sub-{n:04d}\n" for n in range(n_subjects))
    )
    for n in range(n_subjects):
        sub = f"sub-{n:04d}"
        files = [f"anat/{sub}_T1w.nii.gz", f"anat/{sub}_T1w.json"]
        files += [f"dwi/{sub}_dwi{ext}" for ext in (".nii.gz", ".json", ".bval", ".bvec")]
        for run in (1, 2):
            files += [f"func/{sub}_task-rest_run-{run}_bold{ext}" for ext in (".nii.gz", ".json")]
        for name in files:
            path = root / sub / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("{}" if name.endswith(".json") else "")
    return root


def _shape(text: str) -> tuple[int, int, int]:
    parts = tuple(int(x) for x in text.lower().split("x"))
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"expected a grid like 20x24x20, got {text!r}")
    return parts


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: ``bidstrain-demo OUT_DIR [--subjects N] [--bold-shape XxYxZ] ...``."""
    parser = argparse.ArgumentParser(prog="bidstrain-demo", description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--subjects", type=int, default=DemoSpec.n_subjects)
    parser.add_argument("--bold-shape", type=_shape, default=DemoSpec.bold_shape)
    parser.add_argument("--volumes", type=int, default=DemoSpec.n_volumes)
    parser.add_argument("--t1w-shape", type=_shape, default=DemoSpec.t1w_shape)
    parser.add_argument("--modalities", nargs="+", default=list(DemoSpec.modalities))
    parser.add_argument("--no-sessions", action="store_true", help="no subject with two sessions")
    parser.add_argument("--seed", type=int, default=DemoSpec.seed)
    args = parser.parse_args(argv)
    spec = DemoSpec(
        n_subjects=args.subjects,
        bold_shape=args.bold_shape,
        n_volumes=args.volumes,
        t1w_shape=args.t1w_shape,
        modalities=tuple(args.modalities),
        sessions_subject=not args.no_sessions,
        seed=args.seed,
    )
    print(make_demo(args.out_dir, spec))
