"""The TopK sparse autoencoder (Gao et al. 2024; EleutherAI sparsify's layout and semantics).

encode(x) = topk(relu(W_enc (x - b_dec) + b_enc), k)       -> k (activation, latent) pairs
decode(a, i) = sum_j a_j W_dec[i_j] + b_dec
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor, nn

from ..errors import ThinksaeError
from .config import SaeConfig
from .kernels import sparse_decode, topk_encode

AUXK_NORMS = ("x", "residual")
"""What the AuxK squared error is divided by: the variance of the input x, or of the residual e."""


class EncoderOutput(NamedTuple):
    """The k active latents of each token."""

    latent_acts: Tensor
    """Activations ``[..., k]`` (float32, >= 0; a latent may be 0 when fewer than k fire)."""
    latent_indices: Tensor
    """Latent ids ``[..., k]`` (int64), in no particular order."""


class ForwardOutput(NamedTuple):
    """Everything a training step or an evaluation needs from one forward."""

    sae_out: Tensor
    """Reconstruction x̂ ``[B, d_in]``."""
    latent_acts: Tensor
    latent_indices: Tensor
    fvu: Tensor
    """Σ‖x − x̂‖² / Σ‖x − mean(x)‖² over this batch (mean taken over the batch)."""
    auxk_loss: Tensor
    """AuxK loss (0 without dead latents): how well the top dead latents reconstruct the
    residual e = x − x̂, times min(num_dead / k_aux, 1): Σ‖e − ê‖² / Σ‖x − mean(x)‖² with
    ``auxk_norm="x"``, Σ‖e − ê‖² / Σ‖e − mean(e)‖² with ``auxk_norm="residual"``."""


class Sae(nn.Module):
    """A TopK SAE with sparsify's parameter names: ``encoder`` (Linear), ``W_dec``, ``b_dec``."""

    def __init__(self, d_in: int, cfg: SaeConfig | None = None, device: str | torch.device = "cpu",
                 dtype: torch.dtype | None = None):
        super().__init__()
        self.cfg = cfg = cfg or SaeConfig()
        self.d_in = int(d_in)
        self.num_latents = cfg.latents_for(self.d_in)
        if not 1 <= cfg.k <= self.num_latents:
            raise ThinksaeError(f"k must be in 1..{self.num_latents} (got {cfg.k})")
        self.encoder = nn.Linear(self.d_in, self.num_latents, device=device, dtype=dtype)
        self.encoder.bias.data.zero_()
        self.W_dec = nn.Parameter(self.encoder.weight.data.clone())
        self.b_dec = nn.Parameter(torch.zeros(self.d_in, device=device, dtype=dtype))
        if cfg.normalize_decoder:
            self.set_decoder_norm_to_unit_norm()

    @property
    def device(self) -> torch.device:
        return self.encoder.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.encoder.weight.dtype

    def _compute_dtype(self, x: Tensor) -> torch.dtype:
        kind = x.device.type
        if torch.is_autocast_enabled(kind):
            return torch.get_autocast_dtype(kind)
        return self.dtype

    def encode(self, x: Tensor) -> EncoderOutput:
        """Top-k latents of ``x [..., d_in]``."""
        flat = x.reshape(-1, self.d_in)
        sel, _ = topk_encode(flat, self.encoder.weight, self.encoder.bias, self.b_dec,
                             self.cfg.k, compute_dtype=self._compute_dtype(flat))
        shape = (*x.shape[:-1], self.cfg.k)
        return EncoderOutput(sel.acts.reshape(shape), sel.indices.reshape(shape))

    def decode(self, latent_acts: Tensor, latent_indices: Tensor) -> Tensor:
        """Σ_j a_j W_dec[i_j] + b_dec, for ``[..., k]`` activations and indices."""
        k = latent_acts.shape[-1]
        out = sparse_decode(latent_acts.reshape(-1, k), latent_indices.reshape(-1, k), self.W_dec)
        return (out + self.b_dec).reshape(*latent_acts.shape[:-1], self.d_in)

    def dense_acts(self, x: Tensor) -> Tensor:
        """All latent activations ``[..., num_latents]`` (zeros outside the top k)."""
        acts, idx = self.encode(x)
        dense = acts.new_zeros((*acts.shape[:-1], self.num_latents))
        return dense.scatter_(-1, idx, acts)

    def forward(self, x: Tensor, dead_mask: Tensor | None = None,
                aux_k: int | None = None, auxk_norm: str = "x") -> ForwardOutput:
        """Encode, decode and the losses of a batch ``x [B, d_in]``.

        ``dead_mask [num_latents]`` (bool) switches on the AuxK loss: the ``aux_k`` (default
        d_in // 2) dead latents with the largest pre-activations reconstruct the residual
        ``e = x − x̂``; ``auxk_norm`` divides its squared error by the variance of ``x``
        (sparsify) or of ``e`` itself (``"residual"``, Gao et al. 2024).
        """
        if auxk_norm not in AUXK_NORMS:
            raise ThinksaeError(f"unknown auxk_norm {auxk_norm!r} (use {', '.join(AUXK_NORMS)})")
        x = x.reshape(-1, self.d_in)
        num_dead = int(dead_mask.sum()) if dead_mask is not None else 0
        k_aux = min(aux_k or self.d_in // 2, num_dead)
        compute_dtype = self._compute_dtype(x)
        sel, aux = topk_encode(x, self.encoder.weight, self.encoder.bias, self.b_dec, self.cfg.k,
                               dead_mask if num_dead else None, k_aux, compute_dtype)
        w_dec = self.W_dec.to(compute_dtype)  # the gathers and scatters run in the compute dtype
        sae_out = sparse_decode(sel.acts, sel.indices, w_dec).float() + self.b_dec
        residual = x.float() - sae_out.float()
        total_variance = (x.float() - x.float().mean(0)).pow(2).sum()
        fvu = residual.pow(2).sum() / total_variance
        if aux is not None:
            scale = min(num_dead / (aux_k or self.d_in // 2), 1.0)
            e_hat = sparse_decode(aux.acts, aux.indices, w_dec).float()
            e = residual.detach()
            norm = total_variance if auxk_norm == "x" else (e - e.mean(0)).pow(2).sum()
            error = (e_hat - e).pow(2).sum()
            auxk_loss = scale * error / norm if norm > 0 else error * 0.0
        else:
            auxk_loss = fvu.new_zeros(())
        return ForwardOutput(sae_out, sel.acts, sel.indices, fvu, auxk_loss)

    # ------------------------------------------------------------------ training helpers

    @torch.no_grad()
    def set_decoder_norm_to_unit_norm(self) -> None:
        """Scale every decoder row to unit L2 norm."""
        eps = torch.finfo(self.W_dec.dtype).eps
        self.W_dec.div_(torch.linalg.vector_norm(self.W_dec, dim=1, keepdim=True).add_(eps))

    @torch.no_grad()
    def remove_gradient_parallel_to_decoder_directions(self) -> None:
        """Project each decoder row's gradient onto the plane orthogonal to that row."""
        grad = self.W_dec.grad
        if grad is None:
            return
        parallel = torch.linalg.vecdot(grad, self.W_dec, dim=1).unsqueeze(1)
        grad.addcmul_(parallel, self.W_dec, value=-1)

    @torch.no_grad()
    def init_b_dec_from_data(self, x: Tensor, method: str = "mean", iters: int = 50) -> None:
        """Set ``b_dec`` to the mean (or geometric median, Weiszfeld's method) of ``x``."""
        x = x.reshape(-1, self.d_in).float()
        if method == "mean":
            centre = x.mean(0)
        elif method == "geometric_median":
            centre = geometric_median(x, iters)
        else:
            raise ThinksaeError(f"unknown b_dec initialisation {method!r}")
        self.b_dec.copy_(centre.to(self.b_dec.dtype))

    # ------------------------------------------------------------------ files

    def save_to_disk(self, path: str | Path) -> None:
        """Write ``cfg.json`` and ``sae.safetensors`` (sparsify layout) into ``path``."""
        from .formats import save_sparsify

        save_sparsify(self, path)

    @staticmethod
    def load_from_disk(path: str | Path, device: str | torch.device = "cpu",
                       dtype: torch.dtype | None = None) -> Sae:
        """Read an SAE directory in sparsify layout (ours, or EleutherAI's released SAEs)."""
        from .formats import load_sparsify

        return load_sparsify(path, device=device, dtype=dtype)


def geometric_median(x: Tensor, iters: int = 50, eps: float = 1e-8) -> Tensor:
    """The point minimising the summed Euclidean distance to the rows of ``x`` (Weiszfeld)."""
    centre = x.mean(0)
    for _ in range(iters):
        weights = 1.0 / (x - centre).norm(dim=1).clamp_min(eps)
        new = (weights[:, None] * x).sum(0) / weights.sum()
        if torch.allclose(new, centre, rtol=0, atol=1e-7):
            return new
        centre = new
    return centre
