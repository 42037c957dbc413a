"""The SAE's architecture options, saved as sparsify's ``cfg.json``; the options of `thinksae convert`
(light: no torch)."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ThinksaeError


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
    threshold at inference), matryoshka_batchtopk (batchtopk whose nested prefixes of latents
    each reconstruct the input; give --matryoshka_widths) or jumprelu (per-latent thresholds;
    loaded from SAELens, not trained)."""
    matryoshka_widths: str = ""
    """matryoshka_batchtopk only: cumulative prefix widths, comma-separated, strictly increasing
    and ending at the number of latents, e.g. --matryoshka_widths 128,512,2048,4096 for 4096
    latents (latents 0..127 reconstruct on their own, then 0..511, ...), as SAELens names them."""

    def latents_for(self, d_in: int) -> int:
        """The number of latents an SAE of this config has on inputs of width ``d_in``."""
        return self.num_latents or d_in * self.expansion_factor

    def prefix_widths(self) -> tuple[int, ...]:
        """``matryoshka_widths`` as integers (``()`` when empty); a one-line error when they are
        not positive integers in strictly increasing order (the last one is checked against the
        number of latents by the architecture)."""
        text = self.matryoshka_widths.strip()
        if not text:
            return ()
        try:
            widths = tuple(int(part) for part in text.split(","))
        except ValueError:
            raise ThinksaeError(f"--matryoshka_widths {text!r}: give comma-separated integers, "
                                "e.g. 128,512,2048,4096") from None
        if min(widths) < 1 or any(a >= b for a, b in zip(widths, widths[1:])):
            raise ThinksaeError(f"--matryoshka_widths {text!r} must be positive and strictly "
                                "increasing (cumulative prefix widths, e.g. 128,512,2048,4096)")
        return widths

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
