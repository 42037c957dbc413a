"""`thinksae explain`: explain chosen features of an analysis with an LLM, score the explanations
(and the no-LLM baseline) on held-out contexts, cache everything. It writes only its own folder
(default ``<analysis>/explain``); the command line redraws the dashboard (``annotations``)."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import NamedTuple

from .. import atomic
from ..errors import ThinksaeError
from ..features.report import STATS_FILE, VOCAB_FILE, load_analysis, read_features
from ..models.loading import load_model, resolve_device
from ..runs import with_defaults, with_run
from ..sae.bound import SaeAtHookpoint
from ..store.reader import ActivationStore
from .cache import EXPLAIN_DIR, SUMMARY_FILE, ExplainCache
from .config import ExplainConfig, check_config, choose_features
from .contexts import heldout_contexts, shown_contexts
from .delphi import read_delphi, write_delphi
from .explainers import EndpointExplainer, LocalExplainer
from .prompts import PROMPT_VERSION, baseline_explanation, explainer_prompt, parse_explanation
from .scorers import LMJudge, make_scorers

METRICS = ("auroc", "balanced_accuracy")


class ExplainResult(NamedTuple):
    out: Path
    """The results folder (``--out``, default the analysis' explain/ folder)."""
    rows: list[dict]
    """Per feature: explanation, baseline, and ``<source>_<scorer>_<metric>`` scores."""
    timing: dict
    """Seconds and model forwards, in total and per feature."""
    errors: list[str]
    """Features whose explainer reply held no explanation (nothing cached for them)."""


def load_inputs(cfg: ExplainConfig, meta: dict, model=None, tokenizer=None):
    """The one place that loads things: (SAE, store, model getter ``spec → (model, tokenizer)``)."""

    sae_spec = cfg.sae or meta["sae"].get("path")
    store_spec = cfg.store or meta["source"].get("store")
    if not sae_spec:
        raise ThinksaeError("the analysis does not name its SAE directory; give --sae")
    if not store_spec:
        raise ThinksaeError("the analysis was made from a corpus, not a store; give --store (a store "
                            "of the SAE's hookpoint) for the held-out scoring contexts")
    store = ActivationStore(store_spec)
    bound = SaeAtHookpoint.find(sae_spec, meta["sae"].get("hookpoint"), store=store)
    sae = bound.load(device=resolve_device(cfg.device))
    bound.check_store(store)
    loaded: dict[str, tuple] = {}

    def get_model(spec: str):
        if model is not None:
            return model, tokenizer
        if spec not in loaded:
            t0 = time.perf_counter()
            loaded[spec] = load_model(spec, cfg.device, cfg.dtype, progress=cfg.progress)
            get_model.load_s += time.perf_counter() - t0
        return loaded[spec]

    get_model.load_s = 0.0  # seconds spent loading models (kept out of the per-feature timings)
    return sae, store, get_model


def _explainer(cfg: ExplainConfig, get_model):
    if cfg.endpoint:
        key = os.environ.get(cfg.api_key_env) if cfg.api_key_env else None
        return EndpointExplainer(cfg.endpoint, cfg.endpoint_model, cfg.timeout,
                                 max_tokens=cfg.max_new_tokens, api_key=key)
    return LocalExplainer(*get_model(cfg.explainer), name=cfg.explainer,
                          max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size)


def _explainer_key(cfg: ExplainConfig) -> str:
    if cfg.endpoint:
        return f"endpoint:{cfg.endpoint.rstrip('/')}:{cfg.endpoint_model}:greedy:{cfg.max_new_tokens}"
    return f"local:{cfg.explainer}:greedy:{cfg.max_new_tokens}"


def _explain_all(cfg, feats, prompts, cache, key, get_model, say) -> tuple[dict, list[str], int]:
    """Explanations of ``feats`` (cached ones reused; new ones cached as each batch comes)."""
    out = {f: r["explanation"] for f in feats if (r := cache.explanation(f, key))}
    todo = [f for f in feats if f not in out]
    errors, steps = [], 0
    explainer = _explainer(cfg, get_model) if todo else None
    step = getattr(explainer, "batch_size", 1)  # an endpoint: one prompt per request
    for a in range(0, len(todo), step):
        batch = todo[a : a + step]
        t0 = time.perf_counter()
        replies = explainer.replies([prompts[f] for f in batch])
        seconds = (time.perf_counter() - t0) / len(batch)
        for f, reply in zip(batch, replies):
            try:
                text = parse_explanation(reply, explainer.opens_think)
            except ThinksaeError as e:
                errors.append(f"feature {f}: {e}")
                say(f"feature {f}: no explanation ({e})")
                continue
            cache.put_explanation({"feature": f, "key": key, "explanation": text, "reply": reply,
                                   "seconds": seconds})
            out[f] = text
            say(f"feature {f}: {text}")
    steps = getattr(explainer, "forwards", 0) if explainer else 0
    return out, errors, steps


def _score_all(cfg, feats, sources, held, cache, base_key, scorer_names, get_model, say):
    """Every (feature, source, scorer) score, cached ones reused; returns forwards run."""
    judge, forwards = None, 0
    for f in feats:
        for src, texts in sources.items():
            if not texts.get(f):
                continue
            key = base_key | {"explanation": texts[f]}
            for name in scorer_names:
                if cache.score(f, key, src, name):
                    continue
                if judge is None:
                    judge = LMJudge(*get_model(base_key["scorer"]), batch_size=cfg.batch_size,
                                    prefix_cache=cfg.prefix_cache)
                scorer = make_scorers([name], judge, cfg.seed)[0]
                res = scorer.score(texts[f], held[f])
                forwards += res.forwards
                cache.put_score({"feature": f, "key": key, "source": src, "scorer": name,
                                 **res.summary(), "samples": res.sample_dicts()})
                say(f"feature {f}: {src} {name} AUROC {_fmt(res.auroc)} "
                    f"balanced accuracy {_fmt(res.balanced_accuracy)}")
    return forwards


def _fmt(x) -> str:
    return "–" if x is None else f"{x:.3f}"


def _sae_key(meta: dict) -> str:
    """Names the SAE, its store and the analysis' context settings (what the prompts are made of)."""
    blob = json.dumps({"sae": meta["sae"], "store": meta["source"].get("store_hash"),
                       "top_n": meta["meta"].get("top_n"), "window": meta["meta"].get("window")},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _summary(feats, sources, cache, base_key, scorer_names, explainer_key) -> list[dict]:
    rows = []
    for f in feats:
        row = {"feature": f, "explanation": sources["llm"].get(f), "explainer": explainer_key,
               "baseline": sources.get("baseline", {}).get(f), "delphi": sources.get("delphi", {}).get(f)}
        for src, texts in sources.items():
            for name in scorer_names:
                hit = cache.score(f, base_key | {"explanation": texts.get(f)}, src, name)
                for m in METRICS:
                    row[f"{src}_{name}_{m}"] = hit[m] if hit else None
        rows.append(row)
    return rows


def _write_delphi(cfg, meta, feats, sources, cache, base_key, scorer_names) -> None:
    module = cfg.delphi_module or meta["sae"].get("hookpoint") or "sae"
    for f in feats:
        text = sources["llm"].get(f)
        if not text:
            continue
        hits = {n: cache.score(f, base_key | {"explanation": text}, "llm", n) for n in scorer_names}
        write_delphi(cfg.delphi_out, module, f, text, {n: h["samples"] for n, h in hits.items() if h})


def _read_inputs(cfg: ExplainConfig) -> tuple[Path, dict, list[dict], list[str], list[int], dict]:
    """(analysis dir, analysis.json, features.jsonl rows, vocabulary, chosen features, delphi's
    results) — all checked before any model loads."""
    analysis = Path(cfg.analysis)
    meta = load_analysis(analysis)
    rows = read_features(analysis)
    try:
        strings = json.loads((analysis / VOCAB_FILE).read_text())
    except (OSError, ValueError) as e:
        raise ThinksaeError(f"cannot read {analysis / VOCAB_FILE}: {e}") from None
    feats = choose_features(cfg, rows, int(meta["sae"]["num_latents"]))
    delphi = {}
    if cfg.delphi_in:
        delphi = read_delphi(cfg.delphi_in, cfg.delphi_module or meta["sae"].get("hookpoint") or "sae")
    return analysis, meta, rows, strings, feats, delphi


def run(cfg: ExplainConfig, model=None, tokenizer=None) -> ExplainResult:
    """Explain and score the chosen features of ``cfg.analysis``. ``model``/``tokenizer``, when
    given, serve as both the local explainer and the scorer."""
    cfg = with_defaults(with_run(cfg, "explain", ("sae", "store", "analysis")),
                        analysis="runs/features")
    scorer_names = check_config(cfg)
    analysis, meta, rows, strings, feats, delphi = _read_inputs(cfg)
    window = cfg.window if cfg.window is not None else int(meta["meta"]["window"])
    sae, store, get_model = load_inputs(cfg, meta, model, tokenizer)
    say = print if cfg.progress else (lambda *_: None)
    folder = Path(cfg.out) if cfg.out else analysis / EXPLAIN_DIR
    cache, sae_key, ekey = ExplainCache(folder), _sae_key(meta), _explainer_key(cfg)
    key = {"sae": sae_key, "explainer": ekey, "prompt": PROMPT_VERSION, "contexts": cfg.contexts}
    shown, prompts, dets = {}, {}, {}
    for f in feats:
        ctxs, dets[f] = shown_contexts(analysis / STATS_FILE, f, strings, cfg.contexts)
        shown[f] = [(c.doc, c.position) for c in ctxs]
        prompts[f] = explainer_prompt(f, ctxs, rows[f] if f < len(rows) else {}, dets[f])
    t0 = time.perf_counter()
    texts, errors, steps = _explain_all(cfg, feats, prompts, cache, key, get_model, say)
    explain_s, load_explain = time.perf_counter() - t0 - get_model.load_s, get_model.load_s
    t1 = time.perf_counter()
    sources = {"llm": texts}
    if cfg.baseline:
        sources["baseline"] = {f: baseline_explanation(dets[f]) for f in feats}
    if delphi:
        sources["delphi"] = {f: delphi[f]["explanation"] for f in feats
                             if "explanation" in delphi.get(f, {})}
    held = heldout_contexts(store, sae, feats, shown, strings, window, cfg.n_score, cfg.bins,
                            cfg.seed) if scorer_names else {}
    t2 = time.perf_counter()
    base_key = {"sae": sae_key, "prompt": PROMPT_VERSION, "n": cfg.n_score, "bins": cfg.bins,
                "window": window, "seed": cfg.seed,
                "scorer": cfg.scorer or ("offline" if cfg.endpoint else cfg.explainer)}
    forwards = _score_all(cfg, feats, sources, held, cache, base_key, scorer_names, get_model, say)
    score_s = time.perf_counter() - t2 - (get_model.load_s - load_explain)  # loading on its own
    out_rows = _summary(feats, sources, cache, base_key, scorer_names, ekey)
    n = len(feats)
    timing = {"features": n, "load_s": get_model.load_s, "explain_s": explain_s, "heldout_s": t2 - t1,
              "score_s": score_s, "explain_s_per_feature": explain_s / n,
              "score_s_per_feature": (t2 - t1 + score_s) / n,
              "explainer_decode_steps": steps, "scorer_forwards": forwards,
              "scorer_forwards_per_feature": forwards / n}
    atomic.write_json(cache.dir / SUMMARY_FILE, {"features": out_rows, "timing": timing,
                                                 "errors": errors, "scorers": scorer_names})
    if cfg.delphi_out:
        _write_delphi(cfg, meta, feats, sources, cache, base_key, scorer_names)
    return ExplainResult(cache.dir, out_rows, timing, errors)
