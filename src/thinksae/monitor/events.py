"""What the monitor yields while a model generates: token, alert and done events."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class TokenEvent:
    """One generated token and the watched features' values at its position.

    ``acts[f]`` is ``relu(pre_f)`` with ``pre = (x - b_dec) @ W_enc[f] + b_enc[f]``, x the
    hookpoint output at this token: what feature f would read if it were among the token's k
    active latents (the same arithmetic as a full encode, so bit for bit the value a full encode
    gives where f is active). With the full encode on, ``topk[f]`` is the TopK SAE's actual
    activation (0 where f is not among the k active latents) and ``active`` the watched features
    that are.
    """

    token_id: int
    text: str
    position: int
    """Position in the whole sequence (prompt included)."""
    step: int
    """Index among the generated tokens (0 = first generated token)."""
    region: str
    """think, answer or special (``<think>``, ``</think>`` and other control tokens)."""
    acts: dict[int, float]
    topk: dict[int, float] | None = None
    active: list[int] | None = None
    type: str = field(default="token", init=False)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["acts"] = {str(k): v for k, v in self.acts.items()}
        if self.topk is not None:
            out["topk"] = {str(k): v for k, v in self.topk.items()}
        return out


@dataclass
class AlertEvent:
    """A rule fired on a token."""

    rule: str
    severity: str
    step: int
    position: int
    token: str
    region: str
    values: dict[int, float]
    """The values the rule compared with its threshold (means over its window)."""
    threshold: float
    action: str
    message: str = ""
    run_id: str = ""
    time: float = 0.0
    type: str = field(default="alert", init=False)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["values"] = {str(k): v for k, v in self.values.items()}
        return out


@dataclass
class DoneEvent:
    """Generation ended: ``reason`` is eos, max_tokens, stopped (a rule's stop action; ``rule``
    names it) or cancelled."""

    reason: str
    tokens: int
    text: str
    rule: str | None = None
    seconds: float = 0.0
    run_id: str = ""
    type: str = field(default="done", init=False)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


Event = TokenEvent | AlertEvent | DoneEvent
