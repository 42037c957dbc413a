"""Which eval tokens are sinks (:mod:`thinksae.sinks`), and the tally `thinksae eval` records.

A token is a sink when it is in the ``special`` region (the control tokens the store and the
corpus tokenisation label as such) or its hookpoint norm is above the rule's multiple of the
median norm. The rule and its median come from the store when one is given (its manifest's rule,
else the default multiple with the median of the store's non-special tokens), else the default
multiple with the median of each batch's non-special tokens.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, NamedTuple

import torch
from torch import Tensor

from ..sinks import SinkRule, sink_summary

COUNTS = ("tokens", "sinks", "special", "by_norm")
"""The counts of :func:`thinksae.sinks.sink_summary`, summed over an eval set."""
TOP_IDS = 5
"""How many of the commonest norm-sink token ids the tally keeps."""


class EvalSinkRule(NamedTuple):
    """The rule an evaluation applies and where its median comes from."""

    rule: SinkRule
    median_from: str
    """``store`` (the store's reference median) or ``batch`` (each batch's own)."""

    def to_dict(self) -> dict[str, Any]:
        return {**self.rule.to_dict(), "median_from": self.median_from}


def eval_sink_rule(store) -> EvalSinkRule:
    """The store's rule (:attr:`~thinksae.store.reader.ActivationStore.sink_rule`, with its
    median) when a store is given, else the default rule with each batch's median."""
    if store is not None:
        return EvalSinkRule(store.sink_rule, "store")
    return EvalSinkRule(SinkRule(), "batch")


def special_code(region_names: list[str]) -> int | None:
    """The code of the ``special`` region (None when the data has none)."""
    return region_names.index("special") if "special" in region_names else None


def special_mask(regions: Tensor, code: int | None) -> Tensor:
    """Bool per token: in the special region."""
    if code is None:
        return torch.zeros_like(regions, dtype=torch.bool)
    return regions == code


def sink_mask(rule: SinkRule, outputs: Tensor, special: Tensor, valid: Tensor | None = None
              ) -> Tensor:
    """Bool ``[...]`` over the leading dimensions of ``outputs [..., d]``: the sinks by ``rule``
    among the ``valid`` tokens (all when None; padding is never a sink). The median, where the
    rule has none, is over the valid non-special tokens given."""
    norms = outputs.detach().float().norm(dim=-1).cpu()
    special = special.cpu().bool()
    if valid is None:
        return rule.mask(norms, special)
    valid = valid.cpu().bool()
    out = torch.zeros_like(valid)
    out[valid] = rule.mask(norms[valid], special[valid])
    return out


class SinkTally:
    """Running :func:`thinksae.sinks.sink_summary` over an eval set: the counts summed, and the
    commonest norm-sink token ids with how often they were sinks."""

    def __init__(self):
        self.counts = dict.fromkeys(COUNTS, 0)
        self.ids: Counter[int] = Counter()

    def update(self, sinks: Tensor, special: Tensor, token_ids: Tensor) -> None:
        """Add tokens (1-D, or any shape alike): their sink and special flags and ids."""
        summary = sink_summary(sinks.cpu(), special.cpu(), token_ids.cpu(), top=max(1, token_ids.numel()))
        for key in COUNTS:
            self.counts[key] += summary[key]
        for row in summary.get("by_norm_tokens", []):
            self.ids[row["id"]] += row["count"]

    def result(self, decode=None) -> dict[str, Any]:
        """The counts and ``by_norm_tokens`` (the :data:`TOP_IDS` commonest norm-sink ids, with
        their text when ``decode`` (id → text) is given), as ``sink_summary`` writes them."""
        out: dict[str, Any] = dict(self.counts)
        out["by_norm_tokens"] = [
            {"id": i, "count": n, **({"text": decode(i)} if decode is not None else {})}
            for i, n in sorted(self.ids.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP_IDS]]
        return out
