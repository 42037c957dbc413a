"""Print the exact versions of everything thinksae needs, as pip constraints (``name==version``).

Reads the installed distributions' metadata, starting from thinksae's own requirements with the
given extras, and follows every requirement whose environment marker holds here; thinksae itself
is left out. So a virtual environment that also sees unrelated packages (``--system-site-packages``)
pins only what an install of thinksae pulls in. Used by scripts/update-pins.sh:

    python scripts/pins.py --extras dev,docs,bench > constraints.txt
    python scripts/pins.py --extras dev --check constraints.txt   # what scripts/test.sh checks

torch is written without its local label (``2.13.0``, not ``2.13.0+cpu``): ``==2.13.0`` matches
the CPU build, which the scripts install before anything else.
"""

from __future__ import annotations

import argparse
import platform
import re
import sys
from importlib import metadata
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT_DIST = "thinksae"
PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def _root_requirements(extras: set[str]) -> list[Requirement]:
    """thinksae's requirements with ``extras``, from the checkout's pyproject.toml (what is about
    to be installed), or from the installed metadata where Python has no TOML reader."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        return _requirements(metadata.distribution(ROOT_DIST), extras)
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    optional = project.get("optional-dependencies", {})
    texts = list(project.get("dependencies", [])) + [t for e in sorted(extras)
                                                      for t in optional.get(e, [])]
    return [Requirement(t) for t in texts]


def _requirements(dist: metadata.Distribution, extras: set[str]) -> list[Requirement]:
    """The requirements of an installed distribution whose markers hold here with ``extras``."""
    env = default_environment()
    out = []
    for text in dist.requires or []:
        req = Requirement(text)
        if req.marker is None or any(req.marker.evaluate({**env, "extra": e})
                                     for e in (extras or {""})):
            out.append(req)
    return out


def closure(extras: set[str]) -> dict[str, str]:
    """Canonical name → installed version of every distribution that thinksae (with ``extras``)
    requires, directly or not, thinksae itself left out. A required distribution that is not
    installed is an error (install first, then pin)."""
    versions: dict[str, str] = {}
    done: set[tuple[str, frozenset[str]]] = set()
    env = default_environment()
    todo = [r for r in _root_requirements(extras) if r.marker is None or r.marker.evaluate(env)]
    missing = []
    while todo:
        req = todo.pop()
        key = (canonicalize_name(req.name), frozenset(req.extras))
        if key in done:
            continue
        done.add(key)
        try:
            dist = metadata.distribution(req.name)
        except metadata.PackageNotFoundError:
            missing.append(req.name)
            continue
        versions[key[0]] = dist.version
        todo += _requirements(dist, set(req.extras))
    if missing:
        sys.exit(f"pins: required but not installed: {', '.join(sorted(set(missing)))}")
    versions.pop(ROOT_DIST, None)
    return versions


def _plain(version: str) -> str:
    return re.sub(r"\+.*$", "", version)


def check(path: Path, extras: set[str]) -> list[str]:
    """What differs between the installed closure and the constraints file at ``path``: a
    version other than the pinned one, or a requirement the file does not pin."""
    pinned = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            pinned[canonicalize_name(name)] = version.strip()
    bad = []
    for name, version in sorted(closure(extras).items()):
        if name not in pinned:
            bad.append(f"{name} {version} is installed but not pinned")
        elif _plain(version) != _plain(pinned[name]):
            bad.append(f"{name} {version} is installed, {pinned[name]} is pinned")
    return bad


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--extras", default="dev,docs,bench",
                        help="thinksae's extras whose requirements are pinned too")
    parser.add_argument("--check", metavar="FILE",
                        help="compare what is installed with this constraints file instead")
    args = parser.parse_args(argv)
    extras = {e for e in args.extras.split(",") if e}
    if args.check:
        bad = check(Path(args.check), extras)
        for line in bad:
            print(f"pins: {line}", file=sys.stderr)
        if bad:
            print("pins: regenerate with `bash scripts/update-pins.sh`", file=sys.stderr)
        return 1 if bad else 0
    pins = closure(extras)
    print("# Exact versions the test suite passed with: `pip install -c constraints.txt ...`.")
    print("# Generated by scripts/update-pins.sh (scripts/pins.py); do not edit by hand.")
    print(f"# Python {platform.python_version()} on {platform.system()} {platform.machine()}; "
          f"extras: {','.join(sorted(extras))}.")
    for name in sorted(pins):
        version = _plain(pins[name]) if name == "torch" else pins[name]
        print(f"{name}=={version}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
