"""A deterministic naturalistic BIDS dataset: subjects watch a short film with sound and a
transcript, and their BOLD responds to known stimulus features.

The film (``stimuli/film.mp4``: H.264 video, AAC sound, encoded with PyAV) holds, in TR
``k``, frames of mean luminance ``luminance[k]`` (a horizontal gradient around it), a
pure tone of ``frequency[k]`` (the centre of mel band ``band[k]`` of
:data:`N_MELS` bands) and ``words[k]`` words of its transcript
(``stimuli/film_words.tsv``). Every subject sees it twice (runs 1 and 2), as the
top-level ``task-movie_events.tsv`` says. BOLD is a baseline plus the z-scored
luminance, tone (log frequency) and word count convolved with the canonical HRF, each
driving its own slab of voxels, plus Gaussian noise of each subject's own level; so each
voxel's noise ceiling, ``var(signal) / (var(signal) + noise_sd**2)``, is known.
``code/naturalistic_truth.json`` holds the per-TR features and the ceilings.
``code/atlas-slabs_dseg.nii.gz`` (and its ``.tsv``) is a parcellation on the runs' grid
(``parcellation.space: native``): each slab split in two along y, so parcels 1-6 respond
to one design column each and 7-8 to none (:func:`write_atlas`).

Run ``bidstrain-naturalistic-demo OUT_DIR`` (or ``python -m bidstrain.demo.naturalistic``).
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import av
import numpy as np

from bidstrain.dataset.bids import bids_path
from bidstrain.demo.generate import _save
from bidstrain.stimuli.align import convolve_hrf
from bidstrain.stimuli.audio import band_centres

#: Mel bands the tones are tuned to (the default of ``stimuli.audio_n_mels``).
N_MELS = 40
#: Bands whose centre frequencies the film's tones take.
TONE_BANDS = (6, 12, 18, 24, 30)
VOCABULARY = "the a dog cat runs sees light sound river stone quickly under".split()
TASK = "movie"


@dataclass(frozen=True)
class NaturalisticSpec:
    """Size and seed of the naturalistic demo.

    Attributes
    ----------
    n_subjects : int
        Subjects, each with two runs of the film.
    duration : float
        Seconds of the film (a whole number of TRs).
    repetition_time : float
        BOLD TR in seconds; the film's features change once per TR.
    fps : int
        Frames per second.
    frame_size : tuple of int
        Width and height of the frames.
    sample_rate : int
        Audio samples per second.
    bold_shape : tuple of int
        BOLD grid; its x axis is cut into slabs: visual, auditory, language, noise only.
    amplitude : float
        BOLD signal per unit of z-scored feature (the baseline is 1,000).
    noise_sd : tuple of float
        Noise standard deviation of each subject (cycled).
    seed : int
        Seed of every random draw.
    """

    n_subjects: int = 3
    duration: float = 60.0
    repetition_time: float = 2.0
    fps: int = 10
    frame_size: tuple[int, int] = (64, 48)
    sample_rate: int = 16000
    bold_shape: tuple[int, int, int] = (8, 6, 4)
    amplitude: float = 20.0
    noise_sd: tuple[float, ...] = (10.0, 20.0, 30.0)
    seed: int = 0

    @property
    def n_bins(self) -> int:
        """TRs of the film (and volumes of a run)."""
        return round(self.duration / self.repetition_time)


#: The features that drive the demo's BOLD, in the columns of :meth:`FilmTruth.design`.
DESIGN_COLUMNS = ("luminance", "log2 tone frequency", "word count")


@dataclass(frozen=True)
class FilmTruth:
    """What the film shows and says in each TR."""

    luminance: np.ndarray
    band: np.ndarray
    frequency: np.ndarray
    words: list[list[str]]

    def design(self) -> np.ndarray:
        """The features that drive BOLD, one column each (:data:`DESIGN_COLUMNS`),
        z-scored.

        Raises
        ------
        ValueError
            When a feature is the same in every TR (a film of a few TRs): it could not be
            z-scored.
        """
        columns = np.stack(
            [self.luminance, np.log2(self.frequency), [len(w) for w in self.words]], axis=1
        ).astype(np.float64)
        spread = columns.std(axis=0)
        constant = [name for name, s in zip(DESIGN_COLUMNS, spread, strict=True) if s == 0]
        if constant:
            raise ValueError(
                f"the film's {len(columns)} TR(s) leave its {', '.join(constant)} the same "
                "in every TR: choose a longer film or another seed"
            )
        return (columns - columns.mean(axis=0)) / spread


def film_truth(spec: NaturalisticSpec, rng: np.random.Generator) -> FilmTruth:
    """Draw the film's per-TR luminance, tone and words."""
    n = spec.n_bins
    luminance = rng.uniform(40.0, 215.0, n).round()
    band = rng.choice(TONE_BANDS, n)
    frequency = band_centres(spec.sample_rate, N_MELS)[band]
    words = [list(rng.choice(VOCABULARY, rng.integers(0, 4))) for _ in range(n)]
    return FilmTruth(luminance, band, frequency, words)


