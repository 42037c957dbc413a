"""Label every token of a trace with a region (prompt/think/answer/special) and a behaviour tag.

Regions come from character positions: the prompt ends where ``trace.prompt`` ends, thinking lies
between the ``<think>`` and ``</think>`` markers (found in the text, so they may be single special
tokens or plain text split into several tokens), the answer follows ``</think>``. Behaviour tags
come from a phrase vocabulary matched on the text and mapped onto the tokens the matches overlap.
"""

from __future__ import annotations

import bisect
import re
from enum import IntEnum
from typing import NamedTuple

from ..chat import think_spans
from ..errors import ThinksaeError
from .traces import Trace


class Region(IntEnum):
    """Where a token sits in a trace."""

    PROMPT = 0
    THINK = 1
    ANSWER = 2
    SPECIAL = 3


BEHAVIOUR_VOCAB: dict[str, list[str]] = {
    "backtracking": ["wait", "but", "actually"],
    "uncertainty": ["hmm", "maybe", "perhaps"],
    "verification": ["let me check", "verify", "double-check", "double check", "check"],
    "exploration": ["alternatively", "another"],
    "conclusion": ["therefore", "so the answer"],
}
"""Reasoning-behaviour categories and their trigger phrases; behaviour code = position + 1."""

_CONTROL_TOKEN = re.compile(r"^<[^<>\s]+>$")
"""Added tokens that look like markup (``<｜User｜>``, ``<|im_end|>``, ``<think>``) are control."""


class TokenizedTrace(NamedTuple):
    """A trace as token ids with one region code and one behaviour code per token."""

    input_ids: list[int]
    regions: list[int]
    behaviours: list[int]
    warnings: list[str]


def behaviour_names(vocab: dict[str, list[str]] = BEHAVIOUR_VOCAB) -> list[str]:
    """Names of the behaviour codes: index 0 is ``none``, then the vocabulary's categories."""
    return ["none", *vocab]


def _phrase_pattern(phrase: str) -> re.Pattern:
    words = phrase.split()
    if not words:
        raise ThinksaeError("empty phrase in the behaviour vocabulary")
    body = r"\s+".join(re.escape(w) for w in words)
    return re.compile(rf"(?<!\w){body}(?!\w)", re.IGNORECASE)


def find_behaviours(text: str, vocab: dict[str, list[str]] = BEHAVIOUR_VOCAB
                    ) -> list[tuple[int, int, int]]:
    """Non-overlapping ``(start, end, code)`` character spans of vocabulary phrases, by start.

    Case-insensitive, at word boundaries; words of a phrase match across any whitespace; where
    matches overlap the longest wins (then the earliest).
    """
    found = []
    for code, phrases in enumerate(vocab.values(), start=1):
        for phrase in phrases:
            for m in _phrase_pattern(phrase).finditer(text):
                found.append((m.start(), m.end(), code))
    found.sort(key=lambda s: (-(s[1] - s[0]), s[0]))
    kept: list[tuple[int, int, int]] = []
    starts: list[int] = []  # sorted starts of kept spans, for the overlap test
    for span in found:
        i = bisect.bisect_left(starts, span[0])
        if i > 0 and kept[i - 1][1] > span[0]:
            continue
        if i < len(kept) and kept[i][0] < span[1]:
            continue
        kept.insert(i, span)
        starts.insert(i, span[0])
    return kept


def control_token_ids(tokenizer) -> set[int]:
    """Ids of special and control-like added tokens (BOS/EOS/pad, role markers, think markers)."""
    ids = {i for i in getattr(tokenizer, "all_special_ids", []) if i is not None}
    for tid, tok in getattr(tokenizer, "added_tokens_decoder", {}).items():
        content = getattr(tok, "content", str(tok))
        if getattr(tok, "special", False) or _CONTROL_TOKEN.match(content):
            ids.add(int(tid))
    return ids


def _overlaps(spans: list[tuple[int, int]], start: int, end: int) -> bool:
    lo, hi = (start, end) if end > start else (start, start + 1)
    return any(a < hi and lo < b for a, b in spans)


def tokenize_trace(
    tokenizer,
    trace: Trace,
    max_length: int | None = None,
    vocab: dict[str, list[str]] = BEHAVIOUR_VOCAB,
) -> TokenizedTrace:
    """Tokenize ``trace.full_text`` (no added special tokens) and label each token.

    Region: SPECIAL for special/control tokens and tokens overlapping ``<think>``/``</think>``
    text; otherwise THINK inside the thinking span (which includes completion text before the
    opening marker), PROMPT before the end of the prompt, ANSWER after ``</think>``. Behaviour:
    the code of a vocabulary match the token overlaps (0 if none; never on SPECIAL tokens).
    Malformed traces get warnings, not errors. Cut to ``max_length`` tokens.
    """
    text = trace.full_text
    try:
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    except NotImplementedError:
        raise ThinksaeError("segmenting traces needs a fast tokenizer (offset mappings)") from None
    ids = [int(i) for i in enc["input_ids"]]
    offsets = [(int(a), int(b)) for a, b in enc["offset_mapping"]]
    if max_length is not None:
        ids, offsets = ids[:max_length], offsets[:max_length]

    prompt_end = len(trace.prompt)
    spans, warns = think_spans(text, prompt_end)
    control = control_token_ids(tokenizer)
    regions = []
    for tid, (start, end) in zip(ids, offsets, strict=True):
        if tid in control or _overlaps(spans.markers, start, end):
            regions.append(Region.SPECIAL)
        elif spans.think_start <= start < spans.think_end:
            regions.append(Region.THINK)
        elif start < prompt_end:
            regions.append(Region.PROMPT)
        elif start < spans.think_end:  # completion text before the opening marker
            regions.append(Region.THINK)
        else:
            regions.append(Region.ANSWER)

    behaviours = [0] * len(ids)
    ends = [b for _, b in offsets]
    for a, b, code in find_behaviours(text, vocab):
        # tokens are in text order, so those overlapping [a, b) are a contiguous run
        i = bisect.bisect_right(ends, a)
        while i < len(ids) and offsets[i][0] < b:
            if offsets[i][1] > a and regions[i] != Region.SPECIAL and behaviours[i] == 0:
                behaviours[i] = code
            i += 1
    return TokenizedTrace(ids, [int(r) for r in regions], behaviours, warns)
