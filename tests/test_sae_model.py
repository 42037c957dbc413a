"""The TopK SAE against a dense reference written with plain autograd: outputs and gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from thinksae.errors import ThinksaeError
from thinksae.sae import Sae, SaeConfig
from thinksae.sae.topk_sae import geometric_median


def _sae(d=24, n=96, k=5, seed=0) -> Sae:
    torch.manual_seed(seed)
    sae = Sae(d, SaeConfig(num_latents=n, k=k))
    with torch.no_grad():
        sae.encoder.bias.normal_(0, 0.1)
        sae.b_dec.normal_(0, 0.3)
    return sae


def _dense_reference(sae: Sae, x, dead_mask=None, aux_k=None):
    """The textbook TopK SAE: dense pre-activations, dense masks, dense decoder matmul."""
    pre = F.relu((x - sae.b_dec) @ sae.encoder.weight.T + sae.encoder.bias)
    vals, idx = pre.topk(sae.cfg.k, dim=-1)
    z = torch.zeros_like(pre).scatter(-1, idx, vals)
    out = z @ sae.W_dec + sae.b_dec
    total = (x - x.mean(0)).pow(2).sum()
    fvu = (x - out).pow(2).sum() / total
    auxk = torch.zeros(())
    if dead_mask is not None and dead_mask.any():
        num_dead = int(dead_mask.sum())
        k_aux = min(aux_k or x.shape[1] // 2, num_dead)
        scale = min(num_dead / (aux_k or x.shape[1] // 2), 1.0)
        avals, aidx = pre.masked_fill(~dead_mask, -torch.inf).topk(k_aux, dim=-1)
        za = torch.zeros_like(pre).scatter(-1, aidx, avals)
        auxk = scale * (za @ sae.W_dec - (x - out).detach()).pow(2).sum() / total
    return out, fvu, auxk


def _grads(sae: Sae):
    return {n: p.grad.clone() for n, p in sae.named_parameters()}


@pytest.mark.parametrize("dead", [False, True])
@pytest.mark.parametrize("dense_share", [None, 0.0, 2.0])  # as set, always dense, never dense
def test_forward_and_sparse_backward_match_dense_reference(dead, dense_share, monkeypatch):
    from thinksae.sae import kernels

    if dense_share is not None:
        monkeypatch.setattr(kernels, "DENSE_SHARE", dense_share)
    sae = _sae()
    x = torch.randn(64, 24) * 2 + 1
    dead_mask = (torch.arange(96) % 3 == 0) if dead else None
    out = sae(x, dead_mask=dead_mask, aux_k=7)
    (out.fvu + 0.5 * out.auxk_loss).backward()
    ours = _grads(sae)
    sae.zero_grad()
    ref_out, ref_fvu, ref_auxk = _dense_reference(sae, x, dead_mask, aux_k=7)
    (ref_fvu + 0.5 * ref_auxk).backward()
    ref = _grads(sae)
    torch.testing.assert_close(out.sae_out, ref_out, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.fvu, ref_fvu, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.auxk_loss, ref_auxk, rtol=1e-5, atol=1e-6)
    assert (out.auxk_loss > 0) == dead
    for name in ref:
        torch.testing.assert_close(ours[name], ref[name], rtol=1e-4, atol=1e-6, msg=name)


def test_encoder_gradient_is_sparse_in_latents():
    sae = _sae()
    x = torch.randn(8, 24)
    out = sae(x)
    out.fvu.backward()
    touched = sae.encoder.weight.grad.abs().sum(1) > 0
    assert set(touched.nonzero().flatten().tolist()) <= set(out.latent_indices.flatten().tolist())


def test_input_gradient_matches_dense_reference():
    sae = _sae()
    x = torch.randn(16, 24, requires_grad=True)
    sae(x).fvu.backward()
    ours = x.grad.clone()
    x.grad = None
    _dense_reference(sae, x)[1].backward()
    torch.testing.assert_close(ours, x.grad, rtol=1e-4, atol=1e-6)


def test_encode_decode_dense_acts_and_shapes():
    sae = _sae()
    x = torch.randn(3, 7, 24)
    acts, idx = sae.encode(x)
    assert acts.shape == idx.shape == (3, 7, 5) and (acts >= 0).all()
    dense = sae.dense_acts(x)
    assert dense.shape == (3, 7, 96) and ((dense > 0).sum(-1) <= 5).all()
    ref = F.relu((x - sae.b_dec) @ sae.encoder.weight.T + sae.encoder.bias)
    torch.testing.assert_close(dense.sort(-1).values[..., -5:], ref.topk(5).values.flip(-1))
    torch.testing.assert_close(sae.decode(acts, idx), dense @ sae.W_dec + sae.b_dec,
                               rtol=1e-5, atol=1e-5)


def test_bf16_autocast_keeps_float32_outputs_and_close_values():
    sae = _sae(d=64, n=256, k=8)
    x = torch.randn(128, 64)
    exact = sae(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = sae(x)
    assert mixed.latent_acts.dtype == torch.float32 and mixed.sae_out.dtype == torch.float32
    assert mixed.fvu.item() == pytest.approx(exact.fvu.item(), rel=0.05)


def test_decoder_norm_and_parallel_gradient_removal():
    sae = _sae()
    with torch.no_grad():
        sae.W_dec.mul_(3)
    sae.set_decoder_norm_to_unit_norm()
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(96))
    sae(torch.randn(32, 24)).fvu.backward()
    sae.remove_gradient_parallel_to_decoder_directions()
    dots = (sae.W_dec.grad * sae.W_dec).sum(1)
    assert dots.abs().max() < 1e-6


def test_init_decoder_from_encoder_transpose():
    sae = Sae(16, SaeConfig(expansion_factor=2, k=2, normalize_decoder=False))
    assert torch.equal(sae.W_dec, sae.encoder.weight)
    assert torch.equal(sae.encoder.bias, torch.zeros(32))


def test_b_dec_init_mean_and_geometric_median():
    x = torch.cat([torch.zeros(9, 4), torch.full((1, 4), 100.0)])
    sae = Sae(4, SaeConfig(expansion_factor=2, k=2))
    sae.init_b_dec_from_data(x, "mean")
    torch.testing.assert_close(sae.b_dec.data, torch.full((4,), 10.0))
    sae.init_b_dec_from_data(x, "geometric_median")
    assert sae.b_dec.abs().max() < 1.0  # robust to the outlier
    pts = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0], [2.0, 2.0]])
    torch.testing.assert_close(geometric_median(pts), torch.tensor([1.0, 1.0]))


def test_bad_k_is_refused():
    with pytest.raises(ThinksaeError, match="k must be in 1..32"):
        Sae(16, SaeConfig(expansion_factor=2, k=33))
    with pytest.raises(ThinksaeError, match="k must be in 1..32"):
        Sae(16, SaeConfig(expansion_factor=2, k=0))
