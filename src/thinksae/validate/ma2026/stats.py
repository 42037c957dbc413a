"""The statistics of Ma et al. 2026's protocol, as their code (``GeorgeMLP/reasoning-probing``)
computes them. The unit is a text: ``x`` below is one latent's per-text max activation.

Candidate selection (reasoning set R, non-reasoning set NR, ``n_R`` and ``n_NR`` texts):

    d_sel   = (mean_R − mean_NR) / (sqrt(((n_R − 1)·s_R² + (n_NR − 1)·s_NR²) / (n_R + n_NR − 2)) + 1e-10)
              with s the *population* SD (ddof 0) — (n − 1) weights around ddof-0 variances, as
              their code has it
    AUC     = P(x_R > x_NR) + ½·P(x_R = x_NR) = U_R / (n_R·n_NR)   (sklearn's ROC-AUC with R as
              the positive class; U_R the Mann–Whitney U of R)
    p_MW    = scipy's two-sided Mann–Whitney U test (method "auto": exact for small samples
              without ties, else the normal approximation with tie and continuity corrections)
    p_bonf  = min(p_MW · m, 1),  m = the number of latents tested (all of the SAE's)
    keep    = AUC ≥ 0.6 and p_bonf ≤ 0.01 and |d_sel| ≥ 0.3 and mean_R > mean_NR,
              ranked by min(|d_sel|, 3) (ties: lower latent first), the first 100 kept.

Injection effect (per feature and strategy; the same texts injected and not):

    d_inj = (mean_inj − mean_base) / sqrt((var_inj + var_base) / 2)    (ddof 0; 0 when the
            denominator is 0, as their code — so two constant samples give d = 0)
    p_inj = two-sided Student t-test (equal variances) of injected vs base.

Verdict from the best strategy (largest d_inj, ties: the first in strategy order):
token_driven d ≥ 0.8 and p < 0.01; partially_token_driven d ≥ 0.5 and p < 0.01;
weakly_token_driven d ≥ 0.2 and p < 0.05; context_dependent otherwise (a NaN p never passes).
"""

from __future__ import annotations

import math
import warnings
from typing import NamedTuple

import numpy as np

from .config import LEVELS

SELECTION_EPS = 1e-10
"""Added to the pooled SD of the selection d (their code)."""

MIN_AUC, MAX_P, MIN_D, D_CAP = 0.6, 0.01, 0.3, 3.0
"""Selection thresholds: ROC-AUC ≥ 0.6, Bonferroni p ≤ 0.01, |d| ≥ 0.3; rank by min(|d|, 3)."""


THRESHOLDS = ((LEVELS[0], 0.8, 0.01), (LEVELS[1], 0.5, 0.01), (LEVELS[2], 0.2, 0.05))
"""(verdict, minimum d, p strictly below): the first that holds decides."""


def selection_d(reasoning: np.ndarray, other: np.ndarray) -> np.ndarray:
    """``d_sel`` of the module docstring per column of ``reasoning [n_R, m]`` and
    ``other [n_NR, m]`` (1-D inputs give a 0-d array)."""
    r, o = np.asarray(reasoning, dtype=np.float64), np.asarray(other, dtype=np.float64)
    n_r, n_o = r.shape[0], o.shape[0]
    pooled = np.sqrt(((n_r - 1) * r.var(0) + (n_o - 1) * o.var(0)) / (n_r + n_o - 2))
    return (r.mean(0) - o.mean(0)) / (pooled + SELECTION_EPS)


