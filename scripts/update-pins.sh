#!/usr/bin/env bash
# Move the pinned stack to the newest versions pyproject.toml's ranges allow, and test them:
# a fresh virtual environment (.venv-pins, without the system's site packages) gets torch (the
# version TORCH names, default the pinned one) and thinksae with its dev, docs and bench extras as
# they resolve today; their exact versions are written to constraints.txt.new, the test suite runs
# on them (arguments go to pytest), and only when it passes does constraints.txt.new replace
# constraints.txt. Review `git diff constraints.txt`, then commit it.
#   bash scripts/update-pins.sh                 # all tests
#   TORCH=2.14.1 bash scripts/update-pins.sh    # also move torch
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PIP_DISABLE_PIP_VERSION_CHECK=1
torch_pin=$(sed -n 's/^torch==//p' constraints.txt 2>/dev/null || true)
TORCH=${TORCH:-${torch_pin:-2.13.0}}
rm -rf .venv-pins
"$PY" -m venv .venv-pins
V=.venv-pins/bin/python
"$V" -m pip install -q --upgrade pip
"$V" -m pip install -q "torch==$TORCH"
"$V" -m pip install -q -e ".[dev,docs,bench]"
"$V" scripts/pins.py --extras dev,docs,bench > constraints.txt.new
echo "update-pins: $(grep -c '==' constraints.txt.new) pins in constraints.txt.new; changes:"
diff <(grep -v '^#' constraints.txt 2>/dev/null || true) <(grep -v '^#' constraints.txt.new) || true
set +e
"$V" -m pytest "$@"
rc=$?
set -e
if [ "$rc" -ne 0 ]; then
  echo "update-pins: the suite failed on the new versions (exit $rc); constraints.txt is unchanged, the candidate is constraints.txt.new"
  exit "$rc"
fi
mv constraints.txt.new constraints.txt
echo "update-pins: the suite passed; constraints.txt updated (review: git diff constraints.txt)"
