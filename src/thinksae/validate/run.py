"""`thinksae validate`: is each candidate a reasoning feature or a token detector?

Reads an analysis (``thinksae analyze``), the SAE, its activation store and the model; runs the
context control (a), token injection (b), causal ablation/clamp (c) and attribution (d) tests;
writes ``verdicts.jsonl`` (one row per feature, every number that decided its verdict) and
``validation.json`` (thresholds, counts per verdict, number of comparisons). ``--protocol
ma2026`` runs Ma et al.'s protocol instead (:mod:`.theirs`), ``both`` runs ours and then theirs on
our candidates, and puts the verdicts side by side (:mod:`.side_by_side`) in validation.json and
``side_by_side.md``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from .. import atomic
from ..binding import Bound, ModelSource, bind_sae
from ..config import to_dict
from ..errors import ThinksaeError
from ..evaluate.checks import docs_of_split
from ..evaluate.sources import corpus_docs, store_docs
from ..features.report import STATS_FILE, VOCAB_FILE, load_analysis, read_features
from ..features.stats import FeatureStats
from ..interventions.spec import Intervention
from ..runs import with_defaults, with_run
from ..sae.bound import SaeAtHookpoint
from ..store.reader import ActivationStore
from .attribution import attribution
from .causal import effect, intervene, prepare, target_ids
from .config import SCORES, ValidateConfig, check_config, parse_features
from .context import context_control, trigger_activations, trigger_tokens
from .injection import injection_test, insertions, neutral_texts, run_injections
from .ma2026.checks import check_options
from .side_by_side import SIDE_BY_SIDE_FILE, agreement, side_by_side_rows
from .side_by_side import markdown as side_by_side_markdown
from .stats import finite, spearman
from .theirs import TheirRun, earlier_verdicts, run_theirs, their_summary, their_texts, write_theirs
from .verdicts import SUMMARY_FILE, VALIDATE_DIR, VERDICTS, VERDICTS_FILE, verdict, verdicts_path

FORMAT = "thinksae-validate/1"


class ValidateResult(NamedTuple):
    out: Path
    rows: list[dict]
    """Our verdict rows ([] with --protocol ma2026)."""
    summary: dict
    theirs: TheirRun | None = None
    """Ma et al.'s protocol (--protocol ma2026 or both)."""


class Inputs(NamedTuple):
    sae: object
    sae_dir: Path
    card: dict
    hookpoint: str
    store: object
    model: object
    tokenizer: object
    subset: np.ndarray | None
    """Document indices of the split (None: every document of the store or corpus)."""


class Located(NamedTuple):
    """What a validation reads, found and checked before anything large loads."""

    store: ActivationStore
    sae_at: SaeAtHookpoint
    subset: np.ndarray | None
    source: ModelSource


def locate(cfg: ValidateConfig) -> Located:
    """The store, the SAE's directory and hookpoint, the split (our tests only) and the model's
    source."""
    store = ActivationStore(cfg.store)
    sae_at = SaeAtHookpoint.find(cfg.sae, cfg.hookpoint, store=store)
    subset = (_split(cfg, sae_at.dir, sae_at.card, store)  # before the model: cheap to refuse
              if cfg.protocol != "ma2026" else None)
    return Located(store, sae_at, subset, ModelSource.of(cfg, spec=cfg.model or store.manifest.get("model")))


def bind(loc: Located, model=None, tokenizer=None, need_model: bool = True) -> Bound:
    """The SAE bound to the model (``need_model=False``: to the tokenizer only, no model
    loaded), checked against the store."""
    return bind_sae(loc.sae_at, loc.source, model, tokenizer, store=loc.store, need_model=need_model)


def load_inputs(cfg: ValidateConfig, model=None, tokenizer=None) -> Inputs:
    """The SAE, its hookpoint, store, model and tokenizer: every loading in one place."""
    loc = locate(cfg)
    return _inputs(loc, bind(loc, model, tokenizer))


def _inputs(loc: Located, bound: Bound) -> Inputs:
    return Inputs(bound.sae, bound.sae_dir, bound.card, bound.hookpoint, loc.store, bound.model,
                  bound.tokenizer, loc.subset)


def candidates(rows: list[dict], top: int, named: list[int]) -> dict[int, list[str]]:
    """Feature → why it is validated (``top:<score>`` ranks, ``named``): the top ``top`` alive
    features (not dead or rare) of each score in SCORES, then the named ones."""
    why: dict[int, list[str]] = {}
    alive = [r for r in rows if r.get("label") not in ("dead", "rare")]
    for score in SCORES:
        ranked = sorted((r for r in alive if r.get(score) is not None),
                        key=lambda r: (-r[score], r["feature"]))
        for rank, r in enumerate(ranked[:top], 1):
            why.setdefault(r["feature"], []).append(f"{score}#{rank}")
    for f in named:
        why.setdefault(f, []).append("named")
    return why


