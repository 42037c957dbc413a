"""Per-candidate trigger lists, as their code builds them from the selection texts' per-token
activations (both sets; the positions that count are the masking mode's, see
:mod:`.activations`).

- **tokens**: each token id's mean activation over all its occurrences (zeros included), ids with
  at least 5 occurrences, the 30 with the largest mean;
- **bigrams** / **trigrams**: every run of 2 (3) consecutive counted positions; an occurrence's
  value is the mean of its tokens' activations, an n-gram's score the mean over its
  occurrences; at least 3 (2) occurrences, the top 20 (10). Its string is its tokens' decoded
  strings joined with nothing between them.

Ties keep the order of first occurrence (text by text, position by position), as theirs.

:func:`word_contexts` gives the contextual strategies their words (their
``extract_token_contexts``): over the reasoning texts split on whitespace, a word *contains* a
token when the stripped, lower-cased token string is a substring of the word stripped of
``.,!?;:`` and lower-cased; the words right before and after such words are counted (likewise
normalised), the 10 commonest kept. :func:`active_trigrams` gives ``active_trigram`` its
sequences.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np

TOKEN_MIN, TOKEN_TOP = 5, 30
BIGRAM_MIN, BIGRAM_TOP = 3, 20
TRIGRAM_MIN, TRIGRAM_TOP = 2, 10
WORD_STRIP = ".,!?;:"


class Trigger(NamedTuple):
    """One token or n-gram of a trigger list."""

    ids: tuple[int, ...]
    text: str
    mean: float
    """Mean activation over its occurrences (an n-gram occurrence: the mean over its tokens)."""
    count: int


class TriggerLists(NamedTuple):
    tokens: list[Trigger]
    bigrams: list[Trigger]
    trigrams: list[Trigger]


def ngram_scores(token_ids: np.ndarray, acts: np.ndarray, counted: np.ndarray, n: int,
                 min_count: int, top: int) -> list[tuple[tuple[int, ...], float, int]]:
    """``(ids, mean, count)`` of the top n-grams (n = 1: tokens) of ``token_ids [texts, L]``
    with activations ``acts [texts, L]``, using the runs of n positions that are all ``counted``."""
    L = token_ids.shape[1]
    if L < n:
        return []
    keys = np.stack([token_ids[:, i: L - n + 1 + i] for i in range(n)], -1).reshape(-1, n)
    vals = np.stack([acts[:, i: L - n + 1 + i] for i in range(n)], -1).mean(-1).reshape(-1)
    ok = np.stack([counted[:, i: L - n + 1 + i] for i in range(n)], -1).all(-1).reshape(-1)
    keys, vals = keys[ok], vals[ok].astype(np.float64)
    if not len(keys):
        return []
    uniq, first, inverse, counts = np.unique(keys, axis=0, return_index=True, return_inverse=True,
                                             return_counts=True)
    means = np.bincount(inverse.reshape(-1), weights=vals, minlength=len(uniq)) / counts
    eligible = np.flatnonzero(counts >= min_count)
    order = eligible[np.lexsort((first[eligible], -means[eligible]))][:top]
    return [(tuple(int(t) for t in uniq[i]), float(means[i]), int(counts[i])) for i in order]


def trigger_lists(token_ids: np.ndarray, acts: np.ndarray, counted: np.ndarray,
                  decode: Callable[[int], str]) -> TriggerLists:
    """The three lists of one latent (module docstring); ``decode``: token id → its string."""

    def listed(n, min_count, top):
        return [Trigger(ids, "".join(decode(t) for t in ids), mean, count)
                for ids, mean, count in ngram_scores(token_ids, acts, counted, n, min_count, top)]

    return TriggerLists(listed(1, TOKEN_MIN, TOKEN_TOP), listed(2, BIGRAM_MIN, BIGRAM_TOP),
                        listed(3, TRIGRAM_MIN, TRIGRAM_TOP))


def _norm_word(word: str) -> str:
    return word.strip(WORD_STRIP).lower()


def word_contexts(texts: Sequence[str], tokens: Sequence[str], keep: int = 10
                  ) -> dict[str, tuple[list[str], list[str]]]:
    """Token string → (commonest words before it, after it) in ``texts`` (module docstring)."""
    targets = {t: t.strip().lower() for t in dict.fromkeys(tokens)}
    before = {t: Counter() for t in targets}
    after = {t: Counter() for t in targets}
    for text in texts:
        words = text.split()
        norm = [_norm_word(w) for w in words]
        for i, word in enumerate(norm):
            for t, key in targets.items():
                if key in word:
                    if i > 0:
                        before[t][norm[i - 1]] += 1
                    if i < len(words) - 1:
                        after[t][norm[i + 1]] += 1
    return {t: ([w for w, _ in before[t].most_common(keep)],
                [w for w, _ in after[t].most_common(keep)]) for t in targets}


def active_trigrams(token_ids: np.ndarray, lengths: np.ndarray, acts: np.ndarray,
                    decode: Callable[[int], str], threshold: float = 0.1, texts: int = 50,
                    most: int = 50) -> list[list[str]]:
    """Three consecutive tokens of the first ``texts`` reasoning texts (``token_ids [texts, L]``,
    real ``lengths``, this latent's ``acts``) that all have activation ≥ ``threshold`` × that
    text's max (texts whose max is ≤ 0 skipped), starting at position 1 or later (their code
    skips the first token), every token's string not blank; at most ``most``."""
    out: list[list[str]] = []
    for row in range(min(texts, len(token_ids))):
        n = int(lengths[row])
        a = acts[row, :n]
        if n < 4 or a.max() <= 0:
            continue
        hot = a >= threshold * a.max()
        for i in range(1, n - 2):
            if hot[i] and hot[i + 1] and hot[i + 2]:
                strings = [decode(int(t)) for t in token_ids[row, i: i + 3]]
                if all(s.strip() for s in strings):
                    out.append(strings)
                    if len(out) >= most:
                        return out
    return out
