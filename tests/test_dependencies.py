"""The shape of the code, checked: data flows one way (no part of thinksae imports a part ranked
above it, not even inside a function), no module-level import circle, no `_private` name taken
from another package, internal imports at the top of their module, no function over 60 lines and
no file over 400. Every import of every file under src/thinksae is read with `ast` (absolute and
relative)."""

from __future__ import annotations

import ast
from pathlib import Path

import thinksae

ROOT = Path(thinksae.__file__).parent
ORDER = ("errors", "__init__", "__main__", "atomic", "env", "versions", "lazy", "config", "runs",
         "data", "chat", "sinks", "models", "sae", "interventions", "generation", "binding",
         "corpus", "store", "train", "evaluate", "features", "validate", "explain", "annotations",
         "steer", "monitor", "serve", "pipeline", "cli")
"""Every top-level part of thinksae, bottom to top: the shared base (errors, files, environment,
package faces, config helpers), the chat conventions and the sink rule, models, SAEs, the
intervention hooks, the one decoding API, the SAE-meets-model binding, then the stages in
data-flow order (`annotations`, the verdicts and explanations for the views, sits above validate
and explain), the web app, the pipeline and the command line."""
MAX_FUNCTION_LINES, MAX_FILE_LINES = 60, 400


def module_name(path: Path) -> str:
    name = ".".join(("thinksae", *path.relative_to(ROOT).with_suffix("").parts))
    return name.removesuffix(".__init__")


def imports(path: Path, inside_functions: bool = True) -> list[tuple[int, str, list[str]]]:
    """(line, absolute module name, names taken) of every import in ``path`` (function bodies
    included unless ``inside_functions`` is False)."""
    package = module_name(path) if path.name == "__init__.py" else \
        module_name(path).rpartition(".")[0]
    tree = ast.parse(path.read_text(), str(path))
    nodes = ast.walk(tree) if inside_functions else iter(tree.body)
    out = []
    for node in nodes:
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [a.name for a in node.names]
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                name = f"{base}.{node.module}" if node.module else base
            else:
                name = node.module or ""
            if node.module is None:  # `from .. import x`: x may be a module, or a name
                out += [(node.lineno, f"{name}.{n}" if _is_module(f"{name}.{n}") else name, [n])
                        for n in names]
            else:
                out.append((node.lineno, name, names))
    return out


def _is_module(name: str) -> bool:
    """Whether ``name`` (thinksae.a.b) is a module or package of the source tree."""
    parts = name.split(".")[1:]
    base = ROOT.joinpath(*parts) if parts else ROOT
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def part_of(module: str) -> str | None:
    """The top-level part of thinksae that ``module`` belongs to (None: not thinksae)."""
    parts = module.split(".")
    if parts[0] != "thinksae":
        return None
    return parts[1] if len(parts) > 1 else "__init__"


def sources() -> list[Path]:
    return sorted(ROOT.rglob("*.py"))


def violations() -> list[str]:
    bad = []
    for path in sources():
        own = part_of(module_name(path))
        for line, module, _ in imports(path):
            other = part_of(module)
            if other is None or other == own or (own == "__main__" and other == "cli"):
                continue
            if ORDER.index(other) > ORDER.index(own):
                bad.append(f"{path.relative_to(ROOT)}:{line} ({own}) imports {module} ({other})")
    return bad


def test_every_part_of_thinksae_is_ranked():
    parts = {p.stem if p.is_file() else p.name for p in ROOT.iterdir()
             if (p.suffix == ".py" or (p.is_dir() and (p / "__init__.py").is_file()))}
    assert parts <= set(ORDER), parts - set(ORDER)


def test_no_module_imports_a_later_part():
    assert violations() == []


def _graph() -> dict[str, set[str]]:
    """Module → the thinksae modules it imports (a package's face counts as its __init__)."""
    known = {module_name(p) for p in sources()}
    graph: dict[str, set[str]] = {}
    for path in sources():
        deps = set()
        for _, module, names in imports(path):
            if part_of(module) is None:
                continue
            subs = {f"{module}.{n}" for n in names} & known
            deps |= subs or ({module} & known)
        graph[module_name(path)] = deps - {module_name(path)}
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_circle():
    assert circles(_graph()) == []


def test_no_private_name_from_another_package():
    bad = []
    for path in sources():
        own = module_name(path).rpartition(".")[0] if path.name != "__init__.py" else \
            module_name(path)
        for line, module, names in imports(path):
            package = module.rpartition(".")[0]
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            if part_of(module) and private and package != own:
                bad.append(f"{path.relative_to(ROOT)}:{line} takes {private} from {module}")
    assert bad == []


def test_internal_imports_sit_at_the_top():
    """Imports inside functions are kept for heavy third-party modules only (start-up time)."""
    bad = []
    for path in sources():
        top = {(line, module) for line, module, _ in imports(path, inside_functions=False)}
        for line, module, _ in imports(path):
            if part_of(module) and (line, module) not in top:
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {module} inside a function")
    assert bad == []


def test_units_are_small():
    long_files, long_functions = [], []
    for path in sources():
        text = path.read_text()
        if len(text.splitlines()) > MAX_FILE_LINES:
            long_files.append(f"{path.relative_to(ROOT)}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long_functions.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} {n}")
    assert long_files == [] and long_functions == []


def test_the_walk_sees_relative_imports_inside_functions(tmp_path, monkeypatch):
    """The checker itself: a function-level ``from ..validate import x`` in features is caught,
    and a circle of two modules is found."""
    fake = tmp_path / "thinksae"
    (fake / "features").mkdir(parents=True)
    (fake / "features" / "__init__.py").write_text("")
    (fake / "atomic.py").write_text("")
    (fake / "features" / "page.py").write_text(
        "from .. import atomic\n\ndef f():\n    from ..validate.verdicts import read_verdicts\n")
    monkeypatch.setattr(__import__(__name__), "ROOT", fake)
    assert [(line, m) for line, m, _ in imports(fake / "features" / "page.py")] == [
        (1, "thinksae.atomic"), (4, "thinksae.validate.verdicts")]
    assert violations() == ["features/page.py:4 (features) imports thinksae.validate.verdicts "
                            "(validate)"]
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_package_faces_name_no_submodule():
    """A lazily exported name that is also a submodule's name would turn into the module once the
    submodule is imported (Python sets it on the package): none may."""
    import importlib
    import pkgutil

    clashes = {}
    for info in pkgutil.walk_packages(thinksae.__path__, "thinksae."):
        if info.ispkg:
            package = importlib.import_module(info.name)
            subs = {s.name for s in pkgutil.iter_modules(package.__path__)}
            if set(getattr(package, "__all__", [])) & subs:
                clashes[info.name] = sorted(set(package.__all__) & subs)
    assert clashes == {}


def test_every_name_a_package_face_offers_resolves():
    """Each lazily exported name loads (a face left behind by a rename fails here, not for a user)."""
    import importlib
    import pkgutil

    missing = []
    for info in pkgutil.walk_packages(thinksae.__path__, "thinksae."):
        if not info.ispkg:
            continue
        package = importlib.import_module(info.name)
        for name in getattr(package, "__all__", []):
            try:
                getattr(package, name)
            except (AttributeError, ImportError) as err:
                missing.append(f"{info.name}.{name}: {err}")
    assert missing == []
