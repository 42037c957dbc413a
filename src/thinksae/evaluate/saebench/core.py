"""SAEBench's core metrics (Karvonen et al. 2025, the same code as SAELens' evals), each defined
once, on the non-special, non-sink tokens of the eval set (:mod:`thinksae.sinks`).

x is the hookpoint activation of a kept token, x̂ the SAE's reconstruction, a its latent
activations; E is the mean over kept tokens (over kept positions for the losses). Sums are float64
and run over the whole eval set, so no number depends on how the tokens were cut into batches.

Reused from :mod:`thinksae.evaluate.metrics` (one definition each, see its module docstring):
``l0`` (mean count of latents with a > 0; SAELens counts a ≠ 0, the same for SAEs whose
activations are never negative, as all of thinksae's are),
``cosine_similarity`` (its ``cosine``: mean over tokens of cos(x, x̂)), ``l2_ratio`` (its
``relative_norm``: mean over tokens of ‖x̂‖ / ‖x‖), the variance Σ‖x − x̄‖² (its ``Moments``) and
:func:`~thinksae.evaluate.metrics.fvu`. The per-position CE and KL are those of
:func:`thinksae.evaluate.spliced.token_losses`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..metrics import ReconstructionStats, fvu, loss_recovered
from ..spliced import token_losses

DENSITY_THRESHOLDS = (0.01, 0.1)
"""SAEBench's density bars: the share of latents firing on more than 1% and 10% of tokens."""


def ce_loss_score(ce_clean: float, ce_sae: float, ce_zero: float) -> float | None:
    """CE-loss score = (CE_zero − CE_SAE) / (CE_zero − CE_clean): 1 when splicing the SAE in costs
    no loss, 0 when it is as bad as zero-ablating the hookpoint (None when ablating changes
    nothing). This is :func:`~thinksae.evaluate.metrics.loss_recovered` with zero ablation."""
    return loss_recovered(ce_zero, ce_sae, ce_clean)


def kl_score(kl_sae: float, kl_zero: float) -> float | None:
    """KL score = (KL_zero − KL_SAE) / KL_zero, KL_* = E_t KL(p_clean ‖ p_*) at each position t:
    1 when the spliced model predicts exactly as the clean one, 0 when it is as far off as the
    zero-ablated one (None when KL_zero = 0)."""
    return (kl_zero - kl_sae) / kl_zero if kl_zero != 0 else None


def explained_variance(sum_sq_error: float, total_variance: float) -> float | None:
    """Explained variance, the textbook formula: 1 − E‖x − x̂‖² / E‖x − E[x]‖²
    = 1 − Σ‖x − x̂‖² / Σ‖x − x̄‖² = 1 − FVU, x̄ the mean over all kept tokens (None when the
    variance is 0).

    SAELens ≥ 6.50 computes the same number (its ``ExplainedVarianceCalculator``: variance as
    E‖x‖² − ‖E[x]‖²). SAEBench's core code (0.6) does not: it takes the variance as
    E‖x‖² − (mean_d E[x_d²])², subtracting the square of the mean over dimensions of the
    per-dimension second moment instead of ‖E[x]‖², so its number is too high whenever x has a
    mean (and not a variance at all). Its ``explained_variance_legacy`` is a per-token ratio
    averaged over tokens, another number again. We report only the textbook one.
    """
    unexplained = fvu(sum_sq_error, total_variance)
    return None if unexplained is None else 1.0 - unexplained


def relative_reconstruction_bias(sum_xhat_sq: float, sum_x_dot_xhat: float) -> float | None:
    """Relative reconstruction bias (Rajamanoharan et al. 2024, eq. 10) = E‖x̂‖² / E⟨x, x̂⟩
    = Σ‖x̂‖² / Σ⟨x, x̂⟩ over all kept tokens: the scale γ that best fits x̂ ≈ γ·x; below 1 the SAE
    shrinks its reconstructions (None when Σ⟨x, x̂⟩ = 0).

    SAELens/SAEBench compute this ratio per batch and average the batch ratios; we take one ratio
    over the whole eval set (they agree on one batch)."""
    return sum_xhat_sq / sum_x_dot_xhat if sum_x_dot_xhat != 0 else None


def feature_density(fire_counts: Tensor, tokens: int) -> Tensor:
    """Per latent, the share of kept tokens it fires on: density_i = #{t: a_{t,i} > 0} / tokens
    (float64 ``[num_latents]``; zeros for no tokens)."""
    return fire_counts.double() / tokens if tokens else torch.zeros_like(fire_counts, dtype=torch.float64)


def alive_fraction(density: Tensor) -> float:
    """Share of latents that fired at least once: #{i: density_i > 0} / num_latents."""
    return float((density > 0).double().mean())


