"""A small naturalistic demo dataset (20 s film, 3 subjects) shared by the stimuli tests."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import av
from bidstrain.demo.naturalistic import NaturalisticSpec, make_naturalistic_demo

SPEC = NaturalisticSpec(duration=20.0)


def make_film_bids(tmp_path_factory) -> Path:
    """The demo dataset (a module fixture of each test file calls this once); copy it
    before changing it."""
    return make_naturalistic_demo(tmp_path_factory.mktemp("naturalistic"), SPEC)


def truth(root: Path) -> dict:
    """What the generator put in the film (``code/naturalistic_truth.json``)."""
    return json.loads((root / "code" / "naturalistic_truth.json").read_text())


def copy_dataset(root: Path, to: Path) -> Path:
    """A copy of the dataset to break."""
    return Path(shutil.copytree(root, to / "bids"))


class Pipe(io.RawIOBase):
    """A file that cannot seek, as a muxer writing to a pipe sees it: the writer cannot go
    back to fill in sizes and durations."""

    def __init__(self, handle):
        self.handle = handle

    def writable(self):
        return True

    def write(self, data):
        return self.handle.write(data)


def cut_faststart(film: Path, out: Path, keep: float = 0.6) -> Path:
    """``film`` remuxed with its index first (MP4 "faststart", as streamed films are),
    then cut to ``keep`` of its bytes: the header still declares the whole duration."""
    whole = out.with_name("whole_" + out.name)
    with (
        av.open(str(film)) as source,
        av.open(str(whole), "w", options={"movflags": "faststart"}) as sink,
    ):
        streams = {s.index: sink.add_stream_from_template(s) for s in source.streams}
        for packet in source.demux():
            if packet.dts is not None:
                packet.stream = streams[packet.stream.index]
                sink.mux(packet)
    data = whole.read_bytes()
    out.write_bytes(data[: int(len(data) * keep)])
    whole.unlink()
    return out
