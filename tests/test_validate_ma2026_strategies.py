"""Ma et al.'s injection strategies on a fixed seed (exact strings), their fallbacks, strategy
names, and the trigger lists (tokens, n-grams, word contexts, active trigrams) by hand."""

from __future__ import annotations

import numpy as np
import pytest

from thinksae.errors import ThinksaeError
from thinksae.validate.ma2026.strategies import (
    DEFAULT_STRATEGIES,
    STRATEGIES,
    Material,
    count_for,
    inject,
    parse_strategies,
    strategy_rng,
)
from thinksae.validate.ma2026.triggers import active_trigrams, ngram_scores, trigger_lists, word_contexts

TOKENS = [" Wait", " So", " Let", " Hmm", " maybe", " check", " Therefore", " Alternatively",
          " verify", " actually"]
MATERIAL = Material(TOKENS, [" Let me", " Wait,", " So the"], [" Let me check", " So the answer"],
                    {" Wait": (["but", "so", "then", "x"], ["maybe", "let"]), " So": (["right"], []),
                     " Let": ([], ["me"])},
                    [[" Let", " me", " check"], [" So", " the", " answer"]])
TEXT = "The old library stands at the corner of the market square."

EXPECTED = {  # seed 0, feature 7; tokens keep their leading space (hence the double spaces)
    "prepend": " Let  Therefore  actually The old library stands at the corner of the market square.",
    "append": "The old library stands at the corner of the market square.  maybe  Wait  verify",
    "intersperse": "The old library  actually stands at the  Let corner of  Alternatively the market "
                   "square.",
    "replace": "The old library stands at the  Alternatively  check the  maybe square.",
    "comma_list": "The old library stands at the corner  Alternatively,  actually,  Therefore of the "
                  "market square.",
    "inject_bigram": "The old library  So the stands at the corner of the market  Let me square.",
    "bigram_before": "The  maybe old so  Wait library stands at the corner of the market square.",
    "bigram_after": "The old library stands at the corner  verify of the market  actually square.",
    "inject_trigram": "The old library stands at the corner of  So the answer the market square.",
    "trigram": "The old library stands at the corner of the market right  So square.",
    "active_trigram": "The old library stands at the corner of  Let  me  check the market square.",
}


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_each_strategy_on_a_fixed_seed(strategy):
    out = inject(TEXT, strategy, MATERIAL, count_for(strategy), strategy_rng(0, 7, strategy))
    assert out == EXPECTED[strategy]
    again = inject(TEXT, strategy, MATERIAL, count_for(strategy), strategy_rng(0, 7, strategy))
    assert again == out  # the generator is seeded by (seed, feature, strategy) alone


def test_strategy_structure():
    out = inject(TEXT, "intersperse", MATERIAL, 3, strategy_rng(1, 2, "intersperse"))
    words = out.split()
    assert len(words) == len(TEXT.split()) + 3
    assert [w for w in words if " " + w not in TOKENS] == TEXT.split()  # the text, in order
    assert count_for("prepend") == 3 and count_for("bigram_after") == 2 and count_for("trigram") == 1
    assert len(DEFAULT_STRATEGIES) == 8 and set(DEFAULT_STRATEGIES) < set(STRATEGIES)


def test_fallbacks():
    rng = strategy_rng(0, 0, "x")
    short = inject("One", "intersperse", MATERIAL, 3, rng)  # < 2 words: prepended
    assert short.endswith(" One") and len(short.split()) == 4
    bare = MATERIAL._replace(bigrams=[], contexts={}, active=None)
    assert inject(TEXT, "inject_bigram", bare, 2, strategy_rng(0, 0, "a")).endswith(" " + TEXT)
    assert inject(TEXT, "bigram_after", bare, 2, strategy_rng(0, 0, "a")).startswith(TEXT + " ")
    assert inject("a b", "replace", MATERIAL, 3, strategy_rng(0, 0, "a")).split() == \
        inject("a b", "prepend", MATERIAL, 3, strategy_rng(0, 0, "a")).split()[:3]


