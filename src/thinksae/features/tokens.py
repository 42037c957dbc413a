"""What the analysis needs to know about each vocabulary item: display text and token classes.

A token counts as *formatting* when it is a special/control token (BOS/EOS/pad, ``<think>``,
``</think>``, chat role markers: :func:`thinksae.corpus.control_token_ids`) or when its text has
no letter or digit at all (newlines, spaces, punctuation, brackets, maths symbols). Byte pieces
of a multi-byte character (shown as U+FFFD) are not formatting.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch
from torch import Tensor

from ..corpus.segment import control_token_ids
from ..errors import ThinksaeError

_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


@dataclass
class TokenInfo:
    """Per-id tables over a tokenizer's whole vocabulary."""

    strings: list[str]
    """Decoded text of each id on its own."""
    is_format: Tensor
    """``[V]`` bool: special/control token or text without any letter or digit."""
    is_special: Tensor
    """``[V]`` bool: special/control tokens only."""
    continues_word: Tensor
    """``[V]`` bool: text starts with a letter (no leading space), so it extends the word before."""
    ends_letter: Tensor
    """``[V]`` bool: text ends with a letter."""
    ignore_ids: list[int]
    """BOS, EOS and pad: left out of the ReasonScore's positive and negative sets."""

    @property
    def vocab_size(self) -> int:
        return len(self.strings)

    @classmethod
    def from_strings(cls, strings: list[str], special_ids: set[int] = frozenset(),
                     ignore_ids: list[int] = ()) -> TokenInfo:
        v = len(strings)
        special = torch.zeros(v, dtype=torch.bool)
        if special_ids:
            special[torch.tensor(sorted(i for i in special_ids if 0 <= i < v), dtype=torch.long)] = True
        no_word = torch.tensor([not any(c.isalnum() for c in s) and "\ufffd" not in s
                                for s in strings], dtype=torch.bool)
        cont = torch.tensor([bool(s) and s[0].isalpha() for s in strings], dtype=torch.bool)
        ends = torch.tensor([bool(s) and s[-1].isalpha() for s in strings], dtype=torch.bool)
        return cls(list(strings), special | no_word, special, cont & ~special, ends & ~special,
                   sorted({int(i) for i in ignore_ids if i is not None}))

    @classmethod
    def from_tokenizer(cls, tokenizer) -> TokenInfo:
        """The tables of ``tokenizer`` (computed once per tokenizer object)."""
        try:
            cached = _CACHE.get(tokenizer)
        except TypeError:  # not weak-referenceable
            cached = None
        if cached is not None and cached.vocab_size == len(tokenizer):
            return cached
        info = cls._build(tokenizer)
        try:
            _CACHE[tokenizer] = info
        except TypeError:
            pass
        return info

    @classmethod
    def _build(cls, tokenizer) -> TokenInfo:
        v = len(tokenizer)
        strings = tokenizer.batch_decode([[i] for i in range(v)], skip_special_tokens=False,
                                         clean_up_tokenization_spaces=False)
        ignore = [tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id]
        return cls.from_strings(strings, control_token_ids(tokenizer), ignore)

    def check_ids(self, token_ids: Tensor) -> None:
        """Refuse token ids outside this vocabulary (data tokenised by another tokenizer)."""
        if token_ids.numel() and (int(token_ids.max()) >= self.vocab_size or int(token_ids.min()) < 0):
            raise ThinksaeError(
                f"token id {int(token_ids.max())} is outside the tokenizer's vocabulary of "
                f"{self.vocab_size}: the data was tokenised with another tokenizer")
