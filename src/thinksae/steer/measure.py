"""Measurements of a generated trace and of a set of them.

Per trace: ``think_tokens`` (tokens strictly between the opening ``<think>`` and ``</think>``, or
the end of generation when it never closed; None when thinking never opened), ``reached_think_end``
(``</think>`` was generated), ``finished`` (an end-of-sequence token was generated), behaviour-word
counts in the thinking text (the phrases of ``BEHAVIOUR_VOCAB``: wait, hmm, alternatively, …,
case-insensitive, whole words), the numeric answer (extracted after ``</think>``; a trace whose
thinking never closed has no answer) and whether it matches the reference, and for steered traces
the number of steered positions and the mean KL there.

Tokenizers without single ``<think>``/``</think>`` tokens (e.g. Qwen2.5-Coder) are measured on the
decoded text: thinking opens after the token completing ``<think>`` (or in the prompt, when it
ends with it) and its length counts the tokens until the one completing ``</think>``, so the
pieces of the closing marker itself (up to 3 tokens) are counted as thinking.
"""

from __future__ import annotations

import math
import re
import statistics

from ..chat import ThinkMarkers
from ..corpus.problems import answers_match, extract_numeric_answer
from ..corpus.segment import BEHAVIOUR_VOCAB, find_behaviours
from ..interventions import Window, scan

PHRASES = [p for phrases in BEHAVIOUR_VOCAB.values() for p in phrases]
"""Behaviour phrases counted, in vocabulary order."""
_SPACE = re.compile(r"\s+")


def behaviour_counts(text: str) -> dict[str, int]:
    """Occurrences of each behaviour phrase (non-overlapping, longest match wins)."""
    counts = dict.fromkeys(PHRASES, 0)
    for a, b, _ in find_behaviours(text):
        phrase = _SPACE.sub(" ", text[a:b].lower())
        counts[phrase] = counts.get(phrase, 0) + 1
    return counts


def trace_record(tokenizer, tokens: list[int], width: int, markers: ThinkMarkers, window: Window,
                 reference: float | None, steered: list[bool] | None = None,
                 kl: list[float] | None = None) -> dict:
    """The measures of one trace: ``tokens`` are the left-padded prompt (``width`` wide) and
    the generation up to and including the first stop token."""
    def text_of(ids: list[int]) -> str:
        return tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    _, row = scan(window, markers, tokens, width, text_of)
    new = tokens[width:]
    if row.stop_pos is not None:
        new = new[:row.stop_pos - width]
    completion = text_of(new)
    closed, think_tokens, opened = row.close_pos is not None, row.think_tokens, row.open_pos
    if not markers.single_token:
        thinking = row.think.thinking_text or ""
    elif row.open_pos is not None:
        end = row.close_pos if row.close_pos is not None else width + len(new)
        thinking = tokenizer.decode(tokens[row.open_pos + 1:end], skip_special_tokens=True,
                                    clean_up_tokenization_spaces=False)
    else:
        thinking = ""
    answer = extract_numeric_answer(completion) if closed or opened is None else None
    record = {
        "completion": completion,
        "new_ids": list(new),
        "new_tokens": len(new),
        "think_tokens": think_tokens,
        "reached_think_end": closed,
        "finished": row.stop_pos is not None,
        "answer": answer,
        "correct": None if reference is None else answers_match(answer, reference),
        "behaviours": behaviour_counts(thinking),
    }
    if steered is not None:
        positions = [i for i, s in enumerate(steered) if s]
        record["steered_positions"] = len(positions)
        if kl is not None:
            values = [kl[i] for i in positions if not math.isnan(kl[i])]
            record["kl_mean"] = sum(values) / len(values) if values else None
            record["kl_sum"] = sum(values)
    return record


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def summarize(records: list[dict]) -> dict:
    """Means and shares over a set of traces (None where nothing to average)."""
    n = len(records)
    think = [r["think_tokens"] for r in records if r["think_tokens"] is not None]
    graded = [r["correct"] for r in records if r["correct"] is not None]
    per_phrase = {p: _mean([r["behaviours"].get(p, 0) for r in records]) for p in PHRASES}
    out = {
        "traces": n,
        "think_tokens_mean": _mean(think),
        "think_tokens_median": statistics.median(think) if think else None,
        "opened_think": len(think),
        "reached_think_end": _mean([float(r["reached_think_end"]) for r in records]),
        "finished": _mean([float(r["finished"]) for r in records]),
        "graded": len(graded),
        "accuracy": _mean([float(c) for c in graded]),
        "new_tokens_mean": _mean([r["new_tokens"] for r in records]),
        "behaviour_words_per_trace": _mean([sum(r["behaviours"].values()) for r in records]),
        "behaviours_per_trace": per_phrase,
    }
    if records and "steered_positions" in records[0]:
        positions = sum(r["steered_positions"] for r in records)
        out["steered_positions"] = positions
        if "kl_sum" in records[0]:
            out["kl_mean"] = sum(r["kl_sum"] for r in records) / positions if positions else None
    return out


def divergence(baseline: list[dict], steered: list[dict]) -> dict:
    """How far steering moved the generations: the share of traces whose generated tokens differ
    from the baseline's (``changed``) and, over those, the mean index of the first differing
    token (``first_change_mean``). Where every metric saturates (short generations) this still
    shows an effect."""
    firsts = []
    for b, s in zip(baseline, steered, strict=True):
        a, c = b["new_ids"], s["new_ids"]
        if a != c:
            firsts.append(next((i for i, (x, y) in enumerate(zip(a, c)) if x != y),
                               min(len(a), len(c))))
    return {"changed": len(firsts) / len(baseline) if baseline else None,
            "first_change_mean": _mean(firsts)}


_COMPARED = ("think_tokens_mean", "reached_think_end", "finished", "accuracy",
             "behaviour_words_per_trace", "new_tokens_mean")


def compare(baseline: dict, steered: dict) -> dict:
    """Steered minus baseline for the headline numbers, and the relative change of thinking
    length (``think_tokens_change``, e.g. 0.2 = 20 % longer)."""
    delta = {k: (steered[k] - baseline[k]) if steered.get(k) is not None
             and baseline.get(k) is not None else None for k in _COMPARED}
    b, s = baseline.get("think_tokens_mean"), steered.get("think_tokens_mean")
    delta["think_tokens_change"] = (s - b) / b if b and s is not None else None
    return delta
