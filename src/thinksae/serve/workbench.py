"""What the workbench serves from a run directory: where things are, the model and SAE (loaded
once, in :func:`load_run`), the feature index (search, sort, filter) and "try text".

Layout read (as `thinksae run` writes it): ``run_config.json`` (model, hookpoint, device, dtype,
tokenizer, sae), ``sae/<hookpoint>`` (or the config's ``sae``), ``features/`` (the analysis and
its dashboard), ``corpus/traces.jsonl``, ``validate/`` or ``features/validate/`` (verdicts),
``explain/`` (explanations, when that stage exists). Anything missing is simply not shown.
"""

from __future__ import annotations

import json
import math
from typing import Any, NamedTuple

import torch

from ..binding import Bound, ModelSource, bind_sae
from ..errors import ThinksaeError
from ..explain.cache import read_explanations
from ..features.report import read_features
from ..models.hookpoints import capture
from ..runs import RunDir
from ..sae.bound import SaeAtHookpoint
from ..validate.verdicts import read_verdicts

SEARCH_FIELDS = ("top_token_text", "label", "verdict", "explanation")
"""Row fields the index search matches (case-insensitive substring; any of them)."""


def load_run(info: RunDir, model=None, tokenizer=None, sae=None,
             overrides: dict | None = None) -> Bound:
    """The run's model, tokenizer and SAE bound at its hookpoint (:func:`thinksae.binding.
    bind_sae`): the given ones, else loaded once from the run's config (``overrides`` replace
    its model/device/dtype). The SAE runs in float32 on the model's device."""
    cfg = {**info.config, **{k: v for k, v in (overrides or {}).items() if v is not None}}
    source = ModelSource(cfg.get("model"), cfg.get("tokenizer"), cfg.get("device") or "auto",
                         cfg.get("dtype") or "auto")
    return bind_sae(SaeAtHookpoint.find(info.sae_dir, info.hookpoint), source, model, tokenizer,
                    sae=sae)


def _explanations(info: RunDir) -> dict[int, str]:
    """Feature → explanation text, from the explain stage when it exists (else {})."""
    for folder in (info.root / "explain", info.analysis):
        if folder.is_dir():
            try:
                found = read_explanations(folder) or {}
            except (ThinksaeError, OSError, ValueError):
                continue
            if found:
                return {int(k): (v.get("explanation") or v.get("text") or "")
                        if isinstance(v, dict) else str(v) for k, v in found.items()}
    return {}


def feature_rows(info: RunDir) -> list[dict]:
    """The analysis' rows with ``verdict`` and ``explanation`` added where the run has them."""

    if not (info.analysis / "features.jsonl").is_file():
        return []
    rows = read_features(info.analysis)
    verdicts = read_verdicts(info.root / "validate") or read_verdicts(info.analysis)
    explanations = _explanations(info)
    for r in rows:
        f = r["feature"]
        r["verdict"] = verdicts.get(f, {}).get("verdict")
        r["explanation"] = explanations.get(f)
    return rows


def scores_of(rows: list[dict]) -> list[str]:
    """Numeric columns of the rows (what the index sorts and filters by)."""
    first = rows[0] if rows else {}
    return [k for k, v in first.items()
            if k != "feature" and not isinstance(v, (list, dict, str, bool))]


class Query(NamedTuple):
    """An index query: search text, sort column and direction, exact label/verdict, and
    ``bounds`` {score: (min or None, max or None)}; ``limit`` rows after ``offset``."""

    q: str = ""
    sort: str = "feature"
    desc: bool = False
    label: str | None = None
    verdict: str | None = None
    bounds: dict[str, tuple[float | None, float | None]] = {}
    offset: int = 0
    limit: int = 100


def _number(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) \
        else None


def select(rows: list[dict], query: Query) -> tuple[int, list[dict]]:
    """``(matches, page)``: rows matching every condition, sorted (missing values last)."""
    q = query.q.strip().lower()
    out = []
    for r in rows:
        if q and not any(q in str(r.get(k) or "").lower() for k in SEARCH_FIELDS):
            continue
        if query.label and r.get("label") != query.label:
            continue
        if query.verdict and r.get("verdict") != query.verdict:
            continue
        ok = True
        for key, (lo, hi) in query.bounds.items():
            v = _number(r.get(key))
            if v is None or (lo is not None and v < lo) or (hi is not None and v > hi):
                ok = False
        if ok:
            out.append(r)
    present, missing = [], []
    for r in out:
        v = r.get(query.sort)
        (present if _number(v) is not None or isinstance(v, str) else missing).append(r)
    present.sort(key=lambda r: (r[query.sort], r["feature"]), reverse=query.desc)
    ordered = present + missing
    return len(ordered), ordered[query.offset:query.offset + query.limit]


class Encoded(NamedTuple):
    """Try text: token ids and texts, and per token the SAE's k active (feature, activation)
    pairs, largest first: exactly :meth:`Sae.encode` of the hookpoint output at that token."""

    ids: list[int]
    tokens: list[str]
    top: list[list[tuple[int, float]]]


@torch.inference_mode()
def encode_text(model, tokenizer, sae, hookpoint: str, text: str, special_tokens: bool,
                max_tokens: int) -> Encoded:
    """Tokenise ``text`` (with the tokenizer's own special tokens when ``special_tokens``), run
    the model to ``hookpoint`` and encode every position with the SAE."""
    ids = tokenizer(text, add_special_tokens=special_tokens)["input_ids"]
    if not ids:
        raise ThinksaeError("the text has no tokens")
    if len(ids) > max_tokens:
        raise ThinksaeError(f"the text has {len(ids)} tokens, at most {max_tokens}")
    device = next(model.parameters()).device
    x = capture(model, hookpoint, torch.tensor([ids], device=device))[hookpoint][0]
    acts, idx = sae.encode(x.to(sae.device, sae.dtype))
    order = torch.argsort(acts, dim=-1, descending=True)
    acts, idx = acts.gather(-1, order).float().cpu(), idx.gather(-1, order).cpu()
    top = [[(int(i), float(a)) for i, a in zip(ri.tolist(), ra.tolist())]
           for ri, ra in zip(idx, acts)]
    texts = [tokenizer.decode([t], skip_special_tokens=False, clean_up_tokenization_spaces=False)
             for t in ids]
    return Encoded(ids, texts, top)


def read_traces(info: RunDir, limit: int = 200) -> list[dict]:
    """The run's corpus traces (id, question, text = prompt + completion), at most ``limit``."""
    if not info.traces.is_file():
        return []
    out = []
    with open(info.traces) as f:
        for line in f:
            if len(out) >= limit:
                break
            try:
                t = json.loads(line)
            except json.JSONDecodeError:
                continue
            out.append({"id": str(t.get("id")), "question": t.get("question") or "",
                        "text": (t.get("prompt") or "") + (t.get("completion") or "")})
    return out
