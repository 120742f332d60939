"""A small naturalistic demo dataset (20 s film, 3 subjects) shared by the stimuli tests."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

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
