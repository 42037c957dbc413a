"""How far a cheaper way of running a model (bfloat16 weights, a quantised GGUF in llama.cpp) is
from a reference run (float32) on the same tokens. Definitions, sums over the compared positions
(a position = one token of one text; p the reference's next-token distribution, q the other's):

- ``kl_mean`` = mean over positions of KL(p ‖ q) = Σ_v p(v) (log p(v) − log q(v)), in nats;
- ``kl_max`` = the largest per-position KL;
- ``argmax_agreement`` = share of positions where argmax p = argmax q (the greedy next token);
- ``activation_fvu`` = Σ‖a − a_ref‖² / Σ‖a_ref − ā_ref‖²: the other run's hookpoint activations
  read as a "reconstruction" of the reference's (the same fraction of variance unexplained as an
  SAE's, :func:`thinksae.evaluate.metrics.fvu`), ā_ref the reference's mean over the positions.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .metrics import Moments, fvu


class NextTokenFidelity(NamedTuple):
    positions: int
    kl_mean: float
    kl_max: float
    argmax_agreement: float


class FidelityStats:
    """Running sums for :class:`NextTokenFidelity` and ``activation_fvu`` (module docstring)."""

    def __init__(self):
        self.positions = 0
        self.kl_sum = 0.0
        self.kl_max = 0.0
        self.agree = 0
        self.moments: Moments | None = None
        self.sq_err = 0.0

    def add_logits(self, ref: Tensor, other: Tensor) -> None:
        """Add positions ``[n, vocab]`` of both runs' logits (only the first common vocabulary
        columns are compared: padded vocabularies differ in length)."""
        v = min(ref.shape[-1], other.shape[-1])
        lp = F.log_softmax(ref[:, :v].double(), -1)
        lq = F.log_softmax(other[:, :v].double(), -1)
        kl = (lp.exp() * (lp - lq)).sum(-1)
        self.positions += int(kl.numel())
        self.kl_sum += float(kl.sum())
        self.kl_max = max(self.kl_max, float(kl.max())) if kl.numel() else self.kl_max
        self.agree += int((lp.argmax(-1) == lq.argmax(-1)).sum())

    def add_activations(self, ref: Tensor, other: Tensor) -> None:
        """Add positions ``[n, d]`` of both runs' hookpoint activations."""
        if self.moments is None:
            self.moments = Moments(ref.shape[-1])
        self.moments.update(ref)
        self.sq_err += float((other.double() - ref.double()).pow(2).sum())

    def next_token(self) -> NextTokenFidelity:
        n = self.positions
        return NextTokenFidelity(n, self.kl_sum / n if n else float("nan"), self.kl_max,
                                 self.agree / n if n else float("nan"))

    def activation_fvu(self) -> float | None:
        return fvu(self.sq_err, self.moments.sum_sq_dev) if self.moments else None


def sae_fvu(sae, acts: Tensor) -> float | None:
    """The SAE's FVU on ``acts [n, d]``: Σ‖x − x̂‖² / Σ‖x − x̄‖² over these rows."""
    moments = Moments(acts.shape[-1])
    x = acts.float()
    moments.update(x)
    with torch.no_grad():
        recon = sae.decode(*sae.encode(x)).float()
    return fvu(float((x - recon).double().pow(2).sum()), moments.sum_sq_dev)
