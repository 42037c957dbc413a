"""Scores: selectivity and labels by the documented rule, ratio intervals by hand, logit lens."""

from __future__ import annotations

import math

import pytest
import torch

from thinksae.errors import ThinksaeError
from thinksae.features import FeatureCollector, FeatureStats, TokenInfo
from thinksae.features.logit_lens import logit_lens
from thinksae.features.scores import (
    label_features,
    mean_ratio,
    rate_ratio,
    selectivity,
    think_specificity,
)


def _table(rows: list[list[float]], tails: list[float], slots: int = 24) -> FeatureStats:
    n = len(rows)
    mass = torch.zeros(n, slots, dtype=torch.float64)
    ids = torch.full((n, slots), -1)
    for f, r in enumerate(rows):
        mass[f, : len(r)] = torch.tensor(r, dtype=torch.float64)
        ids[f, : len(r)] = torch.arange(100, 100 + len(r))
    tail = torch.tensor(tails, dtype=torch.float64)
    return FeatureStats({"tok_mass": mass, "tok_ids": ids, "tail_mass": tail,
                         "act_sum": mass.sum(1) + tail, "token_overflow": tail > 0},
                        {"num_latents": n})


def test_selectivity_and_labels():
    stats = _table([
        [0.5, 9.5],          # 0: one token carries 95 %            -> monosemantic
        [2.0] * 5,           # 1: 5 tokens cover 90 %                -> narrow
        [1.0] * 20,          # 2: 18 tokens needed                  -> polysemantic
        [9.5, 0.5],          # 3: monosemantic, but on formatting   -> formatting
        [],                  # 4: never fired                        -> dead
        [1.0, 1.0],          # 5: fired 3 times                      -> rare
        [4.0, 3.0],          # 6: table overflowed (tail 3)          -> tokens_90 >= 3
        [3.0] * 3 + [1.0] * 11,  # 7: 12 tokens needed                 -> polysemantic
    ], tails=[0, 0, 0, 0, 0, 0, 3.0, 0])
    sel = selectivity(stats)
    assert sel["tokens_90"].tolist() == [1, 5, 18, 1, 0, 2, 3, 12]
    assert sel["top_token_share"][:4].tolist() == pytest.approx([0.95, 0.2, 0.05, 0.95])
    assert sel["top_token"][:2].tolist() == [101, 100] and sel["top_token"][4] == -1
    ent = sel["token_entropy"].tolist()
    assert ent[0] == pytest.approx(-(0.95 * math.log2(0.95) + 0.05 * math.log2(0.05)))
    assert ent[1] == pytest.approx(math.log2(5)) and ent[2] == pytest.approx(math.log2(20))
    assert ent[6] == pytest.approx(-sum(p * math.log2(p) for p in (0.4, 0.3, 0.3)))
    assert sel["token_stats_exact"].tolist() == [True] * 6 + [False, True]
    fires = torch.tensor([50, 50, 50, 50, 0, 3, 50, 50])
    fmt = torch.tensor([0.0, 0.1, 0.2, 0.85, math.nan, 0.0, 0.0, 0.79])
    labels = label_features(fires, fmt, sel, min_fires=10)
    assert labels == ["monosemantic", "narrow", "polysemantic", "formatting", "dead", "rare",
                      "narrow", "polysemantic"]


def test_rate_ratio_katz_interval_by_hand():
    rr, lo, hi = rate_ratio(torch.tensor([30, 0, 0, 10]), 100, torch.tensor([10, 10, 0, 10]), 100)
    # 30/100 over 10/100: se^2 = 1/30 - 1/100 + 1/10 - 1/100 = 0.113333
    assert rr[0] == pytest.approx(3.0)
    assert lo[0] == pytest.approx(1.550830, rel=1e-5) and hi[0] == pytest.approx(5.803345, rel=1e-5)
    # a zero count: 0.5 added to both counts (Haldane): 0.5 / 10.5
    assert rr[1] == pytest.approx(0.5 / 10.5) and lo[1] < rr[1] < hi[1]
    assert math.isnan(rr[2]) and math.isnan(lo[2])  # never fires anywhere
    assert rr[3] == pytest.approx(1.0) and lo[3] < 1 < hi[3]


