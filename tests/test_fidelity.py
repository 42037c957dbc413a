"""thinksae.evaluate.fidelity: KL, argmax agreement and activation FVU against hand computations."""

import math

import torch

from thinksae.evaluate.fidelity import FidelityStats, sae_fvu


def test_next_token_fidelity_by_hand():
    ref = torch.log(torch.tensor([[0.5, 0.25, 0.25], [0.1, 0.2, 0.7]], dtype=torch.float64))
    other = torch.log(torch.tensor([[0.25, 0.5, 0.25], [0.1, 0.2, 0.7]], dtype=torch.float64))
    st = FidelityStats()
    st.add_logits(ref[:1], other[:1])
    st.add_logits(ref[1:], other[1:])
    kl0 = 0.5 * math.log(0.5 / 0.25) + 0.25 * math.log(0.25 / 0.5)  # 0.25 ln 2
    got = st.next_token()
    assert got.positions == 2
    assert math.isclose(got.kl_mean, kl0 / 2, rel_tol=1e-9)
    assert math.isclose(got.kl_max, kl0, rel_tol=1e-9)
    assert got.argmax_agreement == 0.5  # row 0: argmax 0 vs 1; row 1: both 2


def test_logits_compared_over_the_common_vocabulary():
    ref = torch.tensor([[1.0, 2.0, 3.0]])
    other = torch.tensor([[1.0, 2.0, 3.0, 50.0]])  # a padded vocabulary's extra column is ignored
    got = FidelityStats()
    got.add_logits(ref, other)
    assert got.next_token().kl_mean < 1e-12 and got.next_token().argmax_agreement == 1.0


def test_activation_fvu_by_hand():
    ref = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0], [2.0, 2.0]])  # mean (1, 1): Σ dev² = 8
    other = ref + torch.tensor([[0.5, 0.0], [0.0, 0.0], [0.0, -0.5], [0.0, 0.0]])  # Σ err² = 0.5
    st = FidelityStats()
    st.add_activations(ref[:2], other[:2])
    st.add_activations(ref[2:], other[2:])
    assert math.isclose(st.activation_fvu(), 0.5 / 8, rel_tol=1e-12)


def test_sae_fvu_matches_the_forward_of_the_sae():
    from thinksae.sae.config import SaeConfig
    from thinksae.sae.topk_sae import Sae

    torch.manual_seed(0)
    sae = Sae(16, SaeConfig(num_latents=64, k=4))
    x = torch.randn(32, 16) + 3.0
    sae.eval()
    with torch.no_grad():
        want = float(sae(x).fvu)
    assert math.isclose(sae_fvu(sae, x), want, rel_tol=1e-5)
