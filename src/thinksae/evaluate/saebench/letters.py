"""The first-letter task's data (Chanin et al. 2024, arXiv 2409.14507, as SAEBench runs it): the
vocabulary of letter-only tokens, its seeded train/test split, and the in-context prompts.

A prompt is built from token ids, not re-tokenised text, so the word is exactly its vocabulary
token and its position is known (SAEBench reads a fixed offset from the end instead)::

    [BOS] "\\n" ⟨ex₁⟩" has the first letter: E₁\\n" … ⟨word⟩" has the first letter:"
"""

from __future__ import annotations

import random
from collections import defaultdict
from typing import NamedTuple

from ...errors import ThinksaeError

LETTERS = "abcdefghijklmnopqrstuvwxyz"
SEPARATOR = "\n"
"""Between in-context examples, and before the first (SAEBench prepends it too)."""


class LetterWord(NamedTuple):
    """One vocabulary token made of letters only."""

    token_id: int
    text: str
    """Its text, with its leading space if it has one (e.g. " cat")."""
    letter: int
    """Index of its first letter in a..z (case folded)."""


class WordSplit(NamedTuple):
    train: list[LetterWord]
    test: list[LetterWord]


class Prompt(NamedTuple):
    ids: list[int]
    position: int
    """Index of the word token in ``ids``: where the residual is read."""
    word: LetterWord


def letter_vocabulary(tokenizer) -> list[LetterWord]:
    """Every token whose text is ASCII letters only, after at most one leading space (SAEBench's
    ``get_alpha_tokens``), special ids left out, in id order."""
    special = {int(i) for i in getattr(tokenizer, "all_special_ids", []) if i is not None}
    words = []
    for token, token_id in sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1]):
        if token_id in special:
            continue
        text = tokenizer.convert_tokens_to_string([token])
        core = text[1:] if text.startswith(" ") else text
        if core and core.isascii() and core.isalpha():
            words.append(LetterWord(int(token_id), text, LETTERS.index(core[0].lower())))
    return words


def check_vocabulary(words: list[LetterWord], min_per_letter: int) -> None:
    """Every letter needs ``min_per_letter`` words (≥ 1 for training and ≥ 1 for testing its
    probe); a one-line error naming the short letters otherwise."""
    counts = [0] * len(LETTERS)
    for word in words:
        counts[word.letter] += 1
    short = [f"{LETTERS[i]} ({c})" for i, c in enumerate(counts) if c < min_per_letter]
    if short:
        raise ThinksaeError(
            f"the tokenizer's vocabulary has too few letter-only tokens for the first-letter task: "
            f"{', '.join(short)} word(s) start with these letters, each letter needs "
            f"{min_per_letter}; use a model with a larger vocabulary or lower the minimum")


def split_words(words: list[LetterWord], words_per_letter: int | None, test_fraction: float,
                seed: int) -> WordSplit:
    """Per letter: shuffle its words (seeded), keep at most ``words_per_letter`` (all when None),
    hold out round(n · test_fraction) of them (at least 1, leaving at least 1) for testing.
    Split per letter, so every letter has test words (SAEBench splits the whole vocabulary 80/20
    at once)."""
    rng = random.Random(seed)
    by_letter: dict[int, list[LetterWord]] = defaultdict(list)
    for word in words:
        by_letter[word.letter].append(word)
    train, test = [], []
    for letter in sorted(by_letter):
        group = list(by_letter[letter])
        rng.shuffle(group)
        if words_per_letter is not None:
            group = group[:words_per_letter]
        n_test = min(max(1, round(len(group) * test_fraction)), len(group) - 1)
        test += group[:n_test]
        train += group[n_test:]
    return WordSplit(train, test)


def _template_parts(template: str) -> tuple[str, str]:
    if template.count("{word}") != 1:
        raise ThinksaeError(f"the prompt template must contain {{word}} exactly once (got {template!r})")
    before, after = template.split("{word}")
    return before, after


def first_letter_prompts(words: list[LetterWord], pool: list[LetterWord], tokenizer,
                         template: str, icl_examples: int, seed: int) -> list[Prompt]:
    """One prompt per word: ``icl_examples`` other words of ``pool`` (seeded sample) with their
    answers (" " + the capital first letter), then the word with the template's question."""
    before, after = _template_parts(template)
    cache: dict[str, list[int]] = {}

    def encode(text: str) -> list[int]:
        if text not in cache:
            cache[text] = list(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []
        return cache[text]

    bos = getattr(tokenizer, "bos_token_id", None)
    rng = random.Random(seed)
    prompts = []
    for word in words:
        others = [w for w in pool if w.token_id != word.token_id]
        ids = ([bos] if bos is not None else []) + encode(SEPARATOR)
        for ex in rng.sample(others, min(icl_examples, len(others))):
            answer = " " + LETTERS[ex.letter].upper()
            ids += encode(before) + [ex.token_id] + encode(after + answer + SEPARATOR)
        ids += encode(before)
        position = len(ids)
        prompts.append(Prompt(ids + [word.token_id] + encode(after), position, word))
    return prompts
