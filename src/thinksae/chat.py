"""Prompts and the thinking region, written once: chat templates, ``<think>`` markers, stop tokens,
and the one state machine that says where thinking opens and closes.

Two forms of the same rule:

- **whole text** (:func:`think_spans`): a finished trace, as the corpus labels it token by token;
- **token stream** (:class:`ThinkTracker`): a sequence fed one token at a time, as the steering
  window, the monitor, steering measurements and the workbench follow a generation.

The rule: thinking opens at the first ``<think>`` (in the prompt only where the template ends
with it, "prefilled": within its last :data:`PREFILL_TAIL` tokens) and closes at the first
``</think>`` after it. R1-family tokenizers have single ``<think>``/``</think>`` tokens; for
others (e.g. Qwen2.5-Coder) the markers are found in the decoded text, and a marker opens or
closes thinking after the token that completes it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from .errors import ThinksaeError

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
THINK_OPEN_ID, THINK_CLOSE_ID = 151648, 151649
"""R1-family ids of ``<think>`` and ``</think>`` (used when a tokenizer does not say)."""
PREFILL_TAIL = 4
"""A ``<think>`` among a prompt's last this many tokens is the template's prefilled opening."""
THINK_SYSTEM_PROMPT = (
    "Think step by step inside <think> </think> tags, then give the final answer."
)
"""A system prompt that makes a non-reasoning chat model write a thinking section."""


# --- prompts ------------------------------------------------------------------------------------

def render_chat(tokenizer, messages: list[dict[str, str]]) -> str:
    """Messages rendered by the tokenizer's chat template, ending with the generation prompt."""
    if tokenizer is None:
        raise ThinksaeError("these records need a chat template: pass a tokenizer")
    if not getattr(tokenizer, "chat_template", None):
        raise ThinksaeError("the tokenizer has no chat template; give traces with full prompt text")
    try:
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    except Exception as e:  # jinja2 TemplateError and friends: report the template's complaint
        raise ThinksaeError(f"chat template failed: {str(e).splitlines()[0]}") from None
    if not isinstance(text, str):
        raise ThinksaeError("chat template did not render to text")
    return text


def build_prompt(tokenizer, question: str, system_prompt: str | None = None,
                 think_prefill: bool = False) -> str:
    """The chat-templated prompt for ``question``; a system prompt the template rejects (or
    silently drops) is folded into the user message instead. ``think_prefill`` ends the prompt
    with ``<think>\\n`` (as the current R1 hub template does) unless the template already did,
    so that the model starts inside its thinking."""
    text = _templated(tokenizer, question, system_prompt)
    if think_prefill and not text.rstrip().endswith(THINK_OPEN):
        text += f"{THINK_OPEN}\n"
    return text


def _templated(tokenizer, question: str, system_prompt: str | None) -> str:
    user = {"role": "user", "content": question}
    if not system_prompt:
        return render_chat(tokenizer, [user])
    try:
        text = render_chat(tokenizer, [{"role": "system", "content": system_prompt}, user])
    except ThinksaeError:
        text = None
    if text is None or system_prompt not in text:
        folded = {"role": "user", "content": f"{system_prompt}\n\n{question}"}
        text = render_chat(tokenizer, [folded])
    return text


def still_thinking(prompt: str, completion: str) -> bool:
    """Whether a trace's thinking was opened (in the prompt or the completion) and never closed."""
    opened = prompt.rstrip().endswith(THINK_OPEN) or THINK_OPEN in completion
    return opened and THINK_CLOSE not in completion


def close_thinking(completion: str) -> str:
    """``completion`` with its thinking closed, ready for the answer to follow."""
    return completion + ("" if completion.endswith("\n") else "\n") + f"{THINK_CLOSE}\n\n"


# --- stop tokens ----------------------------------------------------------------------------------

def stop_ids(model, tokenizer) -> list[int]:
    """EOS ids of the tokenizer and the model's generation config, and the pad id."""
    return token_stops(tokenizer, getattr(getattr(model, "generation_config", None), "eos_token_id",
                                          None))


def token_stops(tokenizer, extra_eos: int | Sequence[int] | None = None) -> list[int]:
    """The tokenizer's EOS id, ``extra_eos`` (an engine's own end-of-generation ids) and the pad id."""
    ids = set()
    for source in (tokenizer.eos_token_id, extra_eos):
        if isinstance(source, int):
            ids.add(source)
        elif source is not None:
            ids.update(int(i) for i in source)
    if not ids:
        raise ThinksaeError("the tokenizer has no end-of-sequence token: cannot stop generation")
    if tokenizer.pad_token_id is not None:
        ids.add(int(tokenizer.pad_token_id))
    return sorted(ids)


