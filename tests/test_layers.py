"""The package's import graph: layers import only downward, and no module imports itself
back through another."""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "workflow" / "bidstrain"

#: Each top-level module or folder of the package, by layer: a layer imports only from the
#: layers before it (and from itself).
LAYERS = (
    ("__init__", "errors", "modalities", "stats", "config"),
    ("io",),
    ("dataset",),
    ("ingest",),
    ("normalize",),
    ("stimuli",),
    ("average",),
    ("train", "encoding"),
    ("checks",),
    ("embed",),
    ("report",),
    ("paths",),
    ("plan",),
    ("demo",),
    ("cli",),
)
LAYER_OF = {name: rank for rank, names in enumerate(LAYERS) for name in names}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@functools.cache
def _imports() -> dict[str, set[str]]:
    """Every module of the package and the package modules it imports (any depth)."""
    graph = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        module = _module_name(path)
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                if node.module.startswith("bidstrain"):
                    targets.add(node.module)
            elif isinstance(node, ast.Import):
                targets |= {a.name for a in node.names if a.name.startswith("bidstrain")}
        graph[module] = targets
    return graph


def _top(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_every_top_level_module_has_a_layer():
    tops = {_top(module) for module in _imports()}
    assert tops <= set(LAYER_OF), f"give these a layer in LAYERS: {sorted(tops - set(LAYER_OF))}"


@pytest.mark.parametrize("module", sorted(_imports()))
def test_imports_run_down_the_layers(module):
    upward = [
        target for target in _imports()[module] if LAYER_OF[_top(target)] > LAYER_OF[_top(module)]
    ]
    assert not upward, f"{module} imports from a higher layer: {upward}"


def test_no_import_circle():
    graph = _imports()
    # a package import ("from bidstrain.train import x") stands for its __init__ only
    edges = {m: {t for t in targets if t in graph and t != m} for m, targets in graph.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for target in sorted(edges[node]):
            if state.get(target) == 1:
                cycle = stack[stack.index(target) :] + [target]
                raise AssertionError("import circle: " + " -> ".join(cycle))
            if target not in state:
                visit(target)
        stack.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)
