"""BatchTopK SAE (Bussmann, Leask & Nanda 2024): TopK over the whole batch while training, a
learned threshold at inference.

Training (``forward`` in training mode with gradients on): of the B·num_latents values relu(pre) of a batch
of B tokens, keep the k·B largest (so a token has k active latents on average, more or fewer
each), the rest 0. After each such forward the threshold θ moves towards the smallest kept
activation m of the batch: θ ← m on the first batch, then θ ← (1 − r) θ + r m with
r = ``THRESHOLD_RATE`` — SAELens' estimator (``topk_threshold_lr`` = 0.01), started from the
first batch's value as dictionary_learning does (SAELens starts from 0).

Inference (everything else: encode, evaluation): a latent fires where relu(pre) > θ, so the
number of active latents varies per token; :meth:`encode` pads to the widest token of the call.
θ is saved with the SAE (a scalar ``threshold`` tensor; ``activation: "batchtopk"`` in cfg.json).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .base import SparseAutoencoder, padded_selection, register
from .kernels import TopKSelection

THRESHOLD_RATE = 0.01
"""Rate of the running mean of the smallest kept activation per batch (SAELens' default)."""


@register
class BatchTopKSae(SparseAutoencoder):
    """BatchTopK: k·B latents per training batch of B tokens; ``relu(pre) > threshold`` after."""

    architecture = "batchtopk"
    needs_whole_batch = True

    def __init__(self, d_in, cfg=None, device="cpu", dtype=None):
        super().__init__(d_in, cfg, device=device, dtype=dtype)
        self.register_buffer("threshold", torch.tensor(-1.0, device=device, dtype=torch.float32))
        """θ; negative until the first training batch has set it."""

    @classmethod
    def extra_tensors(cls, num_latents: int) -> dict[str, tuple[int, ...]]:
        return {"threshold": ()}

    def select(self, x: Tensor, dead_mask: Tensor | None, k_aux: int, train: bool = False
               ) -> tuple[TopKSelection, TopKSelection | None]:
        """Batch top-k·B while training (and update θ), else ``relu(pre) > θ``."""
        pre = self.pre_acts(x)
        acts = pre.relu()
        if train:
            flat = acts.flatten()
            kept = flat.topk(min(self.cfg.k * len(x), flat.numel()), sorted=False)
            dense = torch.zeros_like(flat).scatter(0, kept.indices, kept.values).view_as(acts)
            self._update_threshold(kept.values)
        else:
            dense = acts * (acts > self.threshold.float())
        aux = self.aux_selection(pre, dead_mask, k_aux) if dead_mask is not None else None
        return padded_selection(dense), aux

    @torch.no_grad()
    def _update_threshold(self, kept: Tensor) -> None:
        positive = kept[kept > 0]
        if not len(positive):
            return
        smallest = positive.min().float()
        old = self.threshold
        self.threshold.copy_(smallest if old < 0 else (1 - THRESHOLD_RATE) * old
                             + THRESHOLD_RATE * smallest)

    @torch.no_grad()
    def fold_input_scale(self, scale: float) -> None:
        super().fold_input_scale(scale)
        if self.threshold > 0:
            self.threshold.div_(scale)