def test_mean_ratio_interval_narrows_with_more_tokens():
    def sums(values):
        v = torch.tensor(values, dtype=torch.float64)
        return v.sum(), (v * v).sum(), float(len(v))

    a, b = [0.0, 2.0, 4.0, 0.0], [1.0, 0.0, 0.0, 1.0]
    s1, q1, n1 = sums(a)
    s2, q2, n2 = sums(b)
    r, lo, hi = mean_ratio(s1[None], q1[None], n1, s2[None], q2[None], n2)
    assert r.item() == pytest.approx((6 / 4) / (2 / 4))
    s1, q1, n1 = sums(a * 16)
    s2, q2, n2 = sums(b * 16)
    r2, lo2, hi2 = mean_ratio(s1[None], q1[None], n1, s2[None], q2[None], n2)
    assert r2.item() == pytest.approx(r.item())
    # 16x the tokens: the log-interval is 4x narrower
    width, width2 = math.log(hi / lo), math.log(hi2 / lo2)
    assert width2 == pytest.approx(width / 4, rel=1e-6) and lo2 < 3 < hi2
    r0, _, _ = mean_ratio(torch.tensor([1.0]), torch.tensor([1.0]), 4, torch.tensor([0.0]),
                          torch.tensor([0.0]), 4)
    assert math.isnan(r0.item())


def test_think_specificity_from_a_pass(tokenizer):
    info = TokenInfo.from_tokenizer(tokenizer)
    n = 1200
    regions = torch.arange(n) % 4  # prompt, think, answer, special
    docs = torch.arange(n) // 100  # 12 traces
    g = torch.Generator().manual_seed(0)
    # feature 0 fires on a third of think tokens only; feature 1 on a third of all tokens
    f0 = (regions == 1) & (torch.rand(n, generator=g) < 0.34)
    f1 = torch.rand(n, generator=g) < 0.34
    idx = torch.stack([torch.zeros(n, dtype=torch.long), torch.ones(n, dtype=torch.long)], 1)
    acts = torch.stack([f0.float(), f1.float() * 2], 1)
    c = FeatureCollector(3, info, None, behaviours=["none"], top_n=2, window=1)
    z = torch.zeros(n, dtype=torch.long)
    c.update({"token_ids": torch.full((n,), 100), "regions": regions, "behaviours": z,
              "doc_index": docs, "positions": torch.arange(n), "acts": acts, "idx": idx})
    stats = c.finish()
    s = think_specificity(stats)
    assert s["think_rate"][0] == pytest.approx(int(f0.sum()) / 300)
    assert s["other_rate"][0] == 0
    assert bool(s["think_specific"][0]) and s["think_rate_ratio_lo"][0] > 1
    assert s["think_q"][0] <= 0.05 and s["think_df"].tolist() == [11, 11, 0]
    assert not bool(s["think_specific"][1])
    assert s["think_rate_ratio_lo"][1] < s["think_rate_ratio"][1] < s["think_rate_ratio_hi"][1]
    assert math.isnan(s["think_p"][2]) and not bool(s["think_specific"][2])  # never fires
    assert s["think_mean"][1] == pytest.approx(2 * float(f1[regions == 1].sum()) / 300)
    stats.meta["regions"] = ["all", "b", "c", "d"]
    assert think_specificity(stats) is None
    stats.meta["regions"] = ["prompt", "think", "answer", "special"]
    del stats.tensors["trace_fires"]  # statistics from before the per-trace counts: one clear line
    with pytest.raises(ThinksaeError, match="analyze` again"):
        think_specificity(stats)


def test_logit_lens_matches_norm_then_unembedding(tiny_model):
    torch.manual_seed(0)
    w_dec = torch.randn(6, 64)
    lens = logit_lens(tiny_model, w_dec, torch.tensor([1, 4]), k=5, batch=1)
    with torch.no_grad():
        logits = tiny_model.lm_head(tiny_model.model.norm(w_dec))
    for f in (1, 4):
        assert lens["lens_pos_ids"][f].tolist() == torch.topk(logits[f], 5).indices.tolist()
        assert lens["lens_neg_ids"][f].tolist() == torch.topk(-logits[f], 5).indices.tolist()
        torch.testing.assert_close(lens["lens_pos_logits"][f], torch.topk(logits[f], 5).values)
    assert (lens["lens_pos_ids"][[0, 2, 3, 5]] == -1).all()  # not asked for
    with pytest.raises(ThinksaeError, match="SAE/model mismatch"):
        logit_lens(tiny_model, torch.randn(6, 32), torch.tensor([0]))


def test_feature_pages_go_to_the_leaders_of_every_score():
    from thinksae.features.dashboard import page_features

    rows = [{"feature": i, "fires": 0 if i == 9 else 5, "reason_score": float(i),
             "think_rate_ratio": float(-i), "think_mean_ratio": None, "trace_freq": 0.5,
             "format_share": 0.0, "freq": 0.1} for i in range(10)]
    assert page_features(rows, 100) == list(range(9))  # every alive feature, the dead one not
    pages = page_features(rows, 2)
    assert pages == [0, 8]  # the top by ReasonScore (8) and by think rate ratio (0)
