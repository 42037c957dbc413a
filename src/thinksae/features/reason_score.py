"""ReasonScore (Galichin et al. 2025, arXiv 2503.18878): how specific a feature is to reasoning words.

The reasoning vocabulary is a list of word groups (default: the paper's ten, below). Each group
matches the token sequences of its case and leading-space variants (``wait``, ``Wait``, ``WAIT``,
`` wait``, …) at word boundaries within one document. The *positive* tokens of group g are
those within a window of ``before = 1`` token before and ``after = 2`` tokens after a match of g
(the matched tokens included); every other token is *negative*; BOS/EOS/pad are in neither set.

For feature i, with μ⁺_i and μ⁻_i its mean activation over the positive and negative tokens
(zeros included) and m_ig its mean activation over the positive tokens of group g::

    p_ig  = m_ig / Σ_g m_ig                      (the feature's activation spread over groups)
    H_i   = −Σ_g p_ig log p_ig
    RS_i  = (μ⁺_i / Σ_j μ⁺_j) · (H_i / log|G|)^α  −  μ⁻_i / Σ_j μ⁻_j,     α = 0.7

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
from .tokens import TokenInfo

REASON_VOCAB: tuple[str, ...] = ("alternatively", "hmm", "maybe", "wait", "perhaps", "let me",
                                 "therefore", "however", "but", "another")
"""The paper's reasoning vocabulary: one group per word (lower-cased)."""
ALPHA = 0.7
WINDOW_BEFORE, WINDOW_AFTER = 1, 2


def read_vocab(path: str | Path | None) -> dict[str, list[str]]:
    """Word groups: the default (one group per word of :data:`REASON_VOCAB`), or a JSON file
    holding a list of words or an object ``{group: [words]}``."""
    if path is None:
        return {w: [w] for w in REASON_VOCAB}
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ThinksaeError(f"cannot read the reasoning vocabulary {path}: {e}") from None
    if isinstance(data, list):
        data = {str(w).lower(): [w] for w in data}
    ok = isinstance(data, dict) and data and all(
        isinstance(ws, list) and ws and all(isinstance(w, str) and w.strip() for w in ws)
        for ws in data.values())
    if not ok:
        raise ThinksaeError(f"{path}: expected a non-empty list of words or {{group: [words]}}")
    return {str(g).lower(): [w.strip().lower() for w in ws] for g, ws in data.items()}


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

    @property
    def max_len(self) -> int:
        return max(len(ids) for _, ids, _ in self.variants)

    @property
    def reach(self) -> int:
        """Tokens of context a token's positive flag can depend on, on either side."""
        return self.max_len + max(self.before, self.after) + 1

    @classmethod
    def from_tokenizer(cls, tokenizer, vocab: dict[str, list[str]] | None = None) -> ReasonMatcher:
        vocab = vocab or read_vocab(None)
        seen, variants = set(), []
        for g, words in enumerate(vocab.values()):
            for word in words:
                for form in sorted(_variants(word)):
                    ids = tuple(int(i) for i in tokenizer(form, add_special_tokens=False).input_ids)
                    if ids and (g, ids) not in seen:
                        seen.add((g, ids))
                        variants.append((g, ids, form.startswith(" ")))
        return cls(list(vocab), variants)

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
            nxt = starts + span  # the word must end with the match
            has = nxt < n
            bad = torch.zeros_like(has)
            bad[has] = cont[tokens[nxt[has]]] & (docs[nxt[has]] == docs[starts[has]])
            if not spaced:  # ...and begin with it
                prv = starts - 1
                has = prv >= 0
                bad[has] |= ends[tokens[prv[has]]] & (docs[prv[has]] == docs[starts[has]])
            starts = starts[~bad]
            for o in range(-self.before, span - 1 + self.after + 1):
                p = starts + o
                ok = (p >= 0) & (p < n)
                p, s = p[ok], starts[ok]
                out[p[docs[p] == docs[s]], g] = True
        return out


def reason_score(pos_mean: Tensor, neg_mean: Tensor, group_mean: Tensor,
                 alpha: float = ALPHA) -> tuple[Tensor, Tensor]:
    """``(RS [F], normalised group entropy H/log|G| [F])`` from μ⁺ ``[F]``, μ⁻ ``[F]`` and the
    per-group means ``[F, |G|]`` (see the module docstring). Zero sums give zero terms."""
    pos_mean, neg_mean, group_mean = pos_mean.double(), neg_mean.double(), group_mean.double()
    n_groups = group_mean.shape[1]
    total = group_mean.sum(1, keepdim=True)
    p = torch.where(total > 0, group_mean / total.clamp_min(1e-300), torch.zeros_like(group_mean))
    h = -(p * torch.log(p.clamp_min(1e-300))).sum(1)
    h_norm = h / math.log(n_groups) if n_groups > 1 else (total[:, 0] > 0).double()
    pos_total, neg_total = float(pos_mean.sum()), float(neg_mean.sum())
    pos_term = pos_mean / pos_total if pos_total > 0 else torch.zeros_like(pos_mean)
    neg_term = neg_mean / neg_total if neg_total > 0 else torch.zeros_like(neg_mean)
    return pos_term * h_norm.clamp_min(0) ** alpha - neg_term, h_norm
