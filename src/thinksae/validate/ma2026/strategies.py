"""Ma et al.'s injection strategies: put a feature's trigger strings into a non-reasoning text.

The text is split on whitespace into words; ``sel`` = ``n`` trigger tokens drawn without
replacement from the feature's top tokens (the first 10 of its list); ``rng`` is a seeded
:class:`random.Random` (one per feature and strategy, see :func:`strategy_rng`; their code draws
from Python's unseeded global generator). "Insert at random positions" = for each item in turn,
``words.insert(rng.randint(0, len(words)), item)``. Texts of fewer than two words get the items
prepended instead.

============== ============================================================================
prepend        ``"t1 t2 t3 " + text``
append         ``text + " t1 t2 t3"``
intersperse    each token inserted at a random word position
replace        random distinct words overwritten by the tokens (the tokens alone when the text
               has fewer words)
comma_list     ``"t1, t2, t3"`` inserted at one random position
inject_bigram  ``n`` of the feature's top bigram strings (its first 20) inserted at random
               positions (prepend of ``sel`` when it has none)
inject_trigram the same with its top trigram strings (its first 10)
bigram_before  ``"ctx tok"`` per token, ctx drawn from the 3 commonest words right before that
               token in the reasoning texts (the token alone when there is none), inserted at
               random positions
bigram_after   ``"tok ctx"`` with the commonest words right after
trigram        ``"before tok after"`` (or the half that exists)
active_trigram ``n`` three-token sequences of reasoning text whose tokens all fire the feature
               at ≥ 10 % of that text's max (:func:`thinksae.validate.ma2026.triggers.active_trigrams`),
               inserted at random positions; ``sel[:3]`` joined when there are none
============== ============================================================================

``n`` is 3 for prepend, append, intersperse, replace and comma_list; 2 for inject_bigram,
bigram_before and bigram_after; 1 for inject_trigram, trigram and active_trigram. The draws
happen in this order: ``sel`` first (every strategy), then the strategy's own. A token string is
used as the tokenizer decodes it (``" Wait"`` keeps its leading space), as in their code.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import NamedTuple

from ...errors import ThinksaeError

SIMPLE = ("prepend", "append", "intersperse", "replace", "comma_list")
BIGRAM = ("inject_bigram", "bigram_before", "bigram_after")
TRIGRAM = ("inject_trigram", "trigram", "active_trigram")
STRATEGIES = SIMPLE + BIGRAM + TRIGRAM
"""Every strategy of their code."""
DEFAULT_STRATEGIES = ("prepend", "intersperse", "replace", "inject_bigram", "inject_trigram",
                      "bigram_before", "trigram", "comma_list")
"""The eight the paper uses (their default order; the best strategy's ties go to the first)."""
CONTEXTUAL = ("bigram_before", "bigram_after", "trigram")


class Material(NamedTuple):
    """What one feature's injections draw from."""

    tokens: list[str]
    """Its top token strings (the first ``top_tokens`` of its list)."""
    bigrams: list[str]
    trigrams: list[str]
    contexts: dict[str, tuple[list[str], list[str]]]
    """Token → (words before it, words after it), commonest first (10 each)."""
    active: list[list[str]] | None
    """Active trigram sequences (None: not extracted)."""


def parse_strategies(text: str | Sequence[str]) -> list[str]:
    """Strategy names from a comma-separated string or a list; one-line error on an unknown
    name, none, or a repeated one."""
    names = [s.strip() for s in (text.split(",") if isinstance(text, str) else text)]
    names = [s for s in names if s]
    unknown = [s for s in names if s not in STRATEGIES]
    if unknown:
        raise ThinksaeError(f"unknown injection strategy {unknown[0]!r} (use {', '.join(STRATEGIES)})")
    if not names:
        raise ThinksaeError(f"no injection strategy given (use some of {', '.join(STRATEGIES)})")
    if len(set(names)) != len(names):
        raise ThinksaeError(f"injection strategies repeat: {','.join(names)}")
    return names


def count_for(strategy: str, n_inject: int = 3, n_bigram: int = 2, n_trigram: int = 1) -> int:
    """How many items ``strategy`` inserts (module docstring)."""
    return n_inject if strategy in SIMPLE else n_bigram if strategy in BIGRAM else n_trigram


def strategy_rng(seed: int, feature: int, strategy: str) -> random.Random:
    """The generator of one feature's injections under one strategy (deterministic: seeded by
    the string ``"<seed>/<feature>/<strategy>"``, independent of the order things run in)."""
    return random.Random(f"{seed}/{feature}/{strategy}")


def _insert_each(words: list[str], items: list[str], text: str, rng: random.Random) -> str:
    if len(words) < 2:
        return " ".join(items) + " " + text
    for item in items:
        words.insert(rng.randint(0, len(words)), item)
    return " ".join(words)


def _with_context(sel: list[str], contexts, rng: random.Random, before: bool, after: bool
                  ) -> list[str]:
    out = []
    for tok in sel:
        b_words, a_words = contexts.get(tok, ([], []))
        parts = [tok]
        if before and b_words:
            parts.insert(0, rng.choice(b_words[:3]))
        if after and a_words:
            parts.append(rng.choice(a_words[:3]))
        out.append(" ".join(parts))
    return out


def inject(text: str, strategy: str, material: Material, n: int, rng: random.Random) -> str:
    """``text`` with ``material`` put in by ``strategy`` (module docstring)."""
    sel = rng.sample(material.tokens, min(n, len(material.tokens)))
    words = text.split()
    prepended = " ".join(sel) + " " + text
    if strategy == "prepend":
        return prepended
    if strategy == "append":
        return text + " " + " ".join(sel)
    if strategy == "intersperse":
        return _insert_each(words, sel, text, rng)
    if strategy == "replace":
        if len(words) < len(sel):
            return " ".join(sel)
        for pos, tok in zip(rng.sample(range(len(words)), len(sel)), sel):
            words[pos] = tok
        return " ".join(words)
    if strategy == "comma_list":
        return _insert_each(words, [", ".join(sel)], text, rng)
    if strategy in ("inject_bigram", "inject_trigram"):
        grams = material.bigrams if strategy == "inject_bigram" else material.trigrams
        if not grams:
            return prepended
        return _insert_each(words, rng.sample(grams, min(n, len(grams))), text, rng)
    if strategy in CONTEXTUAL:
        if not material.contexts:  # no context table at all: their fallbacks
            return text + " " + " ".join(sel) if strategy == "bigram_after" else prepended
        before, after = strategy != "bigram_after", strategy != "bigram_before"
        return _insert_each(words, _with_context(sel, material.contexts, rng, before, after), text,
                            rng)
    if strategy == "active_trigram":
        return _active(words, sel, material.active, text, n, rng)
    raise ThinksaeError(f"unknown injection strategy {strategy!r} (use {', '.join(STRATEGIES)})")


def _active(words: list[str], sel: list[str], active, text: str, n: int, rng: random.Random) -> str:
    if not active:
        return _insert_each(words, [" ".join(sel[:3])], text, rng)
    for seq in rng.sample(active, min(n, len(active))):
        item = " ".join(seq)
        if len(words) < 2:
            words = [item] + words
        else:
            words.insert(rng.randint(0, len(words)), item)
    return " ".join(words)
