"""Ma et al. 2026's statistics against hand computations: the selection d (pooled with n − 1
weights around population variances, + 1e-10), ROC-AUC, Mann–Whitney p (exact and normal
approximation) with Bonferroni, the selection rule and each of its boundaries, the injection d
and t-test, and every verdict threshold."""

from __future__ import annotations

import math

import numpy as np
import pytest

from thinksae.validate.ma2026 import stats
from thinksae.validate.ma2026.stats import LEVELS, Effect, Selection, select, selection_d, verdict

R, NR = [2.0, 4.0], [0.0, 1.0, 2.0]


def test_selection_d_by_hand():
    # mean_R 3, mean_NR 1; population variances 1 and 2/3;
    # pooled = sqrt((1·1 + 2·(2/3)) / (2 + 3 − 2)) = sqrt(7/9); d = 2 / sqrt(7/9) = 6/√7
    assert float(selection_d(np.array(R), np.array(NR))) == pytest.approx(6 / math.sqrt(7), rel=1e-9)
    # the sample-variance (ddof 1) form would give 2 / sqrt((1·2 + 2·1)/3) = √3: not theirs
    assert float(selection_d(np.array(R), np.array(NR))) != pytest.approx(math.sqrt(3), rel=1e-3)


def test_selection_d_epsilon_when_both_sets_are_constant():
    # pooled SD 0: d = (1 − 0) / (0 + 1e-10) = 1e10
    assert float(selection_d(np.array([1.0, 1.0]), np.array([0.0, 0.0]))) == pytest.approx(1e10)


def test_auc_and_normal_approximation_p_by_hand():
    auc, p = stats.mann_whitney(np.array(R)[:, None], np.array(NR)[:, None])
    # pairs (r, nr): (2,0) (2,1) win, (2,2) tie = ½, (4,·) 3 wins: U_R = 5.5 of 2·3 = 6
    assert auc[0] == pytest.approx(5.5 / 6)
    # ties → normal approximation: μ = 3, σ² = 6/12·((5 + 1) − (2³ − 2)/(5·4)) = 2.85,
    # z = (|5.5 − 3| − ½)/√2.85, p = erfc(z/√2)
    z = (2.5 - 0.5) / math.sqrt(2.85)
    assert p[0] == pytest.approx(math.erfc(z / math.sqrt(2)), rel=1e-9)


def test_exact_p_and_bonferroni_by_hand():
    auc, p = stats.mann_whitney(np.array([1.0, 2.0, 3.0])[:, None], np.array([4.0, 5.0, 6.0])[:, None])
    # no ties, n ≤ 8: exact. U_R = 0; 1 of C(6,3) = 20 orderings has U ≤ 0; two-sided: 2/20
    assert auc[0] == 0.0
    assert p[0] == pytest.approx(0.1)
    assert stats.bonferroni(p, 3)[0] == pytest.approx(0.3)
    assert stats.bonferroni(p, 20)[0] == 1.0  # capped


def test_constant_column_gets_p_one():
    _, p = stats.mann_whitney(np.zeros((4, 1)), np.zeros((5, 1)))
    assert p[0] == 1.0


def test_selection_stats_tests_only_latents_that_can_pass_and_uses_every_latent_for_bonferroni():
    r = np.array([[2.0, 1.0, 0.0], [4.0, 1.0, 5.0]])
    o = np.array([[0.0, 1.0, 0.0], [1.0, 1.0, 0.0], [2.0, 1.0, 0.0]])
    sel = stats.selection_stats(r, o)
    assert sel.latents.tolist() == [0, 2]  # latent 1: d = 0
    assert sel.tests == 3
    assert sel.d[0] == pytest.approx(6 / math.sqrt(7))
    assert sel.p_bonferroni[0] == pytest.approx(min(3 * sel.p[0], 1.0))
    assert sel.sd_r[0] == pytest.approx(1.0) and sel.sd_nr[0] == pytest.approx(math.sqrt(2 / 3))
    assert stats.selection_stats(r, o, also=[1]).latents.tolist() == [0, 1, 2]


