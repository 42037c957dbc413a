"""Pre-packed float32 linear layers on CPU: the decoder blocks' weights reordered once for oneDNN.

A float32 ``nn.Linear`` on CPU repacks its weight matrix on every call; for the few rows of a
decode step that costs more than the multiplication (2-core AMD EPYC, AVX2 only, an 8960 × 1536
weight: 23.7 ms dense vs 8.8 ms packed for 20 rows, 32.6 vs 12.8 ms for 40, 164.9 vs 122.7 ms for
8 × 64; ``python bench/generate.py`` times whole decode steps). :func:`pack_linears` reorders
each block linear's weight once (``torch.ops.mkldnn._reorder_linear_weight``) and has the layer
multiply with it (``_linear_pointwise``); the dense weight is dropped, so memory does not grow.
Results equal the dense ones up to float32 rounding (another summation order), and a row's
result does not depend on the other rows of its batch (tests check both). The packed op has no
backward: where gradients are asked for (attribution), the layer multiplies by its weight
unpacked for that call.

Used by :func:`~thinksae.models.load_model` for float32 models on CPU where torch has oneDNN;
``THINKSAE_PACKED=0`` turns it off. The LM head and embeddings stay dense (they are read
directly, e.g. by the logit lens, and may be tied).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..env import env_flag
from .hookpoints import decoder_stack

BATCH_HINT = 32
"""Rows the packing is tuned for (any number of rows works)."""


class PackedLinear(nn.Module):
    """A linear layer whose weight is held only in oneDNN's packed layout."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight = linear.weight.detach()
        self.packed = torch.ops.mkldnn._reorder_linear_weight(weight, BATCH_HINT)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach(),
                                                                   requires_grad=False)

    def forward(self, x: Tensor) -> Tensor:
        if torch.is_grad_enabled() and x.requires_grad:  # the packed op has no backward
            return F.linear(x, self.packed.to_dense(), self.bias)
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, packed"


def packing_wanted(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether :func:`load_model` packs: float32 on CPU with oneDNN, not THINKSAE_PACKED=0."""
    return (device.type == "cpu" and dtype == torch.float32
            and env_flag("THINKSAE_PACKED", True)
            and torch.backends.mkldnn.is_available())


def pack_linears(model: nn.Module) -> int:
    """Replace every float32 CPU ``nn.Linear`` inside the decoder blocks by a
    :class:`PackedLinear`; returns how many were replaced (0 when oneDNN cannot pack)."""
    blocks = decoder_stack(model).layers
    targets = [(name, m) for name, m in blocks.named_modules()
               if type(m) is nn.Linear and m.weight.dtype == torch.float32
               and m.weight.device.type == "cpu"]
    count = 0
    for name, linear in targets:
        parent_name, _, child = name.rpartition(".")
        parent = blocks.get_submodule(parent_name) if parent_name else blocks
        try:
            packed = PackedLinear(linear)
        except (RuntimeError, AttributeError):  # a torch without this oneDNN op
            return count
        setattr(parent, child, packed)
        count += 1
    return count
