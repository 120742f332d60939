"""The conda environment of ``--sdm conda`` lists what pyproject.toml lists."""

import re
import tomllib
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]

#: conda-forge names of the pip packages whose names differ.
CONDA_NAMES = {
    "torch": "pytorch",
    "snakemake": "snakemake-minimal",
    "isal": "python-isal",
    "xxhash": "python-xxhash",
}


def _requirements(lines: list[str]) -> dict[str, str]:
    """Package name -> version specifiers, of lines like ``numpy>=1.26``."""
    parsed = (re.fullmatch(r"([A-Za-z0-9_.-]+)\s*(.*)", line.strip()) for line in lines)
    return {match[1].lower(): match[2].replace(" ", "") for match in parsed}


def test_conda_environment_matches_pyproject():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    environment = yaml.safe_load((REPO / "workflow" / "envs" / "bidstrain.yaml").read_text())
    listed = [item for item in environment["dependencies"] if isinstance(item, str)]
    conda = _requirements([item for item in listed if not item.startswith(("python=", "pip"))])
    expected = {
        CONDA_NAMES.get(name, name): versions
        for name, versions in _requirements(project["dependencies"]).items()
    }
    assert conda == expected
