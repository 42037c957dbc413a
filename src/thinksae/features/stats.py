"""The collected statistics (tensors + metadata), their file (``stats.safetensors``) and bins."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor

from .. import atomic
from ..errors import ThinksaeError
from .traces import TRACE_TENSORS

HIST_LOG10_MIN, HIST_PER_DECADE, HIST_DECADES = -3, 5, 7
HIST_BINS = HIST_PER_DECADE * HIST_DECADES + 2
"""Activation histogram: bin 0 holds activations below 1e-3, the last those of 1e4 and above,
the others are log-spaced (5 per decade) in between."""
GLOBAL_TENSORS = ("region_tokens", "behaviour_tokens", "group_tokens")
"""Tensors counted over tokens, not per feature."""


def hist_bin(acts: Tensor) -> Tensor:
    """The histogram bin of each (positive) activation."""
    b = torch.floor((torch.log10(acts.float().clamp_min(1e-30)) - HIST_LOG10_MIN) * HIST_PER_DECADE)
    return (b.long() + 1).clamp(0, HIST_BINS - 1)


def hist_edges() -> list[float]:
    """The ``HIST_BINS + 1`` bin edges (0 and inf at the ends)."""
    inner = [10 ** (HIST_LOG10_MIN + i / HIST_PER_DECADE) for i in range(HIST_BINS - 1)]
    return [0.0, *inner, math.inf]


@dataclass
class FeatureStats:
    """Everything one pass collected: tensors keyed by name (first dimension = feature) and
    counts/options in ``meta``."""

    tensors: dict[str, Tensor]
    """Per-feature tensors (first dimension = feature), the token counts of ``GLOBAL_TENSORS``
    and the per-trace tables of ``TRACE_TENSORS``, by name."""
    meta: dict = field(default_factory=dict)

    @property
    def num_latents(self) -> int:
        return int(self.meta["num_latents"])

    def save(self, path: str | Path) -> None:
        """Write ``stats.safetensors`` atomically (metadata as JSON in the header)."""
        tensors = {k: v.contiguous().cpu() for k, v in self.tensors.items()}
        with atomic.atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata={"meta": json.dumps(self.meta)})

    @classmethod
    def load(cls, path: str | Path, feature: int | None = None) -> FeatureStats:
        """Read the statistics, or with ``feature`` only that feature's rows (shape ``[1, …]``)
        of the per-feature tensors (the others whole, the per-trace tables not at all). Files
        written before the per-trace tables existed load as they are (without them)."""
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = json.loads(f.metadata()["meta"])
                t = {}
                for name in f.keys():
                    if feature is None:
                        t[name] = f.get_tensor(name)
                        continue
                    if name in TRACE_TENSORS:
                        continue
                    if name in GLOBAL_TENSORS:
                        t[name] = f.get_tensor(name)
                    else:
                        t[name] = f.get_slice(name)[feature : feature + 1]
        except (SafetensorError, OSError, KeyError, ValueError, json.JSONDecodeError) as e:
            raise ThinksaeError(f"cannot read feature statistics {path}: {e}") from None
        return cls(t, meta)
