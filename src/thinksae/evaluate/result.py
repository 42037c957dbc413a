"""What `thinksae eval` returns and writes (``eval.json``, the report card's ``eval`` section)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any


@dataclass
class EvalData:
    """The eval set."""

    mode: str
    """``model`` (spliced losses too) or ``store`` (reconstruction on stored activations)."""
    store: str | None
    corpus: str | None
    model: str | None
    tokens: int
    """Tokens read (the metrics' own ``tokens`` leave the sinks out)."""
    split: str
    traces: int | None
    """Documents of ``split`` (None: all of them)."""
    tokenizer_hash: str | None
    store_hash: str | None
    corpus_hash: str | None


@dataclass
class EvalResult:
    """One evaluation of an SAE; `to_dict` is the JSON as written."""

    sae: str
    format: str | None
    """``sparsify`` or ``saelens``."""
    hookpoint: str
    d_in: int
    num_latents: int
    k: int
    data: EvalData
    headline: dict[str, Any]
    """The trained regions' numbers (see ``headline.py``)."""
    metrics: dict[str, Any]
    """Per group (all, trained, each region and behaviour): reconstruction metrics and, with a
    model, the spliced losses; ``sinks`` per group: its tokens left out as sinks."""
    sinks: dict[str, Any]
    """The sink rule applied (``rule``, with ``median_from``), whether sinks were left out
    (``excluded``) and what it found (:class:`~thinksae.evaluate.sink_tokens.SinkTally`)."""
    saebench: dict[str, Any]
    """SAEBench's metrics (``core``, ``probing``, ``absorption``; None when off) and their
    ``definitions`` (:mod:`thinksae.evaluate.bench`)."""
    latent_frequency: dict[str, Any]
    """The latent-frequency histogram and its PNG."""
    config: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """The result as a JSON-ready dict (field order = key order)."""
        return dataclasses.asdict(self)
