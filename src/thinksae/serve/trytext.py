"""Try text: a pasted text as the run's model sees a prompt, encoded by the SAE at every token, with
the attention sinks marked by thinksae's one rule (:mod:`thinksae.sinks`).

The text is wrapped in the run's chat template as the user's message, with the run's system
prompt and think-prefill (:func:`thinksae.chat.build_prompt`), so that token 0 is the template's
first token (BOS or a role marker) as in every trace of the store, not the text's first word;
a tokenizer without a chat template gets its BOS token (when it has one) in front. A trace picked
from the corpus is encoded as it is (it carries its template). Each token is ``template`` or
``text`` (its part).

A token is a sink when ``special(t) or ‖x_t‖ > m · median`` (:class:`thinksae.sinks.SinkRule`):
special = the tokenizer's control ids (:func:`thinksae.corpus.segment.control_token_ids`) and
think markers; the median is the run's store's (its non-special tokens; ``reference: store``),
else the median of this text's own non-special tokens (``reference: text``). The page leaves
sinks and template tokens out of its colour scale and of the strongest-feature ranking
(:func:`strongest`).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from ..chat import build_prompt
from ..errors import ThinksaeError
from ..models.hookpoints import capture
from ..sinks import SinkRule, median_norm
from .defaults import Prompting

MARK = "\u2063THINKSAE_TEXT\u2063"
"""Stand-in for the text while the template is rendered (split around it)."""
STRONGEST = 10
"""Features in the strongest-feature ranking."""


class Wrapped(NamedTuple):
    """Token ids of the wrapped text, the part of each (``template``/``text``) and how it was
    wrapped (``chat template``, ``BOS``, ``as given``)."""

    ids: list[int]
    parts: list[str]
    how: str


def _around(tokenizer, prompting: Prompting) -> tuple[str, str] | None:
    """The chat template's text before and after the user's message (None without a usable
    template)."""
    try:
        rendered = build_prompt(tokenizer, MARK, prompting.system_prompt, prompting.think_prefill)
    except ThinksaeError:
        return None
    if rendered.count(MARK) != 1:
        return None
    before, after = rendered.split(MARK)
    return before, after


def wrap_text(tokenizer, text: str, template: bool, special_tokens: bool,
              prompting: Prompting) -> Wrapped:
    """The token ids of ``text`` as try text encodes it (module docstring); ``template`` False:
    as given, with the tokenizer's own special tokens when ``special_tokens``."""
    def enc(s: str) -> list[int]:
        return tokenizer(s, add_special_tokens=False)["input_ids"] if s else []

    if not template:
        ids = tokenizer(text, add_special_tokens=special_tokens)["input_ids"]
        return Wrapped(ids, ["text"] * len(ids), "as given")
    around = _around(tokenizer, prompting)
    body = enc(text)
    if around is not None:
        before, after = enc(around[0]), enc(around[1])
        how = "chat template"
    else:
        bos = getattr(tokenizer, "bos_token_id", None)
        before, after, how = ([bos], [], "BOS") if bos is not None else ([], [], "as given")
    if not body:
        return Wrapped([], [], how)
    return Wrapped(before + body + after,
                   ["template"] * len(before) + ["text"] * len(body) + ["template"] * len(after),
                   how)


class Encoded(NamedTuple):
    """Try text: token ids and texts; per token the SAE's k active (feature, activation) pairs,
    largest first (exactly :meth:`Sae.encode` of the hookpoint output there), its part, its
    residual norm ‖x_t‖ and why it is a sink (``special``, ``norm`` or None); the rule's median
    and where it came from."""

    ids: list[int]
    tokens: list[str]
    top: list[list[tuple[int, float]]]
    parts: list[str]
    norms: list[float]
    sinks: list[str | None]
    median_norm: float | None
    how: str


def sink_reasons(norms: torch.Tensor, special: torch.Tensor, rule: SinkRule) -> list[str | None]:
    """Per token: ``special`` (a special id), ``norm`` (‖x‖ above the rule's threshold) or None."""
    mask = rule.mask(norms, special).tolist()
    return ["special" if s else ("norm" if m else None) for s, m in zip(special.tolist(), mask)]


@torch.inference_mode()
def encode_text(bound, text: str, wrap: tuple[bool, bool], prompting: Prompting,
                special_ids: frozenset[int], rule: SinkRule, max_tokens: int) -> Encoded:
    """Wrap ``text`` (:func:`wrap_text` with ``wrap`` = (template, special_tokens)), run the
    model to the hookpoint, encode every position with the SAE and mark the sinks by ``rule``
    (its median, or this text's when it has none)."""
    model, tokenizer, sae = bound.model, bound.tokenizer, bound.sae
    w = wrap_text(tokenizer, text, wrap[0], wrap[1], prompting)
    if "text" not in w.parts:
        raise ThinksaeError("the text has no tokens")
    if len(w.ids) > max_tokens:
        raise ThinksaeError(f"the text has {len(w.ids)} tokens ({w.how} included), at most "
                            f"{max_tokens}")
    device = next(model.parameters()).device
    ids = torch.tensor([w.ids], device=device)
    x = capture(model, bound.hookpoint, ids)[bound.hookpoint][0]
    acts, idx = sae.encode(x.to(sae.device, sae.dtype))
    order = torch.argsort(acts, dim=-1, descending=True)
    acts, idx = acts.gather(-1, order).float().cpu(), idx.gather(-1, order).cpu()
    top = [[(int(i), float(a)) for i, a in zip(ri.tolist(), ra.tolist())]
           for ri, ra in zip(idx, acts)]
    norms = x.float().norm(dim=-1).cpu()
    special = torch.tensor([i in special_ids for i in w.ids])
    median = rule.median_norm if rule.median_norm is not None else median_norm(norms, special)
    texts = [tokenizer.decode([t], skip_special_tokens=False, clean_up_tokenization_spaces=False)
             for t in w.ids]
    return Encoded(w.ids, texts, top, w.parts, norms.tolist(), sink_reasons(norms, special, rule),
                   median, w.how)


def strongest(enc: Encoded, n: int = STRONGEST) -> list[dict]:
    """The features ranked by their largest activation over the kept tokens (text part, not a
    sink): ``strength(f) = max_{t kept} a_t(f)`` (a_t(f) = 0 where f is not among t's top k),
    largest first (ties: lower feature id first), at most ``n``, each ``{"feature", "act",
    "position"}`` (the first kept position reaching the maximum)."""
    best: dict[int, tuple[float, int]] = {}
    for t, (pairs, part, sink) in enumerate(zip(enc.top, enc.parts, enc.sinks)):
        if part != "text" or sink is not None:
            continue
        for f, a in pairs:
            if a > 0 and (f not in best or a > best[f][0]):
                best[f] = (a, t)
    ranked = sorted(best.items(), key=lambda kv: (-kv[1][0], kv[0]))[:n]
    return [{"feature": f, "act": a, "position": t} for f, (a, t) in ranked]
