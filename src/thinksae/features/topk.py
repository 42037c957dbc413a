"""Bounded per-feature tables kept as tensors: top-N by value within groups, vectorised."""

from __future__ import annotations

import torch
from torch import Tensor


def top_per_group(groups: Tensor, values: Tensor, num_groups: int, n: int
                  ) -> tuple[Tensor, Tensor, Tensor]:
    """The ``n`` largest ``values`` of each group.

    Returns ``(index, group, rank)`` of the kept entries: their positions in the inputs, their
    group and their rank (0 = largest) within it. Ties keep the earlier entry first.
    """
    order = torch.argsort(values, descending=True, stable=True)
    by_group = torch.argsort(groups[order], stable=True)
    index = order[by_group]
    g = groups[index]
    counts = torch.bincount(g, minlength=num_groups)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(len(g), device=g.device) - starts[g]
    keep = rank < n
    return index[keep], g[keep], rank[keep]
