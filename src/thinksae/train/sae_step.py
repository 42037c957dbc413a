"""The SAE forward as the trainer needs it: compute dtype, and FVU/AuxK split across ranks."""

from __future__ import annotations

import inspect

import torch
from torch import Tensor

from ..errors import ThinksaeError
from ..models.loading import cpu_has_fast_bf16
from .distributed import Ranks


def compute_dtype(name: str, device: torch.device) -> torch.dtype:
    """``auto`` → bfloat16 on CUDA with bf16 support and on CPUs with avx512_bf16, else float32."""
    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
        return torch.bfloat16 if cpu_has_fast_bf16() else torch.float32
    return torch.bfloat16 if name == "bfloat16" else torch.float32


def forward_loss(sae, x: Tensor, dead_mask: Tensor | None, aux_k: int | None,
                 dtype: torch.dtype, ranks: Ranks):
    """Run the SAE on this rank's rows; returns ``(output, fvu, auxk)``.

    FVU and AuxK are normalised by the variance of the *global* batch about its mean, so the
    ranks' values add up to what one process computes on the whole batch.
    """
    kwargs = {}
    if aux_k is not None:
        if "aux_k" not in inspect.signature(sae.forward).parameters:
            raise ThinksaeError("this SAE takes no aux_k: it always uses d_in // 2")
        kwargs["aux_k"] = aux_k
    with torch.autocast(x.device.type, dtype=dtype, enabled=dtype != torch.float32):
        out = sae(x, dead_mask=dead_mask, **kwargs)
    fvu, auxk = out.fvu.float(), out.auxk_loss.float()
    if ranks.world_size > 1:
        n_global = x.shape[0] * ranks.world_size
        mean = ranks.all_reduce(x.sum(0)) / n_global
        local = (x - x.mean(0)).pow(2).sum()
        total = ranks.all_reduce((x - mean).pow(2).sum())
        ratio = local / total
        fvu, auxk = fvu * ratio, auxk * ratio
    return out, fvu, auxk
