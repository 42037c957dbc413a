"""Turn statistics into rows (``features.jsonl``) and per-feature details (dashboard page, card)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from ..errors import ThinksaeError
from .stats import HIST_BINS, FeatureStats, hist_edges

FEATURES_FILE, STATS_FILE, ANALYSIS_FILE, VOCAB_FILE = (
    "features.jsonl", "stats.safetensors", "analysis.json", "vocab.json")


def _clean(x):
    if isinstance(x, float):
        return float(f"{x:.6g}") if math.isfinite(x) else None
    return x


def token_text(strings: list[str], tid: int) -> str:
    return strings[tid] if 0 <= tid < len(strings) else f"<id {tid}>"


def rows(columns: dict, strings: list[str], lens: dict | None = None, top: int = 5) -> list[dict]:
    """One JSON-ready dict per feature: every score, plus its top token and logit-lens tokens."""
    n = len(columns["feature"])
    lists = {k: (v.tolist() if isinstance(v, torch.Tensor) else list(v)) for k, v in columns.items()}
    out = []
    for i in range(n):
        row = {k: _clean(v[i]) for k, v in lists.items()}
        row["top_token_text"] = token_text(strings, row["top_token"]) if row["top_token"] >= 0 else None
        if lens is not None:
            for side in ("pos", "neg"):
                ids = lens[f"lens_{side}_ids"][i, :top].tolist()
                row[f"lens_{side}"] = [token_text(strings, t) for t in ids if t >= 0]
        out.append(row)
    return out


def feature_details(stats: FeatureStats, i: int, strings: list[str],
                    trace_ids: list[str] | None = None, row: int | None = None) -> dict:
    """Contexts, top tokens, histogram, per-region and per-behaviour rates and logit lens of
    feature ``i`` (``row`` is its row in ``stats``: ``i`` for whole stats, 0 for one loaded row)."""
    t, meta = stats.tensors, stats.meta
    r = i if row is None else row
    w = meta["window"]
    contexts = []
    for j in range(meta["top_n"]):
        val = float(t["top_val"][r, j])
        if val < 0:
            continue
        ids, acts = t["top_ctx"][r, j].tolist(), t["top_ctx_act"][r, j].float().tolist()
        keep = [q for q in range(2 * w + 1) if ids[q] >= 0]
        doc = int(t["top_doc"][r, j])
        reg = int(t["top_region"][r, j])
        contexts.append({
            "act": _clean(val), "doc": doc, "position": int(t["top_pos"][r, j]),
            "trace_id": trace_ids[doc] if trace_ids and 0 <= doc < len(trace_ids) else None,
            "region": meta["regions"][reg] if 0 <= reg < len(meta["regions"]) else None,
            "trigger": keep.index(w), "trigger_token": token_text(strings, ids[w]),
            "tokens": [token_text(strings, ids[q]) for q in keep],
            "acts": [_clean(acts[q]) for q in keep],
        })
    total = float(t["act_sum"][r])
    order = torch.argsort(t["tok_mass"][r], descending=True).tolist()
    tokens = [{"id": int(t["tok_ids"][r, q]), "text": token_text(strings, int(t["tok_ids"][r, q])),
               "mass": _clean(float(t["tok_mass"][r, q])), "count": int(t["tok_count"][r, q]),
               "share": _clean(float(t["tok_mass"][r, q]) / total if total else math.nan)}
              for q in order if int(t["tok_ids"][r, q]) >= 0]
    hist = t["hist"][r].tolist()
    nz = [q for q in range(HIST_BINS) if hist[q]]
    edges = hist_edges()
    lo, hi = (nz[0], nz[-1] + 1) if nz else (0, 0)
    region_rates = {name: _clean(float(t["fires_region"][r, j]) / float(t["region_tokens"][j])
                                 if int(t["region_tokens"][j]) else math.nan)
                    for j, name in enumerate(meta["regions"])}
    behaviour_rates = {name: _clean(float(t["fires_behaviour"][r, j]) / float(t["behaviour_tokens"][j])
                                    if int(t["behaviour_tokens"][j]) else math.nan)
                       for j, name in enumerate(meta["behaviours"])}
    out = {"feature": i, "contexts": contexts, "tokens": tokens,
           "tail_mass": _clean(float(t["tail_mass"][r])), "tail_count": int(t["tail_count"][r]),
           "hist": {"edges": [_clean(e) for e in edges[lo : hi + 1]], "counts": hist[lo:hi]},
           "region_rates": region_rates, "behaviour_rates": behaviour_rates}
    if "lens_pos_ids" in t:
        for side in ("pos", "neg"):
            ids = t[f"lens_{side}_ids"][r].tolist()
            vals = t[f"lens_{side}_logits"][r].tolist()
            out[f"lens_{side}"] = [{"text": token_text(strings, a), "logit": _clean(b)}
                                   for a, b in zip(ids, vals) if a >= 0]
    return out


def read_feature_row(out_dir: Path, i: int) -> dict:
    """Line ``i`` of ``features.jsonl``."""
    path = out_dir / FEATURES_FILE
    try:
        with open(path) as f:
            for j, line in enumerate(f):
                if j == i:
                    return json.loads(line)
    except (OSError, json.JSONDecodeError) as e:
        raise ThinksaeError(f"cannot read {path}: {e}") from None
    raise ThinksaeError(f"{path} has no line for feature {i} (truncated?)")


def read_features(out_dir: str | Path) -> list[dict]:
    """Every row of ``features.jsonl`` (one dict of scores per feature, in feature order)."""
    path = Path(out_dir) / FEATURES_FILE
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line]
    except (OSError, json.JSONDecodeError) as e:
        raise ThinksaeError(f"cannot read {path}: {e}") from None


def load_analysis(out_dir: str | Path) -> dict:
    """``analysis.json`` of an analysis directory."""
    path = Path(out_dir) / ANALYSIS_FILE
    if not path.is_file():
        raise ThinksaeError(f"no feature analysis at {out_dir} (no {ANALYSIS_FILE}); "
                            "run `thinksae analyze` first")
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ThinksaeError(f"cannot read {path}: {e}") from None