def pad_id_of(tokenizer, stop: Sequence[int]) -> int:
    """The id left padding and finished rows use: the tokenizer's pad, else EOS, else a stop id."""
    return next((i for i in (tokenizer.pad_token_id, tokenizer.eos_token_id) if i is not None),
                stop[0])


# --- whole text -------------------------------------------------------------------------------------

class ThinkSpans(NamedTuple):
    """Where thinking lies in a finished trace's text (character offsets)."""

    think_start: int
    """First character of thinking (after the opening marker)."""
    think_end: int
    """First character after thinking (start of the closing marker)."""
    markers: list[tuple[int, int]]
    """Character spans of the marker texts."""
    answer_start: int
    """First character of the answer region."""


def think_spans(text: str, prompt_end: int) -> tuple[ThinkSpans, list[str]]:
    """Where thinking and answer lie in ``text`` (the prompt is ``text[:prompt_end]``), with
    warnings for malformed traces: thinking opens where the prompt ends with ``<think>`` or at the
    first ``<think>`` after it, and closes at the first ``</think>`` after that; without an
    opening marker, a ``</think>`` closes thinking taken from the start of the completion."""
    warns, markers = [], []
    head = text[:prompt_end].rstrip()
    if head.endswith(THINK_OPEN):  # the template opened the thinking
        open_at = len(head) - len(THINK_OPEN)
    else:
        open_at = text.find(THINK_OPEN, prompt_end)
    if open_at >= 0:
        markers.append((open_at, open_at + len(THINK_OPEN)))
        think_start = open_at + len(THINK_OPEN)
    else:
        think_start = prompt_end
    close_at = text.find(THINK_CLOSE, think_start)
    if close_at >= 0:
        markers.append((close_at, close_at + len(THINK_CLOSE)))
        if open_at < 0:
            warns.append("no <think> marker: thinking taken from the start of the completion")
        return ThinkSpans(think_start, close_at, markers, close_at + len(THINK_CLOSE)), warns
    if open_at >= 0:
        warns.append("no </think> marker: thinking runs to the end (truncated trace?)")
        return ThinkSpans(think_start, len(text), markers, len(text)), warns
    warns.append("no <think> marker: the completion is labelled answer")
    return ThinkSpans(prompt_end, prompt_end, markers, prompt_end), warns


# --- token stream -----------------------------------------------------------------------------------

@dataclass
class ThinkMarkers:
    """The token ids a token stream is followed with: thinking markers, stop ids, special ids,
    sentence-ending tokens (for a steering window that starts after the first sentence)."""

    open_id: int = THINK_OPEN_ID
    close_id: int = THINK_CLOSE_ID
    stop_ids: frozenset[int] = frozenset()
    sentence_end: frozenset[int] | None = None
    """Tokens that end a sentence (needed for ``start=sentence``); None when not collected."""
    single_token: bool = True
    """Whether ``<think>`` and ``</think>`` are single tokens of the tokenizer (R1 tokenizers);
    otherwise the markers are followed in the decoded text (:class:`ThinkTracker` needs
    ``text_of``)."""
    special_ids: frozenset[int] = field(default_factory=frozenset)
    """Special and control tokens (labelled ``special``)."""

    @classmethod
    def from_tokenizer(cls, tokenizer, stop_ids: Iterable[int] = (), sentences: bool = True,
                       special_ids: Iterable[int] = ()) -> ThinkMarkers:
        """The markers of ``tokenizer`` (its own ``<think>``/``</think>`` ids when it has them)."""
        ids = tokenizer.convert_tokens_to_ids([THINK_OPEN, THINK_CLOSE])
        unk = getattr(tokenizer, "unk_token_id", None)
        found = [isinstance(i, int) and i != unk for i in ids]
        open_id, close_id = (i if ok else d
                             for i, ok, d in zip(ids, found, (THINK_OPEN_ID, THINK_CLOSE_ID)))
        stops = set(stop_ids) | ({tokenizer.eos_token_id} - {None})
        sentence_end = None
        if sentences:
            texts = tokenizer.batch_decode([[i] for i in range(len(tokenizer))])
            sentence_end = frozenset(i for i, t in enumerate(texts)
                                     if t.rstrip(" ").endswith((".", "?", "!")) or "\n" in t)
        special = set(special_ids) | ({open_id, close_id} if all(found) else set())
        return cls(open_id, close_id, frozenset(int(i) for i in stops), sentence_end, all(found),
                   frozenset(int(i) for i in special))

    def ends_sentence(self, token: int) -> bool:
        if self.sentence_end is None:
            raise ThinksaeError("start=sentence needs the tokenizer's sentence-ending tokens")
        return token in self.sentence_end


