"""Trace-level think-specificity: Student t and Benjamini–Hochberg by hand, the cluster-robust
ratio by hand and against a bootstrap over traces, and the false-positive rate under clustering."""

from __future__ import annotations

import math

import pytest
import torch

from thinksae.features import FeatureCollector, TokenInfo
from thinksae.features.inference import bh_adjust, t_quantile, t_two_sided, trace_rate_ratio
from thinksae.features.scores import rate_ratio, think_specificity


def test_student_t_by_closed_forms():
    t = torch.tensor([0.0, 0.5, 1.0, 3.0, 10.0], dtype=torch.float64)
    one = [1 - 2 * math.atan(x) / math.pi for x in t.tolist()]  # Cauchy
    two = [1 - x / math.sqrt(x * x + 2) for x in t.tolist()]
    assert t_two_sided(t, torch.ones(5)).tolist() == pytest.approx(one, abs=1e-12)
    assert t_two_sided(t, torch.full((5,), 2)).tolist() == pytest.approx(two, abs=1e-12)
    # df = 3: p = 1 - (2/pi) (theta + sin(theta) cos(theta)), theta = atan(t / sqrt 3)
    three = [1 - 2 / math.pi * (a + math.sin(a) * math.cos(a))
             for a in (math.atan(x / math.sqrt(3)) for x in t.tolist())]
    assert t_two_sided(t, torch.full((5,), 3)).tolist() == pytest.approx(three, abs=1e-12)
    # quantiles: tan(0.475 pi) for df 1, 0.95 / sqrt(2 * 0.975 * 0.025) for df 2
    q = t_quantile(0.975, torch.tensor([1, 2, 2, 1]))
    assert q.tolist() == pytest.approx([math.tan(0.475 * math.pi), 0.95 / math.sqrt(0.04875)] * 1
                                       + [0.95 / math.sqrt(0.04875), math.tan(0.475 * math.pi)],
                                       rel=1e-9)
    scipy = pytest.importorskip("scipy.stats")
    x = torch.linspace(0, 8, 41, dtype=torch.float64)
    for df in (4, 7, 39, 120):
        want = 2 * scipy.t.sf(x.numpy(), df)
        assert t_two_sided(x, torch.full((41,), df)).tolist() == pytest.approx(want.tolist(), abs=1e-10)
        assert float(t_quantile(0.975, torch.tensor([df]))) == pytest.approx(scipy.t.ppf(0.975, df))


def test_benjamini_hochberg_by_hand():
    p = torch.tensor([0.01, 0.04, 0.03, math.nan, 0.5])
    # sorted 0.01, 0.03, 0.04, 0.5 (m = 4): 4p/rank = 0.04, 0.06, 0.0533, 0.5; then the running
    # minimum from the right: 0.04, 0.0533, 0.0533, 0.5
    q = bh_adjust(p)
    assert q[[0, 2, 1, 4]].tolist() == pytest.approx([0.04, 0.16 / 3, 0.16 / 3, 0.5])
    assert math.isnan(q[3])
    assert bh_adjust(torch.tensor([0.9, 0.8])).tolist() == pytest.approx([0.9, 0.9])


def _tables(tokens, fires_by_feature, num_latents):
    """CSR per-trace tables from dense ``tokens [D, 2]`` and ``{feature: [D, 2] counts}``."""
    feats, counts, ptr = [], [], [0]
    for d in range(len(tokens)):
        for f, c in sorted(fires_by_feature.items()):
            if c[d][0] or c[d][1]:
                feats.append(f)
                counts.append(c[d])
        ptr.append(len(feats))
    return {"trace_doc": torch.arange(len(tokens)), "trace_tokens": torch.tensor(tokens),
            "trace_ptr": torch.tensor(ptr), "trace_feature": torch.tensor(feats, dtype=torch.int32),
            "trace_fires": torch.tensor(counts, dtype=torch.int32).view(-1, 2)}


def test_trace_rate_ratio_by_hand():
    tokens = [[100, 100], [200, 100], [100, 200]]
    tr = _tables(tokens, {0: [[20, 10], [60, 10], [10, 20]], 2: [[0, 0], [5, 0], [0, 0]]}, 3)
    out = trace_rate_ratio(tr, 3)
    # feature 0: C1 = 90, N1 = 400, C2 = 40, N2 = 400 -> RR = 2.25
    # u_d = c1/90 - c2/40 - (n1/400 - n2/400) = -0.027778, 0.166667, -0.138889
    u = [20 / 90 - 10 / 40 - 0, 60 / 90 - 10 / 40 - 0.25, 10 / 90 - 20 / 40 + 0.25]
    var = 3 / 2 * sum(x * x for x in u)  # 0.071759 > Katz 1/90 - 1/400 + 1/40 - 1/400 = 0.0311
    assert var > 1 / 90 - 1 / 400 + 1 / 40 - 1 / 400
    t = math.log(2.25) / math.sqrt(var)
    assert out["ratio"][0] == pytest.approx(2.25)
    assert out["p"][0] == pytest.approx(1 - t / math.sqrt(t * t + 2))  # t with 3 - 1 = 2 df
    half = 0.95 / math.sqrt(0.04875) * math.sqrt(var)
    assert out["lo"][0] == pytest.approx(2.25 * math.exp(-half))
    assert out["hi"][0] == pytest.approx(2.25 * math.exp(half))
    assert out["df"].tolist() == [2, 0, 0]
    # feature 1 never fires: NaN; feature 2 fires in one trace only: a ratio but no test
    assert math.isnan(out["ratio"][1]) and math.isnan(out["p"][1])
    assert out["ratio"][2] == pytest.approx((5.5 / 400) / (0.5 / 400)) and math.isnan(out["p"][2])


