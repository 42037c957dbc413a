"""Per-text max activation: texts cut to ``max_tokens`` tokens (the tokenizer's own special
tokens, e.g. BOS, included in the count), run through the model to the hookpoint (the forward
stops there: :func:`thinksae.models.capture`) and the SAE, the max over the counted positions per
latent (a latent that is not active at a position counts 0 there; SAE activations are ≥ 0).
Texts are padded on the right with the tokenizer's pad id (else EOS, else 0).

Which positions count — the masking mode:

``ma2026`` (their code, for reproduction)
    *Selection pass*: every text padded to exactly ``max_tokens`` tokens and run **with no
    attention mask** (as their ``padding="max_length"`` with TransformerLens): the max is over
    all ``max_tokens`` positions — BOS and the padding positions included. Padding is on the
    right and the model is causal, so the text's own tokens are unaffected; the padding
    positions carry whatever the model computes for pad tokens that attend to the text, and the
    trigger lists count them as tokens too (a pad id can become a "top token").
    *Injection pass* (their injection script): padded to the longest text of the batch, no
    attention mask, the max over the text's own tokens only (positions below its length; BOS
    included).
``sinks`` (default)
    Right padding with the attention mask; the max over the text's own tokens that are not
    sinks by thinksae's rule (:mod:`thinksae.sinks`): not a special or control id
    (:func:`thinksae.corpus.segment.control_token_ids`: BOS, EOS, padding, role and think
    markers) and with ‖x_t‖ (the hookpoint activation, the SAE input) at most ``norm_multiple``
    × the reference median norm (given, e.g. the store's; else, per batch, the median over the
    batch's non-special tokens). Both passes alike.

A text's own positions do not depend on the mode (the model is causal and the padding on the
right, so neither the padding nor the attention mask reaches them): an :class:`EncodingCache`
keeps each text's encoding by its token ids, and a second run over the same texts under the
other mode (:func:`~.experiment.compare_masking`) reuses it. Only the ``ma2026`` selection pass,
which counts padding positions, always runs the model.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from ...corpus.segment import control_token_ids
from ...errors import ThinksaeError
from ...models.hookpoints import capture
from ...sinks import SinkRule, special_flags
from .config import check_mask_mode


@dataclass(frozen=True)
class Masking:
    """Which positions of a pass count (module docstring)."""

    mode: str
    selection: bool
    """The selection pass (ma2026: padded to max_tokens, padding counted)."""
    rule: SinkRule | None = None
    """The sink rule of the ``sinks`` mode (None: special ids only)."""

    def __post_init__(self):
        check_mask_mode(self.mode)


class Batch(NamedTuple):
    """One batch of encoded texts."""

    token_ids: torch.Tensor
    """[b, L] (padding included)."""
    lengths: torch.Tensor
    """[b] real tokens per text."""
    counted: torch.Tensor
    """[b, L] bool: the positions whose activations count."""
    acts: torch.Tensor
    """[b, L, k] the SAE's active latents' values (float32) ..."""
    indices: torch.Tensor
    """[b, L, k] ... and indices."""
    dropped: dict
    """Counts of real tokens not counted: ``special`` (by id), ``by_norm``; ``padding_counted``."""


def pad_id_of(tokenizer) -> int:
    for i in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if i is not None:
            return int(i)
    return 0


def tokenize(tokenizer, texts: Sequence[str], max_tokens: int) -> list[list[int]]:
    """Token ids of each text with the tokenizer's special tokens, cut to ``max_tokens``."""
    ids = tokenizer(list(texts), add_special_tokens=True, truncation=True,
                    max_length=max_tokens)["input_ids"]
    return [list(r)[:max_tokens] for r in ids]