def _sel(rows):
    """A Selection from (latent, auc, p_bonf, d, mean_r, mean_nr) rows."""
    a = np.array(rows, dtype=np.float64)
    z = np.zeros(len(rows))
    return Selection(a[:, 0].astype(int), a[:, 4], a[:, 5], z, z, a[:, 3], a[:, 1], a[:, 2],
                     a[:, 2], 100)


@pytest.mark.parametrize("row, kept", [
    ((0, 0.6, 0.01, 0.3, 1.0, 0.5), True),  # every boundary met exactly
    ((0, 0.5999, 0.01, 0.3, 1.0, 0.5), False),
    ((0, 0.6, 0.0100001, 0.3, 1.0, 0.5), False),
    ((0, 0.6, 0.01, 0.2999, 1.0, 0.5), False),
    ((0, 0.6, 0.01, -0.5, 1.0, 0.5), True),  # |d| counts ...
    ((0, 0.6, 0.01, 0.5, 0.5, 0.5), False),  # ... but mean_R must exceed mean_NR
])
def test_selection_rule_boundaries(row, kept):
    assert len(select(_sel([row]))) == int(kept)


def test_selection_ranks_by_capped_d_then_latent_and_keeps_top():
    rows = [(9, 0.9, 0.001, 4.0, 1, 0), (2, 0.9, 0.001, 3.5, 1, 0), (5, 0.9, 0.001, 2.0, 1, 0),
            (7, 0.9, 0.001, 2.5, 1, 0), (1, 0.5, 0.001, 9.0, 1, 0)]
    sel = _sel(rows)
    # 9 and 2 both cap at 3 → lower latent first; then 7 (2.5), 5 (2.0); 1 fails the AUC
    assert sel.latents[select(sel)].tolist() == [2, 9, 7, 5]
    assert sel.latents[select(sel, top=2)].tolist() == [2, 9]


def test_injection_effect_by_hand():
    e = stats.injection_effect(np.array([2.0, 4.0]), np.array([0.0, 2.0]))
    # means 3 and 1, population variances 1 and 1: d = 2 / sqrt((1 + 1)/2) = 2
    assert e.d == pytest.approx(2.0)
    # Student t: pooled sample variance 2, se = sqrt(2·(½ + ½)) = √2, t = 2/√2 = √2, df = 2;
    # for df 2 the two-sided p is 1 − t/sqrt(t² + 2) = 1 − √2/2
    assert e.p == pytest.approx(1 - math.sqrt(2) / 2, rel=1e-9)
    assert (e.mean_injected, e.mean_base, e.sd_injected, e.sd_base, e.n) == (3.0, 1.0, 1.0, 1.0, 2)


def test_injection_effect_equal_n_form_and_zero_spread():
    # inj [0, 0, 3]: mean 1, population variance (1 + 1 + 4)/3 = 2; base [0, 0, 0]: 0 and 0;
    # d = 1 / sqrt((2 + 0)/2) = 1
    assert stats.injection_effect(np.array([0.0, 0.0, 3.0]), np.zeros(3)).d == pytest.approx(1.0)
    flat = stats.injection_effect(np.ones(3), np.zeros(3))  # both constant: their code sets d = 0
    assert flat.d == 0.0
    assert verdict(flat.d, flat.p) == "context_dependent"


@pytest.mark.parametrize("d, p, level", [
    (0.8, 0.00999, "token_driven"),
    (0.8, 0.01, "weakly_token_driven"),  # p not < 0.01: falls to the weak rule
    (0.79999, 0.001, "partially_token_driven"),
    (0.5, 0.00999, "partially_token_driven"),
    (0.49999, 0.001, "weakly_token_driven"),
    (0.2, 0.04999, "weakly_token_driven"),
    (0.2, 0.05, "context_dependent"),
    (0.19999, 1e-9, "context_dependent"),
    (3.0, float("nan"), "context_dependent"),
    (-2.0, 1e-9, "context_dependent"),
])
def test_verdict_thresholds(d, p, level):
    assert verdict(d, p) == level
    assert level in LEVELS


def test_best_strategy_is_largest_d_first_of_ties():
    def eff(d):
        return Effect(d, 0.001, 0, 0, 0, 0, 2)

    assert stats.best_strategy({"prepend": eff(0.5), "replace": eff(0.9), "trigram": eff(0.9)}) == "replace"
