"""What `thinksae steer` returns and writes (``steer.json``)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any


@dataclass
class SteerResult:
    """One steering run: the baseline and every steered setting; `to_dict` is the JSON as written."""

    format: str
    mode: str
    """``single`` (one setting) or ``sweep`` (one setting per value)."""
    sae: str
    hookpoint: str
    model: str | None
    window: dict[str, Any]
    """Where steering starts and ends (``--start``/``--end``)."""
    max_activation: dict[str, float] | None
    """Feature → the max activation Smax values were taken from (None without Smax)."""
    max_activation_from: str | None
    settings: dict[str, Any]
    """How every setting was generated: max_new_tokens, batch_size, do_sample, temperature, top_p,
    seed (the generation options and the batch size)."""
    questions: list[dict[str, Any]]
    baseline: dict[str, Any]
    """``summary`` and ``traces`` of the unsteered generations."""
    runs: list[dict[str, Any]]
    """Per setting: label, interventions, summary, delta to the baseline, the SAE's view of the
    steered features at the steered positions, traces."""
    png: str | None
    config: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """The result as a JSON-ready dict (field order = key order)."""
        return dataclasses.asdict(self)
