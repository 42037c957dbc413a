"""Synthetic activations from a known sparse dictionary: an in-memory stand-in for a store.

Each token is a sparse non-negative mix of ``num_features`` random unit directions plus a shared
offset and a little noise, so a TopK SAE can recover the directions. For tests and benchmarks of
the trainer without a model; it has the same ``iter_batches`` / ``d_in`` / ``num_tokens`` /
``hash`` / ``manifest`` interface as :class:`thinksae.store.ActivationStore`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator

import numpy as np
import torch
from torch import Tensor

from ..errors import ThinksaeError


class SyntheticActivations:
    """``num_tokens`` float32 vectors of width ``d_in`` built from a seeded sparse dictionary."""

    def __init__(
        self,
        d_in: int = 32,
        num_tokens: int = 4096,
        num_features: int = 128,
        active: int = 4,
        offset: float = 1.0,
        noise: float = 0.01,
        seed: int = 0,
    ):
        g = torch.Generator().manual_seed(seed)
        self.features = torch.randn(num_features, d_in, generator=g)
        self.features /= self.features.norm(dim=1, keepdim=True)
        scores = torch.rand(num_tokens, num_features, generator=g)
        idx = scores.topk(active, dim=1).indices
        coef = torch.zeros(num_tokens, num_features)
        coef.scatter_(1, idx, torch.rand(num_tokens, active, generator=g) * 2 + 0.5)
        bias = offset * torch.randn(d_in, generator=g)
        noise_t = noise * torch.randn(num_tokens, d_in, generator=g)
        self.data: Tensor = coef @ self.features + bias + noise_t
        self.manifest = {
            "model": "synthetic",
            "hookpoint": "synthetic",
            "d_in": d_in,
            "dtype": "float32",
            "num_tokens": num_tokens,
            "synthetic": dict(num_features=num_features, active=active, offset=offset,
                              noise=noise, seed=seed),
        }

    @property
    def d_in(self) -> int:
        return self.data.shape[1]

    @property
    def num_tokens(self) -> int:
        return self.data.shape[0]

    @property
    def hash(self) -> str:
        """Hash of the manifest (the generating parameters name the data exactly)."""
        blob = json.dumps(self.manifest, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def iter_batches(
        self, batch_size: int, seed: int = 0, start_batch: int = 0, rank: int = 0,
        world_size: int = 1,
    ) -> Iterator[Tensor]:
        """One seeded shuffled pass; rank ``r`` gets the r-th slice of each global batch."""
        if batch_size % world_size:
            raise ThinksaeError(f"batch size {batch_size} is not divisible by {world_size} ranks")
        perm = torch.from_numpy(np.random.default_rng(seed).permutation(self.num_tokens))
        per_rank = batch_size // world_size
        for b in range(start_batch, self.num_tokens // batch_size):
            rows = perm[b * batch_size : (b + 1) * batch_size]
            yield self.data[rows[rank * per_rank : (rank + 1) * per_rank]].clone()
