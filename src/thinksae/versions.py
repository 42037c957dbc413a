"""The software stack a run was made with: Python, the packages that decide its numbers, and the
git commit of thinksae's source when it runs from a checkout. Cheap: package metadata only
(`importlib.metadata`), nothing heavy is imported, so a command can record it before any model
loads."""

from __future__ import annotations

import platform
import subprocess
from importlib import metadata
from pathlib import Path

from . import __version__

PACKAGES = ("torch", "transformers", "tokenizers", "safetensors", "numpy")
"""Distributions whose installed versions `stack_versions` reports (thinksae itself is added)."""

NOT_INSTALLED = "not installed"
"""The value reported for a distribution that is not installed."""

SOURCE_ROOT = Path(__file__).resolve().parents[2]
"""The checkout thinksae runs from when it is installed editable (``<root>/src/thinksae``)."""


def package_version(name: str) -> str:
    """The installed version of distribution ``name`` as its metadata gives it (e.g. torch's
    ``2.13.0+cpu``), or `NOT_INSTALLED`."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return NOT_INSTALLED


def _git(root: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                              timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):  # no git, or it hung
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def git_state(root: Path = SOURCE_ROOT) -> dict[str, str]:
    """``{"git_commit": <40 hex>, "git_dirty": "yes" | "no"}`` for the checkout at ``root``, or
    ``{}`` when ``root`` is not the top of a git work tree holding ``src/thinksae`` (a wheel
    installed into a virtual environment inside some repository must not report that
    repository's commit). Dirty = tracked files differ from the commit (untracked ones ignored)."""
    if not (root / "src" / "thinksae").is_dir():
        return {}
    top = _git(root, "rev-parse", "--show-toplevel")
    if top is None or Path(top).resolve() != root.resolve():
        return {}
    commit = _git(root, "rev-parse", "HEAD")
    status = _git(root, "status", "--porcelain", "--untracked-files=no")
    if not commit or status is None:
        return {}
    return {"git_commit": commit, "git_dirty": "yes" if status else "no"}


def stack_versions() -> dict[str, str]:
    """The versions that make a run: ``python``, each of `PACKAGES`, ``thinksae`` (the running
    code's ``__version__``) and, from a checkout, ``git_commit`` and ``git_dirty``
    (see `git_state`). Every value is a string."""
    out = {"python": platform.python_version()}
    out.update({name: package_version(name) for name in PACKAGES})
    out["thinksae"] = __version__
    out.update(git_state())
    return out
