"""The features of one stimulus file, per TR: what a job of ``python -m bidstrain.stimuli``
computes and stores."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from bidstrain.config import StimulusFeatureConfig
from bidstrain.dataset.bids import parse_name
from bidstrain.errors import BidstrainError
from bidstrain.io.store import FeatureMeta, write_feature_store
from bidstrain.stimuli.audio import SILENCE, audio_features
from bidstrain.stimuli.media import MEDIA_EXTENSIONS, probe
from bidstrain.stimuli.text import (
    hashed_bag,
    mean_vectors,
    read_embeddings,
    read_words,
    words_per_bin,
)
from bidstrain.stimuli.video import frame_shape, video_features


def _fit(
    rows: Iterator[np.ndarray], n_bins: int, path: Path, kind: str, fill: float | None = None
) -> np.ndarray:
    """The first ``n_bins`` rows of a stream (read to its end, so that the decoder checks
    the file's length). A stream that ends before the file (a film's sound shorter than
    its picture, or the reverse) is completed with ``fill`` in every column, or by
    repeating its last row (a player holds a film's last picture)."""
    kept = []
    for row in rows:
        if len(kept) < n_bins:
            kept.append(row)
    if not kept:
        raise BidstrainError(f"no {kind} decodes from this file", path=path)
    missing = n_bins - len(kept)
    last = kept[-1] if fill is None else np.full_like(kept[-1], fill)
    return np.stack(kept + [last] * missing)


def media_features(
    path: Path, tr: float, settings: StimulusFeatureConfig
) -> tuple[dict[str, np.ndarray], FeatureMeta]:
    """The video and audio features of a film or sound, one row per TR of its duration."""
    info = probe(path)
    n_bins = max(math.ceil(info.duration / tr - 1e-6), 1)
    features, units, shapes = {}, {}, {}
    if info.has_video:
        size, colour = settings.video_size, settings.video_colour
        features["video"] = _fit(video_features(path, tr, size, colour), n_bins, path, "video")
        units["video"] = f"mean {colour} pixel value per TR, 0 to 255"
        shapes["video"] = frame_shape(size, colour)
    if info.has_audio:
        rows = audio_features(
            path,
            tr,
            settings.audio_n_mels,
            settings.audio_window,
            settings.audio_hop,
            settings.audio_rate,
        )
        features["audio"] = _fit(rows, n_bins, path, "audio", fill=SILENCE)
        units["audio"] = "log10 of the mean mel-band power per TR (samples of full scale 1)"
        shapes["audio"] = (settings.audio_n_mels,)
    meta = FeatureMeta(str(path), tr, tuple(features), units, shapes, path.stat().st_size)
    return features, meta


def _run_subject(path: Path) -> str | None:
    """The subject of a run's own events file (a transcript in its ``word`` column); None
    for a transcript of ``stimuli/``, which runs of any subject may present."""
    parsed = parse_name(path.name)
    return parsed[0].get("sub") if parsed and parsed[1] == "events" else None


def _word_vectors(path: str) -> dict[str, np.ndarray]:
    """The table of ``stimuli.text_embeddings`` (:func:`read_embeddings`); its errors name
    no subject, as every subject's transcripts read it, and say so."""
    try:
        return read_embeddings(path)
    except BidstrainError as error:
        raise BidstrainError(
            f"{error.message} (stimuli.text_embeddings: the word vectors of every subject's "
            "transcripts)",
            path=error.path,
        ) from None


def text_features(
    path: Path, tr: float, settings: StimulusFeatureConfig
) -> tuple[dict[str, np.ndarray], FeatureMeta]:
    """The text features of a transcript: hashed words or mean word vectors per TR.

    Raises
    ------
    BidstrainError
        Naming the transcript (and for a run's own events file, its subject): one without
        a word, or none of whose words has a vector; naming the word-vector table: one
        :func:`read_embeddings` refuses.
    """
    subject = _run_subject(path)
    words = read_words(path, subject=subject)
    if not words:
        raise BidstrainError("the transcript holds no word", path=path, subject=subject)
    bins = words_per_bin(words, tr)
    notes = {}
    if settings.text_method == "hashing":
        values = hashed_bag(bins, settings.text_n_features)
        units = "count of the words hashed to each column per TR"
    else:
        values, unknown = mean_vectors(bins, _word_vectors(settings.text_embeddings))
        if unknown.total() == sum(map(len, bins)):
            raise BidstrainError(
                f"no word of the transcript has a vector in {settings.text_embeddings} "
                f"(stimuli.text_embeddings); its most frequent words: "
                + ", ".join(word for word, _ in unknown.most_common(5)),
                path=path,
                subject=subject,
            )
        units = f"mean word vector per TR ({settings.text_embeddings})"
        notes["text"] = (
            f"{sum(unknown.values())} of {sum(map(len, bins))} words without a vector; most "
            "frequent: " + ", ".join(f"{w} ({n})" for w, n in unknown.most_common(10))
        )
    meta = FeatureMeta(
        str(path),
        tr,
        ("text",),
        {"text": units},
        {"text": (values.shape[1],)},
        path.stat().st_size,
        notes,
    )
    return {"text": values}, meta


def write_stimulus_store(
    path: str | Path, tr: float, settings: StimulusFeatureConfig, out: str | Path
):
    """Compute the features of one stimulus file and write its feature store."""
    path = Path(path)
    compute = media_features if path.suffix.lower() in MEDIA_EXTENSIONS else text_features
    features, meta = compute(path, tr, settings)
    write_feature_store(out, meta, features)
    return meta