def share_denser_than(density: Tensor, threshold: float) -> float:
    """Share of latents firing on more than ``threshold`` of tokens: #{i: density_i > threshold}
    / num_latents (SAEBench's ``freq_over_1_percent`` / ``freq_over_10_percent``)."""
    return float((density > threshold).double().mean())


def token_l1(latent_acts: Tensor) -> Tensor:
    """Per token, the L1 norm of its latent activations Σ_i |a_i| (float64 ``[n]``)."""
    return latent_acts.detach().double().abs().sum(-1)


class CoreStats(ReconstructionStats):
    """Running sums of the reconstruction metrics over kept tokens: those of
    :class:`~thinksae.evaluate.metrics.ReconstructionStats` plus Σ‖a‖₁, Σ‖x̂‖² and Σ⟨x, x̂⟩."""

    def __init__(self, d_in: int, num_latents: int):
        super().__init__(d_in, num_latents)
        self.sum_l1 = 0.0
        self.sum_xhat_sq = 0.0
        self.sum_x_dot_xhat = 0.0

    def update(self, x: Tensor, x_hat: Tensor, latent_acts: Tensor, latent_indices: Tensor) -> None:
        """Add kept tokens: ``x``, ``x_hat`` ``[n, d_in]`` and their latents ``[n, width]``."""
        if x.shape[0] == 0:
            return
        super().update(x, x_hat, latent_acts, latent_indices)
        x64, xh64 = x.detach().double(), x_hat.detach().double()
        self.sum_l1 += float(token_l1(latent_acts).sum())
        self.sum_xhat_sq += float(xh64.pow(2).sum())
        self.sum_x_dot_xhat += float((x64 * xh64).sum())


class LossSums:
    """Running sums of the per-position losses: CE over positions with a next token, KL over
    every kept position (as SAELens scores them)."""

    def __init__(self):
        self.ce_positions = 0
        self.kl_positions = 0
        self.sums: dict[str, float] = {}

    def update(self, losses: dict[str, Tensor], has_target: Tensor) -> None:
        """Add positions: ``losses`` from :func:`position_losses` and its ``has_target`` rows."""
        self.ce_positions += int(has_target.sum())
        self.kl_positions += len(has_target)
        for name, values in losses.items():
            rows = values[has_target] if name.startswith("ce_") else values
            self.sums[name] = self.sums.get(name, 0.0) + float(rows.double().sum())

    def mean(self, name: str) -> float | None:
        """E over the positions of ``name`` (``ce_*`` or ``kl_*``); None when there are none."""
        n = self.ce_positions if name.startswith("ce_") else self.kl_positions
        return self.sums[name] / n if n and name in self.sums else None


def position_losses(head: nn.Module, hidden: dict[str, Tensor], input_ids: Tensor, keep: Tensor,
                    token_mask: Tensor, chunk_rows: int = 256) -> tuple[dict[str, Tensor], Tensor]:
    """Per kept position t (row-major): ``ce_<name>`` = −ln p_name(token[t+1]) and, for the
    non-clean settings, ``kl_<name>`` = KL(p_clean ‖ p_name), from final hidden states
    ``hidden[name] [batch, seq, d]`` (``clean``, ``sae``, ``zero``) through ``head`` (the LM head,
    or ``nn.Identity()`` when ``hidden`` holds logits). Returns the losses and ``has_target``
    ``[m]``: whether t+1 is a real token (``token_mask``); CE at the other rows is not defined
    and must be ignored (:class:`LossSums` does)."""
    has_next = torch.zeros_like(token_mask, dtype=torch.bool)
    has_next[:, :-1] = token_mask[:, 1:].bool()
    targets = torch.zeros_like(input_ids)
    targets[:, :-1] = input_ids[:, 1:]
    keep = keep.bool()
    rows = {name: h[keep] for name, h in hidden.items()}
    others = tuple(n for n in hidden if n != "clean")
    losses = token_losses(head, rows, targets[keep], kl_for=others, chunk_rows=chunk_rows)
    return losses, (keep & has_next)[keep]


