"""Per-feature scores from the collected statistics: frequencies, token selectivity and its label,
think-vs-answer specificity with confidence intervals, formatting share, ReasonScore.

Label rule (first that applies):

==============  =====================================================================
``dead``        never fired
``rare``        fired on fewer than ``min_fires`` tokens (too few to judge)
``formatting``  at least 80 % of its activation mass sits on formatting tokens
                (special/control tokens, whitespace, newlines, punctuation)
``monosemantic`` one token type carries at least 90 % of its activation mass
``narrow``      at most 10 token types cover 90 % of its activation mass
``polysemantic`` otherwise
==============  =====================================================================

Think-vs-answer specificity compares the think region with the prompt and answer regions together
(special tokens left out). *Rate ratio* = P(fires | think) / P(fires | prompt or answer); its
95 % interval ``think_rate_ratio_lo/hi`` and two-sided p-value ``think_p`` are trace-level
(:mod:`thinksae.features.inference`: traces, not tokens, are the independent units), and
``think_q`` is the Benjamini–Hochberg q-value over the features tested (``think_df`` ≥ 1). A
feature is ``think_specific`` when ``think_q`` ≤ the FDR level (default 0.05) and the ratio > 1.
(:func:`rate_ratio`, the token-level Katz interval, se² = 1/c₁ − 1/n₁ + 1/c₂ − 1/n₂ with 0.5
added to both counts when either is 0, is kept as the floor of the trace-level variance.)
*Mean ratio* = mean activation per think token / mean activation per prompt-or-answer token (zeros
included), with a token-level delta-method interval on the log scale: se² = Var₁/(n₁ m₁²) +
Var₂/(n₂ m₂²).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..errors import ThinksaeError
from .config import ALPHA, FDR
from .inference import bh_adjust, trace_rate_ratio
from .reason_score import reason_score
from .stats import FeatureStats
from .traces import TRACE_TENSORS

MONOSEMANTIC_SHARE = 0.9
NARROW_TOKENS = 10
FORMAT_SHARE = 0.8
COVERAGE = 0.9
Z95 = 1.959964
LABELS = ("dead", "rare", "formatting", "monosemantic", "narrow", "polysemantic")


def _div(a: Tensor, b: Tensor | float) -> Tensor:
    a = a.double()
    b = torch.as_tensor(b, dtype=torch.float64).expand_as(a)
    return torch.where(b > 0, a / b.clamp_min(1e-300), torch.full_like(a, math.nan))


def selectivity(stats: FeatureStats) -> dict[str, Tensor]:
    """Token types covering 90 % of the mass, entropy (bits) of the mass over token types,
    top-token share. ``token_stats_exact`` is False where the token table overflowed: then
    ``tokens_90`` is a lower bound and the entropy counts the evicted tail as one type."""
    t = stats.tensors
    total = t["act_sum"]
    mass, order = torch.sort(t["tok_mass"], dim=1, descending=True, stable=True)
    ids = torch.gather(t["tok_ids"], 1, order)
    cum = torch.cumsum(mass, 1)
    need = COVERAGE * total[:, None] * (1 - 1e-9)
    kept = (ids >= 0).sum(1)
    tokens_90 = torch.where(total > 0, torch.minimum((cum < need).sum(1) + 1, kept + 1), 0)
    p = _div(mass, total[:, None]).nan_to_num(0)
    q = _div(t["tail_mass"], total).nan_to_num(0)
    ent = -(p * torch.log2(p.clamp_min(1e-300))).sum(1) - q * torch.log2(q.clamp_min(1e-300))
    return {"tokens_90": tokens_90, "token_entropy": ent, "top_token_share": p[:, 0],
            "top_token": torch.where(mass[:, 0] > 0, ids[:, 0], -1),
            "token_stats_exact": ~t["token_overflow"]}


def label_features(fires: Tensor, format_share: Tensor, sel: dict[str, Tensor],
                   min_fires: int) -> list[str]:
    """The label of each feature by the rule in the module docstring."""
    out = []
    for n, fmt, top, n90 in zip(fires.tolist(), format_share.nan_to_num(0).tolist(),
                                sel["top_token_share"].tolist(), sel["tokens_90"].tolist()):
        if n == 0:
            out.append("dead")
        elif n < min_fires:
            out.append("rare")
        elif fmt >= FORMAT_SHARE:
            out.append("formatting")
        elif top >= MONOSEMANTIC_SHARE:
            out.append("monosemantic")
        elif n90 <= NARROW_TOKENS:
            out.append("narrow")
        else:
            out.append("polysemantic")
    return out


def rate_ratio(c1: Tensor, n1: float, c2: Tensor, n2: float) -> tuple[Tensor, Tensor, Tensor]:
    """(ratio, low, high) of the firing rates c1/n1 over c2/n2 with the Katz 95 % interval."""
    c1, c2 = c1.double(), c2.double()
    if n1 <= 0 or n2 <= 0:
        nan = torch.full_like(c1, math.nan)
        return nan, nan, nan
    fix = ((c1 == 0) | (c2 == 0)).double() * 0.5
    a, b, m1, m2 = c1 + fix, c2 + fix, n1 + fix, n2 + fix
    log_rr = torch.log(a / m1) - torch.log(b / m2)
    se = torch.sqrt((1 / a - 1 / m1 + 1 / b - 1 / m2).clamp_min(0))
    rr = torch.exp(log_rr)
    both_zero = (c1 == 0) & (c2 == 0)
    out = [torch.where(both_zero, math.nan, x)
           for x in (rr, torch.exp(log_rr - Z95 * se), torch.exp(log_rr + Z95 * se))]
    return out[0], out[1], out[2]


def mean_ratio(s1: Tensor, q1: Tensor, n1: float, s2: Tensor, q2: Tensor, n2: float
               ) -> tuple[Tensor, Tensor, Tensor]:
    """(ratio, low, high) of mean activations per token (sums s, sums of squares q, n tokens)
    with a delta-method 95 % interval on the log scale; NaN where a mean is 0."""
    if n1 <= 0 or n2 <= 0:
        nan = torch.full_like(s1.double(), math.nan)
        return nan, nan, nan
    m1, m2 = s1.double() / n1, s2.double() / n2
    v1 = (q1.double() / n1 - m1 * m1).clamp_min(0) / n1
    v2 = (q2.double() / n2 - m2 * m2).clamp_min(0) / n2
    ok = (m1 > 0) & (m2 > 0)
    log_r = torch.log(m1.clamp_min(1e-300)) - torch.log(m2.clamp_min(1e-300))
    se = torch.sqrt(v1 / m1.clamp_min(1e-300) ** 2 + v2 / m2.clamp_min(1e-300) ** 2)
    return tuple(torch.where(ok, torch.exp(x), math.nan)
                 for x in (log_r, log_r - Z95 * se, log_r + Z95 * se))


def think_specificity(stats: FeatureStats, fdr: float = FDR) -> dict[str, Tensor] | None:
    """Think vs prompt+answer rates and means with intervals, the trace-level test and its FDR
    decision; None without a think region."""
    names = stats.meta["regions"]
    if "think" not in names:
        return None
    t = stats.tensors
    if any(k not in t for k in TRACE_TENSORS):
        raise ThinksaeError("these feature statistics have no per-trace counts (written by an "
                            "older thinksae): run `thinksae analyze` again")
    think = names.index("think")
    other = [names.index(r) for r in ("prompt", "answer") if r in names]
    n1 = float(t["region_tokens"][think])
    n2 = float(t["region_tokens"][other].sum()) if other else 0.0
    c1, c2 = t["fires_region"][:, think], t["fires_region"][:, other].sum(1)
    s1, s2 = t["act_sum_region"][:, think], t["act_sum_region"][:, other].sum(1)
    q1, q2 = t["act_sq_region"][:, think], t["act_sq_region"][:, other].sum(1)
    tr = trace_rate_ratio(t, stats.num_latents)
    q = bh_adjust(tr["p"])
    mr, mlo, mhi = mean_ratio(s1, q1, n1, s2, q2, n2)
    return {"think_rate": _div(c1, n1), "other_rate": _div(c2, n2),
            "think_rate_ratio": tr["ratio"], "think_rate_ratio_lo": tr["lo"],
            "think_rate_ratio_hi": tr["hi"], "think_p": tr["p"], "think_q": q,
            "think_df": tr["df"],
            "think_mean": _div(s1, n1), "other_mean": _div(s2, n2),
            "think_mean_ratio": mr, "think_mean_ratio_lo": mlo, "think_mean_ratio_hi": mhi,
            "think_specific": (q <= fdr) & (tr["ratio"] > 1)}


def think_test_summary(stats: FeatureStats, columns: dict, fdr: float = FDR) -> dict | None:
    """What ``analysis.json`` records of the think-specificity test (None without one):
    ``features_tested`` is m, the number of comparisons the FDR control is over."""
    if "think_p" not in columns:
        return None
    p = columns["think_p"]
    return {"method": "trace-level rate ratio (cluster-robust variance, Student t), "
                      "Benjamini-Hochberg across features",
            "fdr": fdr, "traces": len(stats.tensors["trace_doc"]),
            "features_tested": int((~torch.isnan(p)).sum()),
            "think_specific": int(columns["think_specific"].sum())}


def reason_scores(stats: FeatureStats, alpha: float = ALPHA) -> dict[str, Tensor] | None:
    """ReasonScore and its parts; None when the pass ran without a reasoning vocabulary."""
    t, meta = stats.tensors, stats.meta
    if not meta.get("groups"):
        return None
    pos = _div(t["reason_pos_sum"], float(meta["reason_pos_tokens"])).nan_to_num(0)
    neg = _div(t["reason_neg_sum"], float(meta["reason_neg_tokens"])).nan_to_num(0)
    group = _div(t["reason_group_sum"], t["group_tokens"][None, :].double()).nan_to_num(0)
    rs, h = reason_score(pos, neg, group, alpha)
    return {"reason_score": rs, "reason_entropy": h, "reason_pos_mean": pos,
            "reason_neg_mean": neg}


def score_columns(stats: FeatureStats, min_fires: int = 10, alpha: float = ALPHA,
                  fdr: float = FDR) -> dict[str, Tensor | list]:
    """Every per-feature score as a column (tensor or list) of length F."""
    t, meta = stats.tensors, stats.meta
    fires = t["fires"]
    n_tok, n_docs = meta["num_tokens"], meta["num_docs"]
    cols: dict[str, Tensor | list] = {
        "feature": torch.arange(stats.num_latents),
        "fires": fires, "freq": _div(fires, n_tok),
        "mean_act": _div(t["act_sum"], fires), "max_act": t["act_max"].double(),
        "traces": t["traces"], "trace_freq": _div(t["traces"], n_docs),
        "format_share": _div(t["format_mass"], t["act_sum"]),
        "special_share": _div(t["special_mass"], t["act_sum"]),
    }
    for j, name in enumerate(meta["regions"]):
        cols[f"freq_{name}"] = _div(t["fires_region"][:, j], t["region_tokens"][j])
    for j, name in enumerate(meta["behaviours"]):
        if name != "none":
            cols[f"freq_{name}"] = _div(t["fires_behaviour"][:, j], t["behaviour_tokens"][j])
    sel = selectivity(stats)
    cols.update(sel)
    cols["label"] = label_features(fires, cols["format_share"], sel, min_fires)
    cols["formatting"] = cols["format_share"].nan_to_num(0) >= FORMAT_SHARE
    cols.update(think_specificity(stats, fdr) or {})
    cols.update(reason_scores(stats, alpha) or {})
    return cols
