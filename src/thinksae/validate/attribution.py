"""(d) Attribution patching for every SAE latent at once: one forward and one backward per
batch with the SAE spliced in and its error term kept as a constant,

    x = Σ_j a_j W_dec[j] + b_dec + (x − x̂)|const,

gives ∂m/∂a_j at every position, m = Σ over target positions of the metric (log p or logit of
the next token, see :mod:`.causal`). The estimated effect of ablating latent i everywhere it
fires is the first-order change −Σ_positions a_i ∂m/∂a_i; it equals the real ablation effect
(``ablate_dmetric``) where m is linear in a_i.
"""

from __future__ import annotations

import torch

from ..models.hookpoints import resolve_hookpoint
from ..models.splice import final_hidden, output_head, splice
from .causal import Batch, metric_values


def attribution(model, sae, hookpoint: str, batches: list[Batch], metric: str) -> torch.Tensor:
    """``[num_latents]`` float64 estimated ablation effect on m of every latent."""

    module, head = resolve_hookpoint(model, hookpoint), output_head(model)
    total = torch.zeros(sae.num_latents, dtype=torch.float64)
    held: dict = {}

    def replace(out: torch.Tensor) -> torch.Tensor:
        x = out.float()
        with torch.no_grad():
            acts, idx = sae.encode(x.to(sae.device, sae.dtype))
        a = acts.detach().float().requires_grad_(True)
        held["a"], held["idx"] = a, idx
        x_hat = sae.decode(a.to(sae.dtype), idx).float().to(x.device)
        return (x_hat + (x - x_hat).detach()).to(out.dtype)

    for b in batches:
        with torch.enable_grad(), splice(module, replace):
            h = final_hidden(model, b.ids, b.mask)
            rows = torch.nonzero(b.target)
            if not len(rows):
                continue
            m = metric_values(head, h[rows[:, 0], rows[:, 1]], b.next_ids[rows[:, 0], rows[:, 1]],
                              metric).sum()
            (grad,) = torch.autograd.grad(m, held["a"])
        real = b.mask.bool().to(grad.device)[..., None]
        contrib = -(held["a"].detach() * grad * real)
        total.index_add_(0, held["idx"].reshape(-1).cpu(), contrib.reshape(-1).double().cpu())
    return total