def _frames(spec: NaturalisticSpec, truth: FilmTruth) -> Iterator[np.ndarray]:
    """The film's RGB frames, one at a time: a zero-mean gradient around each TR's level."""
    width, height = spec.frame_size
    gradient = np.linspace(-20.0, 20.0, width)
    for index in range(round(spec.duration * spec.fps)):
        level = truth.luminance[int(index / spec.fps / spec.repetition_time)]
        grey = np.broadcast_to(level + gradient, (height, width)).astype(np.uint8)
        yield np.repeat(grey[..., None], 3, axis=2)


def _tone(spec: NaturalisticSpec, truth: FilmTruth) -> np.ndarray:
    t = np.arange(round(spec.duration * spec.sample_rate)) / spec.sample_rate
    bins = np.minimum((t / spec.repetition_time).astype(int), spec.n_bins - 1)
    return (0.3 * np.sin(2.0 * np.pi * truth.frequency[bins] * t)).astype(np.float32)


def encode_film(path: Path, spec: NaturalisticSpec, truth: FilmTruth) -> None:
    """Encode the film: H.264 frames and AAC sound in one MP4, streamed frame by frame."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=spec.fps)
        video.width, video.height = spec.frame_size
        video.pix_fmt = "yuv420p"
        video.options = {"crf": "10"}
        audio = container.add_stream("aac", rate=spec.sample_rate)
        audio.layout = "mono"
        for index, pixels in enumerate(_frames(spec, truth)):
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            frame.pts = index
            container.mux(video.encode(frame))
        container.mux(video.encode())
        samples, block = _tone(spec, truth), 1024
        for start in range(0, samples.size, block):
            frame = av.AudioFrame.from_ndarray(
                samples[None, start : start + block], format="flt", layout="mono"
            )
            frame.sample_rate, frame.pts = spec.sample_rate, start
            container.mux(audio.encode(frame))
        container.mux(audio.encode())


def write_transcript(path: Path, spec: NaturalisticSpec, truth: FilmTruth) -> None:
    """The transcript: one word a row, its onset inside its TR (0.2 s, 0.7 s, ... in)."""
    rows = ["onset\tduration\tword"]
    for k, words in enumerate(truth.words):
        rows += [
            f"{k * spec.repetition_time + 0.2 + 0.5 * i:.2f}\t0.40\t{word}"
            for i, word in enumerate(words)
        ]
    path.write_text("\n".join(rows) + "\n")


def voxel_weights(spec: NaturalisticSpec) -> np.ndarray:
    """Weight of each design column on each voxel, shape (3, x, y, z): slab ``g`` of the
    x axis responds to column ``g``; the last slab to none."""
    weights = np.zeros((3, *spec.bold_shape))
    for column, slab in enumerate(np.array_split(np.arange(spec.bold_shape[0]), 4)[:3]):
        weights[column, slab] = 1.0
    return weights


#: The demo atlas's name and label image (its table beside it, ``.tsv``), under ``code/``.
ATLAS_NAME = "slabs"
ATLAS_IMAGE = "code/atlas-slabs_dseg.nii.gz"


def write_atlas(root: Path, spec: NaturalisticSpec) -> Path:
    """The demo parcellation under ``root`` (:data:`ATLAS_IMAGE` and its label table):
    slab ``g`` of :func:`voxel_weights` split at the middle of y into parcels ``2g + 1``
    and ``2g + 2``, named after the design column that drives them; returns the image."""
    columns = ("luminance", "tone", "words", "none")
    slabs = np.array_split(np.arange(spec.bold_shape[0]), 4)
    labels = np.zeros(spec.bold_shape, dtype=np.int16)
    half = spec.bold_shape[1] // 2
    rows = ["index\tname"]
    for g, slab in enumerate(slabs):
        labels[slab, :half] = 2 * g + 1
        labels[slab, half:] = 2 * g + 2
        rows += [f"{2 * g + 1}\t{columns[g]}_low", f"{2 * g + 2}\t{columns[g]}_high"]
    image = root / ATLAS_IMAGE
    _save(labels, image, (3.0, 3.0, 3.0))
    image.with_name(image.name.replace(".nii.gz", ".tsv")).write_text("\n".join(rows) + "\n")
    return image


def make_naturalistic_demo(root: str | Path, spec: NaturalisticSpec = NaturalisticSpec()) -> Path:
    """Write the naturalistic demo dataset under ``root``; returns ``root``.

    ``dataset_description.json`` is written last: a dataset whose writing failed has none.

    Raises
    ------
    ValueError
        When the film is too short for every feature to vary (:meth:`FilmTruth.design`).
    """
    root = Path(root)
    rng = np.random.default_rng(spec.seed)
    truth = film_truth(spec, rng)
    design = truth.design()
    root.mkdir(parents=True, exist_ok=True)
    (root / f"task-{TASK}_bold.json").write_text(
        json.dumps({"RepetitionTime": spec.repetition_time, "TaskName": TASK}, indent=2)
    )
    encode_film(root / "stimuli" / "film.mp4", spec, truth)
    write_transcript(root / "stimuli" / "film_words.tsv", spec, truth)
    (root / f"task-{TASK}_events.tsv").write_text(
        "onset\tduration\ttrial_type\tstim_file\n"
        f"0\t{spec.duration:g}\tfilm\tfilm.mp4\n"
        f"0\t{spec.duration:g}\ttranscript\tfilm_words.tsv\n"
    )
    hrf_design = convolve_hrf(design, spec.repetition_time)
    signal = spec.amplitude * np.einsum("tc,cxyz->xyzt", hrf_design, voxel_weights(spec))
    signal_var = signal.var(axis=-1)
    subjects = {}
    for n in range(spec.n_subjects):
        subject, sd = f"{n + 1:02d}", spec.noise_sd[n % len(spec.noise_sd)]
        for run in ("1", "2"):
            noise = rng.normal(0.0, sd, signal.shape)
            path = root / bids_path(
                datatype="func", sub=subject, task=TASK, run=run, suffix="bold", extension=".nii.gz"
            )
            _save(
                (1000.0 + signal + noise).astype(np.float32),
                path,
                (3.0, 3.0, 3.0, spec.repetition_time),
            )
        ceiling = signal_var / (signal_var + sd**2)
        subjects[subject] = {"noise_sd": sd, "noise_ceiling": ceiling.round(6).tolist()}
    truth_file = root / "code" / "naturalistic_truth.json"
    truth_file.parent.mkdir(exist_ok=True)
    write_atlas(root, spec)
    truth_file.write_text(
        json.dumps(
            {
                "spec": asdict(spec),
                "noise_ceiling_definition": "var(signal) / (var(signal) + noise_sd**2) per "
                "voxel, signal variance over a run's volumes",
                "luminance": truth.luminance.tolist(),
                "tone_band": truth.band.tolist(),
                "tone_frequency": truth.frequency.tolist(),
                "n_mels": N_MELS,
                "words": truth.words,
                "design_columns": list(DESIGN_COLUMNS),
                "subjects": subjects,
            }
        )
    )
    description = {"Name": "bidstrain naturalistic demo", "BIDSVersion": "1.9.0"}
    (root / "dataset_description.json").write_text(json.dumps(description, indent=2))
    return root


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: ``bidstrain-naturalistic-demo OUT_DIR [--subjects N] [--duration S]
    [--seed S]``."""
    parser = argparse.ArgumentParser(
        prog="bidstrain-naturalistic-demo", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--subjects", type=int, default=NaturalisticSpec.n_subjects)
    parser.add_argument(
        "--duration",
        type=float,
        default=NaturalisticSpec.duration,
        help="seconds of the film, a whole number of TRs (%(default)s)",
    )
    parser.add_argument("--seed", type=int, default=NaturalisticSpec.seed)
    args = parser.parse_args(argv)
    tr = NaturalisticSpec.repetition_time
    positive = math.isfinite(args.duration) and args.duration > 0
    if not positive or abs(round(args.duration / tr) * tr - args.duration) > 1e-9:
        parser.error(
            f"--duration {args.duration:g}: not a whole, positive number of TRs ({tr:g} s)"
        )
    spec = NaturalisticSpec(n_subjects=args.subjects, duration=args.duration, seed=args.seed)
    try:
        print(make_naturalistic_demo(args.out_dir, spec))
    except ValueError as error:
        parser.error(f"--duration {args.duration:g}, --seed {args.seed}: {error}")


if __name__ == "__main__":
    main()
