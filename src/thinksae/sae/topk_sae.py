"""The TopK sparse autoencoder (Gao et al. 2024; EleutherAI sparsify's layout and semantics).

encode(x) = topk(relu(W_enc (x - b_dec) + b_enc), k)       -> k (activation, latent) pairs
decode(a, i) = sum_j a_j W_dec[i_j] + b_dec

The reference architecture: its selection runs through the sparse kernels of
:mod:`thinksae.sae.kernels` (no dense batch x latents work beyond the encoder GEMM).
"""

from __future__ import annotations

from torch import Tensor

from .base import (
    AUXK_NORMS,
    EncoderOutput,
    ForwardOutput,
    SparseAutoencoder,
    geometric_median,
    register,
)
from .formats import SaeFiles
from .kernels import TopKSelection, topk_encode

__all__ = ["AUXK_NORMS", "EncoderOutput", "ForwardOutput", "Sae", "geometric_median"]


@register
class Sae(SaeFiles, SparseAutoencoder):
    """A TopK SAE with sparsify's parameter names: ``encoder`` (Linear), ``W_dec``, ``b_dec``."""

    architecture = "topk"

    def select(self, x: Tensor, dead_mask: Tensor | None, k_aux: int, train: bool = False
               ) -> tuple[TopKSelection, TopKSelection | None]:
        """The top k of ``relu(pre)`` per row (sparse backward) and the AuxK latents."""
        return topk_encode(x, self.encoder.weight, self.encoder.bias, self.b_dec, self.cfg.k,
                           dead_mask, k_aux, self._compute_dtype(x))
