"""Pre-packed float32 linears (oneDNN): the dense results up to rounding, rows independent of
their batch, gradients reach the inputs, and load_model packs only float32 CPU models."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from thinksae.models import decoder_stack
from thinksae.models.packed import PackedLinear, pack_linears, packing_wanted

pytestmark = pytest.mark.skipif(not torch.backends.mkldnn.is_available(),
                                reason="torch without oneDNN")


def test_packed_linear_matches_dense_and_rows_do_not_depend_on_their_batch():
    torch.manual_seed(0)
    dense = nn.Linear(96, 200)
    packed = PackedLinear(dense)
    x = torch.randn(5, 7, 96)
    with torch.inference_mode():
        want, got = dense(x), packed(x)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        assert got.shape == (5, 7, 200)
        for rows in (slice(0, 1), slice(2, 5)):
            assert torch.equal(packed(x[rows]), got[rows])
    x.requires_grad_(True)
    packed(x).sum().backward()
    torch.testing.assert_close(x.grad, dense.weight.sum(0).expand_as(x), rtol=1e-5, atol=1e-5)


def test_pack_linears_replaces_the_block_linears_only(tiny_model):
    import copy

    model = copy.deepcopy(tiny_model)
    ids = torch.randint(0, 1000, (2, 9))
    with torch.inference_mode():
        want = model(ids).logits
        n = pack_linears(model)
        got = model(ids).logits
    blocks = decoder_stack(model).layers
    assert n == 7 * len(blocks)  # q, k, v, o, gate, up, down
    assert not any(type(m) is nn.Linear for m in blocks.modules())
    assert type(model.get_output_embeddings()) is nn.Linear
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_packing_is_wanted_for_float32_on_cpu_only(monkeypatch):
    cpu = torch.device("cpu")
    assert packing_wanted(cpu, torch.float32)
    assert not packing_wanted(cpu, torch.bfloat16)
    assert not packing_wanted(torch.device("cuda"), torch.float32)
    monkeypatch.setenv("THINKSAE_PACKED", "0")
    assert not packing_wanted(cpu, torch.float32)


def test_load_model_packs_a_float32_model(tiny_model_dir, monkeypatch):
    from thinksae.models import load_model

    model, _ = load_model(str(tiny_model_dir), device="cpu", dtype="float32", progress=False)
    assert any(isinstance(m, PackedLinear) for m in model.modules())
    monkeypatch.setenv("THINKSAE_PACKED", "0")
    model, _ = load_model(str(tiny_model_dir), device="cpu", dtype="float32", progress=False)
    assert not any(isinstance(m, PackedLinear) for m in model.modules())
