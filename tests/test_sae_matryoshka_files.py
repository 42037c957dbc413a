"""Matryoshka SAE files: our sparsify layout both ways, and the SAELens layout (JumpReLU with the
learned θ) checked against sae-lens' own loader and its own saved Matryoshka SAEs."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from thinksae.errors import ThinksaeError
from thinksae.sae import (
    JumpReLUSae,
    MatryoshkaBatchTopKSae,
    SaeConfig,
    formats,
    load_sae,
    load_saelens,
    make_sae,
    save_saelens,
    save_sparsify,
)

D, N, K, WIDTHS = 16, 64, 4, "8,24,64"


@pytest.fixture()
def sae() -> MatryoshkaBatchTopKSae:
    torch.manual_seed(0)
    s = make_sae(D, SaeConfig(architecture="matryoshka_batchtopk", num_latents=N, k=K,
                              matryoshka_widths=WIDTHS))
    with torch.no_grad():
        s.encoder.bias.normal_(0, 0.2)
        s.b_dec.normal_(0, 0.3)
        s.threshold.fill_(0.35)
    return s


@pytest.fixture()
def x() -> torch.Tensor:
    return torch.randn(40, D, generator=torch.Generator().manual_seed(1)) * 2


def test_sparsify_layout_round_trip(sae, x, tmp_path):
    save_sparsify(sae, tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "cfg.json").read_text())
    assert cfg["activation"] == "matryoshka_batchtopk" and cfg["matryoshka_widths"] == [8, 24, 64]
    tensors = load_file(str(tmp_path / "m" / "sae.safetensors"))
    assert tensors["threshold"].shape == () and float(tensors["threshold"]) == pytest.approx(0.35)
    back = load_sae(tmp_path / "m")
    assert type(back) is MatryoshkaBatchTopKSae and back.prefix_widths == (8, 24, 64)
    assert back.cfg.k == K and float(back.threshold) == pytest.approx(0.35)
    assert torch.equal(back.dense_acts(x), sae.dense_acts(x))
    with torch.no_grad():
        torch.testing.assert_close(back(x).prefix_fvu, sae(x).prefix_fvu)


@pytest.mark.parametrize("widths, message", [
    ([8, 24, 60], "must end at the number of latents, 64"),
    ("8,24,64", "matryoshka_widths must be a list of integers"),
    ([8, 8, 64], "strictly increasing"),
    (None, "needs --matryoshka_widths"),
])
def test_bad_widths_in_cfg_json_are_one_line(sae, tmp_path, widths, message):
    save_sparsify(sae, tmp_path)
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    if widths is None:
        del cfg["matryoshka_widths"]
    else:
        cfg["matryoshka_widths"] = widths
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(ThinksaeError, match=message) as e:
        load_sae(tmp_path)
    assert str(tmp_path / "cfg.json") in str(e.value) and "\n" not in str(e.value)


def test_saelens_export_is_a_jumprelu_sae_lens_reads_with_our_encodes(sae, x, tmp_path):
    sae_lens = pytest.importorskip("sae_lens")
    save_saelens(sae, tmp_path / "sl", hook_name="blocks.3.hook_resid_post", model_name="m")
    cfg = json.loads((tmp_path / "sl" / "cfg.json").read_text())
    assert cfg["architecture"] == "jumprelu" and cfg["d_sae"] == N
    assert cfg["metadata"]["training_architecture"] == "matryoshka_batchtopk"
    assert cfg["metadata"]["training_architecture_details"] == {"k": K,
                                                                "matryoshka_widths": [8, 24, 64]}
    theta = load_file(str(tmp_path / "sl" / "sae_weights.safetensors"))["threshold"]
    assert theta.shape == (N,) and torch.all(theta == torch.tensor(0.35))
    theirs = sae_lens.SAE.load_from_disk(str(tmp_path / "sl"))
    with torch.no_grad():
        feats = theirs.encode(x)
        recon = theirs.decode(feats)
        ours = sae.dense_acts(x)
        assert int((ours > 0).sum()) > 0 and int((ours == 0).sum()) > 0
        torch.testing.assert_close(feats, ours, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(recon, sae.decode(*sae.encode(x)), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(recon, sae(x).sae_out, rtol=1e-5, atol=1e-5)
    back = load_sae(tmp_path / "sl")  # our own export comes back whole
    assert type(back) is MatryoshkaBatchTopKSae and back.prefix_widths == (8, 24, 64)
    assert back.cfg.k == K and torch.equal(back.dense_acts(x), sae.dense_acts(x))


def _saelens_trained(widths=(8, 24, 64)):
    from sae_lens.saes.matryoshka_batchtopk_sae import (
        MatryoshkaBatchTopKTrainingSAE,
        MatryoshkaBatchTopKTrainingSAEConfig,
    )

    torch.manual_seed(5)
    theirs = MatryoshkaBatchTopKTrainingSAE(MatryoshkaBatchTopKTrainingSAEConfig(
        d_in=D, d_sae=N, k=K, matryoshka_widths=list(widths), rescale_acts_by_decoder_norm=False))
    with torch.no_grad():
        for p in theirs.parameters():
            p.normal_(0, 0.3)
        theirs.topk_threshold.fill_(0.3)
    return theirs


def test_a_matryoshka_sae_lens_saved_loads_with_its_widths(x, tmp_path):
    pytest.importorskip("sae_lens")

    _saelens_trained().save_inference_model(tmp_path / "inference")
    ours = load_saelens(tmp_path / "inference")
    assert type(ours) is MatryoshkaBatchTopKSae and ours.prefix_widths == (8, 24, 64)
    assert ours.cfg.k == K and float(ours.threshold) == pytest.approx(0.3)
    from sae_lens import JumpReLUSAE

    theirs = JumpReLUSAE.load_from_disk(str(tmp_path / "inference"))
    with torch.no_grad():
        feats = theirs.encode(x)
        torch.testing.assert_close(ours.dense_acts(x), feats, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(ours.decode(*ours.encode(x)), theirs.decode(feats),
                                   rtol=1e-5, atol=1e-5)


def test_per_latent_thresholds_stay_jumprelu_and_training_files_are_refused(x, tmp_path):
    pytest.importorskip("sae_lens")
    _saelens_trained().save_inference_model(tmp_path / "j")
    weights = load_file(str(tmp_path / "j" / "sae_weights.safetensors"))
    weights["threshold"] = torch.linspace(0.1, 0.5, N)  # no longer one θ: plain JumpReLU
    from safetensors.torch import save_file

    save_file(weights, str(tmp_path / "j" / "sae_weights.safetensors"))
    loaded = load_sae(tmp_path / "j")
    assert type(loaded) is JumpReLUSae  # the prefix widths are lost, the encodes are not
    pre = loaded.pre_acts(x)
    torch.testing.assert_close(loaded.dense_acts(x), pre.relu() * (pre > weights["threshold"]))
    _saelens_trained().save_model(tmp_path / "training")  # a training checkpoint
    with pytest.raises(ThinksaeError, match="architecture 'matryoshka_batchtopk' is not supported "
                                            r"\(only topk and jumprelu; .*save_inference_model"):
        load_sae(tmp_path / "training")


def test_a_format_without_the_architecture_is_refused(sae, tmp_path, monkeypatch):
    monkeypatch.delitem(formats.SAELENS_ARCHITECTURES, "matryoshka_batchtopk")
    with pytest.raises(ThinksaeError, match="SAELens format cannot hold a matryoshka_batchtopk"):
        save_saelens(sae, tmp_path / "sl")
    assert not (tmp_path / "sl").exists()
