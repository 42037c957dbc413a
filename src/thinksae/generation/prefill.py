"""A batch's shared prefill: the leading prompt positions no row steers, run once per prompt.

Every setting of a prompt has the same tokens up to its first steered position and the model
runs unchanged there, so the KV cache of those positions is computed once for each distinct
prompt of a batch (not once per setting) and copied to the rows that need it. The generation and
both teacher-forced KL passes start from copies of it; the two KL passes start from the same
copy with the same shapes, so an identity setting (x1, +0) still has KL exactly 0.

With ``--start prompt`` every position from the prompt's last token on is steered, so a batch of
Q questions × S settings prefills Q × (W − 1) positions instead of Q × S × W.
"""

from __future__ import annotations

import copy
import inspect
from typing import NamedTuple

import torch
from torch import Tensor, nn

from ..chat import ThinkMarkers
from ..interventions import Window, scan
from ..models.hookpoints import decoder_stack


class SharedPrefill(NamedTuple):
    """The KV cache of the first ``length`` positions of each distinct prompt of a batch."""

    length: int
    cache: object
    """The model's KV cache (one row per distinct prompt); copied before every use."""
    row_of: Tensor
    """``[batch]``: the cache row of each batch row."""


def unsteered_length(ids: Tensor, width: int, window: Window | None, markers: ThinkMarkers | None
                     ) -> int:
    """Leading positions of the left-padded prompts ``ids [B, width]`` that no row steers (the
    window's verdict depends only on the tokens up to a position), at most ``width − 1`` so that
    the model still reads one prompt token when it starts from the cache; 0 without a window."""
    if window is None or markers is None:
        return 0
    first = width - 1
    for row in ids.tolist():
        flags, _ = scan(window, markers, row, width)
        if True in flags:
            first = min(first, flags.index(True))
    return max(first, 0)


def cache_argument(model: nn.Module) -> str:
    """The name the model's forward takes its KV cache by (``cache`` in newer transformers)."""
    params = inspect.signature(decoder_stack(model).forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def positions(mask: Tensor) -> Tensor:
    """Position ids of a left-padded batch, numbered as ``generate`` numbers them."""
    return (mask.long().cumsum(1) - 1).clamp_min(0)


def shared_prefill(model: nn.Module, ids: Tensor, mask: Tensor, prompt_of_row: list[int],
                   length: int) -> SharedPrefill | None:
    """Run the first ``length`` positions of each distinct prompt once (rows of ``ids``/``mask``
    with equal ``prompt_of_row`` hold the same prompt); None when ``length`` is 0."""
    if length < 1:
        return None
    distinct = list(dict.fromkeys(prompt_of_row))
    first_row = [prompt_of_row.index(p) for p in distinct]
    sub_ids, sub_mask = ids[first_row, :length], mask[first_row, :length]
    out = decoder_stack(model)(input_ids=sub_ids, attention_mask=sub_mask,
                               position_ids=positions(sub_mask), use_cache=True)
    cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
    if cache is None:
        return None
    row_of = torch.tensor([distinct.index(p) for p in prompt_of_row], device=ids.device)
    return SharedPrefill(length, cache, row_of)


def cache_for(prefill: SharedPrefill, rows: Tensor | None = None):
    """A fresh copy of the prefill's cache holding one row per batch row (or per given row)."""
    index = prefill.row_of if rows is None else prefill.row_of[rows]
    cache = copy.deepcopy(prefill.cache)
    cache.batch_select_indices(index)
    return cache


def hidden_after(model: nn.Module, prefill: SharedPrefill, rows: Tensor, ids: Tensor,
                 real: Tensor) -> Tensor:
    """Final hidden states of the finished sequences ``ids`` (batch ``rows``) after the shared
    prefill, positions ``length`` onwards ``[n, seq − length, d]``, with ``real`` as the
    attention mask and positions numbered as ``generate`` numbers them."""
    n = prefill.length
    out = decoder_stack(model)(input_ids=ids[:, n:], attention_mask=real.long(),
                               position_ids=positions(real)[:, n:], use_cache=True,
                               **{cache_argument(model): cache_for(prefill, rows)})
    return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