def _split(cfg: ValidateConfig, sae_dir: Path, card: dict, store) -> np.ndarray | None:
    """Document indices of ``cfg.split`` (as `thinksae eval --split` picks them)."""
    from types import SimpleNamespace

    if cfg.corpus is not None and not Path(cfg.corpus).is_file():
        raise ThinksaeError(f"corpus not found: {cfg.corpus}")
    subset = docs_of_split(SimpleNamespace(split=cfg.split, corpus=cfg.corpus), sae_dir, card,
                        None if cfg.corpus else store)
    if subset is not None and len(subset) == 0:
        raise ThinksaeError(f"no {cfg.split} traces to test on (the SAE's report card lists none)")
    return subset


def _trace_docs(cfg: ValidateConfig, inp: Inputs):
    """The documents of the split (at most ``max_traces``) as token-id Docs."""
    keep = None if inp.subset is None else inp.subset[: cfg.max_traces]
    source = (corpus_docs(cfg.corpus, inp.tokenizer, cfg.max_length, keep) if cfg.corpus
              else store_docs(inp.store, docs=keep))
    docs = [d._replace(input_ids=d.input_ids[: cfg.max_length], regions=d.regions[: cfg.max_length],
                       behaviours=d.behaviours[: cfg.max_length]) for d in source]
    docs = docs[: cfg.max_traces]
    if not docs:
        raise ThinksaeError(f"no {cfg.split} traces to test on")
    return docs