def test_trace_variance_agrees_with_a_bootstrap_over_traces():
    g = torch.Generator().manual_seed(1)
    torch.manual_seed(1)  # the gamma and multinomial draws use the global generator
    d = 60
    tokens = torch.stack([torch.randint(150, 400, (d,), generator=g),
                          torch.randint(40, 120, (d,), generator=g)], 1)
    rate = 0.05 * torch.distributions.Gamma(2.0, 2.0).sample((d, 2))
    counts = torch.poisson(rate * tokens.double(), generator=g).long()
    tr = _tables(tokens.tolist(), {0: counts.tolist()}, 1)
    ratio = trace_rate_ratio(tr, 1)
    se = math.log(ratio["hi"][0] / ratio["lo"][0]) / 2 / float(t_quantile(0.975, ratio["df"]))
    # resample whole traces; the ratio of summed counts over summed tokens
    w = torch.distributions.Multinomial(d, torch.ones(d) / d).sample((4000,)).double()
    c, n = w @ counts.double(), w @ tokens.double()
    boot = torch.log(c[:, 0] / n[:, 0]) - torch.log(c[:, 1] / n[:, 1])
    assert se == pytest.approx(float(boot.std()), rel=0.1)
    assert se > 1.5 * math.sqrt(1 / counts[:, 0].sum() + 1 / counts[:, 1].sum())  # clustered


def _simulate(tokenizer, traces=40, features=200, planted_ratio=4.0, seed=0):
    """Traces of prompt/think/answer tokens; each feature's firing rate varies by trace (gamma,
    independently in think and elsewhere, with the same distribution: true ratio 1), except the
    last feature, whose think rate is ``planted_ratio`` times its rate elsewhere."""
    g = torch.Generator().manual_seed(seed)
    gamma = torch.distributions.Gamma(torch.tensor(0.7), torch.tensor(0.7))
    torch.manual_seed(seed)
    f = features + 1
    base = 0.01 + 0.04 * torch.rand(f, generator=g)
    regions, docs, fired = [], [], []
    for d in range(traces):
        lengths = [int(torch.randint(lo, hi, (1,), generator=g)) for lo, hi in ((30, 80), (150, 400),
                                                                                  (20, 60))]
        reg = torch.cat([torch.tensor([3]), *(torch.full((n,), r) for r, n in enumerate(lengths))])
        r_think, r_other = base * gamma.sample((f,)), base * gamma.sample((f,))
        r_think[-1] = planted_ratio * r_other[-1]
        rate = torch.where((reg == 1)[:, None], r_think, r_other)
        rate[reg == 3] = 0.0
        fired.append(torch.rand(rate.shape, generator=g) < rate.clamp(max=1))
        regions.append(reg)
        docs.append(torch.full((len(reg),), d))
    fired, regions, docs = torch.cat(fired), torch.cat(regions), torch.cat(docs)
    k = int(fired.sum(1).max())
    acts, idx = torch.topk(fired.float() * (1 + torch.rand(fired.shape, generator=g)), k, dim=1)
    info = TokenInfo.from_tokenizer(tokenizer)
    c = FeatureCollector(f, info, None, behaviours=["none"], top_n=2, window=1)
    n = len(regions)
    ids = torch.where(regions == 3, tokenizer.bos_token_id, 100)
    c.update({"token_ids": ids, "regions": regions, "behaviours": torch.zeros(n, dtype=torch.long),
              "doc_index": docs, "positions": torch.arange(n), "acts": acts, "idx": idx})
    return c.finish()


def test_clustered_null_features_are_rarely_think_specific(tokenizer):
    stats = _simulate(tokenizer)
    s = think_specificity(stats)
    null = slice(0, 200)
    flagged = float(s["think_specific"][null].double().mean())
    assert flagged <= 0.05
    # the trace-level p-values are roughly calibrated before any correction...
    assert float((s["think_p"][null] < 0.05).double().mean()) <= 0.10
    # ...where the token-level Katz interval flags many: the simulation is the hard case
    t = stats.tensors
    c1, c2 = t["fires_region"][:, 1], t["fires_region"][:, [0, 2]].sum(1)
    n1, n2 = float(t["region_tokens"][1]), float(t["region_tokens"][[0, 2]].sum())
    _, lo, hi = rate_ratio(c1, n1, c2, n2)
    assert float(((lo > 1) | (hi < 1))[null].double().mean()) > 0.15
    # the planted think-specific feature is still found
    assert bool(s["think_specific"][200]) and s["think_q"][200] <= 0.05
    assert s["think_rate_ratio_lo"][200] > 1
