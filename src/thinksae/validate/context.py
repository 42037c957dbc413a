"""(a) Same token, other context: a feature's activation on its own trigger tokens inside
thinking vs in the prompt and answer, from the activation store (no model).

Trigger tokens of feature i: its top token types by activation mass (``stats.safetensors``),
taken until they hold ``trigger_mass`` of its total mass, at most ``max_triggers``. Over every
store token whose id is a trigger (special-region tokens left out):

    m_think = Σ_think a_i / n_think,   m_other = Σ_prompt,answer a_i / n_other

(a_i = 0 where the feature is not among the SAE's top k: every occurrence counts).
``context_ratio`` = m_think / m_other (inf when the tokens never activate it outside thinking)
and ``context_share`` = m_think / (m_think + m_other) ∈ [0, 1] (½: alike everywhere), each with a
95 % bootstrap interval over traces. The test passes when the ratio's lower bound exceeds
``min_context_ratio`` and is void (None) when the trigger tokens never occur in one of the two
places.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch

from .stats import bootstrap, finite, ratio


class ContextResult(NamedTuple):
    """The context control of one feature."""

    triggers: list[int]
    think_mean: float
    other_mean: float
    think_tokens: int
    other_tokens: int
    traces: int
    ratio: float
    ratio_lo: float
    ratio_hi: float
    share: float
    share_lo: float
    share_hi: float
    passed: bool | None

    def to_dict(self, strings: list[str]) -> dict:
        return {"triggers": self.triggers,
                "trigger_text": [strings[t] if 0 <= t < len(strings) else f"<id {t}>"
                                 for t in self.triggers],
                "context_think_mean": finite(self.think_mean),
                "context_other_mean": finite(self.other_mean),
                "context_think_tokens": self.think_tokens, "context_other_tokens": self.other_tokens,
                "context_traces": self.traces,
                "context_ratio": finite(self.ratio), "context_ratio_lo": finite(self.ratio_lo),
                "context_ratio_hi": finite(self.ratio_hi),
                "context_only_in_think": self.other_mean == 0 and self.think_mean > 0,
                "context_share": finite(self.share), "context_share_lo": finite(self.share_lo),
                "context_share_hi": finite(self.share_hi), "context_passed": self.passed}


def trigger_tokens(stats_t: dict, feature: int, mass: float, most: int) -> list[int]:
    """The feature's top token ids holding ``mass`` of its activation mass (at most ``most``)."""
    total = float(stats_t["act_sum"][feature])
    if total <= 0:
        return []
    masses = stats_t["tok_mass"][feature].double()
    order = torch.argsort(masses, descending=True, stable=True).tolist()
    out, held = [], 0.0
    for q in order:
        tid = int(stats_t["tok_ids"][feature, q])
        if tid < 0 or masses[q] <= 0 or len(out) >= most or held >= mass * total * (1 - 1e-9):
            break
        out.append(tid)
        held += float(masses[q])
    return out


def trigger_activations(store, sae, features: list[int], token_ids: set[int],
                        chunk: int = 8192) -> dict[str, np.ndarray]:
    """Every store token whose id is in ``token_ids`` (regions prompt/think/answer): its token
    id, region name code, document, and the SAE's activation of each of ``features``
    (``acts [n, len(features)]``)."""
    names = store.manifest["regions"]
    keep_regions = [names.index(r) for r in ("prompt", "think", "answer") if r in names]
    tok = store.labels("token_ids").astype(np.int64)
    reg = store.labels("regions").astype(np.int64)
    doc = store.labels("doc_index").astype(np.int64)
    rows = np.flatnonzero(np.isin(tok, sorted(token_ids)) & np.isin(reg, keep_regions))
    feats = torch.tensor(features, dtype=torch.long, device=sae.device)
    acts = np.zeros((len(rows), len(features)), dtype=np.float64)
    with torch.inference_mode():
        for a in range(0, len(rows), chunk):
            x = store.gather(rows[a : a + chunk]).to(sae.device, sae.dtype)
            enc = sae.encode(x)
            hit = enc.latent_indices[:, None, :] == feats[None, :, None]
            acts[a : a + chunk] = (enc.latent_acts[:, None, :] * hit).sum(-1).double().cpu().numpy()
    return {"token_ids": tok[rows], "regions": np.array([names[r] for r in reg[rows]]),
            "docs": doc[rows], "acts": acts}


def context_control(found: dict[str, np.ndarray], column: int, triggers: list[int],
                    min_ratio: float, resamples: int, seed: int) -> ContextResult:
    """The context test of the feature in ``found["acts"][:, column]`` on its ``triggers``."""
    sel = np.isin(found["token_ids"], triggers)
    a, reg, doc = found["acts"][sel, column], found["regions"][sel], found["docs"][sel]
    think = reg == "think"
    units, inv = np.unique(doc, return_inverse=True)
    n = len(units)
    parts = {"st": np.bincount(inv, a * think, n), "nt": np.bincount(inv, think.astype(float), n),
             "so": np.bincount(inv, a * ~think, n), "no": np.bincount(inv, (~think).astype(float), n)}

    def share(st, nt, so, no):
        mt, mo = ratio(st, nt), ratio(so, no)
        return ratio(mt, mt + mo)

    def rat(st, nt, so, no):
        return ratio(ratio(st, nt), ratio(so, no))

    sh, sh_lo, sh_hi = bootstrap(parts, share, resamples, seed)
    r, r_lo, r_hi = bootstrap(parts, rat, resamples, seed)
    nt, no = int(think.sum()), int((~think).sum())
    mt = float(a[think].mean()) if nt else math.nan
    mo = float(a[~think].mean()) if no else math.nan
    passed = None if not nt or not no or (mt == 0 and mo == 0) else bool(r_lo > min_ratio)
    return ContextResult(triggers, mt, mo, nt, no, n, r, r_lo, r_hi, sh, sh_lo, sh_hi, passed)
