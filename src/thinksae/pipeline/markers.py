"""Hash and skip: every stage writes ``<out>/<stage dir>/stage.json``: ``running`` with its hash
before it starts, ``done`` (plus its full config and wall time) after. A stage is skipped when its
marker says ``done`` with the hash it would have now; a marker with another hash means the config
(or an upstream stage) changed, so the stage directory is cleared and the stage runs again. A
``running`` marker with the same hash is an interrupted run: the stage runs again and its own
resume logic (traces appended per batch, shards, training checkpoints) carries on where it
stopped.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .. import atomic
from ..config import to_dict

MARKER = "stage.json"
UNHASHED = ("progress",)
"""Config fields that do not change a stage's output."""
ADDED_LATER: dict[str, dict[str, Any]] = {
    "corpus": {"engine": "hf"},
    "train": {"auxk_norm": "x", "sae.architecture": "topk", "sae.matryoshka_widths": "",
              "drop_sinks": False, "sink_norm_multiple": 10.0, "calibrate_threshold": False},
    **{stage: {"run": None} for stage in ("analyze", "explain", "steer", "monitor")},
    "validate": {"run": None, "protocol": "thinksae", "traces": None, "nonreasoning": None,
                 "text_field": "text", "our_verdicts": None, "compare_masking": False,
                 # the flat Ma et al. group (ma2026.Ma2026Options): unused with protocol thinksae
                 "n_texts": 256, "n_injection_texts": 64, "max_tokens": 64, "max_chars": 512,
                 "top_candidates": 100, "strategies": "prepend,intersperse,replace,inject_bigram,"
                 "inject_trigram,bigram_before,trigram,comma_list", "top_tokens": 10,
                 "n_inject": 3, "n_inject_bigram": 2, "n_inject_trigram": 1, "injection_seed": 0,
                 "mask": "sinks", "norm_multiple": 10.0, "median_norm": None,
                 "texts_per_batch": 16},
    **{stage: {"run": None, "exclude_sinks": False, "core": False, "probing": False,
               "probe_families": "regions,behaviours", "probe_ks": "1,2,5",
               "probe_max_traces": 100, "probe_window_tokens": 32, "absorption": False,
               "absorption_words_per_letter": 40, "absorption_min_words_per_letter": 5,
               "absorption_min_letters": 20} for stage in ("eval", "splice")},
}
"""Config fields added after run directories were made (``a.b``: field b of the nested config
a), with the value that does what the stage did before them: left out of the stage's hash while
they hold it, so such a run directory still skips its done stages (a field whose default changed
the output is not here: its stage reruns)."""


def _without_legacy(d: dict[str, Any], legacy: dict[str, Any]) -> dict[str, Any]:
    """``d`` without the :data:`ADDED_LATER` fields that hold their old-behaviour value."""
    out = dict(d)
    for key, old in legacy.items():
        head, _, field = key.partition(".")
        if field and isinstance(out.get(head), dict) and out[head].get(field, old) == old:
            out[head] = {k: v for k, v in out[head].items() if k != field}
        elif not field and head in out and out[head] == old:
            del out[head]
    return out


def stage_hash(stage: str, cfg, upstream: list[str], root: Path | None = None,
               extra: dict[str, Any] | None = None, version: int = 1) -> str:
    """Hash of a stage's config, its upstream stages' hashes, ``extra`` (what the stage uses
    beside its config, e.g. the monitor's rule) and its code ``version`` (counted from 2, so
    version-1 hashes are those of before versions existed). Paths inside the run directory
    ``root`` count relative to it, so a moved or copied run directory still resumes."""
    prefix = str(root) if root is not None else None

    def rel(v):
        if prefix and isinstance(v, str) and (v == prefix or v.startswith(prefix + "/")):
            return "$RUN" + v[len(prefix):]
        return v
    d = _without_legacy({k: rel(v) for k, v in to_dict(cfg).items() if k not in UNHASHED},
                        ADDED_LATER.get(stage, {}))
    parts = {"stage": stage, "config": d, "upstream": upstream}
    if extra is not None:
        parts["extra"] = extra
    if version != 1:
        parts["version"] = version
    blob = json.dumps(parts, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def read_marker(stage_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((stage_dir / MARKER).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def run_stage(stage: str, stage_dir: Path, cfg, digest: str, action: Callable[[], None],
              log: Callable[[str], None]) -> bool:
    """Run ``action`` unless the stage is done for ``digest``; returns True when it ran."""
    marker = read_marker(stage_dir)
    if marker and marker.get("hash") == digest and marker.get("status") == "done":
        log(f"[run] {stage}: done before (config {digest}), skipped")
        return False
    if marker and marker.get("hash") != digest and stage_dir.exists():
        log(f"[run] {stage}: config changed ({marker.get('hash')} -> {digest}), starting over")
        shutil.rmtree(stage_dir)
    elif marker:
        log(f"[run] {stage}: resuming an interrupted run (config {digest})")
    else:
        log(f"[run] {stage}: running (config {digest})")
    stage_dir.mkdir(parents=True, exist_ok=True)
    atomic.write_json(stage_dir / MARKER, {"stage": stage, "status": "running", "hash": digest})
    start = time.perf_counter()
    action()
    atomic.write_json(stage_dir / MARKER, {
        "stage": stage, "status": "done", "hash": digest, "config": to_dict(cfg),
        "wall_s": round(time.perf_counter() - start, 1)})
    return True


def sae_digest(sae_dir: Path) -> str:
    """Hash of a pretrained SAE's files (it stands in for the train stage's config hash)."""
    h = hashlib.sha256()
    for name in sorted(p.name for p in sae_dir.iterdir() if p.is_file()):
        if name.endswith((".json", ".safetensors")) and name != "thinksae.json":
            h.update(name.encode())
            h.update(atomic.sha256_file(sae_dir / name).encode())
    return h.hexdigest()[:16]
