"""Reconstruction metrics: each definition against a hand computation, groups, streaming state."""

from __future__ import annotations

import math

import pytest
import torch

from thinksae.evaluate import TokenGroups, fvu, latent_frequency_histogram, loss_recovered
from thinksae.evaluate.metrics import Grouped, Moments, ReconstructionStats

# Two batches of 2-d activations x, reconstructions x̂ and top-2 latents (5 latents).
X_A = [[0.0, 1.0], [2.0, 0.0]]
HAT_A = [[0.0, 1.0], [1.0, 0.0]]  # squared errors 0, 1
X_B = [[4.0, 2.0], [4.0, 4.0]]
HAT_B = [[4.0, 0.0], [4.0, 4.0]]  # squared errors 4, 0
IDX_A, ACTS_A = [[0, 1], [1, 2]], [[1.0, 0.0], [2.0, 3.0]]  # fired: {0}, {1, 2}
IDX_B, ACTS_B = [[1, 3], [0, 1]], [[0.5, 0.5], [0.0, 0.0]]  # fired: {1, 3}, {}


def _stats_over_two_batches() -> ReconstructionStats:
    stats = ReconstructionStats(d_in=2, num_latents=5)
    for x, hat, idx, acts in ((X_A, HAT_A, IDX_A, ACTS_A), (X_B, HAT_B, IDX_B, ACTS_B)):
        stats.update(torch.tensor(x), torch.tensor(hat), torch.tensor(acts), torch.tensor(idx))
    return stats


def test_definitions_match_hand_computation():
    r = _stats_over_two_batches().result()
    # Eval-set mean x̄ = (2.5, 1.75). Σ‖x − x̄‖² = (6.25 + 0.5625) + (0.25 + 3.0625)
    #   + (2.25 + 0.0625) + (2.25 + 5.0625) = 19.75; Σ‖x − x̂‖² = 0 + 1 + 4 + 0 = 5.
    assert r["tokens"] == 4
    assert r["fvu"] == pytest.approx(5 / 19.75, abs=1e-12)
    assert r["explained_variance"] == pytest.approx(1 - 5 / 19.75, abs=1e-12)
    assert r["mse"] == pytest.approx(5 / (4 * 2), abs=1e-12)
    # per batch: A has variance 2.5 (mean (1, .5): 1 + .25 + 1 + .25), error 1;
    # B has variance 2 (mean (4, 3)), error 4: the mean of batch ratios is (0.4 + 2) / 2 = 1.2
    assert (1 / 2.5 + 4 / 2) / 2 == pytest.approx(1.2)
    assert r["fvu"] != pytest.approx(1.2, abs=0.5)
    # cosines: 1, (2,0)·(1,0) → 1, (4,2)·(4,0) = 16 / (√20 · 4), 1
    assert r["cosine"] == pytest.approx((1 + 1 + 16 / (math.sqrt(20) * 4) + 1) / 4, abs=1e-7)
    # ‖x̂‖/‖x‖: 1, 1/2, 4/√20, 1
    assert r["relative_norm"] == pytest.approx((1 + 0.5 + 4 / math.sqrt(20) + 1) / 4, abs=1e-7)
    # active latents per token: 1, 2, 2, 0 (a zero activation in the top k is not active)
    assert r["l0"] == pytest.approx(5 / 4)
    # latents 0..3 fired, latent 4 never
    assert r["dead_fraction"] == pytest.approx(1 / 5)


def test_fire_counts_and_frequency_histogram():
    stats = _stats_over_two_batches()
    assert stats.fire_counts.tolist() == [1, 2, 1, 1, 0]
    hist = latent_frequency_histogram(stats.fire_counts, stats.tokens, bins=4)
    assert hist["dead"] == 1 and hist["alive"] == 4 and sum(hist["counts"]) == 4
    # frequencies 1/4, 2/4, 1/4, 1/4: log10 -0.602 (x3) and -0.301; edges -1, -.75, …, 0
    assert hist["log10_bin_edges"] == [-1.0, -0.75, -0.5, -0.25, 0.0]
    assert hist["counts"] == [0, 3, 1, 0]


