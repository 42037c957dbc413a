"""ReasonScore (Galichin et al. 2025, arXiv 2503.18878): how specific a feature is to reasoning words.

Vocabulary matching (``match``):

- ``reference`` (default), as the authors' code computes it: a list of exact strings (default:
  :data:`REFERENCE_TOKENS`, their 34), each tokenised on its own without special tokens; a string
  matches wherever its token ids occur as a contiguous run (no word-boundary test, so ``But``
  also matches the start of ``Butterfly`` and lower-case `` but`` does not match at all). Strings
  are grouped by ``s.lstrip().lower()`` (10 groups by default).
- ``wide``: one group per word, matching its lower, Capitalised, UPPER and Title forms with and
  without a leading space, at word boundaries only (the word must begin and end with the match).

Every token of a match is marked, and each marked position p marks ``[p − 1, p + 2]`` (``before
= 1``, ``after = 2``, within one document): the marked tokens of group g are its positive set,
the union over groups is the positive set, every other token is negative; BOS/EOS/pad are in
neither set nor in any group's set.

For feature i, with μ⁺_i and μ⁻_i its mean activation over the positive and negative tokens
(zeros included) and m_ig its mean activation over the positive tokens of group g::

    p_ig  = m_ig / (Σ_g m_ig + 1e-12)            (the feature's activation spread over groups)
    H_i   = −Σ_g p_ig log p_ig                    (0 log 0 = 0)
    h_i   = H_i / log|G|                          (1 when |G| = 1)
    RS_i  = μ⁺_i / (Σ_j μ⁺_j + 1e-12) · h_i^α  −  μ⁻_i / (Σ_j μ⁻_j + 1e-12),     α = 0.7

The entropy term rewards features that respond to many reasoning words over those tied to one
word; the subtracted term penalises features that are active everywhere else too.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from ..errors import ThinksaeError
from .config import ALPHA
from .tokens import TokenInfo

REASON_VOCAB: tuple[str, ...] = ("alternatively", "hmm", "maybe", "wait", "perhaps", "let me",
                                 "therefore", "however", "but", "another")
"""The paper's reasoning vocabulary: one group per word (lower-cased), in the authors' order."""
REFERENCE_TOKENS: tuple[str, ...] = tuple(
    [form for w in REASON_VOCAB[:8] for c in (w, w.capitalize()) for form in (c, " " + c)]
    + ["But", "Another"])
"""The 34 exact strings the authors' code matches (``extraction/reason_tokens.json``): for the
first eight words the lower-case and Capitalised forms, each without and with a leading space;
for "but" and "another" only ``But`` and ``Another``."""
MATCH_MODES = ("reference", "wide")
EPS = 1e-12
WINDOW_BEFORE, WINDOW_AFTER = 1, 2


def _check_match(match: str) -> None:
    if match not in MATCH_MODES:
        raise ThinksaeError(f"--reason_vocab_match must be one of {', '.join(MATCH_MODES)} "
                            f"(got {match!r})")


def _group_exact(strings) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for s in strings:
        out.setdefault(s.lstrip().lower(), []).append(s)
    return out


def read_vocab(path: str | Path | None, match: str = "reference") -> dict[str, list[str]]:
    """Word groups ``{group: [strings]}``: the default of ``match`` (``reference``: the 34
    :data:`REFERENCE_TOKENS` grouped by ``s.lstrip().lower()``; ``wide``: one group per word of
    :data:`REASON_VOCAB`), or a JSON file holding a list of strings (grouped the same way) or an
    object ``{group: [strings]}``. With ``reference`` the strings are kept exactly (case and
    leading space matter); with ``wide`` they are stripped and lower-cased words."""
    _check_match(match)
    if path is None:
        return _group_exact(REFERENCE_TOKENS) if match == "reference" else {w: [w] for w in REASON_VOCAB}
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ThinksaeError(f"cannot read the reasoning vocabulary {path}: {e}") from None
    items = data.values() if isinstance(data, dict) else [data]
    ok = isinstance(data, (dict, list)) and data and all(
        isinstance(ws, list) and ws and all(isinstance(w, str) and w.strip() for w in ws)
        for ws in items)
    if not ok:
        raise ThinksaeError(f"{path}: expected a non-empty list of words or {{group: [words]}}")
    if match == "reference":
        return _group_exact(data) if isinstance(data, list) else {
            str(g).lower(): list(ws) for g, ws in data.items()}
    if isinstance(data, list):
        data = {str(w).lower(): [w] for w in data}
    return {str(g).strip().lower(): [w.strip().lower() for w in ws] for g, ws in data.items()}


def _variants(word: str) -> set[str]:
    forms = {word, word.capitalize(), word.upper(), word.title()}
    return forms | {" " + f for f in forms}


@dataclass
class ReasonMatcher:
    """Finds the positive tokens of each vocabulary group in a token stream."""

    groups: list[str]
    variants: list[tuple[int, tuple[int, ...], bool]]
    """(group, token ids, has a leading space)."""
    before: int = WINDOW_BEFORE
    after: int = WINDOW_AFTER
    boundaries: bool = False
    """Only matches that begin and end a word count (``wide``); ``reference`` has no such test."""

    @property
    def max_len(self) -> int:
        return max(len(ids) for _, ids, _ in self.variants)

    @property
    def reach(self) -> int:
        """Tokens of context a token's positive flag can depend on, on either side."""
        return self.max_len + max(self.before, self.after) + 1

    @classmethod
    def from_tokenizer(cls, tokenizer, vocab: dict[str, list[str]] | None = None,
                       match: str = "reference") -> ReasonMatcher:
        """The matcher of ``vocab`` (default: :func:`read_vocab` of ``match``) for ``tokenizer``:
        ``reference`` tokenises each string as given, ``wide`` each case/space variant."""
        _check_match(match)
        vocab = vocab or read_vocab(None, match)
        seen, variants = set(), []
        for g, words in enumerate(vocab.values()):
            for word in words:
                forms = [word] if match == "reference" else sorted(_variants(word))
                for form in forms:
                    ids = tuple(int(i) for i in tokenizer.encode(form, add_special_tokens=False))
                    if ids and (g, ids) not in seen:
                        seen.add((g, ids))
                        variants.append((g, ids, form.startswith(" ")))
        if not variants:
            raise ThinksaeError("the reasoning vocabulary has no string the tokenizer can encode")
        return cls(list(vocab), variants, boundaries=match == "wide")

    def positives(self, tokens: Tensor, docs: Tensor, info: TokenInfo) -> Tensor:
        """``[n, |G|]`` bool: token t is in the window of a match of group g (same document)."""
        n, device = len(tokens), tokens.device
        out = torch.zeros((n, len(self.groups)), dtype=torch.bool, device=device)
        cont, ends = info.continues_word.to(device), info.ends_letter.to(device)
        for g, ids, spaced in self.variants:
            span = len(ids)
            if n < span:
                continue
            m = docs[: n - span + 1] == docs[span - 1 :]
            for j, tid in enumerate(ids):
                m &= tokens[j : n - span + 1 + j] == tid
            starts = torch.nonzero(m).flatten()
            if not len(starts):
                continue
            if self.boundaries:
                starts = self._at_boundaries(starts, span, spaced, tokens, docs, cont, ends)
            for o in range(-self.before, span - 1 + self.after + 1):
                p = starts + o
                ok = (p >= 0) & (p < n)
                p, s = p[ok], starts[ok]
                out[p[docs[p] == docs[s]], g] = True
        return out

    @staticmethod
    def _at_boundaries(starts, span, spaced, tokens, docs, cont, ends) -> Tensor:
        """The match starts whose match is a whole word (``wide`` matching): the token after it
        does not continue the word, and without a leading space the token before it does not
        end a word."""
        n = len(tokens)
        nxt = starts + span
        has = nxt < n
        bad = torch.zeros_like(has)
        bad[has] = cont[tokens[nxt[has]]] & (docs[nxt[has]] == docs[starts[has]])
        if not spaced:
            prv = starts - 1
            has = prv >= 0
            bad[has] |= ends[tokens[prv[has]]] & (docs[prv[has]] == docs[starts[has]])
        return starts[~bad]


def reason_score(pos_mean: Tensor, neg_mean: Tensor, group_mean: Tensor,
                 alpha: float = ALPHA) -> tuple[Tensor, Tensor]:
    """``(RS [F], normalised group entropy h [F])`` from μ⁺ ``[F]``, μ⁻ ``[F]`` and the per-group
    means ``[F, |G|]``, by the module docstring's formula (the authors' epsilons included)."""
    pos_mean, neg_mean, group_mean = pos_mean.double(), neg_mean.double(), group_mean.double()
    n_groups = group_mean.shape[1]
    p = group_mean / (group_mean.sum(1, keepdim=True) + EPS)
    h = -torch.where(p > 0, p * torch.log(p.clamp_min(1e-300)), torch.zeros_like(p)).sum(1)
    h_norm = h / math.log(n_groups) if n_groups > 1 else torch.ones_like(h)
    pos_term = pos_mean / (float(pos_mean.sum()) + EPS)
    neg_term = neg_mean / (float(neg_mean.sum()) + EPS)
    return pos_term * h_norm.clamp_min(0) ** alpha - neg_term, h_norm
