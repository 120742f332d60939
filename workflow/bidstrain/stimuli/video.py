"""Video features: frames resized and averaged over each TR, decoded as a stream."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from bidstrain.stimuli.bins import bin_means
from bidstrain.stimuli.media import Progress, declared_end, film_streams, open_media, start_time

#: PyAV pixel format of each ``stimuli.video_colour``.
PIXEL_FORMATS = {"grey": "gray", "rgb": "rgb24"}


def frame_shape(size: tuple[int, int], colour: str) -> tuple[int, ...]:
    """Shape of one frame's features: ``(height, width)`` grey, ``(height, width, 3)`` RGB."""
    width, height = size
    return (height, width) if colour == "grey" else (height, width, 3)


def decoded_frames(
    stream: av.video.stream.VideoStream,
    frames: Iterator[av.VideoFrame],
    size: tuple[int, int],
    colour: str,
    progress: Progress,
    origin: float = 0.0,
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """Each frame as ``(time, pixels, shown, seconds)``, resized by FFmpeg's scaler, one at
    a time: ``time`` counts from ``origin`` (the container's start, in the stream's
    seconds); ``shown`` is how long the frame stays on screen, in ticks of the stream's
    time base (until the next frame; the last frame's own duration, or one frame period),
    and ``seconds`` the same in seconds, so that a film of variable or low frame rate
    averages what was on screen. ``progress.until`` follows the end time of the last frame
    decoded.

    One scaler serves every frame (``frame.to_ndarray(width=...)`` would set up a new
    one per frame: about 7 % of the decoding time of a 480p film).
    """
    width, height = size
    rate = float(stream.average_rate or stream.guessed_rate or 25)
    period = max(round(1 / (rate * stream.time_base)), 1) if stream.time_base else 1
    tick = float(stream.time_base) if stream.time_base else 1 / rate
    scaler = VideoReformatter()
    held = None  # the last frame: its display time is known once the next one comes
    for index, frame in enumerate(frames):
        time = frame.time - origin if frame.time is not None else index / rate
        ticks = frame.pts if frame.pts is not None else index * period
        resized = scaler.reformat(frame, width=width, height=height, format=PIXEL_FORMATS[colour])
        if held is not None:
            shown = max(ticks - held[1], 0)
            yield held[0], held[2], np.array([shown]), np.array([shown * tick])
        held = (np.array([time]), ticks, resized.to_ndarray()[None], frame.duration)
        progress.until = time + 1.0 / rate
    if held is not None:
        shown = held[3] or period
        yield held[0], held[2], np.array([shown]), np.array([shown * tick])


def video_features(
    path: str | Path,
    tr: float,
    size: tuple[int, int] = (64, 48),
    colour: str = "grey",
) -> Iterator[np.ndarray]:
    """The mean frame of each TR of a film's first video stream (cover art aside), bin
    after bin.

    Frames are decoded one at a time and added, weighted by their display time, to the
    running sum of each bin they are on screen in (:func:`bidstrain.stimuli.bins.
    bin_means`): memory holds two frames and one bin, whatever the film's length. Times
    count from the container's start (:func:`~bidstrain.stimuli.media.start_time`).

    Parameters
    ----------
    path : str or Path
        The film.
    tr : float
        Bin width in seconds (the repetition time of the runs that showed it).
    size : (int, int)
        Width and height the frames are resized to.
    colour : {"grey", "rgb"}
        Luminance (0 to 255) or RGB channels (0 to 255 each).

    Yields
    ------
    ndarray, shape :func:`frame_shape`, float64
        The mean frame of bin 0, 1, ...

    Raises
    ------
    BidstrainError
        When the file cannot be decoded, or decodes more than :data:`END_PROBE` seconds
        less than its header declares (truncated).
    """
    with open_media(path) as container:
        stream = film_streams(container)[0]
        progress = Progress(Path(path), "video", declared_end(container, stream))
        decoded = container.decode(stream)
        origin = start_time(container)
        frames = decoded_frames(stream, decoded, size, colour, progress, origin)
        yield from bin_means(frames, tr)
    progress.check()
