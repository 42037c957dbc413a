#!/usr/bin/env bash
# Install thinksae with its test tools and run the test suite, on the pinned stack: every package
# at the version in constraints.txt (the versions the suite last passed with; CPU PyTorch first).
# Offline-safe apart from the PyPI installs. New versions: bash scripts/update-pins.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
# torch first, from constraints.txt's pin (2.13.0: the CPU wheel where the index has it): an
# unpinned torch would pull a multi-GB CUDA build.
"$PY" -m pip install -q -c constraints.txt torch
"$PY" -m pip install -q -c constraints.txt -e ".[dev]"
# Every requirement installed at its pinned version, and none unpinned (a dependency added to
# pyproject.toml without `bash scripts/update-pins.sh` fails here).
"$PY" scripts/pins.py --extras dev --check constraints.txt
set +e
"$PY" -m pytest "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then  # pytest: no tests collected
  echo "no tests were collected"
  exit 1
fi
exit "$rc"
