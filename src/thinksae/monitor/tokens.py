"""Per-token bookkeeping of a generation: which region each token is in, and its text."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

PREFILL_TAIL = 4
"""A ``<think>`` among the prompt's last this many tokens opens thinking (a prefilled template)."""


class RegionTracker:
    """think / answer / special of each generated token, from the ``<think>`` markers."""

    def __init__(self, tokenizer, prompt_ids: Sequence[int], special_ids: Iterable[int] = ()):
        ids = tokenizer.convert_tokens_to_ids(["<think>", "</think>"])
        unk = getattr(tokenizer, "unk_token_id", None)
        self.open_id, self.close_id = (i if isinstance(i, int) and i != unk else -1 for i in ids)
        self.special = set(special_ids) | {self.open_id, self.close_id}
        self.state = "answer"
        for t in prompt_ids[-PREFILL_TAIL:]:
            if t == self.open_id:
                self.state = "think"
            elif t == self.close_id:
                self.state = "answer"

    def push(self, token: int) -> str:
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
