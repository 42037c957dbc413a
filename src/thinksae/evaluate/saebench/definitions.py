"""One line per SAEBench number `thinksae eval` reports, as eval.json, the printed table, the run
report and the docs show it beside the number. Each line restates the formula of the function or
field that computes it (:mod:`.core`, :mod:`.sparse_probing`, :mod:`.absorption_score`), where
the full definition and the differences from SAEBench/SAELens are written; a test keeps the keys
in step with what the metrics return.

Notation: x the hookpoint activation of a kept (non-special, non-sink) token, x̂ its
reconstruction, a its latent activations, E the mean over kept tokens (kept positions for the
losses), p_* the next-token distribution of the model as it is (clean), with x̂ spliced in (SAE)
or with the hookpoint zeroed at the kept tokens (zero).
"""

from __future__ import annotations

CORE: dict[str, str] = {
    "tokens": "kept tokens: not special, not a norm sink (and, with a model, in the splice regions)",
    "ce_loss_score": "(CE_zero − CE_SAE) / (CE_zero − CE_clean): 1 = no loss from the SAE, "
                     "0 = as bad as zero-ablating the hookpoint",
    "kl_score": "(KL_zero − KL_SAE) / KL_zero, KL_* = E KL(p_clean ‖ p_*)",
    "explained_variance": "1 − Σ‖x − x̂‖² / Σ‖x − x̄‖² (textbook; x̄ the mean over kept tokens)",
    "mse": "E‖x − x̂‖² (summed over dimensions)",
    "cosine_similarity": "E cos(x, x̂)",
    "l2_ratio": "E ‖x̂‖ / ‖x‖",
    "relative_reconstruction_bias": "Σ‖x̂‖² / Σ⟨x, x̂⟩: the scale γ best fitting x̂ ≈ γx "
                                    "(below 1: shrinkage)",
    "l0": "E #{i: a_i > 0}, active latents per token",
    "l1": "E Σ_i |a_i|",
    "alive_fraction": "share of latents that fired on some kept token",
    "share_density_over_1pct": "share of latents firing on more than 1% of kept tokens",
    "share_density_over_10pct": "share of latents firing on more than 10% of kept tokens",
    "ce_clean": "E −ln p_clean(next token)",
    "ce_sae": "E −ln p_SAE(next token), x̂ spliced in at every kept token",
    "ce_zero": "E −ln p_zero(next token), the hookpoint zeroed at every kept token",
    "kl_sae": "E KL(p_clean ‖ p_SAE)",
    "kl_zero": "E KL(p_clean ‖ p_zero)",
    "ce_positions": "kept positions with a next token (the CE and KL numbers are over them)",
    "kl_positions": "positions the KL numbers are over",
}
"""The core metrics (:class:`~.core.CoreMetrics`)."""

CORE_SHOWN = ("ce_loss_score", "kl_score", "explained_variance", "mse", "cosine_similarity",
              "l2_ratio", "relative_reconstruction_bias", "l0", "l1", "alive_fraction",
              "share_density_over_1pct", "share_density_over_10pct")
"""The core metrics the printed table and the run report show, in this order."""

PROBING: dict[str, str] = {
    "sae": "test accuracy of a logistic probe on the k latents with the largest |mean difference| "
           "between classes (training units), mean over classes, by k",
    "residual": "the same on the k residual dimensions with the largest mean difference",
    "residual_all": "the same on every residual dimension",
}
"""k-sparse probing (:func:`~.sparse_probing.mean_accuracies`): balanced one-vs-rest per class,
units mean-pooled, train and test from disjoint traces."""

ABSORPTION: dict[str, str] = {
    "mean_absorption_fraction": "mean over qualifying letters of the share of the letter "
                                "direction carried by other latents than its main ones",
    "mean_full_absorption_rate": "mean over qualifying letters of the share of words whose main "
                                 "latents are silent while one other latent carries the letter",
    "mean_main_latents": "mean over qualifying letters of the main-latent count (SAEBench's "
                         "mean_num_split_features)",
    "mean_split_features": "mean over qualifying letters of main latents − 1",
    "letters_evaluated": "letters whose ground-truth probe F1 > 0.6 (with a true positive)",
}
"""Feature absorption on the first-letter task (:func:`~.absorption_score.aggregate_letters`)."""


def definitions() -> dict[str, dict[str, str]]:
    """Every definition by family, as eval.json's ``saebench.definitions``."""
    return {"core": dict(CORE), "probing": dict(PROBING), "absorption": dict(ABSORPTION)}
