"""Audio features: a log-mel spectrogram averaged over each TR, decoded as a stream."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import av
import numpy as np

from bidstrain.stimuli.bins import bin_means
from bidstrain.stimuli.media import Progress, declared_end, open_media, start_time

#: Added to the mean mel power of a bin before its logarithm.
LOG_FLOOR = 1e-10
#: The features of a TR without sound.
SILENCE = float(np.log10(LOG_FLOOR))
#: Seconds of samples the spectrogram takes at a time (:func:`joined`): a decoded frame
#: holds a few windows only, and numpy's cost per call would dominate. 600 s of sound
#: took 2.37 s in blocks of 0.05 s, 1.69 s in blocks of 0.25 s and 1.50 s in blocks of
#: 1 s (one core, in-process); a block's windows then take about 1 MB (100 windows).
BLOCK = 1.0


def hz_to_mel(hz: np.ndarray | float) -> np.ndarray:
    """The HTK mel scale: ``2595 log10(1 + f / 700)``."""
    return 2595.0 * np.log10(1.0 + np.asarray(hz, dtype=np.float64) / 700.0)


def mel_to_hz(mel: np.ndarray | float) -> np.ndarray:
    """Inverse of :func:`hz_to_mel`."""
    return 700.0 * (10.0 ** (np.asarray(mel, dtype=np.float64) / 2595.0) - 1.0)


def mel_filterbank(sample_rate: float, n_fft: int, n_mels: int) -> np.ndarray:
    """Triangular mel filters from 0 Hz to the Nyquist frequency, peak 1 each.

    Returns
    -------
    ndarray, shape (n_mels, n_fft // 2 + 1)
        Filter ``m`` rises from centre ``m - 1`` to centre ``m`` and falls to ``m + 1``
        (centres equally spaced in mel).
    """
    freqs = np.fft.rfftfreq(n_fft, 1.0 / sample_rate)
    edges = mel_to_hz(np.linspace(0.0, hz_to_mel(sample_rate / 2.0), n_mels + 2))
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (freqs - lower) / (centre - lower)
    falling = (upper - freqs) / (upper - centre)
    return np.maximum(0.0, np.minimum(rising, falling))


def band_centres(sample_rate: float, n_mels: int) -> np.ndarray:
    """Centre frequency (Hz) of each band of :func:`mel_filterbank`."""
    return mel_to_hz(np.linspace(0.0, hz_to_mel(sample_rate / 2.0), n_mels + 2))[1:-1]


def mono_samples(
    container: av.container.InputContainer,
    stream: av.audio.stream.AudioStream,
    sample_rate: int,
    origin: float = 0.0,
) -> Iterator[tuple[float, np.ndarray]]:
    """``(start time, float32 mono samples)`` of each decoded frame, resampled by FFmpeg
    to ``sample_rate``, the mean of its channels (FFmpeg's own downmix adds a stereo
    file's two channels at -3 dB each: twice the power of the same sound in mono). Times
    count from ``origin`` (the container's start).

    Frames are decoded one at a time (the trailing ``None`` flushes the resampler):
    memory does not grow with the sound's length."""
    resampler = av.AudioResampler(format="fltp", rate=sample_rate)  # the file's channels
    for frame in itertools.chain(container.decode(stream), [None]):
        for out in resampler.resample(frame):
            time = 0.0 if out.time is None else out.time - origin
            yield time, out.to_ndarray().mean(axis=0)


def joined(
    chunks: Iterator[tuple[float, np.ndarray]], sample_rate: int, seconds: float
) -> Iterator[tuple[float, np.ndarray]]:
    """Consecutive ``(start time, samples)`` chunks joined into blocks of at least
    ``seconds`` (the last may be shorter), each with its first chunk's start time."""
    parts: list[np.ndarray] = []
    start, size = 0.0, 0
    for time, samples in chunks:
        start = time if not parts else start
        parts.append(samples)
        size += samples.size
        if size >= seconds * sample_rate:
            yield start, np.concatenate(parts)
            parts, size = [], 0
    if parts:
        yield start, np.concatenate(parts)


def mel_frames(
    chunks: Iterator[tuple[float, np.ndarray]],
    sample_rate: int,
    window: float,
    hop: float,
    n_mels: int,
    progress: Progress,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Mel power of each spectrogram window, ``(centre times, (windows, n_mels))`` per chunk.

    Keeps only the samples of the windows not yet complete between chunks.
    ``progress.until`` follows the end time of the samples seen.
    """
    length, step = max(round(window * sample_rate), 2), max(round(hop * sample_rate), 1)
    taper = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(length) / length)  # periodic Hann
    # power per frequency bin, scaled so that the bins of the whole spectrum add up to the
    # window's (tapered) mean square: the same sound has the same power whatever the
    # window length
    filters = mel_filterbank(sample_rate, length, n_mels) / (length * np.sum(taper**2))
    buffer, start = np.zeros(0, dtype=np.float64), None  # start: time of buffer[0]
    for time, samples in chunks:
        start = time if start is None else start
        buffer = np.concatenate([buffer, samples])
        progress.until = start + buffer.size / sample_rate
        n = (buffer.size - length) // step + 1 if buffer.size >= length else 0
        if n == 0:
            continue
        windows = np.lib.stride_tricks.sliding_window_view(buffer, length)[: n * step : step]
        power = np.abs(np.fft.rfft(windows * taper, axis=1)) ** 2
        centres = start + (np.arange(n) * step + length / 2.0) / sample_rate
        yield centres, power @ filters.T
        buffer, start = buffer[n * step :], start + n * step / sample_rate


def audio_features(
    path: str | Path,
    tr: float,
    n_mels: int = 40,
    window: float = 0.025,
    hop: float = 0.010,
    sample_rate: int = 16000,
) -> Iterator[np.ndarray]:
    """The log-mel spectrum of each TR of a file's first audio stream, bin after bin.

    Samples are decoded a frame at a time, resampled to ``sample_rate`` and averaged over
    the channels (:func:`mono_samples`); each Hann window's power spectrum (the bins of
    the whole spectrum adding up to the window's mean square) goes through
    :func:`mel_filterbank` and into the bin of its centre time. A bin's value is
    ``log10(mean mel power + LOG_FLOOR)`` (samples of full scale 1): the same sound
    gives the same values whatever the file's rate, and in mono or in every channel.
    Times count from the container's start (:func:`~bidstrain.stimuli.media.start_time`).

    Parameters
    ----------
    path : str or Path
        The sound or film.
    tr : float
        Bin width in seconds.
    n_mels : int
        Mel bands, from 0 Hz to half of ``sample_rate``.
    window, hop : float
        Window length and the step between windows, in seconds.
    sample_rate : int
        Samples per second the sound is resampled to.

    Yields
    ------
    ndarray, shape (n_mels,), float64

    Raises
    ------
    BidstrainError
        When the file cannot be decoded or decodes less than its header declares.
    """
    with open_media(path) as container:
        stream = container.streams.audio[0]
        progress = Progress(Path(path), "audio", declared_end(container, stream))
        decoded = mono_samples(container, stream, sample_rate, start_time(container))
        samples = joined(decoded, sample_rate, BLOCK)
        frames = mel_frames(samples, sample_rate, window, hop, n_mels, progress)
        for mean in bin_means(frames, tr):
            yield np.log10(mean + LOG_FLOOR)
    progress.check()
