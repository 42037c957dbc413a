"""SAEBench core metrics: each formula against a hand computation, and the driver on a tiny Qwen2
against a direct computation (splice by hand, metrics by their formulas)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from thinksae.evaluate.saebench.core import (
    CoreStats,
    LossSums,
    alive_fraction,
    ce_loss_score,
    core_metrics,
    explained_variance,
    feature_density,
    kl_score,
    position_losses,
    relative_reconstruction_bias,
    share_denser_than,
    token_l1,
)
from thinksae.evaluate.saebench.core_run import CoreOptions, core_eval, core_eval_store
from thinksae.models import resolve_hookpoint
from thinksae.sae import Sae, SaeConfig
from thinksae.sinks import SinkRule

# three tokens, d_in = 2, four latents (a 0 activation marks padding)
X = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 0.0]])
X_HAT = torch.tensor([[1.0, 1.0], [3.0, 4.0], [4.0, 0.0]])
ACTS = torch.tensor([[2.0, 0.0], [1.0, 3.0], [0.5, 0.0]])
IDX = torch.tensor([[0, 1], [0, 2], [2, 3]])


def _stats(rows=slice(None)) -> CoreStats:
    stats = CoreStats(2, 4)
    stats.update(X[rows], X_HAT[rows], ACTS[rows], IDX[rows])
    return stats


def test_scores_by_hand():
    assert ce_loss_score(ce_clean=2.0, ce_sae=3.0, ce_zero=4.0) == pytest.approx((4 - 3) / (4 - 2))
    assert ce_loss_score(2.0, 3.0, 2.0) is None
    assert kl_score(kl_sae=0.5, kl_zero=2.0) == pytest.approx(0.75)
    assert kl_score(0.5, 0.0) is None
    # x̄ = (3, 2); Σ‖x − x̄‖² = 4 + 4 + 8 = 16; Σ‖x − x̂‖² = 1 + 0 + 1 = 2
    assert explained_variance(2.0, 16.0) == pytest.approx(1 - 2 / 16)
    assert explained_variance(2.0, 0.0) is None
    assert relative_reconstruction_bias(43.0, 48.0) == pytest.approx(43 / 48)
    assert relative_reconstruction_bias(1.0, 0.0) is None


def test_density_shares_by_hand():
    density = torch.tensor([0.0, 0.005, 0.05, 0.2])
    assert alive_fraction(density) == 0.75
    assert share_denser_than(density, 0.01) == 0.5
    assert share_denser_than(density, 0.1) == 0.25
    assert feature_density(torch.tensor([2, 0, 1]), 4).tolist() == [0.5, 0.0, 0.25]
    assert feature_density(torch.tensor([2, 0]), 0).tolist() == [0.0, 0.0]


def test_reconstruction_metrics_by_hand():
    m = core_metrics(_stats())
    assert m.tokens == 3
    assert m.explained_variance == pytest.approx(1 - 2 / 16)
    assert m.mse == pytest.approx(2 / 3)  # summed over dimensions, mean over tokens
    # cos: (1,2)·(1,1) / (√5 √2) = 3/√10, then 1 and 1
    assert m.cosine_similarity == pytest.approx((3 / math.sqrt(10) + 2) / 3)
    # ‖x̂‖/‖x‖: √2/√5, 5/5, 4/5
    assert m.l2_ratio == pytest.approx((math.sqrt(2 / 5) + 1 + 0.8) / 3)
    # Σ‖x̂‖² = 2 + 25 + 16 = 43; Σ⟨x, x̂⟩ = 3 + 25 + 20 = 48
    assert m.relative_reconstruction_bias == pytest.approx(43 / 48)
    assert m.l0 == pytest.approx(4 / 3)  # 1, 2, 1 active
    assert m.l1 == pytest.approx(6.5 / 3)  # 2, 4, 0.5
    assert token_l1(ACTS).tolist() == [2.0, 4.0, 0.5]
    # latent 0 fires on tokens 0, 1; latent 2 on 1, 2; latents 1 and 3 never (0 = padding)
    assert m.feature_density == pytest.approx([2 / 3, 0, 2 / 3, 0])
    assert (m.alive_fraction, m.share_density_over_1pct, m.share_density_over_10pct) == (0.5, 0.5, 0.5)
    assert m.ce_loss_score is None and m.kl_score is None and m.ce_positions == 0
    assert "feature_density" not in m.to_dict() and len(m.to_dict(with_density=True)["feature_density"]) == 4


def test_sums_do_not_depend_on_batching():
    split = _stats(slice(0, 1))
    split.update(X[1:], X_HAT[1:], ACTS[1:], IDX[1:])
    one, two = core_metrics(_stats()).to_dict(True), core_metrics(split).to_dict(True)
    assert one.pop("feature_density") == pytest.approx(two.pop("feature_density"))
    assert one.pop("sinks") == two.pop("sinks") == {}
    assert one == pytest.approx(two)


def test_position_losses_by_hand():
    """Vocabulary 2, one sequence of 3: token 1 is a sink (dropped), token 2 has no next token
    (in KL, not in CE)."""
    ln3, ln9 = math.log(3), math.log(9)
    clean = torch.zeros(1, 3, 2)  # p = (1/2, 1/2) everywhere
    sae = torch.tensor([[[ln3, 0.0], [10.0, -10.0], [0.0, 0.0]]])  # (3/4, 1/4), wild, = clean
    zero = torch.tensor([[[0.0, ln9]] * 3])  # (1/10, 9/10)
    ids = torch.tensor([[0, 1, 0]])
    keep = torch.tensor([[True, False, True]])
    losses, has_target = position_losses(nn.Identity(), {"clean": clean, "sae": sae, "zero": zero},
                                         ids, keep, torch.ones_like(keep))
    assert has_target.tolist() == [True, False]
    sums = LossSums()
    sums.update(losses, has_target)
    assert (sums.ce_positions, sums.kl_positions) == (1, 2)
    ce_clean, ce_sae, ce_zero = math.log(2), math.log(4), -math.log(0.9)  # target of t=0 is 1
    assert sums.mean("ce_clean") == pytest.approx(ce_clean)
    assert sums.mean("ce_sae") == pytest.approx(ce_sae)
    assert sums.mean("ce_zero") == pytest.approx(ce_zero)
    # KL(½,½ ‖ ¾,¼) = ½ ln(4/3) at t=0 and 0 at t=2; KL(½,½ ‖ 1/10, 9/10) = ln(5/3) at both
    kl_sae, kl_zero = 0.5 * math.log(4 / 3) / 2, math.log(5 / 3)
    assert sums.mean("kl_sae") == pytest.approx(kl_sae)
    assert sums.mean("kl_zero") == pytest.approx(kl_zero)
    m = core_metrics(_stats(), sums)
    assert m.ce_loss_score == pytest.approx((ce_zero - ce_sae) / (ce_zero - ce_clean))
    assert m.kl_score == pytest.approx((kl_zero - kl_sae) / kl_zero)


# ---------------------------------------------------------------- the driver on a tiny Qwen2

D, VOCAB, BOS = 32, 128, 1
HOOK = "layers.1"


@pytest.fixture(scope="module")
def model():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=VOCAB, hidden_size=D, intermediate_size=64, num_hidden_layers=3,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      initializer_range=0.1, tie_word_embeddings=True)
    return Qwen2ForCausalLM(cfg).eval()


@pytest.fixture(scope="module")
def batches():
    """Two right-padded batches with BOS at the start and once mid-sequence (packed)."""
    g = torch.Generator().manual_seed(1)
    out = []
    for rows, width in ((2, 12), (3, 9)):
        ids = torch.randint(2, VOCAB, (rows, width), generator=g)
        ids[:, 0] = BOS
        ids[0, 5] = BOS
        mask = torch.ones_like(ids)
        mask[-1, width - 3:] = 0
        ids[-1, width - 3:] = 0
        out.append((ids, mask))
    return out


def _sae(seed=0, k=4) -> Sae:
    torch.manual_seed(seed)
    sae = Sae(D, SaeConfig(expansion_factor=4, k=k))
    with torch.no_grad():
        sae.b_dec.normal_(0, 0.1)
    return sae


def _identity_sae() -> Sae:
    """Latents ±e_i, all 2·d active: relu(x) − relu(−x) = x exactly."""
    sae = Sae(D, SaeConfig(expansion_factor=2, k=2 * D))
    eye = torch.eye(D)
    with torch.no_grad():
        sae.encoder.weight.copy_(torch.cat([eye, -eye]))
        sae.encoder.bias.zero_()
        sae.W_dec.copy_(torch.cat([eye, -eye]))
        sae.b_dec.zero_()
    return sae


def test_identity_sae_scores_one(model, batches):
    m = core_eval(model, _identity_sae(), HOOK, batches, special_ids=[BOS])
    assert m.ce_sae == pytest.approx(m.ce_clean, abs=1e-5)
    assert m.kl_sae == pytest.approx(0.0, abs=1e-6) and m.kl_zero > 0
    assert m.ce_loss_score == pytest.approx(1.0, abs=1e-4) and m.kl_score == pytest.approx(1.0, abs=1e-5)
    assert m.explained_variance == pytest.approx(1.0, abs=1e-6)
    assert m.cosine_similarity == pytest.approx(1.0) and m.l2_ratio == pytest.approx(1.0)
    assert m.relative_reconstruction_bias == pytest.approx(1.0, abs=1e-6)
    real = sum(int(mask.sum()) for _, mask in batches)
    specials = sum(int(((ids == BOS) & mask.bool()).sum()) for ids, mask in batches)
    assert m.sinks["special"] == specials and m.tokens == real - m.sinks["sinks"]


def _forward(model, module, ids, mask, replacement=None):
    """Logits of a full forward and the hookpoint output (replaced by ``replacement`` if given)."""
    seen = {}

    def hook(_module, _inputs, out):
        seen["x"] = out[0] if isinstance(out, tuple) else out
        if replacement is not None:
            return (replacement, *out[1:]) if isinstance(out, tuple) else replacement

    handle = module.register_forward_hook(hook)
    try:
        logits = model(input_ids=ids, attention_mask=mask).logits
    finally:
        handle.remove()
    return logits, seen["x"]


def _kl(logp_clean, logp_new) -> float:
    return float((logp_clean.exp() * (logp_clean - logp_new)).sum())


@torch.no_grad()
def _by_hand(model, sae, batches, hook: str, rule: SinkRule, ablate_sinks: bool) -> dict:
    """The core numbers by direct formulas: full forwards with a hook, all tokens in one tensor."""
    module = resolve_hookpoint(model, hook)
    xs, xhats, actss = [], [], []
    ce, kl = {"clean": [], "sae": [], "zero": []}, {"sae": [], "zero": []}
    for ids, mask in batches:
        clean_logits, x = _forward(model, module, ids, mask)
        real = mask.bool()
        special = (ids == BOS) & real
        sink = torch.zeros_like(real)
        sink[real] = rule.mask(x.norm(dim=-1)[real], special[real])
        keep = real & ~sink
        acts, idx = sae.encode(x[keep])
        x_hat = sae.decode(acts, idx)
        dense = torch.zeros(len(x_hat), sae.num_latents).scatter_add_(1, idx, acts)
        xs.append(x[keep].double()), xhats.append(x_hat.double()), actss.append(dense.double())
        new_sae = x.clone()
        new_sae[keep] = x_hat
        new_zero = torch.where((real if ablate_sinks else keep)[..., None], 0.0, x)
        logits = {"clean": clean_logits, "sae": _forward(model, module, ids, mask, new_sae)[0],
                  "zero": _forward(model, module, ids, mask, new_zero)[0]}
        logp = {n: torch.log_softmax(v.double(), -1) for n, v in logits.items()}
        for b, t in keep.nonzero().tolist():
            for n in kl:
                kl[n].append(_kl(logp["clean"][b, t], logp[n][b, t]))
            if t + 1 < ids.shape[1] and real[b, t + 1]:
                for n in ce:
                    ce[n].append(float(-logp[n][b, t, ids[b, t + 1]]))
    x, xh, a = torch.cat(xs), torch.cat(xhats), torch.cat(actss)
    mean = {n: sum(v) / len(v) for n, v in {**{f"ce_{k}": v for k, v in ce.items()},
                                             **{f"kl_{k}": v for k, v in kl.items()}}.items()}
    density = (a > 0).double().mean(0)
    return {
        "tokens": len(x), "ce_positions": len(ce["clean"]), "kl_positions": len(kl["sae"]),
        "explained_variance": float(1 - (x - xh).pow(2).sum() / (x - x.mean(0)).pow(2).sum()),
        "mse": float((x - xh).pow(2).sum(-1).mean()),
        "cosine_similarity": float(torch.cosine_similarity(x, xh, dim=-1).mean()),
        "l2_ratio": float((xh.norm(dim=-1) / x.norm(dim=-1)).mean()),
        "relative_reconstruction_bias": float(xh.pow(2).sum(-1).mean() / (x * xh).sum(-1).mean()),
        "l0": float((a > 0).double().sum(-1).mean()), "l1": float(a.sum(-1).mean()),
        "alive_fraction": float((density > 0).double().mean()),
        "share_density_over_1pct": float((density > 0.01).double().mean()),
        "share_density_over_10pct": float((density > 0.1).double().mean()),
        "ce_clean": mean["ce_clean"], "ce_sae": mean["ce_sae"], "ce_zero": mean["ce_zero"],
        "kl_sae": mean["kl_sae"], "kl_zero": mean["kl_zero"],
        "ce_loss_score": (mean["ce_zero"] - mean["ce_sae"]) / (mean["ce_zero"] - mean["ce_clean"]),
        "kl_score": (mean["kl_zero"] - mean["kl_sae"]) / mean["kl_zero"],
    }


@pytest.mark.parametrize("hook, rule, ablate_sinks", [
    (HOOK, SinkRule(), False), (HOOK, SinkRule(norm_multiple=1.02), False),
    (HOOK, SinkRule(norm_multiple=1.02), True),
    ("layers.1.mlp", SinkRule(), False),  # not resumable: whole forwards with a splice hook
])
def test_driver_matches_a_direct_computation(model, batches, hook, rule, ablate_sinks):
    sae = _sae()
    got = core_eval(model, sae, hook, batches, special_ids=[BOS], sink_rule=rule,
                    options=CoreOptions(ablate_sinks=ablate_sinks)).to_dict()
    want = _by_hand(model, sae, batches, hook, rule, ablate_sinks)
    if rule.norm_multiple == 1.02:
        assert got["sinks"]["by_norm"] > 0  # the norm test dropped ordinary tokens too
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-4, abs=1e-5), key


class _FakeStore:
    """Two chunks of stored activations with region codes (3 = special)."""

    manifest = {"regions": ["prompt", "think", "answer", "special"]}

    def __init__(self, x, regions):
        self.x, self.regions = x, regions

    def iter_chunks(self, chunk_tokens, docs=None):
        for a in range(0, len(self.x), chunk_tokens):
            yield {"activations": self.x[a : a + chunk_tokens],
                   "regions": self.regions[a : a + chunk_tokens]}


def test_store_reconstruction_drops_specials_and_norm_sinks():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(20, D, generator=g)
    x[4] *= 50  # a norm sink
    regions = torch.tensor([3] + [1] * 18 + [3], dtype=torch.uint8)
    sae = _sae()
    got = core_eval_store(_FakeStore(x, regions), sae, chunk_tokens=20)
    kept = torch.ones(20, dtype=torch.bool)
    kept[[0, 4, 19]] = False
    want = CoreStats(D, sae.num_latents)
    with torch.no_grad():
        acts, idx = sae.encode(x[kept])
        want.update(x[kept], sae.decode(acts, idx), acts, idx)
    a, b = got.to_dict(True), core_metrics(want).to_dict(True)
    assert a.pop("feature_density") == pytest.approx(b.pop("feature_density"))
    a.pop("sinks"), b.pop("sinks")
    assert a == pytest.approx(b)
    assert got.sinks == {"tokens": 20, "sinks": 3, "special": 2, "by_norm": 1}
    assert got.tokens == 17 and got.ce_loss_score is None
