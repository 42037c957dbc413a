"""Calibrate a batch-threshold SAE's inference threshold after training.

BatchTopK (and the architectures built on it) keeps the k·B largest activations of a training
batch of B tokens, and at inference fires a latent where relu(pre) > θ. The running estimate of θ
during training (the mean of each batch's smallest kept activation) lags on a short run and is
pushed up by outlier rows, so the inference L0 can be far from k. Calibration sets θ from the
trained weights instead, on N training rows (sinks already left out):

    θ = the (k·N + 1)-th largest of the N · num_latents values relu(pre(x))

so that exactly k·N activations lie above it (ties apart), i.e. the mean L0 over those rows is k.
When fewer than k·N values are positive, θ = 0 (every positive activation fires).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor


def has_batch_threshold(sae) -> bool:
    """Whether ``sae`` fires by one scalar inference threshold (a 0-d ``threshold`` buffer)."""
    threshold = getattr(sae, "threshold", None)
    return isinstance(threshold, Tensor) and threshold.dim() == 0


@torch.no_grad()
def calibrated_threshold(sae, rows: Iterable[Tensor], k: float, num_rows: int) -> float:
    """θ of the module docstring over the ``num_rows`` rows that ``rows`` yields (``[n, d_in]``
    batches in the SAE's input units)."""
    want = int(k * num_rows) + 1
    kept = torch.zeros(0)
    seen = 0
    for x in rows:
        seen += len(x)
        values = sae.pre_acts(x.to(sae.device)).relu().flatten().float().cpu()
        merged = torch.cat([kept, values[values > 0]])
        kept = merged.topk(min(want, len(merged)), sorted=False).values
    if seen != num_rows:
        raise ValueError(f"calibration expected {num_rows} rows, got {seen}")
    return float(kept.min()) if len(kept) >= want else 0.0


@torch.no_grad()
def calibrate(sae, rows: Iterable[Tensor], k: float, num_rows: int) -> dict:
    """Set ``sae.threshold`` to :func:`calibrated_threshold`; returns ``{"threshold_estimated",
    "threshold", "calibration_tokens"}`` for the report card."""
    before = float(sae.threshold)
    theta = calibrated_threshold(sae, rows, k, num_rows)
    sae.threshold.fill_(theta)
    return {"threshold_estimated": before, "threshold": theta, "calibration_tokens": num_rows}
