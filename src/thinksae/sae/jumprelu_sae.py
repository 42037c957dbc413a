"""JumpReLU SAE (Rajamanoharan et al. 2024), as SAELens stores it and Gemma Scope ships it.

encode(x) = relu(pre) · (pre > θ), pre = (x − b_dec) W_encᵀ + b_enc, θ ``[num_latents]``

SAELens computes pre = (x − b_dec·apply_b_dec_to_input) W_enc + b_enc; a file with
``apply_b_dec_to_input: false`` (Gemma Scope's) is loaded with b_dec·W_enc folded into b_enc
(:func:`thinksae.sae.formats.load_saelens`), so one formula serves both. Inference only: there is
no straight-through estimator here, `thinksae train` refuses the architecture.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .base import SparseAutoencoder, padded_selection, register
from .config import SaeConfig
from .kernels import TopKSelection


@register
class JumpReLUSae(SparseAutoencoder):
    """JumpReLU: latent i fires where its pre-activation exceeds its own threshold θ_i."""

    architecture = "jumprelu"
    trainable = False

    def __init__(self, d_in, cfg=None, device="cpu", dtype=None):
        super().__init__(d_in, cfg or SaeConfig(architecture="jumprelu", k=0), device=device,
                         dtype=dtype)
        self.register_buffer("threshold", torch.zeros(self.num_latents, device=device,
                                                      dtype=dtype))

    @classmethod
    def extra_tensors(cls, num_latents: int) -> dict[str, tuple[int, ...]]:
        return {"threshold": (num_latents,)}

    @classmethod
    def check_config(cls, cfg: SaeConfig, num_latents: int | None = None) -> None:
        """No k to check: the thresholds decide how many latents fire."""

    def select(self, x: Tensor, dead_mask: Tensor | None, k_aux: int, train: bool = False
               ) -> tuple[TopKSelection, TopKSelection | None]:
        """``relu(pre) · (pre > θ)`` per row; AuxK latents as for every architecture."""
        pre = self.pre_acts(x)
        dense = pre.relu() * (pre > self.threshold.float())
        aux = self.aux_selection(pre, dead_mask, k_aux) if dead_mask is not None else None
        return padded_selection(dense), aux

    @torch.no_grad()
    def fold_input_scale(self, scale: float) -> None:
        super().fold_input_scale(scale)
        self.threshold.div_(scale)
