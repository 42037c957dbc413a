"""Training from a real activation store directory (shards + manifest), regions included."""

from __future__ import annotations

import json

import pytest
import torch

from thinksae import atomic
from thinksae.errors import ThinksaeError
from thinksae.sae import SaeConfig
from thinksae.store import ActivationStore
from thinksae.store.shard_parts import FORMAT, MANIFEST
from thinksae.store.shards import write_shard
from thinksae.train import SyntheticActivations, TrainConfig, train


def _write_store(path, data: torch.Tensor, tokens_per_shard: int = 300, dtype=torch.float32):
    """A store of ``data`` (regions cycling think/answer) in the layout harvest writes."""
    shards, n = [], len(data)
    for s, a in enumerate(range(0, n, tokens_per_shard)):
        rows = data[a : a + tokens_per_shard]
        m = len(rows)
        name = f"shard-{s:05d}.safetensors"
        write_shard(path / name, {
            "activations": rows.to(dtype),
            "token_ids": torch.arange(m, dtype=torch.int32),
            "regions": (torch.arange(a, a + m) % 2 + 1).to(torch.uint8),
            "behaviours": torch.zeros(m, dtype=torch.uint8),
            "doc_index": torch.full((m,), s, dtype=torch.int32),
            "positions": torch.arange(m, dtype=torch.int32),
        })
        shards.append({"file": name, "num_tokens": m})
    atomic.write_json(path / MANIFEST, {
        "format": FORMAT, "model": "tiny", "hookpoint": "layers.3", "tokenizer_hash": "t",
        "corpus_hash": "c", "dtype": str(dtype).removeprefix("torch."), "d_in": data.shape[1],
        "num_tokens": n, "shards": shards, "complete": True,
        "regions": ["prompt", "think", "answer", "special"],
    })
    return path


def _cfg(tmp_path, store, **kw):
    base = dict(store=str(store), out=str(tmp_path / "run"), batch_size=64,
                sae=SaeConfig(expansion_factor=4, k=4), lr=1e-2, lr_warmup_steps=2,
                dtype="float32", device="cpu", log_every=5, save_every=5, progress=False)
    return TrainConfig(**{**base, **kw})


def test_train_from_store_matches_in_memory_source(tmp_path):
    src = SyntheticActivations(d_in=32, num_tokens=1000)
    store = _write_store(tmp_path / "store", src.data)
    sae_dir = train(_cfg(tmp_path, store))
    assert sae_dir == tmp_path / "run" / "layers.3"
    card = json.loads((sae_dir / "thinksae.json").read_text())
    assert card["data"]["hash"] == ActivationStore(store).hash
    assert card["data"]["model"] == "tiny" and card["data"]["source"] == str(store)
    assert card["training"]["steps"] == 1000 // 64
    # the same numbers through the in-memory source with the same batches
    mem = train(_cfg(tmp_path / "mem", None), source=src)
    a = (sae_dir / "sae.safetensors").read_bytes()
    b = (mem / "sae.safetensors").read_bytes()
    assert a == b


def test_train_on_store_regions(tmp_path):
    src = SyntheticActivations(d_in=16, num_tokens=1000)
    store = _write_store(tmp_path / "store", src.data)
    sae_dir = train(_cfg(tmp_path, store, regions="think"))
    card = json.loads((sae_dir / "thinksae.json").read_text())
    assert card["training"]["steps"] == 500 // 64 and card["training"]["regions"] == "think"


def test_store_errors(tmp_path):
    store = _write_store(tmp_path / "store", SyntheticActivations(d_in=16, num_tokens=300).data)
    with pytest.raises(ThinksaeError, match="holds hookpoint layers.3, not layers.5"):
        train(_cfg(tmp_path, store, hookpoint="layers.5"))
    with pytest.raises(ThinksaeError, match="no activation store"):
        train(_cfg(tmp_path, tmp_path / "nowhere"))
    train(_cfg(tmp_path, store))
    other = _write_store(tmp_path / "store2", SyntheticActivations(d_in=8, num_tokens=300).data)
    with pytest.raises(ThinksaeError, match="has d_in 16 but the data has d_in 8"):
        train(_cfg(tmp_path, other))
