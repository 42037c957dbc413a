"""Matryoshka BatchTopK: the loss by hand and against a dense reference and SAELens' own training
SAE, the global selection (inner prefixes get fewer than k latents), the config checks, and the
other architectures' forward left as it was."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from thinksae.errors import ThinksaeError
from thinksae.sae import MatryoshkaBatchTopKSae, SaeConfig, make_sae
from thinksae.train.checks import check_config, check_sizes
from thinksae.train.config import TrainConfig
from thinksae.train.distributed import Ranks
from thinksae.train.sae_step import forward_loss

D, N, K = 16, 48, 3
WIDTHS = "6,20,48"


def _matryoshka(widths=WIDTHS, seed=0) -> MatryoshkaBatchTopKSae:
    sae = make_sae(D, SaeConfig(architecture="matryoshka_batchtopk", num_latents=N, k=K,
                                matryoshka_widths=widths))
    torch.manual_seed(seed)
    with torch.no_grad():
        sae.encoder.weight.normal_(0, 0.5)
        sae.encoder.bias.normal_(0, 0.2)
        sae.W_dec.normal_(0, 0.3)
        sae.b_dec.normal_(0, 0.3)
    return sae


def test_loss_by_hand_on_two_tokens():
    """d_in 2, three latents, prefixes (1, 3), k = 1, two tokens, b_enc = b_dec = 0.

    pre = (x_a, x_b, (x_a + x_b)/2): x1 = (4, 0) → (4, 0, 2), x2 = (1, 3) → (1, 3, 2). BatchTopK
    keeps the k·B = 2 largest of the batch: 4 (x1, latent 0) and 3 (x2, latent 1).
    Decoder rows (1, 0), (0, 1), (0.6, 0.8):
      whole SAE  x̂1 = (4, 0), x̂2 = (0, 3): squared error 0 + 1 = 1
      prefix 1   x̂1 = (4, 0), x̂2 = (0, 0) (latent 1 is outside): 0 + 1 + 9 = 10
    mean x = (2.5, 1.5), Σ‖x − mean‖² = 4.5 + 4.5 = 9
    FVU_1 = 10/9, FVU_3 = 1/9, loss = 11/9; θ = the smallest kept activation, 3.
    """
    sae = make_sae(2, SaeConfig(architecture="matryoshka_batchtopk", num_latents=3, k=1,
                                matryoshka_widths="1,3"))
    with torch.no_grad():
        sae.encoder.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]]))
        sae.encoder.bias.zero_()
        sae.W_dec.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]]))
        sae.b_dec.zero_()
    x = torch.tensor([[4.0, 0.0], [1.0, 3.0]])
    out = sae(x)
    torch.testing.assert_close(out.prefix_fvu, torch.tensor([10 / 9, 1 / 9]))
    assert out.fvu.item() == pytest.approx(1 / 9)
    assert out.reconstruction_loss.item() == pytest.approx(11 / 9)
    torch.testing.assert_close(out.sae_out, torch.tensor([[4.0, 0.0], [0.0, 3.0]]))
    inner = sae.decode_prefix(out.latent_acts, out.latent_indices, 1)
    torch.testing.assert_close(inner, torch.tensor([[4.0, 0.0], [0.0, 0.0]]))
    assert float(sae.threshold) == pytest.approx(3.0)
    inner_active = ((out.latent_acts > 0) & (out.latent_indices < 1)).sum(-1)
    assert inner_active.tolist() == [1, 0]  # token 2 has no latent in the inner prefix


def _pre(sae, x):
    return (x - sae.b_dec) @ sae.encoder.weight.T + sae.encoder.bias


def test_matches_a_dense_reference_with_gradients():
    sae = _matryoshka()
    x = torch.randn(12, D) * 2
    out = sae(x)
    out.reconstruction_loss.backward()
    ours = {n: p.grad.clone() for n, p in sae.named_parameters()}
    sae.zero_grad()
    acts = F.relu(_pre(sae, x))
    vals, pos = acts.flatten().topk(K * 12)
    z = torch.zeros(acts.numel()).scatter(0, pos, vals).view_as(acts)
    variance = (x - x.mean(0)).pow(2).sum()
    ref = torch.stack([(x - (z[:, :m] @ sae.W_dec[:m] + sae.b_dec)).pow(2).sum() / variance
                       for m in (6, 20, 48)])
    ref.sum().backward()
    torch.testing.assert_close(out.prefix_fvu, ref.detach(), rtol=1e-5, atol=1e-6)
    assert out.prefix_fvu[-1].item() == out.fvu.item()
    for name, p in sae.named_parameters():
        torch.testing.assert_close(ours[name], p.grad, rtol=1e-4, atol=1e-5, msg=name)


def test_inner_prefixes_see_fewer_than_k_latents():
    """One selection over the whole dictionary, no top-k per prefix: on average a token keeps k
    latents in all, and only those of them below m in prefix m."""
    sae = _matryoshka(seed=1)
    x = torch.randn(64, D) * 2
    out = sae(x)
    active = out.latent_acts > 0
    assert active.sum().item() == K * 64
    per_prefix = [(active & (out.latent_indices < m)).sum(-1).float().mean().item()
                  for m in (6, 20)]
    assert per_prefix[0] < per_prefix[1] < K
    # the inner reconstruction uses exactly those latents: decode them by hand
    dense = torch.zeros(64, N).scatter(-1, out.latent_indices, out.latent_acts.detach())
    x_hat = dense[:, :6] @ sae.W_dec[:6].detach() + sae.b_dec.detach()
    fvu_6 = (x - x_hat).pow(2).sum() / (x - x.mean(0)).pow(2).sum()
    assert out.prefix_fvu[0].item() == pytest.approx(fvu_6.item(), rel=1e-5)


def test_equals_saelens_training_sae_on_the_same_batch():
    """SAELens' loss terms are ours times the batch's per-token variance Σ‖x − x̄‖² / B."""
    from sae_lens.saes.matryoshka_batchtopk_sae import (
        MatryoshkaBatchTopKTrainingSAE,
        MatryoshkaBatchTopKTrainingSAEConfig,
    )
    from sae_lens.saes.sae import TrainStepInput

    ours = _matryoshka(seed=2)
    theirs = MatryoshkaBatchTopKTrainingSAE(MatryoshkaBatchTopKTrainingSAEConfig(
        d_in=D, d_sae=N, k=K, matryoshka_widths=[6, 20, 48], rescale_acts_by_decoder_norm=False))
    with torch.no_grad():
        theirs.W_enc.copy_(ours.encoder.weight.T)
        theirs.b_enc.copy_(ours.encoder.bias)
        theirs.W_dec.copy_(ours.W_dec)
        theirs.b_dec.copy_(ours.b_dec)
    x = torch.randn(16, D) * 2
    step = theirs.training_forward_pass(TrainStepInput(x, {}, None, 0, False))
    out = ours(x)
    scale = ((x - x.mean(0)).pow(2).sum() / len(x)).item()
    dense = torch.zeros(16, N).scatter(-1, out.latent_indices, out.latent_acts)
    torch.testing.assert_close(dense, step.feature_acts, rtol=1e-5, atol=1e-6)
    expected = [step.losses["inner_mse_loss_6"], step.losses["inner_mse_loss_20"],
                step.losses["mse_loss"]]
    torch.testing.assert_close(out.prefix_fvu * scale, torch.stack(expected).detach(),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("widths, message", [
    ("", "needs --matryoshka_widths"),
    ("6,x,48", "give comma-separated integers"),
    ("6,20,20,48", "strictly increasing"),
    ("0,20,48", "must be positive"),
    ("48", "has one prefix"),
    ("6,20", "must end at the number of latents, 48 (e.g. add ,48)"),
    ("6,20,64", "must end at the number of latents, 48, not above it"),
])
def test_bad_widths_are_one_line_errors(widths, message):
    cfg = SaeConfig(architecture="matryoshka_batchtopk", num_latents=N, k=K,
                    matryoshka_widths=widths)
    with pytest.raises(ThinksaeError, match=message.replace("(", r"\(").replace(")", r"\)")) as e:
        make_sae(D, cfg)
    assert "\n" not in str(e.value)
    with pytest.raises(ThinksaeError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_config(TrainConfig(store="s", sae=cfg))  # before any data is read


def test_train_checks_widths_before_training():
    def cfg(**kw):
        return TrainConfig(store="s", sae=SaeConfig(architecture="matryoshka_batchtopk", k=4, **kw))

    check_config(cfg(matryoshka_widths="8,64"))  # width unknown until the data's d_in
    with pytest.raises(ThinksaeError, match="must end at the number of latents, 128"):
        check_sizes(cfg(matryoshka_widths="8,64", expansion_factor=4), 32)
    assert check_sizes(cfg(matryoshka_widths="8,128", expansion_factor=4), 32) == 128
    with pytest.raises(ThinksaeError, match="matryoshka_batchtopk trains in one process"):
        check_config(cfg(matryoshka_widths="8,64"), world_size=2)
    with pytest.raises(ThinksaeError, match="--matryoshka_widths is for --architecture "
                                            "matryoshka_batchtopk, not topk"):
        check_config(TrainConfig(store="s", sae=SaeConfig(matryoshka_widths="8,64")))
    with pytest.raises(ThinksaeError, match="not batchtopk"):
        make_sae(D, SaeConfig(architecture="batchtopk", num_latents=N, k=K,
                              matryoshka_widths=WIDTHS))


def test_other_architectures_minimise_their_fvu_tensor_itself():
    """TopK and BatchTopK: no prefixes, the reconstruction term is the very fvu tensor (so their
    training is bit for bit what it was), and the metrics get no extra keys."""
    x = torch.randn(20, D)
    for arch in ("topk", "batchtopk"):
        sae = make_sae(D, SaeConfig(architecture=arch, num_latents=N, k=K))
        out = sae(x)
        assert out.prefix_fvu is None and out.reconstruction_loss is out.fvu
        step = forward_loss(sae, x, None, None, torch.float32, Ranks())
        assert step.reconstruction is step.fvu and step.prefix_fvu is None
    step = forward_loss(_matryoshka(), x, None, None, torch.float32,
                        Ranks())
    assert step.prefix_fvu.shape == (3,) and step.prefix_fvu[-1].item() == step.fvu.item()
    assert step.reconstruction.item() == pytest.approx(step.prefix_fvu.sum().item())


def test_inference_is_the_learned_threshold():
    sae = _matryoshka()
    with torch.no_grad():
        sae.threshold.fill_(0.9)
        x = torch.randn(30, D) * 2
        acts = F.relu(_pre(sae, x))
        torch.testing.assert_close(sae.dense_acts(x), acts * (acts > 0.9))
        sae.eval()
        out = sae(x)
    torch.testing.assert_close(out.sae_out, (acts * (acts > 0.9)) @ sae.W_dec + sae.b_dec,
                               rtol=1e-5, atol=1e-5)
    assert out.prefix_fvu.shape == (3,)  # per-prefix FVU at evaluation too
