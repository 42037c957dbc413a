"""Every non-Python file under src/thinksae ships in the wheel: pyproject's package-data globs
cover it (the workbench's pages were once left out, so `thinksae serve` failed outside an
editable install)."""

from __future__ import annotations

import fnmatch
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "thinksae"


def _data_files() -> list[str]:
    return sorted(str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*")
                  if p.is_file() and p.suffix not in (".py", ".pyc") and "__pycache__" not in p.parts)


def test_package_data_globs_cover_every_data_file():
    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"][
        "thinksae"]
    files = _data_files()
    assert "serve/static/index.html" in files and "monitor/static/sse.js" in files
    missed = [f for f in files if not any(fnmatch.fnmatch(f, g) for g in globs)]
    assert not missed, f"not in [tool.setuptools.package-data]: {missed}"
