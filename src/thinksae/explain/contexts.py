"""Contexts of a feature: the ones the explainer sees (the analysis' top contexts) and held-out ones
for scoring, drawn from the activation store through the SAE, away from every shown context.

Held-out activating contexts are stratified: the feature's firings (minus those near a shown
context) are sorted by activation and cut into ``bins`` equal-count bins; the same number is drawn
from each (seeded). Non-activating contexts are centred on tokens whose whole window (within its
trace) has no firing of the feature.
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import ThinksaeError
from ..features.report import feature_details, token_text
from ..features.sources import store_chunks
from ..features.stats import FeatureStats
from .prompts import Context
from .scorers import HeldOut


def shown_contexts(stats_path, feature: int, strings: list[str], limit: int) -> tuple[list[Context], dict]:
    """The analysis' top ``limit`` contexts of ``feature`` and its details (tokens, regions, lens)."""
    det = feature_details(FeatureStats.load(stats_path, feature=feature), feature, strings, row=0)
    ctxs = [Context(c["tokens"], [a or 0.0 for a in c["acts"]], c["trigger"], c["doc"], c["position"], 1)
            for c in det["contexts"][:limit]]
    return ctxs, det


class _Labels:
    """The store's token ids, documents and positions, and each token's document bounds."""

    def __init__(self, store):
        self.tokens = store.labels("token_ids").astype(np.int64)
        self.doc = store.labels("doc_index").astype(np.int64)
        self.pos = store.labels("positions").astype(np.int64)
        n = len(self.doc)
        change = np.flatnonzero(np.diff(self.doc)) + 1
        starts = np.concatenate([[0], change])
        ends = np.concatenate([change, [n]])
        which = np.repeat(np.arange(len(starts)), ends - starts)
        self.start, self.end = starts[which], ends[which]


def encode_features(store, sae, features: list[int], chunk_tokens: int = 8192
                    ) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Every firing of ``features`` in the store: feature → (sorted global token indices, activations)."""
    want = torch.tensor(sorted(features), device=sae.device)
    parts: dict[int, list] = {f: [] for f in features}
    offset = 0
    with torch.inference_mode():
        for chunk in store_chunks(store, chunk_tokens):
            enc = sae.encode(chunk["activations"].to(sae.device, sae.dtype))
            idx, acts = enc.latent_indices, enc.latent_acts.float()
            hit = torch.isin(idx, want) & (acts > 0)
            rows, cols = torch.nonzero(hit, as_tuple=True)
            fs = idx[rows, cols].cpu().numpy()
            vals, rows = acts[rows, cols].cpu().numpy(), rows.cpu().numpy() + offset
            for f in np.unique(fs):
                parts[int(f)].append((rows[fs == f], vals[fs == f]))
            offset += len(chunk["token_ids"])
    out = {}
    for f, p in parts.items():
        rows = np.concatenate([r for r, _ in p]) if p else np.zeros(0, np.int64)
        vals = np.concatenate([v for _, v in p]) if p else np.zeros(0, np.float32)
        order = np.argsort(rows, kind="stable")
        out[f] = (rows[order], vals[order])
    return out


def _window(lab: _Labels, i: int, w: int) -> tuple[int, int]:
    return max(i - w, int(lab.start[i])), min(i + w + 1, int(lab.end[i]))


def _context(lab: _Labels, strings, rows, vals, i: int, w: int, quantile: int) -> Context:
    a, b = _window(lab, i, w)
    lo, hi = np.searchsorted(rows, [a, b])
    acts = np.zeros(b - a, np.float32)
    acts[rows[lo:hi] - a] = vals[lo:hi]
    return Context([token_text(strings, int(t)) for t in lab.tokens[a:b]], acts.tolist(), i - a,
                   int(lab.doc[i]), int(lab.pos[i]), quantile)


def _near_shown(lab: _Labels, cand: np.ndarray, shown: list[tuple[int, int]], w: int) -> np.ndarray:
    """Candidates whose window overlaps a shown context's window (same trace)."""
    near = np.zeros(len(cand), bool)
    for doc, pos in shown:
        near |= (lab.doc[cand] == doc) & (np.abs(lab.pos[cand] - pos) <= 2 * w)
    return near


def draw_heldout(lab: _Labels, strings, rows: np.ndarray, vals: np.ndarray,
                 shown: list[tuple[int, int]], window: int, n: int, bins: int,
                 rng: np.random.Generator) -> HeldOut:
    """``n`` activating contexts stratified over ``bins`` activation bins and ``n`` non-activating
    ones of one feature, none near a ``shown`` (doc, position)."""
    keep = ~_near_shown(lab, rows, shown, window)
    cand, cvals = rows[keep], vals[keep]
    order = cand[np.argsort(-cvals, kind="stable")]
    groups = [g for g in np.array_split(order, bins) if len(g)]
    activating = []
    for q, g in enumerate(groups, 1):  # n split evenly over the bins, the top bins take the rest
        want = n // len(groups) + (q <= n % len(groups))
        for i in rng.choice(g, size=min(want, len(g)), replace=False):
            activating.append(_context(lab, strings, rows, vals, int(i), window, q))
    fired = np.zeros(len(lab.doc) + 1, np.int64)
    fired[rows + 1] = 1
    cum = np.cumsum(fired)  # cum[i] = firings before token i
    idx = np.arange(len(lab.doc))
    a, b = np.maximum(idx - window, lab.start), np.minimum(idx + window + 1, lab.end)
    quiet = np.flatnonzero(cum[b] - cum[a] == 0)
    pick = rng.choice(quiet, size=min(n, len(quiet)), replace=False) if len(quiet) else []
    non = [_context(lab, strings, rows, vals, int(i), window, 0) for i in sorted(pick)]
    return HeldOut(activating, non)


def heldout_contexts(store, sae, features: list[int], shown: dict[int, list[tuple[int, int]]],
                     strings: list[str], window: int, n: int, bins: int, seed: int,
                     chunk_tokens: int = 8192) -> dict[int, HeldOut]:
    """Held-out scoring contexts for each feature (one pass of the SAE over the store)."""
    if sae.d_in != store.d_in:
        raise ThinksaeError(f"SAE/store mismatch: the SAE has d_in {sae.d_in} but store "
                            f"{store.path} holds activations of width {store.d_in}")
    lab = _Labels(store)
    fires = encode_features(store, sae, features, chunk_tokens)
    return {f: draw_heldout(lab, strings, *fires[f], shown.get(f, []), window, n, bins,
                            np.random.default_rng([seed, f])) for f in features}
