"""Which tokens count: the one rule for attention-sink tokens, used everywhere tokens are counted.

A few positions of every sequence carry residual norms one to three orders of magnitude above
the rest (attention sinks): the first token, but in Qwen-family models also ordinary tokens such
as an early "\\n". Left in, they dominate pooled reconstruction metrics, take most of a
BatchTopK batch's latent budget, and fill every max-pooled or top-example view. The rule:

    sink(t) = special(t)  or  ‖x_t‖ > m · median_norm

- ``special(t)``: t is one of the tokenizer's special or control ids (BOS, EOS, padding, role
  and think markers; in a store, the ``special`` region);
- ``m`` = :attr:`SinkRule.norm_multiple` (dictionary_learning's ``max_activation_norm_multiple``;
  None turns the norm test off), ``median_norm`` = the median ‖x‖ over the non-special tokens
  of the reference data (the activation store the SAE was trained on, recorded in its
  manifest), or, where no reference is known, over the non-special tokens given.

Training, evaluation, feature analysis (max-pooling and top examples), validation, steering and
monitor displays and the workbench keep only ``~sink``; each records how many tokens the rule
dropped (:func:`sink_summary`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor

from .errors import ThinksaeError

DEFAULT_NORM_MULTIPLE = 10.0
"""m of the rule: a token whose norm is above 10x the median is a sink (dictionary_learning's
suggested value)."""


@dataclass(frozen=True)
class SinkRule:
    """The sink rule's parameters (module docstring)."""

    norm_multiple: float | None = DEFAULT_NORM_MULTIPLE
    """Tokens whose residual norm is above this multiple of the median norm are sinks (None:
    special tokens only)."""
    median_norm: float | None = None
    """The reference median norm (of the store's non-special tokens); None: the median of the
    non-special norms each call is given."""

    def __post_init__(self):
        check_norm_multiple(self.norm_multiple)
        if self.median_norm is not None and not self.median_norm > 0:
            raise ThinksaeError(f"the sink rule's median norm must be > 0 (got {self.median_norm})")

    def threshold(self, norms: Tensor, special: Tensor) -> float:
        """The norm above which a token is a sink: m · median (inf with no norm test, or when no
        median is known and no non-special token is given)."""
        if self.norm_multiple is None:
            return float("inf")
        median = self.median_norm
        if median is None:
            median = median_norm(norms, special)
        return float("inf") if median is None else self.norm_multiple * median

    def mask(self, norms: Tensor, special: Tensor) -> Tensor:
        """Bool mask of sinks, the shape of ``norms`` (``special``: the special tokens, same
        shape)."""
        special = special.to(torch.bool)
        if norms.shape != special.shape:
            raise ThinksaeError(f"sink rule: norms {tuple(norms.shape)} and special flags "
                                f"{tuple(special.shape)} differ in shape")
        return special | (norms.float() > self.threshold(norms, special))

    def with_median(self, norms: Tensor, special: Tensor) -> SinkRule:
        """This rule with its reference median taken from ``norms`` (e.g. a whole store)."""
        return SinkRule(self.norm_multiple, median_norm(norms, special))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> SinkRule:
        """The rule recorded in a manifest or report card (the default rule when none is)."""
        if not data:
            return cls()
        unknown = sorted(set(data) - {"norm_multiple", "median_norm"})
        if unknown:
            raise ThinksaeError(f"unknown sink rule fields {unknown}")
        return cls(data.get("norm_multiple", DEFAULT_NORM_MULTIPLE), data.get("median_norm"))


def check_norm_multiple(value: float | None) -> None:
    """A norm multiple must be a number above 1 (at or below 1 the median token is a sink)."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 1 \
            or value == float("inf"):
        raise ThinksaeError(f"the sink norm multiple must be a finite number > 1 (got {value!r}); "
                            "use none to keep only the special-token rule")


def median_norm(norms: Tensor, special: Tensor | None = None) -> float | None:
    """The median of ``norms`` over the non-special tokens (torch's lower median for an even
    count); None when there are none."""
    values = norms.float().reshape(-1)
    if special is not None:
        values = values[~special.reshape(-1).to(torch.bool)]
    return float(values.median()) if values.numel() else None


def special_flags(token_ids: Tensor, special_ids: Iterable[int]) -> Tensor:
    """Bool mask of the tokens whose id is one of ``special_ids``."""
    ids = torch.as_tensor(sorted({int(i) for i in special_ids}), dtype=token_ids.dtype,
                          device=token_ids.device)
    return torch.isin(token_ids, ids)


def sink_summary(sinks: Tensor, special: Tensor, token_ids: Tensor | None = None,
                 decode=None, top: int = 5) -> dict[str, Any]:
    """What the rule dropped, for manifests and report cards: ``tokens`` (all), ``sinks``,
    ``special`` (sinks by id), ``by_norm`` (sinks that are not special) and, with
    ``token_ids``, the commonest ids among the norm sinks (``decode``: id → text)."""
    sinks, special = sinks.reshape(-1).bool(), special.reshape(-1).bool()
    by_norm = sinks & ~special
    out: dict[str, Any] = {"tokens": int(sinks.numel()), "sinks": int(sinks.sum()),
                           "special": int(special.sum()), "by_norm": int(by_norm.sum())}
    if token_ids is not None and bool(by_norm.any()):
        ids, counts = token_ids.reshape(-1)[by_norm].unique(return_counts=True)
        order = counts.argsort(descending=True)[:top]
        out["by_norm_tokens"] = [
            {"id": int(ids[i]), "count": int(counts[i]),
             **({"text": decode(int(ids[i]))} if decode is not None else {})} for i in order]
    return out
