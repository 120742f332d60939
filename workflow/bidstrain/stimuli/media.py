"""Open and probe media files with PyAV: every FFmpeg failure becomes a BidstrainError that
names the file (and the subject, where known)."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import av

from bidstrain.errors import BidstrainError

#: Extensions read as video or audio (whatever streams the file holds); anything else in
#: ``stimuli/`` must be a transcript (:mod:`bidstrain.stimuli.text`).
MEDIA_EXTENSIONS = frozenset(
    ".mp4 .m4v .mkv .mov .avi .webm .mpg .mpeg .wav .flac .mp3 .m4a .aac .ogg".split()
)
#: Seconds before the declared end that a probe seeks to: a file that decodes nothing
#: there is truncated.
END_PROBE = 1.0
#: RIFF sizes of a WAVE file written to a pipe, where the writer could not go back to
#: fill the size in (FFmpeg writes 0xFFFFFFFF, other tools 0): the size is unknown.
UNKNOWN_RIFF_SIZES = (0, 0xFFFFFFFF)


@dataclass(frozen=True)
class MediaInfo:
    """What a media file's header declares (:func:`probe`)."""

    path: Path
    duration: float
    has_video: bool
    has_audio: bool


@contextmanager
def open_media(
    path: str | Path, subject: str | None = None
) -> Iterator[av.container.InputContainer]:
    """Open ``path`` for decoding; FFmpeg errors (at open or while decoding inside the
    block) raise a :class:`BidstrainError` naming the file.

    Parameters
    ----------
    path : str or Path
        The media file.
    subject : str, optional
        Named in the error, when the file is opened for one subject's run.
    """
    try:
        container = av.open(str(path))
    except FileNotFoundError:
        raise BidstrainError("stimulus file not found", path=path, subject=subject) from None
    except av.error.FFmpegError as error:
        raise BidstrainError(
            f"unreadable media file (FFmpeg: {error.strerror}): re-encode or replace it",
            path=path,
            subject=subject,
        ) from None
    try:
        yield container
    except av.error.FFmpegError as error:
        raise BidstrainError(
            f"media file fails to decode (FFmpeg: {error.strerror}); it may be truncated or "
            "corrupt: re-encode or replace it",
            path=path,
            subject=subject,
        ) from None
    finally:
        container.close()


def film_streams(container: av.container.InputContainer) -> list[av.video.stream.VideoStream]:
    """The video streams of a film: a still attached as cover art (an MP3's album
    picture) is not one."""
    cover = av.stream.Disposition.attached_pic
    return [stream for stream in container.streams.video if not stream.disposition & cover]


def main_stream(container: av.container.InputContainer) -> av.stream.Stream:
    """The first film stream, or the first sound stream of a file without one."""
    return (film_streams(container) or list(container.streams.audio))[0]


def demuxed_duration(container: av.container.InputContainer) -> float:
    """Seconds from :func:`start_time` to the end of the last packet of
    :func:`main_stream`, reading every packet (nothing decoded): for a file whose header
    declares no duration (a Matroska file written to a pipe)."""
    stream = main_stream(container)
    end = 0.0
    for packet in container.demux(stream):
        if packet.pts is not None:
            end = max(end, float((packet.pts + (packet.duration or 0)) * stream.time_base))
    return max(end - start_time(container), 0.0)


def start_time(container: av.container.InputContainer) -> float:
    """Time 0 of the stimulus in the file's timestamps, in seconds: the start of its
    first film stream (of its sound in a file without one), where the events file's
    onset says it was shown.

    A file's timestamps may start after 0 (an MP4 or a Matroska file cut from a longer
    film, an MPEG stream), and a sound may start a little before its film (the first
    frame of an AAC track, which the decoder fills before the sound begins): every feature
    time counts from here.
    """
    stream = main_stream(container)
    if stream.start_time is not None and stream.time_base:
        return float(stream.start_time * stream.time_base)
    return 0.0 if container.start_time is None else container.start_time / av.time_base


