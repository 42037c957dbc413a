#!/usr/bin/env bash
# Install thinksae with its test tools (CPU PyTorch first) and run the test suite. Offline-safe
# apart from the PyPI installs.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
# The CPU wheel of torch 2.13.0 first: an unpinned torch would pull a multi-GB CUDA build.
"$PY" -m pip install -q torch==2.13.0
"$PY" -m pip install -q -e ".[dev]"
set +e
"$PY" -m pytest "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then  # pytest: no tests collected
  echo "no tests were collected"
  exit 1
fi
exit "$rc"
