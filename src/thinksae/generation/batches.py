"""Prompts as batches of rows: tokenised, left-padded, grouped by length; and where a finished
row's real tokens end.

A batch row is one (setting, prompt) pair (steering decodes the baseline and every steered
setting of a prompt together; the corpus and the monitor have one setting). Prompts are sorted
by length and cut into groups of similar length; a batch holds whole groups under every setting,
up to ``batch_size`` rows (a group too large for one batch is split).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor


class Batch(NamedTuple):
    """Rows ``(setting index, prompt index)`` decoded together, left-padded to ``width``."""

    rows: list[tuple[int, int]]
    width: int


def prompt_lengths(tokenizer, prompts: list[str]) -> list[int]:
    return [len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts]


def plan_groups(lengths: list[int], per_group: int) -> list[list[int]]:
    """Prompt indices in groups of ``per_group`` similar lengths (less padding), longest first."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    return [order[a:a + per_group] for a in range(0, len(order), per_group)]


def plan_rows(groups: list[list[int]], settings: list[int], batch_size: int,
              lengths: list[int], fixed: dict[int, int] | None = None) -> list[Batch]:
    """Batches of whole groups under every one of ``settings``, at most ``batch_size`` rows
    (a group with more rows is split). Width: the longest prompt of the batch, or with
    ``fixed`` each prompt's given width, and then only groups of equal width share a batch."""
    out: list[Batch] = []
    rows: list[tuple[int, int]] = []
    width = 0
    for group in groups:
        w = max((fixed or {}).get(p, lengths[p]) for p in group)
        new = [(s, p) for s in settings for p in group]
        if rows and (len(rows) + len(new) > batch_size or (fixed is not None and w != width)):
            out.append(Batch(rows, width))
            rows, width = [], 0
        rows, width = rows + new, max(width, w)
        while len(rows) > batch_size:
            out.append(Batch(rows[:batch_size], width))
            rows = rows[batch_size:]
    if rows:
        out.append(Batch(rows, width))
    return out


def left_pad(tokenizer, prompts: list[str], pad_id: int, width: int | None = None
             ) -> tuple[Tensor, Tensor]:
    """Token ids of the prompts (no added special tokens: the template has them) left-padded to
    ``width`` (default: the longest), and the attention mask."""
    rows = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    width = max(len(r) for r in rows) if width is None else width
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            ids[i, width - len(r):] = torch.as_tensor(r)
            mask[i, width - len(r):] = 1
    return ids, mask


def trim_at_stop(new_ids: list[int], stop: set[int], pad_id: int | None) -> tuple[list[int], bool]:
    """Generated ids up to (not including) the first stop token; whether it stopped."""
    for i, t in enumerate(new_ids):
        if t in stop:
            return new_ids[:i], True
    while new_ids and new_ids[-1] == pad_id:
        new_ids = new_ids[:-1]
    return new_ids, False


def real_positions(ids: Tensor, prompt_mask: Tensor, stop: set[int]) -> Tensor:
    """Prompt mask, then generated tokens up to and including each row's first stop token."""
    gen = ids[:, prompt_mask.shape[1]:]
    is_stop = torch.zeros_like(gen, dtype=torch.bool)
    for s in stop:
        is_stop |= gen == s
    after = (is_stop.long().cumsum(1) - is_stop.long()) > 0  # strictly after the first stop
    return torch.cat([prompt_mask.bool(), ~after], dim=1)
