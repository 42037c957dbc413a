"""The SAE interface and its architectures: the registry, BatchTopK (training selection, threshold
estimator, inference, files) and JumpReLU against sae_lens' own class."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from thinksae.errors import ThinksaeError
from thinksae.sae import (
    ARCHITECTURES,
    BatchTopKSae,
    JumpReLUSae,
    Sae,
    SaeConfig,
    SparseAutoencoder,
    load_sae,
    make_sae,
    save_saelens,
)
from thinksae.sae.batchtopk_sae import THRESHOLD_RATE
from thinksae.sae.formats import save_sparsify
from thinksae.train.checks import check_config
from thinksae.train.config import TrainConfig

D, N, K = 16, 48, 3


def _init(sae, seed=0):
    torch.manual_seed(seed)
    with torch.no_grad():
        sae.encoder.weight.normal_(0, 0.5)
        sae.encoder.bias.normal_(0, 0.2)
        sae.W_dec.normal_(0, 0.3)
        sae.b_dec.normal_(0, 0.3)
    return sae


def _batchtopk(seed=0) -> BatchTopKSae:
    return _init(make_sae(D, SaeConfig(architecture="batchtopk", num_latents=N, k=K)), seed)


def _jumprelu(seed=0) -> JumpReLUSae:
    sae = _init(JumpReLUSae(D, SaeConfig(architecture="jumprelu", num_latents=N, k=0)), seed)
    with torch.no_grad():
        sae.threshold.uniform_(0.0, 0.8)
    return sae


def _pre(sae, x):
    return (x - sae.b_dec) @ sae.encoder.weight.T + sae.encoder.bias


def test_registry_names_the_three_and_builds_by_name():
    assert {"topk", "batchtopk", "jumprelu"} <= set(ARCHITECTURES)
    for name, cls in (("topk", Sae), ("batchtopk", BatchTopKSae), ("jumprelu", JumpReLUSae)):
        sae = make_sae(D, SaeConfig(architecture=name, num_latents=N, k=K))
        assert type(sae) is cls and isinstance(sae, SparseAutoencoder)
        assert sae.architecture == name
    with pytest.raises(ThinksaeError, match="unknown SAE architecture 'gated'"):
        make_sae(D, SaeConfig(architecture="gated"))


def test_train_refuses_what_it_cannot_train():
    with pytest.raises(ThinksaeError, match="cannot train architecture 'jumprelu'"):
        check_config(TrainConfig(sae=SaeConfig(architecture="jumprelu")), need_data=False)
    with pytest.raises(ThinksaeError, match="batchtopk trains in one process"):
        check_config(TrainConfig(sae=SaeConfig(architecture="batchtopk")), world_size=2,
                     need_data=False)
    check_config(TrainConfig(sae=SaeConfig(architecture="batchtopk")), need_data=False)


def test_batchtopk_training_forward_matches_a_dense_reference():
    sae = _batchtopk()
    x = torch.randn(10, D) * 2
    out = sae(x)
    out.fvu.backward()
    ours = {n: p.grad.clone() for n, p in sae.named_parameters()}
    sae.zero_grad()
    # textbook: keep the k*B largest relu(pre) of the whole batch
    acts = F.relu(_pre(sae, x))
    vals, pos = acts.flatten().topk(K * 10)
    z = torch.zeros(acts.numel()).scatter(0, pos, vals).view_as(acts)
    ref_out = z @ sae.W_dec + sae.b_dec
    ref_fvu = (x - ref_out).pow(2).sum() / (x - x.mean(0)).pow(2).sum()
    ref_fvu.backward()
    assert torch.allclose(out.sae_out, ref_out, atol=1e-5)
    assert torch.allclose(out.fvu, ref_fvu, atol=1e-6)
    for name, p in sae.named_parameters():
        assert torch.allclose(ours[name], p.grad, atol=1e-5), name
    dense = torch.zeros_like(acts).scatter(-1, out.latent_indices, out.latent_acts)
    assert torch.allclose(dense, z.detach())
    per_token = (out.latent_acts > 0).sum(-1)
    assert int(per_token.sum()) == K * 10 and len(set(per_token.tolist())) > 1  # k on average


def test_batchtopk_threshold_is_a_running_mean_of_the_smallest_kept_activation():
    sae = _batchtopk()
    assert float(sae.threshold) < 0  # not set before training
    smallest = []
    for seed in range(3):
        torch.manual_seed(10 + seed)
        x = torch.randn(8, D) * 2
        out = sae(x)
        smallest.append(float(out.latent_acts.detach()[out.latent_acts > 0].min()))
    theta = smallest[0]
    for m in smallest[1:]:
        theta = (1 - THRESHOLD_RATE) * theta + THRESHOLD_RATE * m
    assert float(sae.threshold) == pytest.approx(theta, rel=1e-6)
    before = float(sae.threshold)
    with torch.no_grad():
        sae(torch.randn(8, D))  # evaluation: no update
    sae.eval()
    sae(torch.randn(8, D))
    assert float(sae.threshold) == before


def test_batchtopk_inference_is_relu_pre_above_threshold_padded():
    sae = _batchtopk()
    with torch.no_grad():
        sae.threshold.fill_(0.9)
    x = torch.randn(2, 5, D) * 2
    enc = sae.encode(x)
    acts = F.relu(_pre(sae, x))
    ref = acts * (acts > 0.9)
    counts = (ref > 0).sum(-1)
    assert enc.latent_acts.shape == (2, 5, int(counts.max()))  # the widest token of the call
    assert torch.equal((enc.latent_acts > 0).sum(-1), counts)
    assert torch.allclose(sae.dense_acts(x), ref.detach(), atol=1e-6)
    idx = enc.latent_indices.reshape(10, -1)
    assert all(len(set(row.tolist())) == idx.shape[1] for row in idx)  # distinct
    assert torch.allclose(sae.decode(*enc), ref.detach() @ sae.W_dec + sae.b_dec, atol=1e-5)
    with torch.no_grad():
        out = sae(x.reshape(10, D))
    assert torch.allclose(out.sae_out, (ref.detach() @ sae.W_dec + sae.b_dec).reshape(10, D),
                          atol=1e-5)


def test_batchtopk_auxk_uses_the_dead_latents():
    sae = _batchtopk()
    x = torch.randn(12, D)
    dead = torch.arange(N) % 4 == 0
    out = sae(x, dead_mask=dead, aux_k=5)
    assert out.auxk_loss > 0
    out.auxk_loss.backward()
    touched = sae.encoder.weight.grad.abs().sum(1) > 0
    assert touched[dead].any() and not touched[~dead].any()


def test_batchtopk_files_round_trip_with_threshold(tmp_path):
    sae = _batchtopk()
    with torch.no_grad():
        sae.threshold.fill_(0.7)
    save_sparsify(sae, tmp_path / "b")
    assert json.loads((tmp_path / "b" / "cfg.json").read_text())["activation"] == "batchtopk"
    back = load_sae(tmp_path / "b")
    assert type(back) is BatchTopKSae and float(back.threshold) == pytest.approx(0.7)
    x = torch.randn(20, D) * 2
    assert torch.equal(back.dense_acts(x), sae.dense_acts(x))
    # SAELens export: a JumpReLU with theta on every latent, the same encodes
    save_saelens(sae, tmp_path / "lens")
    lens = load_sae(tmp_path / "lens")
    assert type(lens) is JumpReLUSae
    assert torch.allclose(lens.dense_acts(x), sae.dense_acts(x), atol=1e-6)


def test_fold_input_scale_keeps_batchtopk_and_jumprelu_encodes():
    from thinksae.train.run import fold_input_scale

    x = torch.randn(30, D) * 2
    for sae in (_batchtopk(), _jumprelu()):
        if isinstance(sae, BatchTopKSae):
            with torch.no_grad():
                sae.threshold.fill_(0.8)
        scaled = sae.dense_acts(x * 4.0) / 4.0
        fold_input_scale(sae, 4.0)
        assert torch.allclose(sae.dense_acts(x), scaled, atol=1e-5)


@pytest.mark.parametrize("apply_b_dec", [True, False])
def test_jumprelu_equals_sae_lens_own_class(tmp_path, apply_b_dec):
    from sae_lens import JumpReLUSAE, JumpReLUSAEConfig

    torch.manual_seed(3)
    theirs = JumpReLUSAE(JumpReLUSAEConfig(d_in=D, d_sae=N, apply_b_dec_to_input=apply_b_dec,
                                           dtype="float32", device="cpu"))
    with torch.no_grad():
        for p in theirs.parameters():
            p.copy_(torch.randn_like(p) * 0.5)
        theirs.threshold.uniform_(0.0, 1.0)
    theirs.save_model(tmp_path / "jr")
    ours = load_sae(tmp_path / "jr")
    assert type(ours) is JumpReLUSae and ours.num_latents == N
    x = torch.randn(40, D) * 2
    with torch.no_grad():
        feats = theirs.encode(x)
        recon = theirs.decode(feats)
    assert int((feats > 0).sum()) > 0 and int((feats == 0).sum()) > 0
    assert torch.allclose(ours.dense_acts(x), feats, atol=1e-5)
    assert torch.allclose(ours.decode(*ours.encode(x)), recon, atol=1e-4)
    with torch.no_grad():
        assert torch.allclose(ours(x).sae_out, recon, atol=1e-4)
    # and back: sae_lens reads our export with the same encodes
    save_saelens(ours, tmp_path / "again")
    again = JumpReLUSAE.load_from_disk(tmp_path / "again")
    with torch.no_grad():
        assert torch.allclose(again.encode(x), feats, atol=1e-5)


def test_pre_acts_subset_equals_the_full_pre_activations():
    for sae in (_init(Sae(D, SaeConfig(num_latents=N, k=K))), _batchtopk(), _jumprelu()):
        x = torch.randn(7, D)
        feats = torch.tensor([0, 5, 47])
        with torch.no_grad():
            assert torch.allclose(sae.pre_acts(x, feats), _pre(sae, x)[:, feats], atol=1e-5)
            assert torch.allclose(sae.pre_acts(x), _pre(sae, x), atol=1e-5)


def test_checkpoints_written_before_the_architecture_option_still_match():
    from thinksae.train.config import differing_fields, identity, with_later_fields

    now = identity(TrainConfig(store="s"))
    old = {**now, "sae": {k: v for k, v in now["sae"].items() if k != "architecture"}}
    assert differing_fields(with_later_fields(old), now) == []


def test_run_directories_from_before_the_architecture_option_keep_their_train_hash():
    """`thinksae run` skips a finished train stage by its config hash: the default architecture
    hashes as the SAE config without the field did."""
    from dataclasses import dataclass

    from thinksae.pipeline.markers import stage_hash

    @dataclass
    class OldSaeConfig:  # SaeConfig's fields before `architecture`
        expansion_factor: int = 32
        num_latents: int = 0
        k: int = 32
        normalize_decoder: bool = True

    old = stage_hash("train", TrainConfig(store="s", sae=OldSaeConfig(k=8)), ["x"])
    assert stage_hash("train", TrainConfig(store="s", sae=SaeConfig(k=8)), ["x"]) == old
    assert stage_hash("train", TrainConfig(store="s", sae=SaeConfig(k=8, architecture="batchtopk")),
                      ["x"]) != old