def mann_whitney(reasoning: np.ndarray, other: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(AUC, p_MW)`` per column: AUC = U_R / (n_R·n_NR) and scipy's two-sided p. A column
    where every value is equal gets p = 1 (scipy says NaN or 1 depending on the method)."""
    from scipy.stats import mannwhitneyu

    r, o = np.asarray(reasoning, dtype=np.float64), np.asarray(other, dtype=np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        u, p = mannwhitneyu(r, o, alternative="two-sided", axis=0)
    u, p = np.asarray(u, dtype=np.float64), np.asarray(p, dtype=np.float64)
    return u / (r.shape[0] * o.shape[0]), np.where(np.isnan(p), 1.0, p)


def bonferroni(p: np.ndarray, tests: int) -> np.ndarray:
    """``min(p · tests, 1)``."""
    return np.minimum(np.asarray(p, dtype=np.float64) * tests, 1.0)


class Selection(NamedTuple):
    """Selection statistics of the latents that could pass (``latents``), all ``[k]``."""

    latents: np.ndarray
    mean_r: np.ndarray
    mean_nr: np.ndarray
    sd_r: np.ndarray
    """Population SDs (ddof 0), as in their d."""
    sd_nr: np.ndarray
    d: np.ndarray
    auc: np.ndarray
    p: np.ndarray
    """Mann–Whitney p before the correction."""
    p_bonferroni: np.ndarray
    tests: int
    """m: the number of latents tested (the Bonferroni factor)."""


def selection_stats(reasoning: np.ndarray, other: np.ndarray, also=(), chunk: int = 4096
                    ) -> Selection:
    """The selection statistics of every latent (columns of ``reasoning [n_R, m]`` and
    ``other [n_NR, m]``) that can pass the rule, and of the latents ``also``: the Mann–Whitney
    test (the costly part) runs only on those (the rest have |d| < 0.3 or mean_R ≤ mean_NR);
    the Bonferroni factor is still m."""
    r, o = np.asarray(reasoning, dtype=np.float64), np.asarray(other, dtype=np.float64)
    m = r.shape[1]
    d = selection_d(r, o)
    mean_r, mean_nr = r.mean(0), o.mean(0)
    can = np.flatnonzero((np.abs(d) >= MIN_D) & (mean_r > mean_nr))
    can = np.union1d(can, np.asarray(list(also), dtype=np.int64)).astype(np.int64)
    auc, p = np.empty(len(can)), np.empty(len(can))
    for s in range(0, len(can), chunk):
        cols = can[s: s + chunk]
        auc[s: s + chunk], p[s: s + chunk] = mann_whitney(r[:, cols], o[:, cols])
    return Selection(can, mean_r[can], mean_nr[can], r.std(0)[can], o.std(0)[can], d[can], auc, p,
                     bonferroni(p, m), m)


def select(sel: Selection, top: int = 100) -> np.ndarray:
    """Positions (into ``sel``'s arrays) of the kept latents, best first: AUC ≥ 0.6,
    p_bonf ≤ 0.01, |d| ≥ 0.3, mean_R > mean_NR, ranked by min(|d|, 3) descending (ties: the
    lower latent index first), at most ``top``."""
    keep = ((sel.auc >= MIN_AUC) & (sel.p_bonferroni <= MAX_P) & (np.abs(sel.d) >= MIN_D)
            & (sel.mean_r > sel.mean_nr))
    pos = np.flatnonzero(keep)
    order = np.lexsort((sel.latents[pos], -np.minimum(np.abs(sel.d[pos]), D_CAP)))
    return pos[order][:top]


class Effect(NamedTuple):
    """One strategy's injection effect on one feature."""

    d: float
    p: float
    """Two-sided Student t-test p (NaN when scipy gives none)."""
    mean_injected: float
    mean_base: float
    sd_injected: float
    """Population SDs (ddof 0), as in d."""
    sd_base: float
    n: int
    """Texts per sample."""


def injection_effect(injected: np.ndarray, base: np.ndarray) -> Effect:
    """``d_inj`` and ``p_inj`` of the module docstring for two equal-length samples."""
    from scipy.stats import ttest_ind

    a, b = np.asarray(injected, dtype=np.float64), np.asarray(base, dtype=np.float64)
    pooled = math.sqrt((a.var() + b.var()) / 2)
    d = (a.mean() - b.mean()) / pooled if pooled > 0 else 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p = float(ttest_ind(a, b).pvalue)
    return Effect(float(d), p, float(a.mean()), float(b.mean()), float(a.std()), float(b.std()),
                  len(a))


def verdict(d: float, p: float) -> str:
    """Their verdict for a best strategy's ``d`` and ``p`` (module docstring)."""
    for level, min_d, max_p in THRESHOLDS:
        if d >= min_d and p < max_p:
            return level
    return LEVELS[-1]


def best_strategy(effects: dict[str, Effect]) -> str:
    """The strategy with the largest d (the first of equal ones, in the dict's order)."""
    return max(effects, key=lambda s: effects[s].d)