@dataclass
class CoreMetrics:
    """SAEBench's core metrics over the kept (non-special, non-sink) tokens; ``to_dict`` is JSON."""

    tokens: int
    """Kept tokens the reconstruction metrics are over."""
    explained_variance: float | None
    """1 − E‖x − x̂‖² / E‖x − E[x]‖² (:func:`explained_variance`)."""
    mse: float | None
    """E‖x − x̂‖², summed over dimensions and averaged over tokens as SAELens ≥ 6 reports it
    (= d_in × the per-element ``mse`` of :mod:`thinksae.evaluate.metrics`). SAEBench 0.6's core
    code divides each token's error by the number of tokens in its batch instead, so its
    published mse is not this number."""
    cosine_similarity: float | None
    """E cos(x, x̂) (the ``cosine`` of :mod:`thinksae.evaluate.metrics`)."""
    l2_ratio: float | None
    """E ‖x̂‖ / ‖x‖ (the ``relative_norm`` of :mod:`thinksae.evaluate.metrics`)."""
    relative_reconstruction_bias: float | None
    """E‖x̂‖² / E⟨x, x̂⟩ (:func:`relative_reconstruction_bias`)."""
    l0: float | None
    """E #{i: a_i > 0}, active latents per token."""
    l1: float | None
    """E Σ_i |a_i| (:func:`token_l1`)."""
    alive_fraction: float | None
    """Share of latents that fired on some kept token (:func:`alive_fraction`)."""
    share_density_over_1pct: float | None
    """Share of latents firing on more than 1% of kept tokens (:func:`share_denser_than`)."""
    share_density_over_10pct: float | None
    """Share of latents firing on more than 10% of kept tokens."""
    ce_positions: int = 0
    """Positions (kept tokens with a next token) the CE numbers are over; 0 without a model."""
    ce_clean: float | None = None
    ce_sae: float | None = None
    """E −ln p(next token) with the SAE's x̂ spliced in at every kept token."""
    ce_zero: float | None = None
    """The same with the hookpoint output zeroed at those tokens."""
    ce_loss_score: float | None = None
    """(CE_zero − CE_SAE) / (CE_zero − CE_clean) (:func:`ce_loss_score`)."""
    kl_positions: int = 0
    """Positions the KL numbers are over: every kept token in :func:`~.core_run.core_eval`; the
    kept tokens with a next token in `thinksae eval`'s model mode (:mod:`thinksae.evaluate.bench`),
    which reuses its spliced passes."""
    kl_sae: float | None = None
    """E KL(p_clean ‖ p_SAE)."""
    kl_zero: float | None = None
    """E KL(p_clean ‖ p_zero)."""
    kl_score: float | None = None
    """(KL_zero − KL_SAE) / KL_zero (:func:`kl_score`)."""
    sinks: dict[str, Any] = dataclasses.field(default_factory=dict)
    """What the sink rule dropped (:func:`thinksae.sinks.sink_summary` counts, summed)."""
    feature_density: list[float] = dataclasses.field(default_factory=list, repr=False)
    """Per latent, the share of kept tokens it fired on (:func:`feature_density`)."""

    def to_dict(self, with_density: bool = False) -> dict[str, Any]:
        """The metrics as a JSON-ready dict; the per-latent density list only when asked."""
        out = dataclasses.asdict(self)
        if not with_density:
            out.pop("feature_density")
        return out


def core_metrics(stats: CoreStats, losses: LossSums | None = None,
                 sinks: dict[str, Any] | None = None) -> CoreMetrics:
    """The :class:`CoreMetrics` of accumulated sums (``losses`` None: reconstruction only)."""
    n = stats.tokens
    base = stats.result()
    density = feature_density(stats.fire_counts, n)
    empty = n == 0
    out = CoreMetrics(
        tokens=n,
        explained_variance=explained_variance(stats.sum_sq_error, stats.moments.sum_sq_dev),
        mse=None if empty else stats.sum_sq_error / n,
        cosine_similarity=base["cosine"], l2_ratio=base["relative_norm"],
        relative_reconstruction_bias=relative_reconstruction_bias(stats.sum_xhat_sq,
                                                                  stats.sum_x_dot_xhat),
        l0=base["l0"], l1=None if empty else stats.sum_l1 / n,
        alive_fraction=None if empty else alive_fraction(density),
        share_density_over_1pct=None if empty else share_denser_than(density, DENSITY_THRESHOLDS[0]),
        share_density_over_10pct=None if empty else share_denser_than(density, DENSITY_THRESHOLDS[1]),
        sinks=dict(sinks or {}), feature_density=[float(v) for v in density])
    if losses is not None:
        means = {name: losses.mean(name) for name in
                 ("ce_clean", "ce_sae", "ce_zero", "kl_sae", "kl_zero")}
        out.ce_positions, out.kl_positions = losses.ce_positions, losses.kl_positions
        out.ce_clean, out.ce_sae, out.ce_zero = means["ce_clean"], means["ce_sae"], means["ce_zero"]
        out.kl_sae, out.kl_zero = means["kl_sae"], means["kl_zero"]
        if None not in (out.ce_clean, out.ce_sae, out.ce_zero):
            out.ce_loss_score = ce_loss_score(out.ce_clean, out.ce_sae, out.ce_zero)
        if None not in (out.kl_sae, out.kl_zero):
            out.kl_score = kl_score(out.kl_sae, out.kl_zero)
    return out