class ThinkTracker:
    """One sequence fed token by token (prompt first, ``prompt_len`` tokens, then the generation):
    where thinking opened (``open_pos``), closed (``close_pos``) and generation stopped
    (``stop_pos``), and the region of each token (module docstring's rule).

    Single-token markers: ``<think>`` opens at a generated position or one of the prompt's last
    :data:`PREFILL_TAIL`; the first generated ``</think>`` closes. Text markers (``text_of``
    decodes ids): the prompt opened thinking when its last ``2 · PREFILL_TAIL`` tokens decode to
    text ending with ``<think>`` (then ``open_pos`` is its last position); otherwise generated
    tokens are decoded one at a time and joined, and the token completing the first ``<think>``
    opens, the one completing the first ``</think>`` after it closes. Text markers without
    ``text_of`` are not followed: thinking never opens.
    """

    def __init__(self, markers: ThinkMarkers, prompt_len: int,
                 text_of: Callable[[list[int]], str] | None = None):
        self.markers, self.prompt_len, self.text_of = markers, prompt_len, text_of
        self.pos = 0
        self.open_pos: int | None = None
        self.close_pos: int | None = None
        self.stop_pos: int | None = None
        self._tail: list[int] = []
        self._text = ""
        self._think_at: int | None = None  # character where thinking starts in _text

    @property
    def thinking(self) -> bool:
        return self.open_pos is not None and self.close_pos is None

    def push(self, token: int) -> str:
        """Take the token at the next position; its region: ``prompt``, ``think``, ``answer`` or
        ``special`` (a special id, or a single-token marker), as it stood before this token."""
        t, self.pos = self.pos, self.pos + 1
        m = self.markers
        generated = t >= self.prompt_len
        before = "think" if self.thinking else ("answer" if generated else "prompt")
        if self.stop_pos is not None:
            return "special" if token in m.special_ids else before
        if generated and token in m.stop_ids:
            self.stop_pos = t
        elif m.single_token:
            self._push_id(token, t, generated)
        elif self.text_of is not None:
            self._push_text(token, t, generated)
        return "special" if token in m.special_ids else before

    def _push_id(self, token: int, t: int, generated: bool) -> None:
        m = self.markers
        if token == m.open_id and self.open_pos is None and self.close_pos is None and (
                generated or t >= self.prompt_len - PREFILL_TAIL):
            self.open_pos = t
        if generated and token == m.close_id and self.close_pos is None:
            self.close_pos = t

    def _push_text(self, token: int, t: int, generated: bool) -> None:
        if not generated:
            self._tail = (self._tail + [token])[-2 * PREFILL_TAIL:]
            if t == self.prompt_len - 1 and self.text_of(self._tail).rstrip().endswith(THINK_OPEN):
                self.open_pos, self._think_at = t, 0
            return
        self._text += self.text_of([token])
        if self.open_pos is None:
            at = self._text.find(THINK_OPEN)
            if at >= 0:
                self.open_pos, self._think_at = t, at + len(THINK_OPEN)
        elif self.close_pos is None and self._text.find(THINK_CLOSE, self._think_at) >= 0:
            self.close_pos = t

    @property
    def think_tokens(self) -> int | None:
        """Tokens strictly between the opening and ``</think>`` (or the end); None unopened."""
        if self.open_pos is None:
            return None
        end = self.close_pos if self.close_pos is not None else (
            self.stop_pos if self.stop_pos is not None else self.pos)
        return max(end - self.open_pos - 1, 0)

    @property
    def thinking_text(self) -> str | None:
        """Text mode: the thinking's text (between the markers, characters); else None."""
        if self._think_at is None:
            return None
        end = self._text.find(THINK_CLOSE, self._think_at)
        return self._text[self._think_at:end if end >= 0 else len(self._text)]


class Detokenizer:
    """Text of each new token; bytes of an unfinished UTF-8 character wait for the next."""

    def __init__(self, tokenizer):
        self.tokenizer, self.pending = tokenizer, []

    def push(self, token: int) -> str:
        self.pending.append(token)
        text = self.tokenizer.decode(self.pending, skip_special_tokens=False,
                                     clean_up_tokenization_spaces=False)
        if text.endswith("\ufffd") and len(self.pending) < 4:
            return ""
        self.pending = []
        return text
