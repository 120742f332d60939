"""A deterministic demo BIDS dataset at scanner scale: T1w, BOLD and DWI for a few subjects.

The images are synthetic but shaped like real ones: an ellipsoidal "brain" at scanner
intensities (BOLD about 5,000 to 10,000, int16), 1 to 3 % temporal noise, a slow drift and
a task signal shared by all subjects, near-zero background, every subject on the same BOLD
grid. ``RepetitionTime`` lives in the top-level ``task-<task>_bold.json`` so that it is
inherited, as in many real datasets.

Run ``bidstrain-demo OUT_DIR`` (or ``python -m bidstrain.demo``) to write it.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from bidstrain.bids import bids_path
from bidstrain.errors import run_cli


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


def bold_anatomy(spec: DemoSpec, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, float]:
    """A subject's BOLD baseline intensity (5,000 to 10,000), task-response map and
    temporal noise level (about 2 %; with the drift and the task signal, 1 to 3 % of
    temporal variation).

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
    noise and the drift are the run's own. The run is built volume by volume in
    float32 so that a 96x96x96x300 run for the benchmarks needs about one run of int16 in
    memory, not one of float64.
    """
    brain = _ellipsoid(spec.bold_shape)
    baseline, response, noise_level = anatomy if anatomy is not None else bold_anatomy(spec, rng)
    drift = np.linspace(0, rng.uniform(0.01, 0.02), spec.n_volumes, dtype=np.float32)
    out = np.empty((*spec.bold_shape, spec.n_volumes), dtype=np.int16)
    for t in range(spec.n_volumes):
        modulation = 1 + drift[t] + 0.02 * shared_signal[t] * response
        noise = rng.standard_normal(spec.bold_shape, dtype=np.float32) * noise_level
        volume = np.where(brain, baseline * (modulation + noise), 0.0)
        background = np.abs(rng.standard_normal(spec.bold_shape, dtype=np.float32)) * 5
        out[..., t] = np.rint(volume + background).astype(np.int16)
    return out


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
    """A DWI series (int16), its b-values and unit b-vectors (3 x n, as in ``.bvec``)."""
    n = spec.n_dwi_b0 + spec.n_dwi_b1000
    bvals = np.array([0] * spec.n_dwi_b0 + [1000] * spec.n_dwi_b1000, dtype=float)
    directions = rng.standard_normal((3, spec.n_dwi_b1000))
    directions /= np.linalg.norm(directions, axis=0)
    bvecs = np.concatenate([np.zeros((3, spec.n_dwi_b0)), directions], axis=1)
    brain = _ellipsoid(spec.bold_shape)
    s0 = 3000 * (0.8 + 0.4 * _smooth_field(rng, spec.bold_shape))
    adc = 0.0007 + 0.0005 * _smooth_field(rng, spec.bold_shape)
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


if __name__ == "__main__":
    run_cli(main)
