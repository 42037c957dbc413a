"""Matryoshka BatchTopK SAE (Bussmann, Nabeshima, Karvonen & Nanda 2025), registered under
SAELens' name ``matryoshka_batchtopk``.

Selection is BatchTopK's (:class:`~thinksae.sae.batchtopk_sae.BatchTopKSae`, inherited): while
training, one top k·B over all B·num_latents values of relu(pre) of a batch of B tokens, and a
threshold θ learned from it; at inference a latent fires where relu(pre) > θ. There is no top-k
per prefix: the latents of an inner prefix are the globally selected ones that fall inside it,
so an inner prefix sees fewer than k active latents per token on average.

Nested prefixes m_1 < m_2 < … < m_n = num_latents (``matryoshka_widths``, cumulative, as SAELens
gives them). With f(x) the selected activations ``[B, num_latents]`` (0 elsewhere):

  x̂_m      = f(x)[:, :m] W_dec[:m] + b_dec                    (prefix m decodes on its own)
  FVU_m    = Σ_b ‖x_b − x̂_m,b‖² / Σ_b ‖x_b − x̄‖²,  x̄ = the batch mean of x
  loss     = Σ_{j=1..n} FVU_{m_j} + α · AuxK                   (unweighted; the outermost once)

FVU_{m_n} is the ordinary FVU of the whole SAE, reported as ``fvu``; the per-prefix values come
back as ``ForwardOutput.prefix_fvu`` and their sum as ``ForwardOutput.reconstruction_loss``,
which the trainer minimises; :meth:`MatryoshkaBatchTopKSae.decode_prefix` gives x̂_m for metrics
pooled over a data set. AuxK is every architecture's: the top dead latents reconstruct the
residual of the whole SAE, x − x̂_{m_n} (SAELens' default; its per-level aux option is not here).

Loss scale against the reference implementations (the minimiser of the reconstruction terms is
the same up to Bussmann's extra term; what changes is the scale, and so how strongly AuxK and
Adam's epsilon weigh against it — compare runs by FVU, not by loss):

- SAELens: Σ_m mean_b Σ_d (x − x̂_m)², i.e. ours times the batch's per-token variance
  Σ_b ‖x_b − x̄‖² / B;
- dictionary_learning (the paper's code): the same squared errors averaged over the n groups
  (uniform group weights), i.e. SAELens' divided by n; widths given as group fractions;
- Bussmann's own repository: the per-element mean (÷ d as well), plus a term for b_dec alone
  (the empty prefix), all divided by n + 1.

Widths that do not end at num_latents are refused rather than completed (SAELens appends the
width with a warning): the width is often derived from d_in × expansion_factor, and a silently
added outer level changes the nesting the user asked for. One level alone is plain BatchTopK and
is refused too. Saved like BatchTopK (a scalar ``threshold``; ``activation:
"matryoshka_batchtopk"`` and ``matryoshka_widths`` in cfg.json); SAELens gets it as JumpReLU
(:func:`thinksae.sae.formats.save_saelens`).
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import Tensor

from ..errors import ThinksaeError
from .base import ForwardOutput, register
from .batchtopk_sae import BatchTopKSae
from .config import SaeConfig
from .kernels import sparse_decode


@register
class MatryoshkaBatchTopKSae(BatchTopKSae):
    """BatchTopK whose nested prefixes of latents are each trained to reconstruct the input."""

    architecture = "matryoshka_batchtopk"

    def __init__(self, d_in, cfg=None, device="cpu", dtype=None):
        super().__init__(d_in, cfg, device=device, dtype=dtype)
        self.prefix_widths: tuple[int, ...] = self.cfg.prefix_widths()
        """m_1 < … < m_n = num_latents."""

    @classmethod
    def check_config(cls, cfg: SaeConfig, num_latents: int | None = None) -> None:
        """k as for every architecture; widths given, two or more, increasing, ending at the
        number of latents (when known)."""
        super().check_config(replace(cfg, matryoshka_widths=""), num_latents)
        widths = cfg.prefix_widths()
        if not widths:
            raise ThinksaeError("matryoshka_batchtopk needs --matryoshka_widths (cumulative prefix "
                                "widths ending at the number of latents, e.g. 128,512,2048,4096)")
        if len(widths) < 2:
            raise ThinksaeError(f"--matryoshka_widths {cfg.matryoshka_widths!r} has one prefix: "
                                "give two or more (one alone is --architecture batchtopk)")
        if num_latents is not None and widths[-1] != num_latents:
            raise ThinksaeError(f"--matryoshka_widths {cfg.matryoshka_widths!r} must end at the "
                                f"number of latents, {num_latents} (e.g. add ,{num_latents})"
                                if widths[-1] < num_latents else
                                f"--matryoshka_widths {cfg.matryoshka_widths!r} must end at the "
                                f"number of latents, {num_latents}, not above it")

    def decode_prefix(self, latent_acts: Tensor, latent_indices: Tensor, width: int) -> Tensor:
        """x̂_m = Σ_{j: i_j < m} a_j W_dec[i_j] + b_dec for m = ``width``: what prefix m alone
        reconstructs from ``[..., w]`` activations and indices (e.g. :meth:`encode`'s), for
        per-prefix metrics pooled over a data set."""
        return self.decode(latent_acts * (latent_indices < width), latent_indices)

    def forward(self, x: Tensor, dead_mask: Tensor | None = None,
                aux_k: int | None = None, auxk_norm: str = "x") -> ForwardOutput:
        """BatchTopK's forward (one selection, ``fvu`` = FVU of the whole SAE, AuxK), plus
        ``prefix_fvu`` = [FVU_{m_1}, …, FVU_{m_n}] from that same selection."""
        out = super().forward(x, dead_mask=dead_mask, aux_k=aux_k, auxk_norm=auxk_norm)
        w_dec = self.W_dec.to(self._compute_dtype(x))
        x = x.reshape(-1, self.d_in).float()
        total_variance = (x - x.mean(0)).pow(2).sum()
        inner = []
        for width in self.prefix_widths[:-1]:
            acts = out.latent_acts * (out.latent_indices < width)
            x_hat = sparse_decode(acts, out.latent_indices, w_dec).float() + self.b_dec
            inner.append((x - x_hat).pow(2).sum() / total_variance)
        return out._replace(prefix_fvu=torch.stack([*inner, out.fvu]))
