"""Spliced evaluation: the error added back reproduces the clean model exactly; ablations; losses."""

from __future__ import annotations

import copy
import importlib

import pytest
import torch
from torch import nn

from thinksae.evaluate import add_error_back, replace_with, spliced_batch
from thinksae.evaluate.spliced import SplicedStats, token_losses
from thinksae.models import resolve_hookpoint
from thinksae.models.splice import final_hidden, output_head, splice
from thinksae.sae import Sae, SaeConfig

D = 64
HOOKPOINTS = ["layers.1", "layers.1.mlp"]


@pytest.fixture(scope="module")
def model():
    """A tiny Qwen2 with a 256-token vocabulary and weights large enough to predict sharply."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=256, hidden_size=D, intermediate_size=128, num_hidden_layers=3,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      initializer_range=0.1, tie_word_embeddings=True)
    return Qwen2ForCausalLM(cfg).eval()


@pytest.fixture(scope="module")
def batch(model):
    """Greedy continuations of random prompts (text the model predicts well); row 1 is padded
    on the right after 20 tokens."""
    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, 256, (3, 4), generator=g)
    with torch.no_grad():
        ids = model.generate(prompt, max_new_tokens=20, do_sample=False, pad_token_id=0,
                             eos_token_id=None)
    mask = torch.ones_like(ids)
    mask[1, 20:] = 0
    ids[1, 20:] = 0
    return ids, mask


def _sae(seed: int = 0) -> Sae:
    torch.manual_seed(seed)
    return Sae(D, SaeConfig(expansion_factor=2, k=4))


def _identity_sae() -> Sae:
    """relu(x) − relu(−x) = x: latents ±e_i, all 2·d of them active, reconstruct exactly."""
    sae = Sae(D, SaeConfig(expansion_factor=2, k=2 * D))
    eye = torch.eye(D)
    with torch.no_grad():
        sae.encoder.weight.copy_(torch.cat([eye, -eye]))
        sae.encoder.bias.zero_()
        sae.W_dec.copy_(torch.cat([eye, -eye]))
        sae.b_dec.zero_()
    return sae


def _constant_sae(value: torch.Tensor) -> Sae:
    """Reconstructs every token as ``value`` (no decoder directions, b_dec = value)."""
    sae = _sae()
    with torch.no_grad():
        sae.W_dec.zero_()
        sae.b_dec.copy_(value)
    return sae


def _stats(out) -> dict:
    stats = SplicedStats()
    stats.update(**out.losses)
    return stats.result()


@pytest.mark.parametrize("hookpoint,dtype", [("layers.1", torch.float32),
                                             ("layers.1.mlp", torch.float32),
                                             ("layers.1", torch.bfloat16)])
def test_error_added_back_matches_clean_exactly(model, batch, hookpoint, dtype):
    model = copy.deepcopy(model).to(dtype)
    ids, mask = batch
    module = resolve_hookpoint(model, hookpoint)
    sae = _sae()
    with torch.inference_mode():
        clean = final_hidden(model, ids, mask)
        kept = []
        with splice(module, lambda out: kept.append(out) or out):
            final_hidden(model, ids, mask)
        x = kept[0]
        x_hat = sae.decode(*sae.encode(x.float())).to(dtype)
        assert not torch.equal(x_hat, x)  # the SAE alone is far from exact
        with splice(module, add_error_back(x_hat)):
            restored = final_hidden(model, ids, mask)
        with splice(module, replace_with(x_hat)):
            spliced = final_hidden(model, ids, mask)
        head = output_head(model)
        assert torch.equal(restored, clean)
        assert torch.equal(head(restored), head(clean))
        assert not torch.allclose(spliced.float(), clean.float(), atol=1e-3)
        real = mask.bool()[:, :-1]
        losses = token_losses(head, {"clean": clean[:, :-1][real], "spliced": restored[:, :-1][real]},
                              ids[:, 1:][real])
    assert torch.equal(losses["ce_spliced"], losses["ce_clean"])
    assert bool((losses["kl_spliced"] == 0).all())
    assert len(losses["kl_spliced"]) == int(real.sum())


@pytest.mark.parametrize("hookpoint", HOOKPOINTS)
def test_zero_ablation_costs_loss_and_an_exact_sae_recovers_it(model, batch, hookpoint):
    ids, mask = batch
    out = spliced_batch(model, hookpoint, _identity_sae(), ids, mask)
    assert torch.equal(out.x_hat, out.x)
    r = _stats(out)
    assert r["ce_zero_ablated"] > r["ce_clean"] + 0.1
    assert r["ce_spliced"] == pytest.approx(r["ce_clean"], abs=1e-6)
    assert r["kl_spliced"] == pytest.approx(0, abs=1e-7)
    assert r["loss_recovered"] == pytest.approx(1, abs=1e-5)
    assert r["ce_mean_ablated"] is None and r["loss_recovered_mean"] is None
    # positions with a next token: 24 - 1 per full row, 20 - 1 for the padded one
    assert r["ce_positions"] == 23 + 19 + 23 == int(out.loss_mask.sum())
    assert len(out.x) == int(mask.sum())
    # KL(p_clean ‖ p_zero) by hand: two whole passes, the second with the output zeroed
    module = resolve_hookpoint(model, hookpoint)
    with torch.inference_mode():
        head = output_head(model)
        logp_clean = torch.log_softmax(head(final_hidden(model, ids, mask)).double(), -1)
        with splice(module, replace_with(torch.zeros(()))):
            logp_zero = torch.log_softmax(head(final_hidden(model, ids, mask)).double(), -1)
    kl = (logp_clean.exp() * (logp_clean - logp_zero)).sum(-1)[out.loss_mask]
    assert r["kl_zero_ablated"] == pytest.approx(float(kl.mean()), rel=1e-4)
    assert r["kl_zero_ablated"] > 0.01


def test_ablation_baselines_give_zero_loss_recovered(model, batch):
    ids, mask = batch
    x = spliced_batch(model, "layers.1", _identity_sae(), ids, mask).x
    mean = x.mean(0)
    zero = _stats(spliced_batch(model, "layers.1", _constant_sae(torch.zeros(D)), ids, mask, mean))
    assert zero["ce_spliced"] == pytest.approx(zero["ce_zero_ablated"], abs=1e-5)
    assert zero["kl_spliced"] == pytest.approx(zero["kl_zero_ablated"], abs=1e-6)  # x̂ = 0
    assert zero["loss_recovered"] == pytest.approx(0, abs=1e-4)
    as_mean = _stats(spliced_batch(model, "layers.1", _constant_sae(mean), ids, mask, mean))
    assert as_mean["ce_spliced"] == pytest.approx(as_mean["ce_mean_ablated"], abs=1e-5)
    assert as_mean["loss_recovered_mean"] == pytest.approx(0, abs=1e-4)
    assert as_mean["ce_mean_ablated"] != pytest.approx(as_mean["ce_zero_ablated"], abs=1e-3)
    # a random SAE lies in between
    some = _stats(spliced_batch(model, "layers.1", _sae(), ids, mask, mean))
    assert some["ce_clean"] < some["ce_spliced"] and some["kl_spliced"] > 0


def test_padding_does_not_change_losses(model, batch):
    ids, mask = batch
    sae = _sae()
    both = spliced_batch(model, "layers.1", sae, ids, mask)
    alone = spliced_batch(model, "layers.1", sae, ids[1:2, :20], mask[1:2, :20])
    rows = both.loss_mask.nonzero()[:, 0]
    for name, values in alone.losses.items():
        torch.testing.assert_close(both.losses[name][rows == 1], values, rtol=1e-4, atol=1e-5)


def test_splice_replaces_the_first_element_of_tuple_outputs():
    class Pair(nn.Module):
        def forward(self, x):
            return x + 1, "extra"

    module = Pair()
    with splice(module, lambda out: out * 10):
        out, extra = module(torch.ones(2))
    assert out.tolist() == [20.0, 20.0] and extra == "extra"
    assert module(torch.ones(2))[0].tolist() == [2.0, 2.0]  # the hook is gone afterwards


def test_spliced_stats_definitions():
    stats = SplicedStats()
    stats.update(ce_clean=torch.tensor([1.0, 2.0]), ce_spliced=torch.tensor([2.0, 3.0]),
                 ce_zero=torch.tensor([5.0, 6.0]), ce_mean=torch.tensor([3.0, 4.0]),
                 kl_spliced=torch.tensor([0.1, 0.3]))
    stats.update(ce_clean=torch.tensor([3.0]), ce_spliced=torch.tensor([4.0]),
                 ce_zero=torch.tensor([7.0]), ce_mean=torch.tensor([5.0]),
                 kl_spliced=torch.tensor([0.2]))
    r = stats.result()
    assert r["ce_positions"] == 3
    assert r["ce_clean"] == pytest.approx(2) and r["ce_spliced"] == pytest.approx(3)
    assert r["ce_zero_ablated"] == pytest.approx(6) and r["ce_mean_ablated"] == pytest.approx(4)
    assert r["loss_recovered"] == pytest.approx((6 - 3) / (6 - 2))
    assert r["loss_recovered_mean"] == pytest.approx((4 - 3) / (4 - 2))
    assert r["kl_spliced"] == pytest.approx(0.2)


def test_positions_kept_clean_are_not_replaced(model, batch):
    """``keep_clean`` everywhere is the clean model in every setting; at the first position
    only, the next block reads the clean output there and the replacement everywhere else."""
    ids, mask = batch
    mean = spliced_batch(model, "layers.1", _identity_sae(), ids, mask).x.mean(0)
    everywhere = _stats(spliced_batch(model, "layers.1", _sae(), ids, mask, mean,
                                      keep_clean=torch.ones_like(mask, dtype=torch.bool)))
    for name in ("ce_spliced", "ce_zero_ablated", "ce_mean_ablated"):
        assert everywhere[name] == pytest.approx(everywhere["ce_clean"], abs=1e-6)
    assert everywhere["kl_spliced"] == pytest.approx(0, abs=1e-7)

    first = torch.zeros_like(mask, dtype=torch.bool)
    first[:, 0] = True
    inputs = []  # what block 2 reads, one entry per forward: clean, spliced, zero, mean

    def record(_module, args, kwargs):
        inputs.append((args[0] if args else kwargs["hidden_states"]).detach().clone())

    handle = model.model.layers[2].register_forward_pre_hook(record, with_kwargs=True)
    try:
        spliced_batch(model, "layers.1", _constant_sae(torch.zeros(D)), ids, mask, mean,
                      keep_clean=first)
    finally:
        handle.remove()
    clean, spliced, zero, as_mean = inputs
    real = mask.bool() & ~first
    for replaced in (spliced, zero, as_mean):
        assert torch.equal(replaced[:, 0], clean[:, 0])
    assert bool((spliced[real] == 0).all()) and bool((zero[real] == 0).all())
    torch.testing.assert_close(as_mean[real], mean.expand_as(as_mean[real]).to(as_mean.dtype))


def _tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(1)
    cfg = LlamaConfig(vocab_size=256, hidden_size=D, intermediate_size=128, num_hidden_layers=3,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      initializer_range=0.1)
    return LlamaForCausalLM(cfg).eval()


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
@torch.inference_mode()
def test_blocks_above_run_alone_match_a_whole_pass_bit_for_bit(model, batch, arch):
    from thinksae.models.splice import final_hidden_from, resume_layer

    net = model if arch == "qwen2" else _tiny_llama()
    ids, mask = batch
    module = resolve_hookpoint(net, "layers.0")
    seen = []
    with splice(module, lambda out: seen.append(out) or out):
        clean = final_hidden(net, ids, mask)
    layer = resume_layer(net, "layers.0")
    assert layer == 0
    assert torch.equal(final_hidden_from(net, layer, seen[0], mask), clean)
    shifted = seen[0] * 0.5 + 1.0
    with splice(module, replace_with(shifted)):
        want = final_hidden(net, ids, mask)
    got = final_hidden_from(net, layer, shifted, mask)
    assert torch.equal(got, want) and not torch.equal(got, clean)
    assert len(net.model.layers) == 3  # the stack is whole again


def test_resume_layer_only_for_whole_block_outputs_of_known_models(model, monkeypatch):
    splice_module = importlib.import_module("thinksae.models.splice")

    assert splice_module.resume_layer(model, "layers.1") == 1
    assert splice_module.resume_layer(model, "layers.1.mlp") is None
    assert splice_module.resume_layer(model, "embed_tokens") is None
    monkeypatch.setattr(splice_module, "RESUMABLE_TYPES", frozenset())
    assert splice_module.resume_layer(model, "layers.1") is None


@torch.inference_mode()
def test_spliced_batch_same_losses_with_and_without_resuming(model, batch, monkeypatch):
    splice_module = importlib.import_module("thinksae.models.splice")

    ids, mask = batch
    keep = torch.zeros_like(mask, dtype=torch.bool)
    keep[:, 0] = True
    mean = torch.randn(D)
    args = dict(mean=mean, keep_clean=keep)
    resumed = spliced_batch(model, "layers.1", _sae(), ids, mask, **args)
    monkeypatch.setattr(splice_module, "RESUMABLE_TYPES", frozenset())
    whole = spliced_batch(model, "layers.1", _sae(), ids, mask, **args)
    assert set(resumed.losses) == set(whole.losses) == {
        "ce_clean", "ce_spliced", "ce_zero", "ce_mean", "kl_spliced", "kl_zero"}
    for name, values in whole.losses.items():
        assert torch.equal(resumed.losses[name], values), name
