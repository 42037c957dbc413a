"""Trace-level inference for the think/other firing-rate ratio, and false-discovery control.

Firing clusters within traces, so tokens are not independent: the interval and p-value of the
rate ratio treat *traces* as the units (a cluster-robust, linearised variance of a ratio of sums),
and the decision over thousands of features controls the false discovery rate (Benjamini–Hochberg).

For a feature, with c₁_d, c₂_d its firing counts and n₁_d, n₂_d the tokens of trace d (1 = think,
2 = prompt+answer), C = Σ_d c, N = Σ_d n over the D traces::

    RR      = (C₁ / N₁) / (C₂ / N₂)        (0.5 added to C₁ and C₂ when either is 0; NaN if both)
    u_d     = c₁_d / C₁ − c₂_d / C₂ − (n₁_d / N₁ − n₂_d / N₂)     (trace d's influence on log RR)
    Var     = max( D/(D−1) · Σ_d u_d² ,  1/C₁ − 1/N₁ + 1/C₂ − 1/N₂ )   (never below the
              token-level Katz variance, which clustering can only inflate)
    t       = log RR / √Var,   ν = (traces in which the feature fires) − 1   (capped at 200)
    p       = P(|T_ν| ≥ |t|)  (Student t),  95 % CI = exp(log RR ± t_ν,0.975 √Var)

A feature is *tested* when it fires somewhere and ν ≥ 1 (and D ≥ 2); the others get NaN. The
Benjamini–Hochberg q-value of the i-th smallest of m p-values is ``min_{j ≥ i} m p_(j) / j``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

DF_CAP = 200
"""Degrees of freedom above this use t_200 (within 0.6 % of the normal quantile; conservative)."""


def t_two_sided(t: Tensor, df: Tensor) -> Tensor:
    """P(|T| ≥ |t|) for Student's t with integer ``df`` ≥ 1 (the finite series of Abramowitz &
    Stegun 26.7.3–4, in θ = atan(|t|/√ν)); ``df`` is capped at :data:`DF_CAP`."""
    t, df = t.double().abs(), df.long().clamp(1, DF_CAP)
    theta = torch.atan(t / torch.sqrt(df.double()))
    c, s = torch.cos(theta) ** 2, torch.sin(theta)
    odd = df % 2 == 1
    n_terms = torch.where(odd, (df - 3) // 2, (df - 2) // 2)  # terms after the leading 1
    term = torch.ones_like(t)
    total = torch.ones_like(t)
    most = int(n_terms.max()) if len(t) else 0
    for k in range(1, most + 1):
        ratio = torch.where(odd, torch.full_like(t, 2 * k / (2 * k + 1)),
                            torch.full_like(t, (2 * k - 1) / (2 * k)))
        term = term * c * ratio
        total = total + torch.where(k <= n_terms, term, torch.zeros_like(term))
    a_odd = torch.where(df == 1, 2 * theta / math.pi,
                        2 / math.pi * (theta + s * torch.cos(theta) * total))
    a = torch.where(odd, a_odd, s * total)
    return (1 - a).clamp(0, 1)


def t_quantile(prob: float, df: Tensor) -> Tensor:
    """The ``prob`` quantile (``prob`` > 0.5) of Student's t for each ``df`` (by bisection)."""
    dfs, inv = torch.unique(df.long().clamp(1, DF_CAP), return_inverse=True)
    lo, hi = torch.zeros(len(dfs), dtype=torch.float64), torch.full((len(dfs),), 1e3, dtype=torch.float64)
    want = 2 * (1 - prob)
    for _ in range(80):
        mid = (lo + hi) / 2
        too_far = t_two_sided(mid, dfs) < want
        hi, lo = torch.where(too_far, mid, hi), torch.where(too_far, lo, mid)
    return ((lo + hi) / 2)[inv]


def bh_adjust(p: Tensor) -> Tensor:
    """Benjamini–Hochberg q-values of the finite entries of ``p`` (NaN entries stay NaN and are
    not counted among the m comparisons)."""
    p = p.double()
    q = torch.full_like(p, math.nan)
    ok = torch.nonzero(~torch.isnan(p)).flatten()
    m = len(ok)
    if not m:
        return q
    order = torch.argsort(p[ok])
    scaled = p[ok][order] * m / torch.arange(1, m + 1, dtype=torch.float64)
    adj = torch.flip(torch.cummin(torch.flip(scaled, [0]), 0).values, [0]).clamp(max=1)
    q[ok[order]] = adj
    return q


def trace_rate_ratio(tr: dict[str, Tensor], num_latents: int, level: float = 0.95
                     ) -> dict[str, Tensor]:
    """Rate ratio, CI, p-value and degrees of freedom per feature from the per-trace tables of
    :mod:`thinksae.features.traces`, by the module docstring's formulas."""
    f = num_latents
    tok = tr["trace_tokens"].double()
    d = len(tok)
    n1, n2 = float(tok[:, 0].sum()), float(tok[:, 1].sum())
    feat = tr["trace_feature"].long()
    fires = tr["trace_fires"].double()
    row = torch.repeat_interleave(torch.arange(d), torch.diff(tr["trace_ptr"]))
    z = torch.zeros(f, dtype=torch.float64)
    c1, c2 = z.clone().index_add_(0, feat, fires[:, 0]), z.clone().index_add_(0, feat, fires[:, 1])
    nan = torch.full_like(z, math.nan)
    if d < 2 or n1 <= 0 or n2 <= 0:
        return {"ratio": nan, "lo": nan, "hi": nan, "p": nan.clone(), "df": torch.zeros(f, dtype=torch.long)}
    fix = ((c1 == 0) | (c2 == 0)).double() * 0.5
    a, b = c1 + fix, c2 + fix
    log_rr = torch.log(a / n1) - torch.log(b / n2)
    v = tok[:, 0] / n1 - tok[:, 1] / n2  # feature-independent part of u_d
    x = fires[:, 0] / a[feat] - fires[:, 1] / b[feat]
    ss = (z.clone().index_add_(0, feat, x * x) - 2 * z.clone().index_add_(0, feat, x * v[row])
          + float((v * v).sum()))
    var = torch.maximum(ss.clamp_min(0) * d / (d - 1), (1 / a - 1 / n1 + 1 / b - 1 / n2).clamp_min(0))
    se = torch.sqrt(var)
    df = torch.bincount(feat, minlength=f) - 1
    tested = (df >= 1) & (c1 + c2 > 0)
    p = torch.where(tested, t_two_sided(log_rr / se.clamp_min(1e-300), df.clamp_min(1)), math.nan)
    half = t_quantile(0.5 + level / 2, df.clamp_min(1)) * se
    rr = torch.where(c1 + c2 > 0, torch.exp(log_rr), math.nan)
    lo = torch.where(tested, torch.exp(log_rr - half), math.nan)
    hi = torch.where(tested, torch.exp(log_rr + half), math.nan)
    return {"ratio": rr, "lo": lo, "hi": hi, "p": p, "df": df.clamp_min(0)}
