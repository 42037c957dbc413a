"""The experiment: Ma et al. 2026's candidate selection and token injection on one model, SAE
and hookpoint (:func:`run_ma2026`), and the same run under both masking modes
(:func:`compare_masking`).

1. *Selection pass*: the first ``n_texts`` of each set, per-text max of every latent
   (:mod:`.activations`); selection statistics and rule (:mod:`.stats`); the kept latents, best
   first, plus the latents named in ``features`` (e.g. the candidates of `thinksae validate`),
   judged whether or not the rule keeps them.
2. *Trigger lists* of those latents from the same pass's per-token activations, both sets
   (:mod:`.triggers`); word contexts from the first ``n_injection_texts`` reasoning texts.
3. *Injection*: the first ``n_injection_texts`` non-reasoning texts (cut to ``max_chars``
   characters) injected by each strategy (:mod:`.strategies`) for each feature; per-text max of
   that feature, injected vs the same texts as they are; d, p, best strategy, verdict. The same
   number of reasoning texts is run and only recorded.

Cost: 2·n_texts + n_injection_texts·(2 + features·strategies) texts of ≤ max_tokens tokens
through the model up to the hookpoint (the rest of the model never runs).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
from tqdm.auto import tqdm

from ...errors import ThinksaeError
from .activations import (
    EncodingCache,
    Masking,
    add_dropped,
    encode_texts,
    latent_acts,
    row_latent_max,
    text_max,
)
from .checks import check_options, check_text_counts, sink_rule
from .config import Ma2026Options
from .report import Candidate, FeatureResult, Ma2026Result, MaskingComparison, summarize
from .stats import Effect, best_strategy, injection_effect, select, selection_stats, verdict
from .strategies import CONTEXTUAL, Material, count_for, inject, strategy_rng
from .triggers import TriggerLists, active_trigrams, trigger_lists, word_contexts

MIN_TOKENS = 3
"""Features with fewer top tokens are skipped (their code)."""


class _Selection(NamedTuple):
    batches: list
    maxes: np.ndarray
    dropped: dict


def _selection_pass(model, tokenizer, sae, hookpoint, texts, opt, progress, cache) -> _Selection:
    masking = Masking(opt.mask, True, sink_rule(opt))
    batches, rows, dropped = [], [], {}
    it = encode_texts(model, tokenizer, sae, hookpoint, texts, opt.max_tokens, masking,
                      opt.texts_per_batch, cache=cache)
    for batch in tqdm(it, total=-(-len(texts) // opt.texts_per_batch), desc="ma2026 selection",
                      disable=not progress):
        batches.append(batch)
        rows.append(text_max(batch, sae.num_latents).numpy())
        dropped = add_dropped(dropped, batch.dropped)
    return _Selection(batches, np.concatenate(rows), dropped)


def _candidates(maxes: np.ndarray, n_r: int, opt: Ma2026Options, named: list[int]
                ) -> tuple[list[Candidate], int]:
    """The kept latents (best first) then the named ones, and how many passed the rule."""
    sel = selection_stats(maxes[:n_r], maxes[n_r:], also=named)
    passed = len(select(sel, maxes.shape[1]))
    kept = select(sel, opt.top_candidates)
    row = {int(lat): i for i, lat in enumerate(sel.latents)}
    out = []
    for rank, i in enumerate(kept, 1):
        out.append(Candidate.of(sel, i, [f"selected#{rank}"]))
    chosen = {c.latent for c in out}
    for f in named:
        if f in chosen:
            out[[c.latent for c in out].index(f)].why.append("named")
        else:
            out.append(Candidate.of(sel, row[f], ["named"]))
    return out, passed


def _token_tables(sel: _Selection, latents: list[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                                 np.ndarray]:
    """``token_ids [n, L]``, ``lengths [n]``, ``counted [n, L]`` and ``acts [n, L, C]``."""
    width = max(b.token_ids.shape[1] for b in sel.batches)

    def pad(t, value):
        return torch.nn.functional.pad(t, (0, width - t.shape[1]), value=value)

    ids = torch.cat([pad(b.token_ids, -1) for b in sel.batches]).numpy()
    counted = torch.cat([pad(b.counted, False) for b in sel.batches]).numpy()
    lengths = torch.cat([b.lengths for b in sel.batches]).numpy()
    acts = torch.cat([torch.nn.functional.pad(latent_acts(b, latents), (0, 0, 0, width - b.acts.shape[1]))
                      for b in sel.batches]).numpy()
    return ids, lengths, counted, acts


def _materials(sel, latents, n_r, tokenizer, reasoning_inj, opt, strategies
               ) -> tuple[dict[int, TriggerLists], dict[int, Material]]:
    cache: dict[int, str] = {}

    def decode(i: int) -> str:
        if i not in cache:
            cache[i] = tokenizer.decode([i])
        return cache[i]

    ids, lengths, counted, acts = _token_tables(sel, latents)
    lists = {f: trigger_lists(ids, acts[..., j], counted, decode) for j, f in enumerate(latents)}
    tokens = {f: [t.text for t in lists[f].tokens[: opt.top_tokens]] for f in latents}
    contexts = (word_contexts(reasoning_inj, [t for ts in tokens.values() for t in ts])
                if set(strategies) & set(CONTEXTUAL) else {})
    mats = {}
    for j, f in enumerate(latents):
        active = (active_trigrams(ids[:n_r], lengths[:n_r], acts[:n_r, :, j], decode)
                  if "active_trigram" in strategies else None)
        mats[f] = Material(tokens[f], [b.text for b in lists[f].bigrams],
                           [t.text for t in lists[f].trigrams],
                           {t: contexts[t] for t in tokens[f] if t in contexts}, active)
    return lists, mats


def _passes(model, tokenizer, sae, hookpoint, texts, opt, progress, desc, cache=None):
    it = encode_texts(model, tokenizer, sae, hookpoint, texts, opt.max_tokens,
                      Masking(opt.mask, False, sink_rule(opt)), opt.texts_per_batch, cache=cache)
    return tqdm(it, total=-(-len(texts) // opt.texts_per_batch), desc=desc, disable=not progress)


def _columns(model, tokenizer, sae, hookpoint, texts, latents, opt, progress, desc, cache
             ) -> tuple[np.ndarray, dict]:
    """``[texts, latents]``: per text the max of each of ``latents`` (injection masking)."""
    out, dropped = [], {}
    for batch in _passes(model, tokenizer, sae, hookpoint, texts, opt, progress, desc, cache):
        out.append(text_max(batch, sae.num_latents)[:, latents].double().numpy())
        dropped = add_dropped(dropped, batch.dropped)
    return np.concatenate(out), dropped


def _own_latent(model, tokenizer, sae, hookpoint, texts, owner, opt, progress, desc, cache
                ) -> tuple[np.ndarray, dict]:
    """``[texts]``: per text the max of its own latent ``owner[i]`` (injection masking)."""
    out, dropped, start = [], {}, 0
    for batch in _passes(model, tokenizer, sae, hookpoint, texts, opt, progress, desc, cache):
        b = batch.token_ids.shape[0]
        out.append(row_latent_max(batch, owner[start: start + b]))
        dropped, start = add_dropped(dropped, batch.dropped), start + b
    return np.concatenate(out), dropped


def _injection(model, tokenizer, sae, hookpoint, base, reasoning, mats, strategies, opt, progress,
               cache) -> tuple[dict[int, dict[str, Effect]], dict[int, tuple[float, float]], dict]:
    feats = list(mats)
    if not feats:
        return {}, {}, {}
    plain, d1 = _columns(model, tokenizer, sae, hookpoint, base, feats, opt, progress,
                         "ma2026 base", cache)
    reason, d2 = _columns(model, tokenizer, sae, hookpoint, reasoning, feats, opt, progress,
                          "ma2026 reasoning", cache)
    texts, owner = [], []
    for f in feats:
        for s in strategies:
            rng = strategy_rng(opt.injection_seed, f, s)
            k = count_for(s, opt.n_inject, opt.n_inject_bigram, opt.n_inject_trigram)
            texts += [inject(t, s, mats[f], k, rng) for t in base]
            owner += [f] * len(base)
    injected, d3 = (_own_latent(model, tokenizer, sae, hookpoint, texts, owner, opt, progress,
                                "ma2026 injected", cache) if texts else (np.zeros(0), {}))
    injected = injected.reshape(len(feats), len(strategies), len(base))
    effects = {f: {s: injection_effect(injected[i, j], plain[:, i]) for j, s in enumerate(strategies)}
               for i, f in enumerate(feats)}
    recorded = {f: (float(reason[:, i].mean()), float(reason[:, i].std())) for i, f in enumerate(feats)}
    return effects, recorded, add_dropped(add_dropped(d1, d2), d3)


def run_ma2026(model, tokenizer, sae, hookpoint: str, reasoning_texts: Sequence[str],
               nonreasoning_texts: Sequence[str], options: Ma2026Options | None = None,
               progress: bool = False, features: Sequence[int] = (),
               cache: EncodingCache | None = None) -> Ma2026Result:
    """Their candidate selection and injection experiment (module docstring) on ``model`` up to
    ``hookpoint`` and ``sae``; the texts are used from the start of each list; ``features`` are
    judged by injection too, whether or not their selection keeps them (``why``: named);
    ``cache`` keeps the texts' encodings for another run over them (:class:`.EncodingCache`)."""
    opt = options or Ma2026Options()
    check_options(opt)
    strategies, named = opt.strategy_list(), list(dict.fromkeys(int(f) for f in features))
    bad = [f for f in named if not 0 <= f < sae.num_latents]
    if bad:
        raise ThinksaeError(f"unknown feature {bad[0]}: the SAE has {sae.num_latents} features "
                            f"(0..{sae.num_latents - 1})")
    r_texts, nr_texts = list(reasoning_texts[: opt.n_texts]), list(nonreasoning_texts[: opt.n_texts])
    n_inj = min(opt.n_injection_texts, len(r_texts), len(nr_texts))
    check_text_counts(len(r_texts), len(nr_texts), n_inj, sae.num_latents)
    t0 = time.perf_counter()
    sel = _selection_pass(model, tokenizer, sae, hookpoint, r_texts + nr_texts, opt, progress,
                          cache)
    cands, passed = _candidates(sel.maxes, len(r_texts), opt, named)
    t1 = time.perf_counter()
    reasoning_inj = [t[: opt.max_chars] for t in r_texts[:n_inj]]
    base = [t[: opt.max_chars] for t in nr_texts[:n_inj]]
    latents = [c.latent for c in cands]
    lists, mats = _materials(sel, latents, len(r_texts), tokenizer, reasoning_inj, opt, strategies)
    usable = {f: m for f, m in mats.items() if len(m.tokens) >= MIN_TOKENS}
    effects, recorded, dropped = _injection(model, tokenizer, sae, hookpoint, base, reasoning_inj,
                                            usable, strategies, opt, progress, cache)
    judged = []
    for c in cands:
        f = c.latent
        if f not in usable:
            judged.append(FeatureResult(c, lists[f], {}, None, None,
                                        f"{len(mats[f].tokens)} top tokens (< {MIN_TOKENS})",
                                        float("nan"), float("nan")))
            continue
        best = best_strategy(effects[f])
        judged.append(FeatureResult(c, lists[f], effects[f], best,
                                    verdict(effects[f][best].d, effects[f][best].p), None,
                                    *recorded[f]))
    t2 = time.perf_counter()
    texts = {"reasoning": len(r_texts), "nonreasoning": len(nr_texts), "injection": n_inj}
    return Ma2026Result({**dataclasses.asdict(opt), "features": named}, texts, sae.num_latents,
                        passed, judged, summarize(judged, strategies),
                        {"selection": sel.dropped, "injection": dropped},
                        {"selection": t1 - t0, "injection": t2 - t1, "total": t2 - t0})


