"""Activation store: harvest, manifest, memory-mapped reads, shuffled batches, resume after SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from thinksae import ThinksaeError
from thinksae.models import capture
from thinksae.store import ActivationStore, HarvestConfig, harvest


def _cfg(corpus_path, out, **kw) -> HarvestConfig:
    base = dict(model="tiny", corpus=str(corpus_path), hookpoint="layers.1", out=str(out),
                device="cpu", dtype="float32", docs_per_shard=2, batch_size=2, progress=False)
    return HarvestConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory, corpus_path, tiny_model, tokenizer) -> Path:
    out = tmp_path_factory.mktemp("store")
    (path,) = harvest(_cfg(corpus_path, out), tiny_model, tokenizer)
    return path


def test_store_matches_direct_capture_and_labels(store_dir, tiny_model, tokenizer, corpus_path):
    from thinksae.corpus import read_traces, tokenize_trace

    store = ActivationStore(store_dir)
    traces = read_traces(corpus_path)
    m = store.manifest
    assert m["hookpoint"] == "layers.1" and m["d_in"] == 64 and m["complete"]
    assert m["num_docs"] == len(traces) and len(m["shards"]) == 3
    chunks = list(store.iter_chunks(chunk_tokens=10_000))
    acts = torch.cat([c["activations"] for c in chunks])
    doc_index = torch.cat([c["doc_index"] for c in chunks])
    regions = torch.cat([c["regions"] for c in chunks])
    assert acts.shape == (store.num_tokens, 64)
    for i in (0, 3, 5):
        tok = tokenize_trace(tokenizer, traces[i], max_length=2048)
        ids = torch.tensor([tok.input_ids])
        ref = capture(tiny_model, "layers.1", ids)["layers.1"][0]
        # batched with padding vs alone: the same up to float noise
        torch.testing.assert_close(acts[doc_index == i], ref, rtol=1e-4, atol=1e-5)
        assert regions[doc_index == i].tolist() == list(tok.regions)
    # every region is present in these traces
    assert set(regions.unique().tolist()) == {0, 1, 2, 3}


def test_iter_batches_seeded_shuffled_and_sharded_by_rank(store_dir):
    store = ActivationStore(store_dir)
    a = list(store.iter_batches(16, seed=1))
    b = list(store.iter_batches(16, seed=1))
    c = list(store.iter_batches(16, seed=2))
    assert len(a) == store.num_tokens // 16
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[0], c[0])
    resumed = list(store.iter_batches(16, seed=1, start_batch=3))
    assert all(torch.equal(x, y) for x, y in zip(a[3:], resumed)) and len(resumed) == len(a) - 3
    r0 = list(store.iter_batches(16, seed=1, rank=0, world_size=2))
    r1 = list(store.iter_batches(16, seed=1, rank=1, world_size=2))
    assert torch.equal(torch.cat([r0[0], r1[0]]), a[0])
    # one pass draws each token of the store at most once
    seen = torch.cat(a)
    assert seen.shape[0] == len(a) * 16 <= store.num_tokens
    whole = torch.cat([c["activations"] for c in store.iter_chunks()])
    rows, counts = torch.unique(whole, dim=0, return_counts=True)
    seen_rows, seen_counts = torch.unique(seen, dim=0, return_counts=True)
    where = {tuple(r.tolist()): c for r, c in zip(rows, counts)}
    # every row drawn is a store row, never more often than it occurs in the store
    assert all(c <= where[tuple(r.tolist())] for r, c in zip(seen_rows, seen_counts))
    with pytest.raises(ThinksaeError, match="not divisible"):
        next(store.iter_batches(15, world_size=2))


def test_iter_batches_region_filter(store_dir):
    store = ActivationStore(store_dir)
    think = store.token_indices(["think"])
    regions = store.labels("regions")
    assert len(think) > 0 and (regions[think] == 1).all()
    batches = list(store.iter_batches(8, regions=["think"]))
    assert len(batches) == len(think) // 8
    with pytest.raises(ThinksaeError, match="unknown regions"):
        store.token_indices(["thinking"])


def test_store_dtype_bfloat16(tmp_path, corpus_path, tiny_model, tokenizer):
    (path,) = harvest(_cfg(corpus_path, tmp_path, store_dtype="bfloat16"), tiny_model, tokenizer)
    ref = ActivationStore(tmp_path / "layers.1")
    batch = next(ref.iter_chunks())["activations"]
    assert ref.dtype == "bfloat16" and batch.dtype == torch.float32
    assert torch.equal(batch, batch.bfloat16().float())  # values are exactly bf16-representable


def test_refuses_store_of_another_hookpoint_or_recipe(tmp_path, corpus_path, tiny_model, tokenizer):
    harvest(_cfg(corpus_path, tmp_path), tiny_model, tokenizer)
    manifest = tmp_path / "layers.1" / "manifest.json"
    data = json.loads(manifest.read_text())
    data["model"] = "another-model"
    manifest.write_text(json.dumps(data))
    with pytest.raises(ThinksaeError, match="another model/hookpoint"):
        harvest(_cfg(corpus_path, tmp_path), tiny_model, tokenizer)
    with pytest.raises(ThinksaeError, match="another max_length"):
        harvest(_cfg(corpus_path, tmp_path, model="another-model", max_length=16), tiny_model,
                tokenizer)


def test_bad_inputs(tmp_path, corpus_path, tiny_model, tokenizer):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(ThinksaeError, match="no traces"):
        harvest(_cfg(empty, tmp_path / "a"), tiny_model, tokenizer)
    with pytest.raises(ThinksaeError, match="corpus not found"):
        harvest(_cfg(tmp_path / "nope.jsonl", tmp_path / "a"), tiny_model, tokenizer)
    with pytest.raises(ThinksaeError, match="out of range"):
        harvest(_cfg(corpus_path, tmp_path / "a", hookpoint="layers.9"), tiny_model, tokenizer)
    assert not (tmp_path / "a").exists()
    with pytest.raises(ThinksaeError, match="no activation store"):
        ActivationStore(tmp_path)


def test_a_resumed_harvest_removes_what_a_killed_write_left(tmp_path, corpus_path, tiny_model,
                                                           tokenizer, monkeypatch):
    """A SIGKILL during a shard write leaves its temp file; the next run clears it and ends with
    the bytes of an uninterrupted harvest."""

    import thinksae.store.run as module

    (whole,) = harvest(_cfg(corpus_path, tmp_path / "whole"), tiny_model, tokenizer)
    real, calls = module.write_shard, []

    def dies_on_the_second_shard(path, tensors):
        calls.append(path)
        if len(calls) == 2:  # a half-written temp file, as a kill mid-write leaves it
            (path.parent / f".{path.name}.x1y2z3.tmp").write_bytes(b"half a shard")
            raise KeyboardInterrupt
        real(path, tensors)

    monkeypatch.setattr(module, "write_shard", dies_on_the_second_shard)
    with pytest.raises(KeyboardInterrupt):
        harvest(_cfg(corpus_path, tmp_path / "killed"), tiny_model, tokenizer)
    monkeypatch.undo()
    killed = tmp_path / "killed" / "layers.1"
    assert any(p.name.endswith(".tmp") for p in killed.iterdir())
    harvest(_cfg(corpus_path, tmp_path / "killed"), tiny_model, tokenizer)
    assert _tree_bytes(killed) == _tree_bytes(whole)


_SLOW_HARVEST = """
import importlib, sys, time
h = importlib.import_module("thinksae.store.run")
from thinksae.store import HarvestConfig, harvest
real = h.write_shard
def slow_write(path, tensors):  # instrumentation only: leave time to kill between shards
    real(path, tensors)
    time.sleep(float(sys.argv[3]))
