"""Per-row sampling streams: each row draws from its own seeded random stream, so a row samples
the same tokens whatever else shares its batch."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


class RowSampler:
    """A logits processor that draws each row's next token from its own random stream
    (temperature, then nucleus top-p, no top-k) and leaves only that token, for greedy
    ``generate`` to take."""

    def __init__(self, seeds: list[int], temperature: float, top_p: float, device):
        from transformers import TemperatureLogitsWarper, TopPLogitsWarper

        self.streams = [torch.Generator(device=device).manual_seed(s) for s in seeds]
        self.warpers = [TemperatureLogitsWarper(temperature), TopPLogitsWarper(top_p)]

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        for warp in self.warpers:
            scores = warp(input_ids, scores)
        probs = F.softmax(scores.float(), dim=-1)
        picks = torch.cat([torch.multinomial(p, 1, generator=g)
                           for p, g in zip(probs, self.streams, strict=True)])
        return torch.full_like(scores, float("-inf")).scatter_(1, picks[:, None], 0.0)
