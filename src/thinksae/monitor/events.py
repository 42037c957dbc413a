"""What the monitor yields while a model generates: token, alert and done events."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

VALUES = ("topk", "pre")
"""What a monitor watches (``value``): ``topk`` (default), the SAE's activation exactly as
:meth:`thinksae.sae.Sae.encode` gives it (0 for a latent outside the token's top k); ``pre``,
``relu((x - b_dec) @ W_enc[f] + b_enc[f])``, what feature f would read were it among the top k
(> 0 for many latents the SAE leaves inactive)."""

VALUE_LABELS = {"topk": "top-k activation", "pre": "relu(pre-activation)"}
"""How the terminal view and the web page name each value."""


@dataclass
class TokenEvent:
    """One generated token and the watched features' values at its position.

    ``acts[f]`` is the value ``value`` (see ``VALUES``) of feature f at this token, x the
    hookpoint output at the token's position.
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
    value: str = "topk"
    """Which quantity ``acts`` holds: ``topk`` or ``pre`` (``VALUES``)."""
    type: str = field(default="token", init=False)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["acts"] = {str(k): v for k, v in self.acts.items()}
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
    value: str = "topk"
    """Which quantity ``values`` are means of: ``topk`` or ``pre`` (``VALUES``)."""
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
