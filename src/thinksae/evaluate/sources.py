"""Eval data as streams: documents (token ids + labels) from a corpus or a store, store chunks.

Everything here is a generator that holds at most one document, one chunk or one batch at a time,
so an evaluation's memory does not grow with the number of eval tokens.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor

from ..corpus.segment import tokenize_trace
from ..corpus.traces import iter_traces


class Doc(NamedTuple):
    """One document: token ids with a region and a behaviour code per token (1-D tensors)."""

    input_ids: Tensor
    regions: Tensor
    behaviours: Tensor


def corpus_docs(path: str | Path, tokenizer, max_length: int, docs=None) -> Iterator[Doc]:
    """The traces of a JSONL corpus, tokenised and labelled as the harvest does (only those at
    the indices ``docs`` when given)."""
    keep = None if docs is None else {int(i) for i in docs}
    for i, trace in enumerate(iter_traces(path)):
        if keep is not None and i not in keep:
            continue
        tok = tokenize_trace(tokenizer, trace, max_length=max_length)
        if tok.input_ids:
            yield Doc(torch.tensor(tok.input_ids, dtype=torch.long),
                      torch.tensor(tok.regions, dtype=torch.uint8),
                      torch.tensor(tok.behaviours, dtype=torch.uint8))


def store_docs(store, chunk_tokens: int = 8192, docs=None) -> Iterator[Doc]:
    """The documents of an activation store (only those at the indices ``docs`` when given),
    rebuilt from its token ids and labels.

    Reads the store in order, chunk by chunk; a document cut by a chunk boundary is carried over.
    """
    pending: list[dict[str, Tensor]] = []
    current = None
    for chunk in store.iter_chunks(chunk_tokens, docs):
        doc_index = chunk["doc_index"]
        cuts = (torch.nonzero(doc_index[1:] != doc_index[:-1])[:, 0] + 1).tolist()
        for a, b in zip([0, *cuts], [*cuts, len(doc_index)]):
            piece = {k: chunk[k][a:b] for k in ("token_ids", "regions", "behaviours")}
            index = int(doc_index[a])
            if current is not None and index != current:
                yield _join(pending)
                pending = []
            current = index
            pending.append(piece)
    if pending:
        yield _join(pending)


def _join(pieces: list[dict[str, Tensor]]) -> Doc:
    cat = {k: torch.cat([p[k] for p in pieces]) for k in pieces[0]}
    return Doc(cat["token_ids"].long(), cat["regions"], cat["behaviours"])


def take_tokens(docs: Iterable[Doc], max_tokens: int | None) -> Iterator[Doc]:
    """The documents up to ``max_tokens`` tokens in all (the last one cut); all when None."""
    left = max_tokens
    for doc in docs:
        if left is not None:
            if left <= 0:
                return
            doc = Doc(*(t[:left] for t in doc))
            left -= len(doc.input_ids)
        yield doc


def take_chunks(chunks: Iterable[dict[str, Tensor]], max_tokens: int | None
                ) -> Iterator[dict[str, Tensor]]:
    """Store chunks up to ``max_tokens`` tokens in all (the last one cut); all when None."""
    left = max_tokens
    for chunk in chunks:
        if left is not None:
            if left <= 0:
                return
            chunk = {k: v[:left] for k, v in chunk.items()}
            left -= len(chunk["activations"])
        yield chunk


def batches(docs: Iterable[Doc], batch_size: int) -> Iterator[list[Doc]]:
    """Consecutive groups of ``batch_size`` documents (the last may be smaller)."""
    batch: list[Doc] = []
    for doc in docs:
        batch.append(doc)
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def pad_right(docs: list[Doc], pad_id: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(input_ids, attention_mask, regions, behaviours)`` ``[batch, longest]``, padded on the
    right (so real tokens keep positions 0..n-1)."""
    width = max(len(d.input_ids) for d in docs)
    ids = torch.full((len(docs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(docs), width), dtype=torch.long)
    regions = torch.zeros((len(docs), width), dtype=torch.uint8)
    behaviours = torch.zeros((len(docs), width), dtype=torch.uint8)
    for row, doc in enumerate(docs):
        n = len(doc.input_ids)
        ids[row, :n], mask[row, :n] = doc.input_ids, 1
        regions[row, :n], behaviours[row, :n] = doc.regions, doc.behaviours
    return ids, mask, regions, behaviours