def _analysis(cfg: ValidateConfig) -> tuple[dict, list[dict], object, list[str]]:

    out = Path(cfg.analysis)
    meta = load_analysis(out)
    rows = read_features(out)
    try:
        strings = json.loads((out / VOCAB_FILE).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ThinksaeError(f"cannot read {out / VOCAB_FILE}: {e}") from None
    return meta, rows, FeatureStats.load(out / STATS_FILE), strings


def _context_and_injection(cfg, inp, feats, stats, strings, docs) -> list[dict]:
    """Tests (a) and (b) of ``feats``: one dict of numbers per feature."""

    trig = {f: trigger_tokens(stats.tensors, f, cfg.trigger_mass, cfg.max_triggers) for f in feats}
    found = trigger_activations(inp.store, inp.sae, feats, {t for ts in trig.values() for t in ts})
    ctx = [context_control(found, j, trig[f], cfg.min_context_ratio, cfg.bootstrap, cfg.seed)
           for j, f in enumerate(feats)]
    window = int(stats.meta["window"])
    ins = {f: insertions(stats.tensors, window, f, trig[f]) for f in feats}
    unique = list(dict.fromkeys(i for f in feats for i in ins[f]))
    prompts = [d.input_ids[d.regions == 0] for d in docs[: cfg.prompts]]
    texts = neutral_texts(inp.tokenizer, prompts)
    pad = inp.tokenizer.pad_token_id if inp.tokenizer.pad_token_id is not None else 0
    acts = run_injections(inp.model, inp.sae, inp.hookpoint, texts, unique, feats,
                          cfg.batch_size, pad) if unique else np.zeros((len(texts), 0, len(feats)))
    out = []
    for j, f in enumerate(feats):
        cols = [unique.index(i) for i in ins[f]]
        inj = injection_test(acts[:, cols, j], ctx[j].think_mean, cfg.max_injection_ratio,
                             cfg.bootstrap, cfg.seed)
        out.append({**ctx[j].to_dict(strings), **inj.to_dict()})
    return out


def _causal(cfg, inp, feats, rows, batches, attr, extra) -> tuple[dict[int, dict], list[dict]]:
    """Test (c) of ``feats`` (ablation and clamp) and the ablation of the ``extra`` features
    with the largest attribution; returns per-feature numbers and the attribution check rows."""

    out: dict[int, dict] = {}
    ablated: dict[int, float] = {}
    for f in list(feats) + [g for g in extra if g not in feats]:
        sums, fired = intervene(inp.model, inp.sae, inp.hookpoint, batches,
                                Intervention(f, "ablate"), cfg.metric)
        abl = effect(sums, fired, cfg.bootstrap, cfg.seed)
        ablated[f] = abl.dmetric
        if f not in feats:
            continue
        value = cfg.clamp_factor * float(rows[f].get("max_act") or 0.0)
        sums, fired = intervene(inp.model, inp.sae, inp.hookpoint, batches,
                                Intervention(f, "clamp", value), cfg.metric)
        clamp = effect(sums, fired, cfg.bootstrap, cfg.seed)
        causal = (abl.significant(cfg.min_effect) or clamp.significant(cfg.min_effect)
                  or abl.kl >= cfg.min_kl)
        out[f] = {**abl.to_dict("ablate"), **clamp.to_dict("clamp"), "clamp_value": value,
                  "target_positions": abl.targets, "causal": bool(causal)}
    check = [{"feature": g, "attribution": float(attr[g]), "ablation": ablated[g]} for g in extra]
    return out, check


def _ours(cfg: ValidateConfig, inp: Inputs, why: dict[int, list[str]], rows, stats, strings
          ) -> tuple[list[dict], dict]:
    """Our four tests and verdicts of the candidates ``why``: rows and the summary's numbers."""
    t0 = time.perf_counter()
    targets = target_ids(inp.tokenizer, cfg.targets)
    docs = _trace_docs(cfg, inp)
    feats = sorted(why)
    tests = _context_and_injection(cfg, inp, feats, stats, strings, docs)
    pad = inp.tokenizer.pad_token_id if inp.tokenizer.pad_token_id is not None else 0
    batches = prepare(inp.model, docs, cfg.batch_size, pad, targets)
    attr = attribution(inp.model, inp.sae, inp.hookpoint, batches, cfg.metric)
    order = torch.argsort(attr.abs(), descending=True, stable=True)
    extra = [int(g) for g in order[: cfg.attribution_top] if attr[g] != 0]
    causal, check = _causal(cfg, inp, feats, rows, batches, attr, extra)
    out_rows = []
    for j, f in enumerate(feats):
        r = {"feature": f, "label": rows[f].get("label"), "why": why[f], **tests[j], **causal[f],
             "attribution": finite(float(attr[f]))}
        r["verdict"] = verdict(r["label"], r["context_passed"], r["injection_passed"], r["causal"])
        out_rows.append(r)
    rho = spearman([c["attribution"] for c in check], [c["ablation"] for c in check])
    return out_rows, _our_summary(cfg, inp, out_rows, targets, docs, check, rho, attr,
                                  time.perf_counter() - t0)


def run(cfg: ValidateConfig, model=None, tokenizer=None) -> ValidateResult:
    """Validate the candidates of ``cfg.analysis`` by ``cfg.protocol`` (module docstring);
    ``model``/``tokenizer`` optionally replace loading ``cfg.model`` (a pipeline passes its
    loaded model). Every check that needs no model runs before it loads."""
    cfg = with_defaults(with_run(cfg, "validate", ("sae", "store", "analysis", "model", "tokenizer")),
                        sae="runs/sae", store="runs/store", analysis="runs/features")
    check_config(cfg)
    if cfg.protocol != "thinksae":
        check_options(cfg.ma2026)
    out = Path(cfg.out) if cfg.out else Path(cfg.analysis) / VALIDATE_DIR
    meta, rows, stats, strings = _analysis(cfg)
    n = int(meta["sae"]["num_latents"])
    named = parse_features(cfg.features)
    bad = [f for f in named if not 0 <= f < n]
    if bad:
        raise ThinksaeError(f"unknown feature {bad[0]}: the analysed SAE has {n} features (0..{n - 1})")
    ours_run = cfg.protocol != "ma2026"
    why = candidates(rows, cfg.top, named) if ours_run else {}
    if ours_run and not why:
        raise ThinksaeError(f"no feature to validate in {cfg.analysis} (all dead or rare; name "
                            "some with --features)")
    earlier, earlier_summary = earlier_verdicts(cfg.our_verdicts, n) if cfg.our_verdicts else ({}, {})
    if not ours_run and not earlier and verdicts_path(out) == out / VERDICTS_FILE:
        raise ThinksaeError(f"{out} holds our verdicts of an earlier validation: give another --out, "
                            f"or --our_verdicts {out} to put theirs beside them")
    t0 = time.perf_counter()
    loc = locate(cfg)
    if earlier_summary.get("store_hash") not in (None, loc.store.hash):
        raise ThinksaeError(f"the verdicts in {cfg.our_verdicts} were made on another store "
                            f"({earlier_summary['store_hash']}, this one is {loc.store.hash})")
    texts = None
    if cfg.protocol != "thinksae":  # their texts need only the tokenizer: checked before the model
        pre = bind(loc, model, tokenizer, need_model=False) if model is None else None
        texts = their_texts(cfg, pre.tokenizer if pre else tokenizer, loc.store, n)
    inp = _inputs(loc, bind(loc, model, tokenizer))
    if inp.sae.num_latents != n:
        raise ThinksaeError(f"the SAE in {inp.sae_dir} has {inp.sae.num_latents} features, the "
                            f"analysis {cfg.analysis} {n}")
    out_rows, summary = _ours(cfg, inp, why, rows, stats, strings) if ours_run else (
        [dict(r) for _, r in sorted(earlier.items())], _earlier_summary(earlier_summary))
    summary = {**_base_summary(cfg, inp), **summary, "ours_from": cfg.our_verdicts}
    theirs = _theirs(cfg, inp, texts, out_rows, named, summary) if texts is not None else None
    summary["seconds"] = time.perf_counter() - t0
    return _write(out, out_rows, summary, theirs)


def _theirs(cfg: ValidateConfig, inp: Inputs, texts, out_rows: list[dict], named: list[int],
            summary: dict) -> TheirRun:
    """Their protocol on our candidates (``out_rows``) and ``named`` besides their selection;
    ``summary`` gets its ``ma2026`` block and, when there are ours, the ``side_by_side`` table."""
    ours = {r["feature"]: r["verdict"] for r in out_rows}
    theirs = run_theirs(cfg, inp, texts, set(ours) | set(named))
    summary["ma2026"] = their_summary(theirs, ours)
    if ours:
        table = side_by_side_rows(ours, {f["feature"]: f for f in
                                         (x.to_dict() for x in theirs.result.features)})
        summary["side_by_side"] = {"rows": table, "agreement": agreement(table),
                                   "file": SIDE_BY_SIDE_FILE}
    return theirs


def _base_summary(cfg: ValidateConfig, inp: Inputs) -> dict:
    return {"format": FORMAT, "protocol": cfg.protocol, "config": to_dict(cfg),
            "sae": str(inp.sae_dir), "hookpoint": inp.hookpoint, "store_hash": inp.store.hash}


OUR_KEYS = ("traces", "targets", "target_text", "thresholds", "features", "counts", "passed_all",
            "comparisons", "comparisons_note", "attribution")
"""validation.json's numbers of our tests (kept from an earlier validation by --our_verdicts)."""


def _earlier_summary(earlier: dict) -> dict:
    return {k: earlier[k] for k in OUR_KEYS if k in earlier}


def _our_summary(cfg, inp, out_rows, targets, docs, check, rho, attr, seconds) -> dict:
    counts = {v: sum(r["verdict"] == v for r in out_rows) for v in VERDICTS}
    top = torch.argsort(attr.abs(), descending=True, stable=True)[:50].tolist()
    return {
        "traces": len(docs), "targets": targets,
        "target_text": inp.tokenizer.convert_ids_to_tokens(targets),
        "thresholds": {k: getattr(cfg, k) for k in ("min_context_ratio", "max_injection_ratio",
                                                     "min_effect", "min_kl", "clamp_factor",
                                                     "trigger_mass", "max_triggers")},
        "features": len(out_rows), "counts": counts,
        "passed_all": [r["feature"] for r in out_rows if r["verdict"] == "reasoning candidate"],
        "comparisons": 4 * len(out_rows),
        "comparisons_note": "4 interval tests per feature (context, injection, ablation, clamp); "
                            "95% intervals, not corrected for multiple comparisons",
        "attribution": {"metric": cfg.metric, "checked": check,
                        "spearman": finite(rho) if rho is not None else None,
                        "top": [{"feature": int(g), "estimate": finite(float(attr[g]))} for g in top]},
        "seconds_ours": seconds,
    }


def _write(out: Path, out_rows: list[dict], summary: dict, theirs: TheirRun | None) -> ValidateResult:
    """Every file, each atomically: our verdicts (when there are ours), their files, the side by
    side table, validation.json last."""
    if out_rows:
        with atomic.atomic_path(out / VERDICTS_FILE) as tmp:
            Path(tmp).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in out_rows))
    if theirs is not None:
        write_theirs(theirs, out)
    side = summary.get("side_by_side")
    if side is not None:
        text = side_by_side_markdown(side["rows"], side["agreement"], summary["ma2026"]["levels"],
                                     summary["ma2026"]["masking"])
        atomic.write_bytes(out / SIDE_BY_SIDE_FILE, text.encode())
    atomic.write_json(out / SUMMARY_FILE, summary)
    return ValidateResult(out, out_rows, summary, theirs)
