"""SAE files: sparsify layout and SAELens, round-tripped through the real packages by encodes."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from thinksae.errors import ThinksaeError
from thinksae.sae import (
    Sae,
    SaeConfig,
    load_sae,
    load_saelens,
    read_report_card,
    resolve_sae_dir,
    save_saelens,
    update_report_card,
    write_report_card,
)
from thinksae.sae.formats import load_sparsify, save_sparsify

D, N, K = 32, 128, 6


@pytest.fixture()
def sae() -> Sae:
    torch.manual_seed(0)
    s = Sae(D, SaeConfig(expansion_factor=4, k=K))
    with torch.no_grad():
        s.encoder.bias.normal_(0, 0.2)
        s.b_dec.normal_(0, 0.5)
    return s


@pytest.fixture()
def x() -> torch.Tensor:
    return torch.randn(50, D, generator=torch.Generator().manual_seed(1)) * 2


def _dense(acts, idx, n=N):
    return torch.zeros(acts.shape[0], n).scatter(-1, idx, acts)


def test_native_layout_is_sparsify_layout(sae, tmp_path, x):
    save_sparsify(sae, tmp_path / "layers.3")
    cfg = json.loads((tmp_path / "layers.3" / "cfg.json").read_text())
    assert cfg == {"activation": "topk", "expansion_factor": 4, "normalize_decoder": True,
                   "num_latents": N, "k": K, "multi_topk": False, "skip_connection": False,
                   "transcode": False, "d_in": D}
    tensors = load_file(str(tmp_path / "layers.3" / "sae.safetensors"))
    assert {k: tuple(v.shape) for k, v in tensors.items()} == {
        "encoder.weight": (N, D), "encoder.bias": (N,), "W_dec": (N, D), "b_dec": (D,)}
    back = load_sparsify(tmp_path / "layers.3")
    torch.testing.assert_close(_dense(*back.encode(x)), _dense(*sae.encode(x)))
    assert back.dtype == torch.float32
    assert load_sae(tmp_path, hookpoint="layers.3").num_latents == N
    assert resolve_sae_dir(tmp_path) == tmp_path / "layers.3"


def test_bf16_file_loads_in_its_dtype(sae, tmp_path):
    save_sparsify(sae.to(torch.bfloat16), tmp_path)
    assert load_sparsify(tmp_path).dtype == torch.bfloat16
    assert load_sparsify(tmp_path, dtype=torch.float32).dtype == torch.float32


def test_real_sparsify_reads_ours_and_we_read_its_files(sae, tmp_path, x):
    sparsify = pytest.importorskip("sparsify")
    save_sparsify(sae, tmp_path / "ours")
    theirs = sparsify.SparseCoder.load_from_disk(tmp_path / "ours")
    out = theirs.encode(x)
    torch.testing.assert_close(_dense(out.top_acts, out.top_indices), _dense(*sae.encode(x)))

    torch.manual_seed(3)
    written = sparsify.SparseCoder(D, sparsify.SparseCoderConfig(expansion_factor=4, k=K))
    with torch.no_grad():
        written.encoder.bias.normal_(0, 0.2)
        written.b_dec.normal_(0, 0.5)
    written.save_to_disk(tmp_path / "theirs" / "layers.3.mlp")  # sparsify's own writer
    ours = load_sae(tmp_path / "theirs", hookpoint="layers.3.mlp")
    ref = written.encode(x)
    torch.testing.assert_close(_dense(*ours.encode(x)), _dense(ref.top_acts, ref.top_indices))
    torch.testing.assert_close(ours.decode(*ours.encode(x)), written(x).sae_out,
                               rtol=1e-5, atol=1e-5)


def test_real_saelens_reads_our_export_and_we_import_its_files(sae, tmp_path, x):
    sae_lens = pytest.importorskip("sae_lens")
    save_saelens(sae, tmp_path / "export", hook_name="blocks.3.hook_resid_post", model_name="m")
    theirs = sae_lens.SAE.load_from_disk(str(tmp_path / "export"))
    torch.testing.assert_close(theirs.encode(x), _dense(*sae.encode(x)), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(theirs.decode(theirs.encode(x)), sae.decode(*sae.encode(x)),
                               rtol=1e-5, atol=1e-5)

    from sae_lens.saes.topk_sae import TopKSAE, TopKSAEConfig

    torch.manual_seed(4)
    for b_dec_in, rescale in ((True, False), (False, False), (True, True)):
        cfg = TopKSAEConfig(d_in=D, d_sae=N, k=K, apply_b_dec_to_input=b_dec_in,
                            rescale_acts_by_decoder_norm=rescale)
        written = TopKSAE(cfg)
        with torch.no_grad():
            for p in written.parameters():
                p.normal_(0, 0.3)
        out = tmp_path / f"sl-{b_dec_in}-{rescale}"
        written.save_model(str(out))
        ours = load_sae(out)
        torch.testing.assert_close(_dense(*ours.encode(x)), written.encode(x),
                                   rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(ours.decode(*ours.encode(x)), written(x),
                                   rtol=1e-4, atol=1e-4)


def test_saelens_round_trip_through_our_files(sae, tmp_path, x):
    save_saelens(sae, tmp_path / "sl")
    back = load_saelens(tmp_path / "sl")
    torch.testing.assert_close(_dense(*back.encode(x)), _dense(*sae.encode(x)))


def _corrupt(tmp_path, sae, edit_cfg=None, tensors=None, raw=None):
    path = tmp_path / "bad"
    save_sparsify(sae, path)
    if edit_cfg:
        cfg = json.loads((path / "cfg.json").read_text())
        edit_cfg(cfg)
        (path / "cfg.json").write_text(json.dumps(cfg))
    if tensors is not None:
        save_file(tensors, str(path / "sae.safetensors"))
    if raw is not None:
        data = (path / "sae.safetensors").read_bytes()
        (path / "sae.safetensors").write_bytes(raw(data))
    return path


@pytest.mark.parametrize("edit, message", [
    (lambda c: c.pop("k"), r"missing keys \['k'\]"),
    (lambda c: c.update(colour="red"), r"unknown keys \['colour'\]"),
    (lambda c: c.update(k=0), "k must be an integer >= 1"),
    (lambda c: c.update(k=129), "k = 129 is more than the 128 latents"),
    (lambda c: c.update(activation="groupmax"), r"known: batchtopk, jumprelu, matryoshka_batchtopk, topk\)"),
    (lambda c: c.update(transcode=True), "transcode SAEs are not supported"),
    (lambda c: c.update(num_latents=64), r"encoder.weight has shape \(128, 32\), expected "),
])
def test_bad_cfg_is_one_clear_line(sae, tmp_path, edit, message):
    path = _corrupt(tmp_path, sae, edit_cfg=edit)
    with pytest.raises(ThinksaeError, match=message):
        load_sparsify(path)


def test_legacy_signed_key_is_accepted(sae, tmp_path):
    path = _corrupt(tmp_path, sae, edit_cfg=lambda c: c.update(signed=False))
    assert load_sparsify(path).num_latents == N


def test_truncated_corrupt_or_incomplete_weights_are_refused(sae, tmp_path):
    path = _corrupt(tmp_path, sae, raw=lambda b: b[: len(b) // 2])
    with pytest.raises(ThinksaeError, match="truncated or corrupt"):
        load_sparsify(path)
    path = _corrupt(tmp_path, sae, raw=lambda b: b"\x00" * len(b))
    with pytest.raises(ThinksaeError, match="truncated or corrupt"):
        load_sparsify(path)
    state = {k: v.detach() for k, v in sae.state_dict().items() if k != "b_dec"}
    path = _corrupt(tmp_path, sae, tensors=state)
    with pytest.raises(ThinksaeError, match="expected"):
        load_sparsify(path)
    state = {k: v.detach().clone() for k, v in sae.state_dict().items()}
    state["b_dec"][0] = float("nan")
    path = _corrupt(tmp_path, sae, tensors=state)
    with pytest.raises(ThinksaeError, match="b_dec holds NaN or inf"):
        load_sparsify(path)
    with pytest.raises(ThinksaeError, match="no SAE at"):
        load_sae(tmp_path / "missing")


def test_report_card_update_keeps_other_sections(tmp_path):
    write_report_card(tmp_path, {"k": 4, "metrics": {"fvu": 0.1}})
    update_report_card(tmp_path, "eval", {"fvu": 0.2})
    assert read_report_card(tmp_path) == {"k": 4, "metrics": {"fvu": 0.1}, "eval": {"fvu": 0.2}}
    assert read_report_card(tmp_path / "none") == {}
