"""Streaming reconstruction metrics of an SAE, per group of tokens (all, each region, each tag,
and the regions the SAE was trained on taken together).

Every metric is a ratio or mean of running float64 sums, so an evaluation holds a fixed amount of
state however many tokens it sees, and the result over the whole eval set does not depend on how
the tokens were cut into batches. Definitions (x the hookpoint activation of a token, x̂ the SAE's
reconstruction, sums over the tokens of a group):

- ``fvu`` (fraction of variance unexplained) = Σ‖x − x̂‖² / Σ‖x − x̄‖², x̄ the group's mean
  activation (per dimension) over the whole eval set. One ratio of two sums over all tokens: not a
  mean of per-batch ratios.
- ``explained_variance`` = 1 − fvu.
- ``mse`` = Σ‖x − x̂‖² / (tokens · d_in).
- ``cosine`` = mean over tokens of x·x̂ / (‖x‖ ‖x̂‖) (0 for a zero vector).
- ``relative_norm`` = mean over tokens of ‖x̂‖ / ‖x‖.
- ``l0`` = mean over tokens of the number of latents with a non-zero activation.
- ``dead_fraction`` = share of latents that never fired (activation > 0) on the group's tokens.
- ``sinks`` = the group's tokens left out of all of the above as attention sinks
  (:mod:`thinksae.sinks`; `thinksae eval --exclude_sinks`, its default).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

ALL = "all"
"""Key of the group that holds every token."""
TRAINED = "trained"
"""Key of the group that holds the tokens of every region the SAE was trained on (one group, so
its metrics are single ratios over those tokens, not averages of per-region numbers)."""


def fvu(sum_sq_error: float, total_variance: float) -> float | None:
    """Fraction of variance unexplained: Σ‖x − x̂‖² / Σ‖x − x̄‖² (None when the variance is 0)."""
    return sum_sq_error / total_variance if total_variance > 0 else None


def loss_recovered(ce_ablated: float, ce_spliced: float, ce_clean: float) -> float | None:
    """(CE_ablated − CE_spliced) / (CE_ablated − CE_clean): 1 when splicing the SAE in costs no
    loss, 0 when it is as bad as the ablation (None when ablating changes nothing)."""
    gap = ce_ablated - ce_clean
    return (ce_ablated - ce_spliced) / gap if gap != 0 else None


class Moments:
    """Count, mean and Σ‖x − mean‖² of a stream of vectors, merged batch by batch (Chan et al.).

    The merge is exact in exact arithmetic and, unlike Σ‖x‖² − n‖x̄‖², does not lose precision
    when the mean is large next to the spread (residual streams have such dimensions).
    """

    def __init__(self, dim: int):
        self.count = 0
        self.mean = torch.zeros(dim, dtype=torch.float64)
        self.sum_sq_dev = 0.0

    def update(self, x: Tensor) -> None:
        """Add the rows of ``x [n, dim]``."""
        n = x.shape[0]
        if n == 0:
            return
        x = x.detach().to(torch.float64)
        mean_b = x.mean(0)
        sq_b = float((x - mean_b).pow(2).sum())
        total = self.count + n
        delta = mean_b.cpu() - self.mean
        self.sum_sq_dev += sq_b + float(delta.pow(2).sum()) * self.count * n / total
        self.mean += delta * (n / total)
        self.count = total


class ReconstructionStats:
    """Running sums for the reconstruction metrics of one group of tokens."""

    def __init__(self, d_in: int, num_latents: int):
        self.d_in = d_in
        self.moments = Moments(d_in)
        self.sum_sq_error = 0.0
        self.sum_cosine = 0.0
        self.sum_relative_norm = 0.0
        self.sum_l0 = 0
        self.fire_counts = torch.zeros(num_latents, dtype=torch.int64)

    @property
    def tokens(self) -> int:
        return self.moments.count

    def update(self, x: Tensor, x_hat: Tensor, latent_acts: Tensor, latent_indices: Tensor) -> None:
        """Add tokens: activations ``x``, reconstructions ``x_hat`` ``[n, d_in]``, and their
        top-k latents ``[n, k]``."""
        if x.shape[0] == 0:
            return
        x, x_hat = x.detach().float(), x_hat.detach().float()
        self.moments.update(x)
        self.sum_sq_error += float((x.double() - x_hat.double()).pow(2).sum())
        self.sum_cosine += float(F.cosine_similarity(x, x_hat, dim=-1, eps=1e-12).double().sum())
        norm = x.norm(dim=-1).double()
        ratio = x_hat.norm(dim=-1).double() / norm.clamp_min(1e-12)
        self.sum_relative_norm += float(ratio.sum())
        fired = latent_acts > 0
        self.sum_l0 += int(fired.sum())
        self.fire_counts += torch.bincount(latent_indices[fired].reshape(-1).cpu(),
                                           minlength=len(self.fire_counts))

    def result(self) -> dict[str, float | int | None]:
        """The metrics (see the module docstring); None for an empty group."""
        n = self.tokens
        if n == 0:
            return {"tokens": 0, "fvu": None, "explained_variance": None, "mse": None,
                    "cosine": None, "relative_norm": None, "l0": None, "dead_fraction": None}
        unexplained = fvu(self.sum_sq_error, self.moments.sum_sq_dev)
        return {
            "tokens": n,
            "fvu": unexplained,
            "explained_variance": None if unexplained is None else 1.0 - unexplained,
            "mse": self.sum_sq_error / (n * self.d_in),
            "cosine": self.sum_cosine / n,
            "relative_norm": self.sum_relative_norm / n,
            "l0": self.sum_l0 / n,
            "dead_fraction": float((self.fire_counts == 0).double().mean()),
        }


class TokenGroups:
    """The groups every metric is reported for: all tokens, each region, each behaviour tag, and
    (with ``trained``, a list of region names) the union of the regions the SAE was trained on.

    Keys are ``all``, ``trained``, ``region/<name>`` and ``behaviour/<name>``; codes index the
    name lists (the store manifest's ``regions`` / ``behaviours``). Behaviour code 0 (``none``)
    is no tag.
    """

    def __init__(self, regions: list[str], behaviours: list[str], trained: list[str] | None = None):
        self.regions = list(regions)
        self.behaviours = list(behaviours)
        self.trained = None if trained is None else [self.regions.index(r) for r in trained]
        self.keys = [ALL, *([TRAINED] if trained is not None else []),
                     *(f"region/{r}" for r in self.regions),
                     *(f"behaviour/{b}" for i, b in enumerate(self.behaviours) if i > 0)]

    def masks(self, regions: Tensor, behaviours: Tensor) -> dict[str, Tensor]:
        """Boolean masks over tokens for each non-empty group, from per-token codes."""
        out = {ALL: torch.ones_like(regions, dtype=torch.bool)}
        if self.trained is not None:
            codes = torch.tensor(self.trained, dtype=regions.dtype, device=regions.device)
            out[TRAINED] = torch.isin(regions, codes)
        for code, name in enumerate(self.regions):
            out[f"region/{name}"] = regions == code
        for code, name in enumerate(self.behaviours):
            if code > 0:
                out[f"behaviour/{name}"] = behaviours == code
        return {k: m for k, m in out.items() if bool(m.any())}

    def nest(self, flat: dict[str, dict]) -> dict[str, dict]:
        """``{"all": …, "regions": {name: …}, "behaviours": {name: …}}`` from per-key results,
        with ``"trained": …`` when the trained regions are a group."""
        out: dict[str, dict] = {ALL: flat[ALL], "regions": {}, "behaviours": {}}
        if TRAINED in flat:
            out[TRAINED] = flat[TRAINED]
        for key, value in flat.items():
            kind, _, name = key.partition("/")
            if kind == "region":
                out["regions"][name] = value
            elif kind == "behaviour":
                out["behaviours"][name] = value
        return out


class Grouped:
    """One accumulator per token group; ``update`` hands each the rows of its group.

    ``make()`` builds an accumulator with ``update(**tensors)`` and ``result() -> dict``. Rows
    flagged as sinks are left out of every group and counted per group instead (``sinks`` in
    each group's result, once any update passed sink flags).
    """

    def __init__(self, groups: TokenGroups, make: Callable[[], Any]):
        self.groups = groups
        self.stats = {k: make() for k in groups.keys}
        self.sinks: dict[str, int] | None = None

    def update(self, regions: Tensor, behaviours: Tensor, sinks: Tensor | None = None,
               **tensors: Tensor) -> None:
        """Add tokens: per-token ``tensors`` ``[n, …]`` with region and behaviour codes ``[n]``;
        ``sinks`` ``[n]`` (bool): rows left out and counted."""
        device = next(iter(tensors.values())).device
        if sinks is not None and self.sinks is None:
            self.sinks = dict.fromkeys(self.groups.keys, 0)
        for key, mask in self.groups.masks(regions.to(device), behaviours.to(device)).items():
            if sinks is not None:
                sink = sinks.to(device).bool()
                self.sinks[key] += int((mask & sink).sum())
                mask = mask & ~sink
            self.stats[key].update(**{name: t[mask] for name, t in tensors.items()})

    def results(self) -> dict[str, dict]:
        """Per-group results, nested by :meth:`TokenGroups.nest` (with ``sinks`` per group
        when sinks were left out)."""
        flat = {k: s.result() for k, s in self.stats.items()}
        if self.sinks is not None:
            flat = {k: {**v, "sinks": self.sinks[k]} for k, v in flat.items()}
        return self.groups.nest(flat)


def latent_frequency_histogram(fire_counts: Tensor, tokens: int, bins: int = 40) -> dict:
    """Histogram of log10(firing frequency) of the latents that fired at least once.

    Frequency = tokens the latent fired on / all tokens. Dead latents (frequency 0, no logarithm)
    are counted apart.
    """
    freq = fire_counts.double() / max(tokens, 1)
    alive = freq[freq > 0]
    dead = int((freq == 0).sum())
    if len(alive) == 0:
        return {"log10_bin_edges": [], "counts": [], "dead": dead, "alive": 0}
    logs = alive.log10()
    low = math.floor(float(logs.min()))
    high = max(0.0, float(logs.max()))
    edges = torch.linspace(low, high, bins + 1, dtype=torch.float64)
    counts = torch.histc(logs, bins=bins, min=low, max=high)
    return {"log10_bin_edges": [round(float(e), 6) for e in edges],
            "counts": [int(c) for c in counts], "dead": dead, "alive": int(len(alive))}
