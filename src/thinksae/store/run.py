"""`thinksae harvest`: hookpoint activations over a trace corpus into a sharded, resumable
activation store (one directory per hookpoint: ``manifest.json`` + ``shard-NNNNN.safetensors``).
A complete store's manifest records its sink rule (the median norm of its non-special tokens and
the norm multiple, :mod:`thinksae.sinks`) and how many tokens, and which, the rule marks."""

from __future__ import annotations

import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .. import atomic
from ..config import to_dict
from ..corpus.segment import BEHAVIOUR_VOCAB, Region
from ..corpus.traces import read_traces
from ..errors import ThinksaeError
from ..models.hookpoints import parse_hookpoints, resolve_hookpoint
from ..models.loading import dtype_name, load_model
from ..models.precheck import precheck_model
from ..models.tokenizer import tokenizer_hash
from ..sinks import sink_summary
from .config import HarvestConfig
from .reader import ActivationStore
from .shard_parts import (
    FORMAT,
    MANIFEST,
    STORE_DTYPES,
    check_compatible,
    forward_shard,
    read_manifest,
    shard_docs,
    shard_labels,
)
from .shards import write_shard


def _traces(cfg: HarvestConfig):
    corpus = Path(cfg.corpus)
    if not corpus.is_file():
        raise ThinksaeError(f"corpus not found: {corpus}")
    traces = read_traces(corpus)[: cfg.limit]
    if not traces:
        raise ThinksaeError(f"corpus {corpus} holds no traces")
    return corpus, traces


def _manifests(cfg: HarvestConfig, base: dict, hookpoints: list[str]) -> dict[str, dict]:
    """Each hookpoint's manifest: the one on disk when it is compatible (resume), else new."""
    # Where and how verbosely to write is not part of what was harvested.
    recipe = {k: v for k, v in to_dict(cfg).items() if k not in ("out", "progress")}
    manifests = {}
    for h in hookpoints:
        d = Path(cfg.out) / h
        new = {**base, "hookpoint": h, "d_in": None, "shards": [], "num_tokens": 0,
               "complete": False, "harvest_config": recipe}
        old = read_manifest(d / MANIFEST)
        if old is not None:
            check_compatible(old, new, d)
            new = old
        atomic.remove_stale_temps(d)  # what a killed run was writing when it died
        manifests[h] = new
    return manifests


def _base_manifest(cfg: HarvestConfig, corpus: Path, traces, model, tokenizer) -> tuple[dict, str]:
    """What every hookpoint's manifest says of the data, and the store dtype."""
    compute = next(model.parameters()).dtype
    store_name = dtype_name(compute) if cfg.store_dtype == "auto" else cfg.store_dtype
    if store_name not in STORE_DTYPES:
        raise ThinksaeError(f"unknown store dtype {store_name!r} (float32, bfloat16, float16)")
    return {
        "format": FORMAT, "model": cfg.model, "tokenizer_hash": tokenizer_hash(tokenizer),
        "corpus": str(corpus), "corpus_hash": atomic.sha256_file(corpus)[:16],
        "dtype": store_name, "compute_dtype": dtype_name(compute), "max_length": cfg.max_length,
        "docs_per_shard": cfg.docs_per_shard, "batch_size": cfg.batch_size,
        "num_docs": len(traces), "regions": [r.name.lower() for r in Region],
        "behaviours": ["none", *BEHAVIOUR_VOCAB],
    }, store_name


def _write_shard(cfg, s: int, chunk, docs, warned, acts, manifests, n_shards) -> int:
    """Shard ``s`` of every hookpoint, then its manifest (a shard counts once it is whole);
    returns its token count."""
    first = s * cfg.docs_per_shard
    labels = shard_labels(docs, first)
    name = f"shard-{s:05d}.safetensors"
    for h, m in manifests.items():
        d = Path(cfg.out) / h
        write_shard(d / name, {"activations": acts[h], **labels})
        m["shards"] = m["shards"][:s] + [{
            "file": name, "num_tokens": int(labels["token_ids"].numel()),
            "first_doc": first, "num_docs": len(docs), "segmentation_warnings": warned,
            "trace_ids": [t.id for t in chunk],
        }]
        m["d_in"] = int(acts[h].shape[-1])
        m["num_tokens"] = sum(x["num_tokens"] for x in m["shards"])
        m["complete"] = s == n_shards - 1
        atomic.write_json(d / MANIFEST, m)
    return int(labels["token_ids"].numel())


def run(cfg: HarvestConfig, model=None, tokenizer=None) -> list[Path]:
    """Harvest ``cfg.hookpoint`` activations over ``cfg.corpus``; returns one store dir per
    hookpoint.

    Resumable: shards already on disk are kept, so a harvest killed at any point and run again
    ends with the same bytes as an uninterrupted one. Every file is written atomically and the
    manifest last, so a shard counts only once it is whole.
    """
    hookpoints = parse_hookpoints(cfg.hookpoint)
    corpus, traces = _traces(cfg)
    precheck_model(cfg.model, hookpoints, loaded=model)
    if model is None:
        model, tokenizer = load_model(cfg.model, cfg.device, cfg.dtype, tokenizer=cfg.tokenizer,
                                      progress=cfg.progress)
    for h in hookpoints:
        resolve_hookpoint(model, h)
    base, store_name = _base_manifest(cfg, corpus, traces, model, tokenizer)
    manifests = _manifests(cfg, base, hookpoints)
    n_shards = -(-len(traces) // cfg.docs_per_shard)
    done = min(len(m["shards"]) for m in manifests.values())
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    bar = tqdm(total=len(traces), initial=min(done * cfg.docs_per_shard, len(traces)),
               desc="harvest", unit="trace", disable=not cfg.progress)
    t0, tokens = time.perf_counter(), 0
    for s in range(done, n_shards):
        chunk = traces[s * cfg.docs_per_shard:(s + 1) * cfg.docs_per_shard]
        docs, warned = shard_docs(tokenizer, chunk, cfg.max_length)
        acts = forward_shard(model, hookpoints, docs, cfg.batch_size, pad_id,
                             STORE_DTYPES[store_name])
        tokens += _write_shard(cfg, s, chunk, docs, warned, acts, manifests, n_shards)
        bar.update(len(chunk))
        bar.set_postfix(tok_s=f"{tokens / (time.perf_counter() - t0):.0f}")
    bar.close()
    for h, m in manifests.items():
        if m["complete"] and "sink_rule" not in m:
            _record_sinks(Path(cfg.out) / h, m, tokenizer)
    return [Path(cfg.out) / h for h in hookpoints]


def _record_sinks(directory: Path, manifest: dict, tokenizer) -> None:
    """The store's sink rule (the default norm multiple with the median norm of its non-special
    tokens, :mod:`thinksae.sinks`) and what it marks, recorded in the manifest."""
    store = ActivationStore(directory)
    rule = store.sink_rule
    special = torch.from_numpy(store.special)
    sinks = torch.from_numpy(store.sinks)
    manifest["sink_rule"] = rule.to_dict()
    manifest["sinks"] = sink_summary(sinks, special, torch.from_numpy(store.labels("token_ids")),
                                     decode=lambda i: tokenizer.decode([i]))
    atomic.write_json(directory / MANIFEST, manifest)
