"""The core metrics against SAELens' own evaluation code (``sae_lens.evals.run_evals``) on the same
tiny TransformerLens model and SAELens SAE (random weights), with SAELens' token conventions.

Documented differences the test pins down:
- relative reconstruction bias: SAELens averages per-batch ratios, we take one ratio over all
  tokens (equal on one batch; on two batches SAELens' number is the mean of our per-batch ones);
- which tokens: SAELens excludes its structural special ids (BOS/EOS/PAD) and zero-ablates every
  position; the driver (``core_eval``) also drops norm sinks and by default zero-ablates only the
  kept tokens. Here we splice and ablate exactly as SAELens' hooks do, so the numbers must agree.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from thinksae.evaluate.saebench.core import CoreStats, LossSums, core_metrics, position_losses

pytest.importorskip("transformer_lens")
pytest.importorskip("sae_lens")

HOOK = "blocks.0.hook_resid_post"
BOS, VOCAB, D, N = 0, 64, 32, 128


class FixedBatches:
    """Stands in for SAELens' ActivationsStore: hands out the same token batches in order, rewound
    by ``reset_input_dataset`` (run_evals rewinds between its two metric groups)."""

    def __init__(self, batches: list[torch.Tensor]):
        self.batches, self.next = batches, 0
        self.store_batch_size_prompts, self.context_size = batches[0].shape

    def get_batch_tokens(self, _n: int) -> torch.Tensor:
        batch = self.batches[self.next]
        self.next += 1
        return batch

    def reset_input_dataset(self) -> None:
        self.next = 0


@pytest.fixture(scope="module")
def setup():
    from sae_lens.saes.sae import SAEMetadata
    from sae_lens.saes.topk_sae import TopKSAE, TopKSAEConfig
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    model = HookedTransformer(HookedTransformerConfig(
        n_layers=2, d_model=D, d_head=8, n_heads=4, d_mlp=64, n_ctx=16, d_vocab=VOCAB,
        act_fn="gelu", normalization_type="LN", seed=0)).eval()
    g = torch.Generator().manual_seed(5)
    batches = []
    with torch.no_grad():
        for _ in range(2):  # greedy continuations: text the model predicts, so losses separate
            tokens = torch.randint(1, VOCAB, (4, 3), generator=g)
            tokens[:, 0] = BOS
            for _ in range(9):
                tokens = torch.cat([tokens, model(tokens)[:, -1].argmax(-1, keepdim=True)], 1)
            tokens[1, 6] = BOS  # packed: BOS mid-sequence
            batches.append(tokens)
        x = torch.cat([model.run_with_cache(b, names_filter=[HOOK])[1][HOOK] for b in batches])
    # tied encoder/decoder of unit random directions around the data mean: a poor but sane SAE
    torch.manual_seed(3)
    sae = TopKSAE(TopKSAEConfig(d_in=D, d_sae=N, k=8, metadata=SAEMetadata(hook_name=HOOK)))
    with torch.no_grad():
        w = torch.randn(N, D)
        w /= w.norm(dim=1, keepdim=True)
        sae.W_dec.copy_(w)
        sae.W_enc.copy_(w.T)
        sae.b_enc.zero_()
        sae.b_dec.copy_(x.reshape(-1, D).mean(0) + 0.05 * torch.randn(D))
    return model, sae, batches


def _saelens(model, sae, batches):
    from sae_lens.evals import get_eval_everything_config, run_evals
    from sae_lens.training.activation_scaler import ActivationScaler

    cfg = get_eval_everything_config(batch_size_prompts=4, n_eval_reconstruction_batches=2,
                                     n_eval_sparsity_variance_batches=2)
    metrics, features = run_evals(sae, FixedBatches(batches), model, ActivationScaler(), cfg,
                                  exclude_special_tokens=[BOS])
    flat = {k: v for group in metrics.values() for k, v in group.items()}
    return flat, features


@torch.no_grad()
def _ours(model, sae, batches):
    """Our functions on the activations and logits of the same model and SAE, spliced at the
    non-BOS tokens and zero-ablated everywhere, as SAELens' hooks do."""
    stats, losses, per_batch_bias = CoreStats(D, N), LossSums(), []
    for tokens in batches:
        keep = tokens != BOS
        x = model.run_with_cache(tokens, names_filter=[HOOK])[1][HOOK]
        dense = sae.encode(x[keep])
        x_hat = sae.decode(dense)
        indices = torch.arange(N).expand(len(dense), N)
        stats.update(x[keep], x_hat, dense, indices)
        one = CoreStats(D, N)
        one.update(x[keep], x_hat, dense, indices)
        per_batch_bias.append(core_metrics(one).relative_reconstruction_bias)

        def splice_sae(act, hook, keep=keep):
            return torch.where(keep[..., None], sae.decode(sae.encode(act)), act)

        logits = {"clean": model(tokens),
                  "sae": model.run_with_hooks(tokens, fwd_hooks=[(HOOK, splice_sae)]),
                  "zero": model.run_with_hooks(tokens, fwd_hooks=[(HOOK, lambda a, hook: a * 0)])}
        batch_losses, has_target = position_losses(nn.Identity(), logits, tokens, keep,
                                                   torch.ones_like(keep))
        losses.update(batch_losses, has_target)
    return core_metrics(stats, losses), per_batch_bias


def test_core_metrics_match_saelens_evals(setup):
    model, sae, batches = setup
    theirs, features = _saelens(model, sae, batches)
    ours, per_batch_bias = _ours(model, sae, batches)
    pairs = {
        "ce_loss_without_sae": ours.ce_clean, "ce_loss_with_sae": ours.ce_sae,
        "ce_loss_with_ablation": ours.ce_zero, "ce_loss_score": ours.ce_loss_score,
        "kl_div_with_sae": ours.kl_sae, "kl_div_with_ablation": ours.kl_zero,
        "kl_div_score": ours.kl_score, "explained_variance": ours.explained_variance,
        "mse": ours.mse, "cossim": ours.cosine_similarity, "l2_ratio": ours.l2_ratio,
        "l0": ours.l0, "l1": ours.l1,
    }
    for name, value in pairs.items():
        assert value == pytest.approx(theirs[name], rel=1e-5, abs=1e-7), name
    assert ours.feature_density == pytest.approx(features["feature_density"], abs=1e-7)
    # relative reconstruction bias: SAELens = mean of per-batch ratios; ours = one ratio
    assert theirs["relative_reconstruction_bias"] == pytest.approx(sum(per_batch_bias) / 2, rel=1e-5)
    assert ours.relative_reconstruction_bias != pytest.approx(theirs["relative_reconstruction_bias"],
                                                              rel=1e-6)
    # the case is not degenerate: the SAE costs some loss, the ablation more
    assert ours.ce_zero > ours.ce_sae > ours.ce_clean and ours.kl_zero > ours.kl_sae > 0
    assert 0 < ours.explained_variance < 1
    assert 0 < ours.alive_fraction <= 1 and ours.tokens == sum(int((b != BOS).sum()) for b in batches)
