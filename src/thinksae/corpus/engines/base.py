"""What every engine shares: the row it returns, the sampling settings and their seeds."""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass
from typing import NamedTuple

from ..generate import batch_seed


class Row(NamedTuple):
    """One generated sequence."""

    ids: list[int]
    """New token ids (HF tokenizer vocabulary) up to, not including, the first stop token."""
    finished: bool
    """Whether it stopped at a stop token (rather than running out of budget)."""


@dataclass(frozen=True)
class Sampling:
    """How to pick tokens: greedy, or temperature + nucleus sampling seeded per question."""

    do_sample: bool = False
    temperature: float = 0.6
    top_p: float = 0.95
    seed: int = 0

    def batch_seed(self, keys: list[str], stage: str = "") -> int:
        """One seed for a whole batch (HF engine): ``batch_seed(seed, keys [+ stage])``."""
        return batch_seed(self.seed, list(keys) + ([stage] if stage else []))

    def row_seeds(self, keys: list[str], stage: str = "") -> list[int]:
        """One 32-bit seed per sequence (engines that sample each sequence on its own): a row's
        seed depends only on the run seed, its question id and the stage, not on the batch."""
        return [self.batch_seed([k], stage) % 2**32 for k in keys]


def installed(module: str) -> bool:
    """Whether ``module`` can be imported (without importing it)."""
    if module in sys.modules:
        return sys.modules[module] is not None
    return importlib.util.find_spec(module) is not None