def _padded(rows: list[list[int]], width: int, pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    real = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.as_tensor(r, dtype=torch.long)
        real[i, : len(r)] = True
    return ids, real


def _counted(norms: torch.Tensor, ids: torch.Tensor, real: torch.Tensor, masking: Masking,
             special_ids: set[int]) -> tuple[torch.Tensor, dict]:
    """The counted positions of a batch (``norms``: ‖x_t‖ per position) and what was dropped."""
    if masking.mode == "ma2026":
        counted = torch.ones_like(real) if masking.selection else real
        return counted, {"special": 0, "by_norm": 0,
                         "padding_counted": int((counted & ~real).sum())}
    special = special_flags(ids, special_ids) | ~real
    rule = masking.rule or SinkRule(norm_multiple=None)
    sinks = rule.mask(norms, special)
    counted = real & ~sinks
    return counted, {"special": int((special & real).sum()),
                     "by_norm": int((sinks & ~special).sum()), "padding_counted": 0}


Encoded = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
"""``acts [b, L, k]`` (float32), ``indices [b, L, k]`` and ``norms [b, L]`` of a padded batch."""


def _encode(model, sae, hookpoint: str, ids: torch.Tensor, mask: torch.Tensor | None) -> Encoded:
    device = next(model.parameters()).device
    x = capture(model, hookpoint, ids.to(device), None if mask is None else mask.to(device))[hookpoint]
    enc = sae.encode(x.to(sae.device, sae.dtype))
    return (enc.latent_acts.float().cpu(), enc.latent_indices.cpu(), x.float().norm(dim=-1).cpu())


class EncodingCache:
    """Each text's encoding at its own positions, by its token ids (module docstring);
    ``reused`` counts the texts served from it."""

    def __init__(self) -> None:
        self._rows: dict[tuple[int, ...], Encoded] = {}
        self.reused = 0

    def encode(self, rows: list[list[int]], width: int, pad: int, run) -> Encoded:
        """The batch of ``rows`` padded to ``width``; ``run(ids, mask)`` encodes the texts not
        kept yet (padded to their longest, with the attention mask)."""
        keys = [tuple(r) for r in rows]
        todo = list({k: None for k in keys if k not in self._rows})
        missing = set(todo)
        self.reused += sum(k not in missing for k in keys)
        if todo:
            ids, real = _padded([list(k) for k in todo], max(map(len, todo)), pad)
            acts, idx, norms = run(ids, real.long())
            for j, k in enumerate(todo):
                self._rows[k] = (acts[j, : len(k)], idx[j, : len(k)], norms[j, : len(k)])
        k_ = next(iter(self._rows.values()))[0].shape[-1]
        acts, idx = torch.zeros(len(rows), width, k_), torch.zeros(len(rows), width, k_, dtype=torch.long)
        norms = torch.zeros(len(rows), width)
        for i, k in enumerate(keys):
            a, ix, n = self._rows[k]
            acts[i, : len(k)], idx[i, : len(k)], norms[i, : len(k)] = a, ix, n
        return acts, idx, norms


@torch.inference_mode()
def encode_texts(model, tokenizer, sae, hookpoint: str, texts: Sequence[str], max_tokens: int,
                 masking: Masking, batch_size: int, special_ids: set[int] | None = None,
                 cache: EncodingCache | None = None) -> Iterator[Batch]:
    """The texts' SAE encodings, batch by batch (module docstring); with ``cache``, texts it
    keeps are not run again (except by the ``ma2026`` selection pass)."""

    if special_ids is None:
        special_ids = control_token_ids(tokenizer)
    pad = pad_id_of(tokenizer)
    rows_all = tokenize(tokenizer, texts, max_tokens)
    padding_counted = masking.mode == "ma2026" and masking.selection
    for start in range(0, len(rows_all), batch_size):
        rows = rows_all[start: start + batch_size]
        if any(not r for r in rows):
            raise ThinksaeError("a text has no tokens after tokenization (empty text?)")
        width = max_tokens if padding_counted else max(map(len, rows))
        ids, real = _padded(rows, width, pad)
        if cache is not None and not padding_counted:
            acts, idx, norms = cache.encode(rows, width, pad,
                                            lambda i, m: _encode(model, sae, hookpoint, i, m))
        else:
            mask = real.long() if masking.mode == "sinks" else None
            acts, idx, norms = _encode(model, sae, hookpoint, ids, mask)
        counted, dropped = _counted(norms, ids, real, masking, special_ids)
        yield Batch(ids, real.sum(1), counted, acts, idx, dropped)


def text_max(batch: Batch, num_latents: int) -> torch.Tensor:
    """``[b, num_latents]``: per text and latent the max activation over the counted positions
    (0 where the latent never fires there)."""
    b, L, k = batch.acts.shape
    acts = (batch.acts * batch.counted[..., None]).reshape(b, L * k)
    out = torch.zeros(b, num_latents)
    return out.scatter_reduce_(1, batch.indices.reshape(b, L * k).long(), acts, "amax")


def latent_acts(batch: Batch, latents: Sequence[int]) -> torch.Tensor:
    """``[b, L, len(latents)]``: each latent's activation per position (0 at positions that do
    not count)."""
    want = torch.as_tensor(list(latents), dtype=torch.long)
    hit = batch.indices[..., None, :].long() == want[:, None]  # [b, L, C, k]
    vals = (batch.acts[..., None, :] * hit).sum(-1)
    return vals * batch.counted[..., None]


def row_latent_max(batch: Batch, latents: Sequence[int]) -> np.ndarray:
    """``[b]``: each text's max of its own latent (``latents[i]`` for text i)."""
    want = torch.as_tensor(list(latents), dtype=torch.long)[:, None, None]
    vals = (batch.acts * (batch.indices.long() == want)).sum(-1) * batch.counted
    return vals.max(1).values.double().numpy()


def add_dropped(total: dict, dropped: dict) -> dict:
    """Sum of two ``dropped`` count dicts."""
    return {k: total.get(k, 0) + v for k, v in dropped.items()}