def declared_end(
    container: av.container.InputContainer, stream: av.stream.Stream | None = None
) -> float:
    """Seconds from :func:`start_time` to the end the header declares for ``stream``, or
    by default for the file (its film and sound streams, the latest end); 0 when it
    declares none. A film's sound may end before its picture, and neither is then
    truncated.

    A stream's declared length counts from its own start. Where no stream declares one
    (Matroska), the container's duration is used, which FFmpeg then gives from the
    file's timestamp 0, not from its first frame: a Matroska file cut from 5 s to 15 s
    declares 15 s.
    """
    streams = (
        [stream] if stream is not None else [*film_streams(container), *container.streams.audio]
    )
    ends = [
        float(((s.start_time or 0) + s.duration) * s.time_base)
        for s in streams
        if s.duration is not None and s.time_base
    ]
    if ends:
        end = max(ends)
    elif container.duration is not None:
        end = container.duration / av.time_base
    else:
        return 0.0
    return max(end - start_time(container), 0.0)


@dataclass
class Progress:
    """How far the decoder of one stream got: the end time (s, from the container's
    start) of its last frame or sample decoded, compared with the end its header declares
    when the stream ends (:meth:`check`)."""

    path: Path
    kind: str  # "video" or "audio"
    declared: float
    until: float = 0.0

    def check(self) -> None:
        """Raise when the decoder stopped more than :data:`END_PROBE` seconds before the
        declared end (a truncated file)."""
        if self.declared - self.until > END_PROBE:
            raise BidstrainError(
                f"truncated media file: its {self.kind} stream decodes to {self.until:.2f} s "
                f"of the {self.declared:.2f} s its header declares "
                f"({self.declared - self.until:.2f} s missing): copy it again",
                path=self.path,
            )


def _wav_missing_bytes(path: Path) -> int:
    """Bytes a RIFF/WAVE file's header declares beyond the file's end (0 otherwise)."""
    with path.open("rb") as handle:
        head = handle.read(12)
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return 0
    (riff_size,) = struct.unpack("<I", head[4:8])
    if riff_size in UNKNOWN_RIFF_SIZES:
        return 0
    return max(riff_size + 8 - path.stat().st_size, 0)


def probe(path: str | Path, subject: str | None = None) -> MediaInfo:
    """The header of a media file, checked for truncation.

    Reads the header, then seeks :data:`END_PROBE` seconds before the declared end and
    decodes one frame; a WAVE file's declared size is compared with its size on disk. A
    file whose header declares no duration is measured by reading its packets
    (:func:`demuxed_duration`).

    Raises
    ------
    BidstrainError
        When the file is missing, unreadable, or holds less than its header declares.
    """
    path = Path(path)
    with open_media(path, subject) as container:
        info = MediaInfo(path, 0.0, bool(film_streams(container)), bool(container.streams.audio))
        if not (info.has_video or info.has_audio):
            raise BidstrainError(
                "media file holds no video or audio stream", path=path, subject=subject
            )
        declared = declared_end(container)
        info = replace(info, duration=declared or demuxed_duration(container))
        if info.duration <= 0:
            raise BidstrainError(
                "media file holds no video or audio frame", path=path, subject=subject
            )
        missing = _wav_missing_bytes(path)
        if missing:
            raise BidstrainError(
                f"truncated media file: {missing} bytes of its declared size are missing: "
                "copy it again",
                path=path,
                subject=subject,
            )
        if not declared:
            return info
        container.seek(int((start_time(container) + max(declared - END_PROBE, 0.0)) * av.time_base))
        if next(container.decode(main_stream(container)), None) is None:
            raise BidstrainError(
                f"truncated media file: nothing decodes in the last {END_PROBE:g} s of the "
                f"{info.duration:.2f} s its header declares: copy it again",
                path=path,
                subject=subject,
            )
    return info
