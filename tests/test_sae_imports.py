"""Inside thinksae.sae the modules import each other in one direction (base ← formats ← the
architectures), at module level: no cycle, no thinksae import hidden in a function."""

from __future__ import annotations

import ast
from pathlib import Path

import thinksae.sae

SAE = Path(thinksae.sae.__file__).parent
LEFT_TO_OWNER = {"bound"}
"""bound.py loads the model code lazily on purpose (thinksae.sae must not load thinksae.models)."""


def _sae_imports(path: Path) -> tuple[set[str], list[int]]:
    """(sibling modules ``path`` imports, lines of thinksae imports inside functions)."""
    siblings, in_functions = set(), []
    tree = ast.parse(path.read_text())
    functions = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    nested = {id(n) for f in functions for n in ast.walk(f) if n is not f}
    for node in ast.walk(tree):
        if not isinstance(node, ast.ImportFrom) or node.level == 0:
            continue
        if id(node) in nested:
            in_functions.append(node.lineno)
        if node.level == 1 and node.module:
            siblings.add(node.module.split(".")[0])
        elif node.level == 1:
            siblings.update(a.name for a in node.names)
    return siblings, in_functions


def test_no_cycle_and_no_import_inside_a_function():
    graph = {}
    for path in sorted(SAE.glob("*.py")):
        if path.stem == "__init__":
            continue
        siblings, in_functions = _sae_imports(path)
        graph[path.stem] = siblings
        if path.stem not in LEFT_TO_OWNER:
            assert not in_functions, f"{path.name}: thinksae imports inside functions at {in_functions}"
    assert "formats" not in graph["base"] and "base" in graph["formats"]

    def visit(node, stack):
        assert node not in stack, f"import cycle: {' -> '.join([*stack, node])}"
        for nxt in graph.get(node, ()):
            visit(nxt, [*stack, node])

    for module in graph:
        visit(module, [])
