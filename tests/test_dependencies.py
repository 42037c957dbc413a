"""Data flows one way: no module of thinksae imports a later stage, not even inside a function.
Every import of every file under src/thinksae is read with `ast` (absolute and relative)."""

from __future__ import annotations

import ast
from pathlib import Path

import thinksae

ROOT = Path(thinksae.__file__).parent
ORDER = ("corpus", "store", "train", "evaluate", "features", "interventions", "validate", "explain",
         "annotations", "steer", "monitor", "serve", "pipeline", "cli")
"""Stages in data-flow order; `interventions` (the steering grammar and hooks) sits below
validate, whose causal tests use them, and steer; `annotations` (verdicts and explanations for the
views) sits above validate and explain, below the stages that use it."""
BASE = ("__init__", "__main__", "atomic", "config", "errors", "generation", "sae", "models", "data",
        "versions")
"""Shared by every stage (the SAE and the model loaders, the generation options; __main__ only
starts cli)."""

KNOWN: dict[str, str] = {}
"""Imports of a later stage that were there before this test, left to their owners: each is
still refused anywhere else, and the test fails once it is gone (so the list shrinks)."""


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in ``path``, function bodies included."""
    package = ".".join(("thinksae", *path.relative_to(ROOT).with_suffix("").parts))
    if path.name != "__init__.py":
        package = package.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                name = f"{base}.{node.module}" if node.module else base
            else:
                name = node.module or ""
            if node.module is None:  # `from .. import x`: x may be a module
                out += [(node.lineno, f"{name}.{a.name}") for a in node.names]
            else:
                out.append((node.lineno, name))
    return out


def stage_of(module: str) -> str | None:
    """The top-level part of thinksae that ``module`` belongs to (None: not thinksae)."""
    parts = module.split(".")
    if parts[0] != "thinksae":
        return None
    return parts[1] if len(parts) > 1 else "__init__"


def rank(stage: str) -> int:
    return -1 if stage in BASE else ORDER.index(stage)


def violations() -> list[str]:
    bad = []
    for path in sorted(ROOT.rglob("*.py")):
        own = stage_of(".".join(("thinksae", *path.relative_to(ROOT).with_suffix("").parts)))
        for line, module in imports(path):
            other = stage_of(module)
            if other is None or other == own:
                continue
            if own == "__main__" and other == "cli":
                continue
            if rank(other) > rank(own) or (own in BASE and other not in BASE):
                bad.append(f"{path.relative_to(ROOT)}:{line} ({own}) imports {module} ({other})")
    return bad


def test_every_part_of_thinksae_is_ranked():
    parts = {p.stem if p.is_file() else p.name for p in ROOT.iterdir()
             if (p.suffix == ".py" or (p.is_dir() and (p / "__init__.py").is_file()))}
    assert parts <= set(ORDER) | set(BASE), parts - set(ORDER) - set(BASE)


def test_no_module_imports_a_later_stage():
    found = violations()
    known = [v for v in found if KNOWN.get(v.split(":")[0]) == v.split(" imports ")[1].split()[0]]
    assert [v for v in found if v not in known] == []
    assert len(known) == len(KNOWN), "a known violation is gone: take it off KNOWN"


def test_the_walk_sees_relative_imports_inside_functions(tmp_path, monkeypatch):
    """The checker itself: a function-level ``from ..validate import x`` in features is caught."""
    fake = tmp_path / "thinksae"
    (fake / "features").mkdir(parents=True)
    (fake / "features" / "__init__.py").write_text("")
    (fake / "features" / "page.py").write_text(
        "from .. import atomic\n\ndef f():\n    from ..validate.verdicts import read_verdicts\n")
    monkeypatch.setattr(__import__(__name__), "ROOT", fake)
    assert imports(fake / "features" / "page.py") == [
        (1, "thinksae.atomic"), (4, "thinksae.validate.verdicts")]
    assert violations() == ["features/page.py:4 (features) imports thinksae.validate.verdicts "
                            "(validate)"]
