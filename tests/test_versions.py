"""`thinksae.versions`: the stack a run records, read from package metadata without heavy imports,
and the git commit only for the checkout thinksae runs from."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy
import pytest
import safetensors
import tokenizers
import torch
import transformers

import thinksae
from thinksae import versions

needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")


def test_versions_are_the_imported_packages_own():
    got = versions.stack_versions()
    assert got["python"] == ".".join(map(str, sys.version_info[:3]))
    for module in (torch, transformers, tokenizers, safetensors, numpy):
        assert got[module.__name__] == module.__version__, module.__name__
    assert got["thinksae"] == thinksae.__version__
    assert all(isinstance(v, str) for v in got.values())


def test_a_missing_package_says_not_installed():
    assert versions.package_version("thinksae-no-such-distribution") == versions.NOT_INSTALLED


def test_asking_imports_nothing_heavy():
    code = ("import sys; from thinksae.versions import stack_versions; v = stack_versions(); "
            "print(sorted(m for m in ('torch', 'transformers', 'numpy', 'safetensors') "
            "if m in sys.modules))")
    src = str(Path(thinksae.__file__).parents[1])
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": src, "PATH": "/usr/bin:/bin"}).stdout
    assert out.strip() == "[]"


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True,
                          check=True).stdout.strip()


@needs_git
def test_git_state_of_a_checkout_and_its_dirt(tmp_path):
    root = tmp_path / "checkout"
    (root / "src" / "thinksae").mkdir(parents=True)
    module = root / "src" / "thinksae" / "x.py"
    module.write_text("a = 1\n")
    _git(root, "init", "-q")
    _git(root, "add", ".")
    _git(root, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "one")
    head = _git(root, "rev-parse", "HEAD")
    assert len(head) == 40
    assert versions.git_state(root) == {"git_commit": head, "git_dirty": "no"}
    (root / "untracked.txt").write_text("not part of the code\n")
    assert versions.git_state(root)["git_dirty"] == "no"
    module.write_text("a = 2\n")
    assert versions.git_state(root) == {"git_commit": head, "git_dirty": "yes"}


@needs_git
def test_no_commit_outside_a_checkout_or_below_another_repository(tmp_path):
    assert versions.git_state(tmp_path) == {}  # no src/thinksae, no repository
    outer = tmp_path / "repo"
    inner = outer / ".venv" / "lib" / "site"  # a wheel installed in a venv inside a repository
    (inner / "src" / "thinksae").mkdir(parents=True)
    _git(outer, "init", "-q")
    assert versions.git_state(inner) == {}


def test_this_checkout_reports_its_commit_when_it_is_one():
    state = versions.git_state()
    if shutil.which("git") is None or not (versions.SOURCE_ROOT / ".git").exists():
        assert state == {}
        return
    head = _git(versions.SOURCE_ROOT, "rev-parse", "HEAD")
    assert state["git_commit"] == head and state["git_dirty"] in ("yes", "no")
    assert versions.stack_versions()["git_commit"] == head