def compare_masking(model, tokenizer, sae, hookpoint: str, reasoning_texts: Sequence[str],
                    nonreasoning_texts: Sequence[str], options: Ma2026Options | None = None,
                    progress: bool = False, features: Sequence[int] = ()) -> MaskingComparison:
    """The protocol under ``sinks`` (judging ``features`` too) and then under ``ma2026`` masking,
    the second also judging every feature the first judged, and how many of their verdicts
    differ. The second run reuses the first's encodings of the same texts
    (:class:`.EncodingCache`): it runs the model only for its selection pass and for texts the
    first did not see."""
    opt = options or Ma2026Options()
    cache = EncodingCache()
    a = run_ma2026(model, tokenizer, sae, hookpoint, reasoning_texts, nonreasoning_texts,
                   dataclasses.replace(opt, mask="sinks"), progress, features, cache)
    judged = [f.candidate.latent for f in a.features]
    b = run_ma2026(model, tokenizer, sae, hookpoint, reasoning_texts, nonreasoning_texts,
                   dataclasses.replace(opt, mask="ma2026"), progress, judged, cache)
    va, vb = a.verdicts(), b.verdicts()
    rows = [{"feature": f, "sinks": va[f], "ma2026": vb[f]} for f in judged
            if va[f] is not None and vb.get(f) is not None]
    sel_a = {f.candidate.latent for f in a.features if f.candidate.selected}
    sel_b = {f.candidate.latent for f in b.features if f.candidate.selected}
    return MaskingComparison(a, b, rows, sum(r["sinks"] != r["ma2026"] for r in rows),
                             {"sinks": len(sel_a), "ma2026": len(sel_b), "both": len(sel_a & sel_b)},
                             cache.reused)
