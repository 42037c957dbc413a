"""Shared pieces of the monitor tests (no tests here): a tiny SAE on the tiny model's layers.1."""

from __future__ import annotations

import torch

from thinksae.sae import Sae, SaeConfig
from thinksae.sae.formats import save_sparsify

HOOKPOINT = "layers.1"
QUESTION = "What is 15% of 80?"


def tiny_sae(seed: int = 1, k: int = 8) -> Sae:
    """A random TopK SAE (d_in 64, 256 latents) with non-zero biases, float32."""
    torch.manual_seed(seed)
    sae = Sae(64, SaeConfig(expansion_factor=4, k=k))
    with torch.no_grad():
        sae.encoder.bias.normal_(0, 0.1)
        sae.b_dec.normal_(0, 0.1)
    return sae


def saved_sae(path, seed: int = 1):
    """``tiny_sae`` written as a sparsify directory named after its hookpoint; returns the dir."""
    out = path / HOOKPOINT
    save_sparsify(tiny_sae(seed), out)
    return out