h.write_shard = slow_write
cfg = HarvestConfig(model=sys.argv[1], corpus=sys.argv[2], hookpoint="layers.1,layers.2.mlp",
                    out=sys.argv[4], device="cpu", dtype="float32", docs_per_shard=1,
                    batch_size=1, progress=False)
harvest(cfg)
"""


def _run(args, **kw):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", _SLOW_HARVEST, *map(str, args)], env=env,
                            stderr=subprocess.PIPE, **kw)


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_harvest_killed_and_resumed_is_byte_identical(tmp_path, tiny_model_dir, corpus_path):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    p = _run([tiny_model_dir, corpus_path, 0, whole])
    assert p.wait(timeout=120) == 0, p.stderr.read().decode()

    p = _run([tiny_model_dir, corpus_path, 1.0, killed])
    manifest = killed / "layers.1" / "manifest.json"
    deadline = time.time() + 120
    while time.time() < deadline:
        if manifest.exists() and len(json.loads(manifest.read_text())["shards"]) >= 2:
            break
        time.sleep(0.05)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    state = json.loads(manifest.read_text())
    assert not state["complete"] and 2 <= len(state["shards"]) < 6  # really killed midway
    with pytest.raises(ThinksaeError, match="incomplete"):
        ActivationStore(killed / "layers.1")

    p = _run([tiny_model_dir, corpus_path, 0, killed])
    assert p.wait(timeout=120) == 0, p.stderr.read().decode()
    assert _tree_bytes(killed) == _tree_bytes(whole)
    assert not any(f.name.endswith(".tmp") for f in killed.rglob("*"))
    np.testing.assert_array_equal(ActivationStore(killed / "layers.2.mlp").labels("doc_index"),
                                  ActivationStore(whole / "layers.2.mlp").labels("doc_index"))