def test_fvu_is_independent_of_batching_and_not_a_mean_of_batch_ratios():
    g = torch.Generator().manual_seed(0)
    # batches with different means: per-batch variance is small, the eval-set variance large
    xs = [torch.randn(n, 8, generator=g) + 5 * i for i, n in enumerate((7, 30, 3, 12))]
    hats = [x + 0.3 * torch.randn(x.shape, generator=g) for x in xs]
    x_all, hat_all = torch.cat(xs).double(), torch.cat(hats).double()
    expected = ((x_all - hat_all) ** 2).sum() / ((x_all - x_all.mean(0)) ** 2).sum()

    def run(batches) -> float:
        stats = ReconstructionStats(8, 4)
        for x, hat in batches:
            z = torch.zeros(len(x), 1)
            stats.update(x, hat, z, z.long())
        return stats.result()["fvu"]

    streamed = run(zip(xs, hats))
    one_batch = run([(torch.cat(xs), torch.cat(hats))])
    assert streamed == pytest.approx(float(expected), rel=1e-9)
    assert one_batch == pytest.approx(streamed, rel=1e-9)
    ratios = [float(((x - h) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()) for x, h in zip(xs, hats)]
    assert abs(sum(ratios) / len(ratios) - streamed) > 0.01


def test_moments_keep_precision_under_a_large_mean():
    g = torch.Generator().manual_seed(1)
    x = (1e6 + torch.randn(4000, 4, generator=g, dtype=torch.float64))
    m = Moments(4)
    for part in x.split(333):
        m.update(part)
    expected = float(((x - x.mean(0)) ** 2).sum())
    assert m.count == 4000
    assert m.sum_sq_dev == pytest.approx(expected, rel=1e-9)
    torch.testing.assert_close(m.mean, x.mean(0), rtol=0, atol=1e-9)


def test_ratio_helpers():
    assert fvu(1.0, 4.0) == 0.25 and fvu(1.0, 0.0) is None
    assert loss_recovered(ce_ablated=5.0, ce_spliced=3.0, ce_clean=1.0) == 0.5
    assert loss_recovered(5.0, 1.0, 1.0) == 1.0 and loss_recovered(5.0, 5.0, 1.0) == 0.0
    assert loss_recovered(2.0, 3.0, 2.0) is None


def test_groups_split_by_region_and_behaviour():
    groups = TokenGroups(["prompt", "think", "answer", "special"], ["none", "backtracking", "x"])
    assert groups.keys == ["all", "region/prompt", "region/think", "region/answer",
                           "region/special", "behaviour/backtracking", "behaviour/x"]
    g = torch.Generator().manual_seed(2)
    x = torch.randn(40, 6, generator=g)
    hat = x + 0.5 * torch.randn(40, 6, generator=g)
    idx = torch.randint(0, 10, (40, 1), generator=g)
    acts = torch.rand(40, 1, generator=g)
    regions = torch.tensor([0, 1, 1, 2] * 10, dtype=torch.uint8)  # no "special" token
    behaviours = torch.tensor([0, 1, 0, 0, 0] * 8, dtype=torch.uint8)
    grouped = Grouped(groups, lambda: ReconstructionStats(6, 10))
    for a in range(0, 40, 9):  # uneven batches
        s = slice(a, a + 9)
        grouped.update(regions[s], behaviours[s], x=x[s], x_hat=hat[s], latent_acts=acts[s],
                       latent_indices=idx[s])
    res = grouped.results()
    assert set(res) == {"all", "regions", "behaviours"}
    assert set(res["behaviours"]) == {"backtracking", "x"}

    def alone(mask):
        stats = ReconstructionStats(6, 10)
        stats.update(x[mask], hat[mask], acts[mask], idx[mask])
        return stats.result()

    assert res["all"] == pytest.approx(alone(torch.ones(40, dtype=torch.bool)))
    for code, name in enumerate(["prompt", "think", "answer"]):
        assert res["regions"][name] == pytest.approx(alone(regions == code))
    assert res["regions"]["think"]["tokens"] == 20
    assert res["behaviours"]["backtracking"] == pytest.approx(alone(behaviours == 1))
    assert res["regions"]["special"] == {"tokens": 0, **{k: None for k in res["all"] if k != "tokens"}}
    assert res["behaviours"]["x"]["tokens"] == 0
    assert res["regions"]["think"]["fvu"] != pytest.approx(res["all"]["fvu"])


def test_state_does_not_grow_with_tokens():
    groups = TokenGroups(["prompt", "think"], ["none", "b"])
    grouped = Grouped(groups, lambda: ReconstructionStats(16, 64))

    def state_elements() -> int:
        total = 0
        for stats in grouped.stats.values():
            total += stats.moments.mean.numel() + stats.fire_counts.numel()
            total += sum(1 for v in vars(stats).values() if isinstance(v, (int, float)))
        return total

    def feed(n_batches):
        for _ in range(n_batches):
            x = torch.randn(50, 16)
            grouped.update(torch.randint(0, 2, (50,)), torch.randint(0, 2, (50,)), x=x,
                           x_hat=x * 0.9, latent_acts=torch.rand(50, 4),
                           latent_indices=torch.randint(0, 64, (50, 4)))

    feed(1)
    size = state_elements()
    feed(40)
    assert state_elements() == size
    assert grouped.stats["all"].tokens == 41 * 50


def test_trained_group_is_one_ratio_over_the_trained_regions():
    """1-d activations; regions 0 prompt, 1 think, 2 answer, 3 special; trained on think+answer."""
    groups = TokenGroups(["prompt", "think", "answer", "special"], ["none"], trained=["think", "answer"])
    assert groups.keys == ["all", "trained", "region/prompt", "region/think", "region/answer",
                           "region/special"]
    x = torch.tensor([[5.0], [1.0], [3.0], [7.0], [9.0], [100.0]])
    hat = torch.tensor([[5.0], [1.0], [2.0], [8.0], [9.0], [0.0]])
    regions = torch.tensor([0, 1, 1, 2, 2, 3], dtype=torch.uint8)
    acts = torch.tensor([[1.0], [1.0], [0.0], [2.0], [1.0], [3.0]])  # token 2 fires nothing
    idx = torch.tensor([[0], [1], [2], [1], [1], [3]])
    grouped = Grouped(groups, lambda: ReconstructionStats(1, 4))
    for s in (slice(0, 2), slice(2, 6)):  # think is split across batches
        grouped.update(regions[s], torch.zeros(len(x[s]), dtype=torch.uint8), x=x[s], x_hat=hat[s],
                       latent_acts=acts[s], latent_indices=idx[s])
    res = grouped.results()
    trained = res["trained"]
    # think+answer tokens 1, 3, 7, 9: mean 5, Σ(x − 5)² = 16 + 4 + 4 + 16 = 40; Σ(x − x̂)² = 0+1+1+0
    assert trained["tokens"] == 4
    assert trained["fvu"] == pytest.approx(2 / 40, abs=1e-12)
    assert trained["mse"] == pytest.approx(2 / 4, abs=1e-12)
    assert trained["l0"] == pytest.approx(3 / 4)  # latents 1 (think), 1 and 1 (answer)
    assert trained["dead_fraction"] == pytest.approx(3 / 4)  # only latent 1 fired on them
    # each region alone: mean 2 (think) / 8 (answer), variance 2, error 1 → FVU 0.5; neither
    # their mean nor their token-weighted mean is the trained-regions FVU
    assert res["regions"]["think"]["fvu"] == pytest.approx(0.5)
    assert res["regions"]["answer"]["fvu"] == pytest.approx(0.5)
    # all tokens: the special token's huge error and spread dominate
    assert res["all"]["tokens"] == 6 and res["all"]["fvu"] > 0.9
    assert "trained" not in TokenGroups(["prompt"], ["none"]).keys
    assert "trained" not in Grouped(TokenGroups(["prompt"], ["none"]), lambda: None).stats
