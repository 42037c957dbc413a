"""The parts of a harvest: the store manifest's identity and recipe, each shard's tokens and
labels, and its forward pass (:mod:`.run` puts them together)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..corpus.segment import tokenize_trace
from ..errors import ThinksaeError
from ..models.hookpoints import capture

FORMAT = "thinksae-store/1"
MANIFEST = "manifest.json"
STORE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Fields that must match for a store directory to be continued instead of refused.
IDENTITY = ("model", "hookpoint", "tokenizer_hash")
RECIPE = ("corpus_hash", "num_docs", "dtype", "compute_dtype", "max_length", "docs_per_shard",
           "batch_size")


def read_manifest(path: Path) -> dict | None:
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ThinksaeError(f"cannot read store manifest {path}: {e}") from None


def check_compatible(old: dict, new: dict, directory: Path) -> None:
    for key in IDENTITY:
        if old.get(key) != new[key]:
            raise ThinksaeError(
                f"store {directory} holds activations of another model/hookpoint/tokenizer "
                f"({key}: {old.get(key)!r} there, {new[key]!r} asked); use another --out"
            )
    for key in RECIPE:
        if old.get(key) != new[key]:
            raise ThinksaeError(
                f"store {directory} was harvested with another {key} ({old.get(key)!r}, now "
                f"{new[key]!r}); use another --out or the same settings"
            )


def shard_docs(tokenizer, traces, max_length: int):
    """The traces tokenised and labelled (regions, behaviours); how many had warnings."""
    docs, warned = [], 0
    for trace in traces:
        tok = tokenize_trace(tokenizer, trace, max_length=max_length)
        warned += bool(tok.warnings)
        docs.append(tok)
    return docs, warned


@torch.inference_mode()
def forward_shard(model, hookpoints, docs, batch_size, pad_id, store_dtype):
    """Activations of every token of ``docs`` (in doc order) per hookpoint."""
    device = next(model.parameters()).device
    per_doc: dict[str, list] = {h: [None] * len(docs) for h in hookpoints}
    order = sorted(range(len(docs)), key=lambda i: -len(docs[i].input_ids))
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        width = max(len(docs[i].input_ids) for i in idx)
        ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for row, i in enumerate(idx):
            n = len(docs[i].input_ids)
            ids[row, :n] = torch.as_tensor(docs[i].input_ids)
            mask[row, :n] = 1
        acts = capture(model, hookpoints, ids.to(device), mask.to(device))
        for h in hookpoints:
            out = acts[h].to("cpu", store_dtype)
            for row, i in enumerate(idx):
                per_doc[h][i] = out[row, : len(docs[i].input_ids)]
    return {h: torch.cat(per_doc[h]) for h in hookpoints}


def shard_labels(docs, first_doc: int) -> dict[str, torch.Tensor]:
    def cat(values, dtype):
        return torch.cat([torch.as_tensor(v, dtype=dtype) for v in values])

    return {
        "token_ids": cat([d.input_ids for d in docs], torch.int32),
        "regions": cat([d.regions for d in docs], torch.uint8),
        "behaviours": cat([d.behaviours for d in docs], torch.uint8),
        "doc_index": cat([[first_doc + j] * len(d.input_ids) for j, d in enumerate(docs)],
                         torch.int32),
        "positions": cat([range(len(d.input_ids)) for d in docs], torch.int32),
    }
