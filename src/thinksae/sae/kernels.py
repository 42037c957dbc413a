"""Sparse forward/backward for TopK SAEs: no dense batch x latents work beyond the encoder GEMM.

Encoder: the pre-activations ``(x - b_dec) W_enc^T + b_enc`` are one dense GEMM (in the compute
dtype, e.g. bfloat16, with float32 master weights); only the k selected latents of each token
(plus the AuxK latents, when asked for) carry gradient. Their gradients are a sparse
``[tokens, latents]`` matrix G, so

- ``dW_enc = G^T (x - b_dec)``: a sparse x dense product (tokens x k x d_in multiply-adds),
  never a second dense GEMM and never a tokens x k x d_in tensor;
- ``db_enc = column sums of G`` and ``db_dec = -(column sums of G) W_enc``: a vector-matrix
  product, so the encoder input needs no gradient of its own.

Decoder: ``embedding_bag`` gathers the k active rows of W_dec per token; its backward is
again sparse (rows hit by a token get gradient, the per-token weights get dot products).

When a token selects a large share of the latents (the AuxK selection: d_in // 2 dead latents),
the sparse products cost more than dense ones, so above ``DENSE_SHARE`` both the encoder's weight
gradient and the decoding go through a dense ``[tokens, latents]`` matrix and one GEMM.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor


class TopKSelection(NamedTuple):
    """Selected latents of each token: activations (float32, >= 0) and indices ``[B, k]``."""

    acts: Tensor
    indices: Tensor


DENSE_SHARE = 1 / 16
"""Selected latents per token, as a share of all latents, from which dense products are faster
than sparse ones (measured on CPU: AuxK with 768 of 8,192 latents ran 2.0 s/step sparse)."""


def _is_wide(indices: Tensor, num_rows: int) -> bool:
    return indices.shape[-1] >= DENSE_SHARE * num_rows


def _scatter_rows(indices: Tensor, values: Tensor, num_rows: int) -> Tensor:
    """The dense ``[B, num_rows]`` matrix with ``values[b, j]`` added at ``indices[b, j]``."""
    out = values.new_zeros((indices.shape[0], num_rows))
    return out.scatter_add(1, indices, values)


def _sparse_rows_times(indices: Tensor, values: Tensor, dense: Tensor, num_rows: int) -> Tensor:
    """``S^T @ dense`` where ``S[b, indices[b, j]] = values[b, j]`` (``S`` is B x num_rows)."""
    if _is_wide(indices, num_rows):
        return _scatter_rows(indices, values, num_rows).T @ dense
    batch, width = indices.shape
    cols = torch.arange(batch, device=indices.device).repeat_interleave(width)
    sparse = torch.sparse_coo_tensor(
        torch.stack([indices.reshape(-1), cols]), values.reshape(-1), (num_rows, batch),
        check_invariants=False,
    )
    return torch.sparse.mm(sparse, dense)


class _TopKEncode(torch.autograd.Function):
    """``topk(relu((x - b_dec) W^T + b), k)`` with a sparse backward; optionally AuxK latents."""

    @staticmethod
    def forward(ctx, x, weight, bias, b_dec, k, dead_mask, k_aux, compute_dtype):
        with torch.autocast(x.device.type, enabled=False):
            centred = x.float() - b_dec.float()
            pre = torch.addmm(bias.to(compute_dtype), centred.to(compute_dtype),
                              weight.to(compute_dtype).T)
            vals, idx = pre.topk(k, dim=-1, sorted=False)
            acts = vals.float().relu()
            if dead_mask is not None:
                aux_vals, aux_idx = pre.masked_fill(~dead_mask, float("-inf")).topk(
                    k_aux, dim=-1, sorted=False)
                aux_acts = aux_vals.float().relu()
            else:
                aux_idx = idx.new_empty((x.shape[0], 0))
                aux_acts = acts.new_empty((x.shape[0], 0))
        ctx.save_for_backward(centred, weight, torch.cat([idx, aux_idx], 1),
                              torch.cat([acts, aux_acts], 1))
        ctx.k, ctx.compute_dtype = k, compute_dtype
        ctx.mark_non_differentiable(idx, aux_idx)
        return acts, idx, aux_acts, aux_idx

    @staticmethod
    def backward(ctx, grad_acts, _grad_idx, grad_aux, _grad_aux_idx):
        centred, weight, idx, acts = ctx.saved_tensors
        k = ctx.k
        if grad_acts is None:
            grad_acts = torch.zeros_like(acts[:, :k])
        if grad_aux is None:
            grad_aux = torch.zeros_like(acts[:, k:])
        grad = torch.cat([grad_acts, grad_aux], 1).float() * (acts > 0)  # ReLU
        num_latents = weight.shape[0]
        grad_x = grad_weight = grad_bias = grad_b_dec = None
        per_latent = None
        if ctx.needs_input_grad[2] or ctx.needs_input_grad[3]:
            per_latent = torch.zeros(num_latents, device=grad.device, dtype=torch.float32)
            per_latent.index_add_(0, idx.reshape(-1), grad.reshape(-1))
            grad_bias = per_latent.to(weight.dtype) if ctx.needs_input_grad[2] else None
        if ctx.needs_input_grad[1]:
            cd = ctx.compute_dtype
            grad_weight = _sparse_rows_times(idx, grad.to(cd), centred.to(cd), num_latents)
            grad_weight = grad_weight.to(weight.dtype)
        if ctx.needs_input_grad[3]:
            grad_b_dec = -(per_latent @ weight.float())
        if ctx.needs_input_grad[0]:
            grad_x = F.embedding_bag(idx, weight.float(), per_sample_weights=grad, mode="sum")
        return grad_x, grad_weight, grad_bias, grad_b_dec, None, None, None, None


def topk_encode(
    x: Tensor,
    weight: Tensor,
    bias: Tensor,
    b_dec: Tensor,
    k: int,
    dead_mask: Tensor | None = None,
    k_aux: int = 0,
    compute_dtype: torch.dtype = torch.float32,
) -> tuple[TopKSelection, TopKSelection | None]:
    """Top-k latents of ``relu((x - b_dec) W^T + b)``, and the top ``k_aux`` dead latents.

    The GEMM runs in ``compute_dtype``; activations come back in float32. The AuxK selection
    (``dead_mask`` given) picks, per token, the ``k_aux`` largest pre-activations among latents
    where ``dead_mask`` is True; it is None without a mask.
    """
    acts, idx, aux_acts, aux_idx = _TopKEncode.apply(
        x, weight, bias, b_dec, k, dead_mask, k_aux, compute_dtype)
    aux = TopKSelection(aux_acts, aux_idx) if dead_mask is not None else None
    return TopKSelection(acts, idx), aux


def sparse_decode(acts: Tensor, indices: Tensor, w_dec: Tensor) -> Tensor:
    """``sum_j acts[b, j] * w_dec[indices[b, j]]`` for each token b: gathers of the selected
    rows, or one GEMM when the selection is wide (see ``DENSE_SHARE``)."""
    if _is_wide(indices, w_dec.shape[0]):
        return _scatter_rows(indices, acts.to(w_dec.dtype), w_dec.shape[0]) @ w_dec
    return F.embedding_bag(indices, w_dec, per_sample_weights=acts.to(w_dec.dtype), mode="sum")
