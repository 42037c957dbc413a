"""What every engine shares: the row it returns. (Sampling options and their seeds: the
:class:`~thinksae.generation.GenerationConfig` each engine is given.)"""

from __future__ import annotations

import importlib.util
import sys
from typing import NamedTuple


class Row(NamedTuple):
    """One generated sequence."""

    ids: list[int]
    """New token ids (HF tokenizer vocabulary) up to, not including, the first stop token."""
    finished: bool
    """Whether it stopped at a stop token (rather than running out of budget)."""


def installed(module: str) -> bool:
    """Whether ``module`` can be imported (without importing it)."""
    if module in sys.modules:
        return sys.modules[module] is not None
    return importlib.util.find_spec(module) is not None
