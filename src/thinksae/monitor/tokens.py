"""Per-token bookkeeping of a generation: which region each token is in, and its text."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
PREFILL_TAIL = 4
"""A ``<think>`` among the prompt's last this many tokens opens thinking (a prefilled template)."""


class RegionTracker:
    """think / answer / special of each generated token, from the ``<think>`` markers.

    With R1 tokenizers the markers are single tokens (labelled special). Where they are plain text
    (e.g. Qwen2.5-Coder: ``<``, ``think``, ``>``), the decoded text is followed instead: the
    region switches after the token that completes ``<think>`` or ``</think>``.
    """

    def __init__(self, tokenizer, prompt_ids: Sequence[int], special_ids: Iterable[int] = ()):
        ids = tokenizer.convert_tokens_to_ids(["<think>", "</think>"])
        unk = getattr(tokenizer, "unk_token_id", None)
        self.open_id, self.close_id = (i if isinstance(i, int) and i != unk else -1 for i in ids)
        self.special = set(special_ids) | {self.open_id, self.close_id}
        self.tokenizer, self.by_text = tokenizer, -1 in (self.open_id, self.close_id)
        self.state, self.tail = "answer", ""
        if self.by_text:
            self._follow(tokenizer.decode(list(prompt_ids[-2 * PREFILL_TAIL:])))
            return
        for t in prompt_ids[-PREFILL_TAIL:]:
            if t == self.open_id:
                self.state = "think"
            elif t == self.close_id:
                self.state = "answer"

    def _follow(self, text: str) -> None:
        self.tail = (self.tail + text)[-64:]
        opened, closed = self.tail.rfind(THINK_OPEN), self.tail.rfind(THINK_CLOSE)
        if opened > closed:
            self.state = "think"
        elif closed >= 0:
            self.state = "answer"
        self.tail = self.tail[max(opened, closed) + 1:] if max(opened, closed) >= 0 else self.tail

    def push(self, token: int) -> str:
        if self.by_text:
            region = "special" if token in self.special else self.state
            self._follow(self.tokenizer.decode([token]))
            return region
        if token == self.open_id:
            self.state = "think"
        elif token == self.close_id:
            self.state = "answer"
        return "special" if token in self.special else self.state


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