def test_strategy_names():
    assert parse_strategies("prepend, replace") == ["prepend", "replace"]
    for bad, says in (("prepend,shout", "unknown injection strategy 'shout'"),
                      ("", "no injection strategy"), ("prepend,prepend", "repeat")):
        with pytest.raises(ThinksaeError, match=says) as e:
            parse_strategies(bad)
        assert "\n" not in str(e.value)


IDS = np.array([[5, 6, 5, 7], [6, 5, 9, 9]])
ACTS = np.array([[1.0, 0.0, 3.0, 0.0], [2.0, 2.0, 0.0, 4.0]])
ALL = np.ones_like(IDS, dtype=bool)


def test_token_scores_by_hand():
    # 5: acts 1, 3, 2 → mean 2 (3 times); 9: 0, 4 → 2 (twice, first seen later than 5);
    # 6: 0, 2 → 1; 7 once (below min_count 2)
    assert ngram_scores(IDS, ACTS, ALL, 1, 2, 10) == [((5,), 2.0, 3), ((9,), 2.0, 2), ((6,), 1.0, 2)]
    assert ngram_scores(IDS, ACTS, ALL, 1, 2, 1) == [((5,), 2.0, 3)]


def test_bigram_scores_by_hand_and_counted_positions():
    # occurrences (mean of the two acts): (5,6) .5, (6,5) 1.5, (5,7) 1.5 | (6,5) 2, (5,9) 1, (9,9) 2
    assert ngram_scores(IDS, ACTS, ALL, 2, 1, 10) == [
        ((9, 9), 2.0, 1), ((6, 5), 1.75, 2), ((5, 7), 1.5, 1), ((5, 9), 1.0, 1), ((5, 6), 0.5, 1)]
    assert ngram_scores(IDS, ACTS, ALL, 2, 2, 10) == [((6, 5), 1.75, 2)]
    counted = ALL.copy()
    counted[1, 3] = False  # the last 9 does not count: (9, 9) is gone, 9 appears once
    assert ((9, 9), 2.0, 1) not in ngram_scores(IDS, ACTS, counted, 2, 1, 10)
    assert ((9,), 0.0, 1) in ngram_scores(IDS, ACTS, counted, 1, 1, 10)


def test_trigger_lists_strings_and_minimums():
    ids = np.array([[1, 2, 3] * 4])  # 1, 2, 3 four times each
    acts = np.array([[0.0, 1.0, 0.5] * 4])
    lists = trigger_lists(ids, acts, np.ones_like(ids, dtype=bool), {1: " a", 2: "b", 3: "c"}.get)
    assert lists.tokens == []  # 4 occurrences < 5
    assert [(b.text, b.mean, b.count) for b in lists.bigrams] == [
        ("bc", 0.75, 4), (" ab", 0.5, 4), ("c a", 0.25, 3)]
    assert lists.trigrams[0].text == " abc" and lists.trigrams[0].count == 4


def test_word_contexts_by_hand():
    texts = ["so Wait, maybe later. Wait here", "but wait: no. They awaited us"]
    before, after = word_contexts(texts, [" Wait"])[" Wait"]
    # matches: "wait" (so|maybe), "wait" (later.|here), "wait:" (but|no.), "awaited" (they|us)
    assert before == ["so", "later", "but", "they"]
    assert after == ["maybe", "here", "no", "us"]


def test_active_trigrams_by_hand():
    ids = np.array([[1, 10, 11, 12, 13, 14]])
    acts = np.array([[9.0, 1.0, 1.0, 1.0, 0.5, 1.0]])  # ≥ 0.9 (10 % of 9) at 0, 1, 2, 3, 5
    names = {10: " x", 11: " y", 12: " z", 13: "w", 14: "v"}
    assert active_trigrams(ids, np.array([6]), acts, names.get) == [[" x", " y", " z"]]
    names[11] = " "  # a blank token string drops the sequence
    assert active_trigrams(ids, np.array([6]), acts, names.get) == []
    assert active_trigrams(ids, np.array([3]), acts, {}.get) == []  # under 4 tokens
