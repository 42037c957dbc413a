"""The SAE's architecture options, saved as sparsify's ``cfg.json``; the options of `thinksae convert`
(light: no torch)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class SaeConfig:
    """Shape of a sparse autoencoder (the fields of sparsify's cfg.json that we train)."""

    expansion_factor: int = 32
    """Latents per input dimension (num_latents = d_in x expansion_factor unless --num_latents)."""
    num_latents: int = 0
    """Number of latents; 0 means d_in x expansion_factor."""
    k: int = 32
    """Active latents per token (the k of TopK; the mean over a batch for batchtopk)."""
    normalize_decoder: bool = True
    """Keep decoder rows at unit norm (and remove the gradient parallel to them each step)."""
    architecture: str = "topk"
    """topk (k latents per token), batchtopk (k x batch latents over a training batch, a learned
    threshold at inference) or jumprelu (per-latent thresholds; loaded from SAELens, not trained)."""

    def latents_for(self, d_in: int) -> int:
        """The number of latents an SAE of this config has on inputs of width ``d_in``."""
        return self.num_latents or d_in * self.expansion_factor


FORMATS = ("sparsify", "saelens")
"""SAE directory layouts thinksae reads and writes."""


@dataclass
class ConvertConfig:
    """Options of `thinksae convert`."""

    src: str
    """SAE directory to read (sparsify or SAELens layout; a run directory with one SAE works)."""
    out: str
    """Directory to write the converted SAE into (must not hold an SAE already)."""
    to: str = "saelens"
    """Format to write: saelens or sparsify."""
    hookpoint: str | None = None
    """Pick this hookpoint's SAE from a run directory; also recorded as SAELens hook_name."""
    model_name: str = ""
    """SAELens metadata.model_name to record."""
