"""What the workbench's forms start with, taken from the run, so that the first click works.

The steer form (:func:`steer_defaults`): the window (start/end), think-prefill, system prompt
and token budget come from the run's ``steer`` section of ``run_config.json`` where it sets them,
else from the corpus section (how the run's traces were generated: system prompt and
think-prefill), else from the tokenizer (:func:`thinksae.steer.run.default_window`: sentence ..
think_end when ``<think>``/``</think>`` are single tokens, else prompt .. none, i.e. every
generated token steered). Try text wraps the pasted text in the same system prompt and
think-prefill (:func:`prompting`).

The index (:func:`index_sort`): live features ranked by ReasonScore when the run has reasoning-word
signal (some live feature with ReasonScore > 0), else by ``think_rate_ratio_lo``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from ..steer.run import default_window

DEFAULT_STEER_TOKENS = 64
"""Tokens the steer form asks for when the run's steer section sets none."""
HIDDEN_LABELS = ("dead", "rare")
"""Labels the index hides until asked (never fired, or too few firings to judge)."""


class Prompting(NamedTuple):
    """How the run prompted its model: system prompt and think-prefill, and where they came from."""

    system_prompt: str | None
    think_prefill: bool
    source: str
    """``steer``, ``corpus`` (the run's section that set them) or ``default``."""


class SteerDefaults(NamedTuple):
    """The steer form's starting values and one line saying why."""

    start: str
    end: str
    think_prefill: bool
    system_prompt: str | None
    max_new_tokens: int
    why: str

    def to_dict(self) -> dict[str, Any]:
        return self._asdict()


def _section(config: dict, name: str) -> dict:
    value = config.get(name)
    return value if isinstance(value, dict) else {}


def prompting(config: dict) -> Prompting:
    """The run's system prompt and think-prefill: from its ``steer`` section when that sets
    either, else its ``corpus`` section, else none and off."""
    for name in ("steer", "corpus"):
        sec = _section(config, name)
        if sec.get("system_prompt") is not None or sec.get("think_prefill") is not None:
            return Prompting(sec.get("system_prompt") or None, bool(sec.get("think_prefill")), name)
    return Prompting(None, False, "default")


def steer_defaults(config: dict, single_token: bool, max_new_tokens: int) -> SteerDefaults:
    """The steer form's defaults for a run (module docstring); ``single_token``: whether the
    tokenizer has single ``<think>``/``</think>`` tokens; ``max_new_tokens``: the server's limit
    (the budget is the run's steer ``max_new_tokens``, else 64, at most the limit)."""
    sec = _section(config, "steer")
    start, end = sec.get("start"), sec.get("end")
    if not single_token and (start not in (None, "prompt") or end not in (None, "none")):
        start = end = None  # the run's window cannot open on this tokenizer: use what can
    window = default_window(single_token, None if start is None else str(start),
                            None if end is None else str(end))
    prompt = prompting(config)
    budget = sec.get("max_new_tokens")
    budget = budget if isinstance(budget, int) and not isinstance(budget, bool) and budget > 0 \
        else DEFAULT_STEER_TOKENS
    if start is not None or end is not None:
        why = "from the run's steer settings"
    elif single_token:
        why = ("this tokenizer has single <think>/</think> tokens: steering starts after the "
               "thinking's first sentence and stops at </think>")
    else:
        why = "this tokenizer has no single <think> token: every generated token is steered"
    if prompt.source != "default":
        why += f"; system prompt and think prefill as the run's {prompt.source} had them"
    return SteerDefaults(str(window.start), str(window.end), prompt.think_prefill,
                         prompt.system_prompt, min(budget, max_new_tokens), why)


def _positive(rows: list[dict], score: str) -> bool:
    return any(isinstance(r.get(score), (int, float)) and r[score] > 0 for r in rows
               if r.get("label") not in HIDDEN_LABELS)


def index_sort(rows: list[dict]) -> dict[str, str]:
    """``{"score", "why"}``: the score the index opens sorted by (descending): ReasonScore when
    some live feature has ReasonScore > 0, else ``think_rate_ratio_lo`` when some live feature
    has one above 0, else ``freq``."""
    if _positive(rows, "reason_score"):
        return {"score": "reason_score",
                "why": "ReasonScore (Galichin et al. 2025): the feature's share of all features' "
                       "activation on reasoning words (wait, hmm, maybe, ...), rewarded for "
                       "spreading over many of them, minus its share elsewhere; the highest are "
                       "the likeliest reasoning features"}
    if _positive(rows, "think_rate_ratio_lo"):
        return {"score": "think_rate_ratio_lo",
                "why": "no live feature has a positive ReasonScore on this run (its traces have "
                       "too few reasoning words), so: think_rate_ratio_lo, the low end of the 95% "
                       "interval of (firing rate inside <think>) / (firing rate elsewhere); the "
                       "highest fire most specifically while thinking"}
    return {"score": "freq", "why": "no think-specificity measured on this run: by firing rate"}
