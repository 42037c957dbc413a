"""The SAE forward as the trainer needs it: compute dtype, and FVU/AuxK split across ranks."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from ..models.loading import cpu_has_fast_bf16
from ..sae import ForwardOutput
from .distributed import Ranks


def compute_dtype(name: str, device: torch.device) -> torch.dtype:
    """``auto`` → bfloat16 on CUDA with bf16 support and on CPUs with avx512_bf16, else float32."""
    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
        return torch.bfloat16 if cpu_has_fast_bf16() else torch.float32
    return torch.bfloat16 if name == "bfloat16" else torch.float32


def _local_share(v: Tensor, ranks: Ranks) -> Tensor:
    """This rank's part of the global batch's Σ‖v − mean(v)‖², in units of the global sum:
    Σ_local‖v − mean_local(v)‖² / Σ_all‖v − mean_all(v)‖² (what turns a loss normalised on this
    rank's rows into this rank's share of the loss normalised on the global batch)."""
    v = v.detach().float()
    n_global = v.shape[0] * ranks.world_size
    mean = ranks.all_reduce(v.sum(0)) / n_global
    local = (v - v.mean(0)).pow(2).sum()
    return local / ranks.all_reduce((v - mean).pow(2).sum())


class StepLosses(NamedTuple):
    """One rank's forward and its loss terms, each in units of the global batch."""

    out: ForwardOutput
    fvu: Tensor
    """Σ‖x − x̂‖² / Σ‖x − mean(x)‖² of the whole SAE (what is reported)."""
    reconstruction: Tensor
    """What is minimised besides AuxK: ``fvu`` itself (the same tensor), or for Matryoshka the
    sum of its prefixes' FVUs (:attr:`thinksae.sae.ForwardOutput.reconstruction_loss`)."""
    auxk: Tensor
    prefix_fvu: Tensor | None
    """Matryoshka: the FVU of each nested prefix ``[levels]``; None otherwise."""


def forward_loss(sae, x: Tensor, dead_mask: Tensor | None, aux_k: int | None,
                 dtype: torch.dtype, ranks: Ranks, auxk_norm: str = "x") -> StepLosses:
    """Run the SAE on this rank's rows and return its loss terms.

    FVU (and every prefix FVU) is normalised by the variance of the *global* batch about its
    mean, and AuxK by that of the global batch's x or residual x − x̂ (``auxk_norm``), so the
    ranks' values add up to what one process computes on the whole batch.
    """
    with torch.autocast(x.device.type, dtype=dtype, enabled=dtype != torch.float32):
        out = sae(x, dead_mask=dead_mask, aux_k=aux_k, auxk_norm=auxk_norm)
    fvu, auxk = out.fvu.float(), out.auxk_loss.float()
    prefix = out.prefix_fvu.float() if out.prefix_fvu is not None else None
    if ranks.world_size > 1:
        x_share = _local_share(x, ranks)
        fvu = fvu * x_share
        prefix = prefix * x_share if prefix is not None else None
        if auxk_norm == "x":
            auxk = auxk * x_share
        else:
            auxk = auxk * _local_share(x.float() - out.sae_out.float(), ranks)
    reconstruction = fvu if prefix is None else prefix.sum()
    return StepLosses(out, fvu, reconstruction, auxk, prefix)
