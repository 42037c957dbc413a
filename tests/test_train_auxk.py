"""AuxK normalisations against a hand computation, and the option as training sees it."""

from __future__ import annotations

import json

import pytest
import torch

from thinksae.errors import ThinksaeError
from thinksae.sae import Sae, SaeConfig
from thinksae.train import SyntheticActivations, TrainConfig, train


def _two_latent_sae() -> Sae:
    """d_in 2, latents 2 (k 1), identity encoder and decoder, zero biases."""
    sae = Sae(2, SaeConfig(num_latents=2, k=1))
    with torch.no_grad():
        sae.encoder.weight.copy_(torch.eye(2))
        sae.encoder.bias.zero_()
        sae.W_dec.copy_(torch.eye(2))
        sae.b_dec.zero_()
    return sae


# x1 = (3, 1): top-1 is latent 0, x̂1 = (3, 0), e1 = (0, 1); x2 = (1, 2): latent 1, x̂2 = (0, 2),
# e2 = (1, 0). Latent 1 is marked dead, so AuxK decodes it at its pre-activation x[1]:
# ê1 = (0, 1), ê2 = (0, 2); Σ‖e − ê‖² = 0 + (1 + 4) = 5.
# Σ‖x − x̄‖², x̄ = (2, 1.5): 1.25 + 1.25 = 2.5;  Σ‖e − ē‖², ē = (.5, .5): 0.5 + 0.5 = 1.
X = torch.tensor([[3.0, 1.0], [1.0, 2.0]])
DEAD = torch.tensor([False, True])


@pytest.mark.parametrize(("aux_k", "scale"), [(None, 1.0), (2, 0.5)])  # min(num_dead / k_aux, 1)
def test_auxk_normalisations_match_a_hand_computation(aux_k, scale):
    sae = _two_latent_sae()
    by_x = sae(X, dead_mask=DEAD, aux_k=aux_k)
    by_e = sae(X, dead_mask=DEAD, aux_k=aux_k, auxk_norm="residual")
    assert by_x.fvu.item() == pytest.approx(2 / 2.5)  # Σ‖e‖² = 1 + 1
    assert by_x.auxk_loss.item() == pytest.approx(scale * 5 / 2.5)
    assert by_e.auxk_loss.item() == pytest.approx(scale * 5 / 1.0)
    assert torch.equal(by_x.sae_out, by_e.sae_out) and by_e.fvu.item() == by_x.fvu.item()
    assert sae(X).auxk_loss.item() == 0.0  # no dead latents, no AuxK


def test_residual_norm_is_x_norm_over_the_residual_share():
    """For any batch: aux_residual = aux_x · Σ‖x − x̄‖² / Σ‖e − ē‖² (the normalisers' ratio)."""
    torch.manual_seed(0)
    sae = Sae(8, SaeConfig(num_latents=32, k=2))
    x = torch.randn(64, 8) + 3.0
    dead = torch.arange(32) % 3 == 0
    with torch.no_grad():
        by_x = sae(x, dead_mask=dead, aux_k=5)
        by_e = sae(x, dead_mask=dead, aux_k=5, auxk_norm="residual")
    e = x - by_x.sae_out
    ratio = (x - x.mean(0)).pow(2).sum() / (e - e.mean(0)).pow(2).sum()
    assert by_x.auxk_loss.item() > 0
    assert by_e.auxk_loss.item() == pytest.approx((by_x.auxk_loss * ratio).item(), rel=1e-5)


def test_auxk_gradient_reaches_only_the_dead_latents():
    sae = _two_latent_sae()
    sae(X, dead_mask=DEAD, auxk_norm="residual").auxk_loss.backward()
    assert sae.W_dec.grad[0].abs().sum() == 0 and sae.W_dec.grad[1].abs().sum() > 0


def test_unknown_auxk_norm_is_refused():
    with pytest.raises(ThinksaeError, match="unknown auxk_norm 'var'"):
        _two_latent_sae()(X, dead_mask=DEAD, auxk_norm="var")


def test_training_with_the_residual_norm_logs_and_records_it(tmp_path):
    """Same seed and data: the runs agree until the first latent is dead, then AuxK differs by
    the normaliser; the report card names the choice."""
    src = SyntheticActivations(d_in=32, num_tokens=2048, num_features=16, active=2)
    rows, cards = {}, {}
    for norm in ("x", "residual"):
        cfg = TrainConfig(out=str(tmp_path / norm), sae=SaeConfig(expansion_factor=8, k=2),
                          batch_size=64, lr_warmup_steps=4, dead_feature_threshold=128,
                          auxk_norm=norm, dtype="float32", device="cpu", log_every=1,
                          progress=False)
        sae_dir = train(cfg, source=src)
        rows[norm] = [json.loads(x) for x in (sae_dir / "metrics.jsonl").read_text().splitlines()]
        cards[norm] = json.loads((sae_dir / "thinksae.json").read_text())
    first = next(i for i, r in enumerate(rows["x"]) if r["auxk"] > 0)
    same = ("fvu", "l0", "dead_pct")
    for a, b in zip(rows["x"][: first + 1], rows["residual"][: first + 1], strict=True):
        assert [a[k] for k in same] == [b[k] for k in same]
    # at the first AuxK step the weights are still equal, so the losses differ only by the
    # normaliser: aux_e / aux_x = Σ‖x − x̄‖² / Σ‖e − ē‖² >= Σ‖x − x̄‖² / Σ‖e‖² = 1 / FVU
    a, b = rows["x"][first], rows["residual"][first]
    assert b["auxk"] >= a["auxk"] / a["fvu"] * (1 - 1e-5) and a["fvu"] < 1
    assert [r["fvu"] for r in rows["x"]] != [r["fvu"] for r in rows["residual"]]
    assert cards["x"]["training"]["auxk_norm"] == "x"
    assert cards["residual"]["training"]["auxk_norm"] == "residual"
