"""Token streams for the analysis: a store's shards, or a model run over a trace corpus.

Both yield chunks in document order: ``activations [n, d]`` (float32) with the label columns
``token_ids, regions, behaviours, doc_index, positions`` ``[n]``.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from ..corpus.segment import Region, tokenize_trace
from ..errors import ThinksaeError
from ..models.hookpoints import capture
from ..sinks import SinkRule
from ..store.reader import TOKEN_LABELS
from ..store.shards import memmap_shard, to_torch


def store_chunks(store, chunk_tokens: int = 8192, limit: int | None = None
                 ) -> Iterator[dict[str, torch.Tensor]]:
    """Sequential chunks of a store. Each shard is mapped only while it is read, so resident
    memory stays at one shard's pages whatever the store's size. ``limit`` stops after that many
    tokens. Each chunk has a ``sinks`` column: the tokens the store's sink rule marks."""
    seen = 0
    rule, names = store.sink_rule, store.manifest.get("regions") or []
    special_code = names.index("special") if "special" in names else -1
    for info in store.manifest["shards"]:
        path = store.path / info["file"]
        if not path.exists():
            raise ThinksaeError(f"store {store.path} is missing shard {path.name}")
        shard = memmap_shard(path)
        n = len(shard["token_ids"])
        for a in range(0, n, chunk_tokens):
            b = min(n, a + chunk_tokens)
            if limit is not None:
                b = min(b, a + limit - seen)
            out = {"activations": to_torch(shard["activations"][a:b], store.dtype).float()}
            for name in TOKEN_LABELS:
                out[name] = torch.from_numpy(np.array(shard[name][a:b]))
            out["sinks"] = rule.mask(out["activations"].norm(dim=-1),
                                     out["regions"] == special_code)
            seen += b - a
            yield out
            if limit is not None and seen >= limit:
                return
        del shard


@torch.inference_mode()
def corpus_chunks(model, tokenizer, traces, hookpoint: str, batch_size: int = 8,
                  max_length: int = 2048, sink_rule: SinkRule | None = None
                  ) -> Iterator[dict[str, torch.Tensor]]:
    """Run ``model`` over ``traces`` (``batch_size`` at a time, right-padded) and yield each
    batch's tokens with their ``hookpoint`` activations and labels (one chunk per batch), and
    ``sinks``: the tokens ``sink_rule`` marks (default: the default rule with each batch's
    median norm)."""
    sink_rule = sink_rule or SinkRule()

    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    for start in range(0, len(traces), batch_size):
        docs = [tokenize_trace(tokenizer, t, max_length=max_length)
                for t in traces[start : start + batch_size]]
        docs = [(start + j, d) for j, d in enumerate(docs) if d.input_ids]
        if not docs:
            continue
        width = max(len(d.input_ids) for _, d in docs)
        ids = torch.full((len(docs), width), pad, dtype=torch.long)
        mask = torch.zeros((len(docs), width), dtype=torch.long)
        for row, (_, d) in enumerate(docs):
            ids[row, : len(d.input_ids)] = torch.tensor(d.input_ids)
            mask[row, : len(d.input_ids)] = 1
        acts = capture(model, hookpoint, ids.to(device), mask.to(device))[hookpoint]
        keep = mask.bool()
        x = acts[keep.to(acts.device)].float()
        regions = torch.cat([torch.tensor(d.regions) for _, d in docs])
        yield {
            "activations": x,
            "token_ids": ids[keep],
            "sinks": sink_rule.mask(x.norm(dim=-1).cpu(), regions == int(Region.SPECIAL)),
            "regions": regions,
            "behaviours": torch.cat([torch.tensor(d.behaviours) for _, d in docs]),
            "doc_index": torch.cat([torch.full((len(d.input_ids),), i) for i, d in docs]),
            "positions": torch.cat([torch.arange(len(d.input_ids)) for _, d in docs]),
        }
