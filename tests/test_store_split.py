"""Held-out traces: which documents a holdout share picks, the store reads that honour it, the
trainer never seeing them and `thinksae eval --split` measuring on exactly them."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from thinksae import atomic
from thinksae.errors import ThinksaeError
from thinksae.evaluate import EvalConfig, evaluate
from thinksae.sae import SaeConfig, load_sae
from thinksae.store import ActivationStore, heldout_docs, split_docs
from thinksae.store.shard_parts import FORMAT, MANIFEST
from thinksae.store.shards import write_shard
from thinksae.train import TrainConfig, train

D_IN = 16


def _ids(questions: int, samples: int) -> list[str]:
    return [f"q{q:02d}#{s}" for q in range(questions) for s in range(samples)]


def test_whole_questions_are_held_out_in_a_fixed_nested_order():
    ids = _ids(20, 3)
    held = heldout_docs(ids, 0.2)
    assert len(held) == 12 and list(held) == sorted(held)
    questions = {ids[i].split("#")[0] for i in held}
    assert len(questions) == 4  # all three samples of each held-out question
    assert {i for i, t in enumerate(ids) if t.split("#")[0] in questions} == set(held.tolist())
    assert np.array_equal(heldout_docs(list(ids), 0.2), held)  # deterministic
    assert set(heldout_docs(ids, 0.1).tolist()) <= set(held.tolist())  # a smaller share nests
    train_docs = split_docs(ids, 0.2, "train")
    assert sorted([*train_docs.tolist(), *held.tolist()]) == list(range(60))
    assert split_docs(ids, 0.2, "all") is None
    assert len(heldout_docs(ids, 0.0)) == 0


def test_ids_without_sample_numbers_are_their_own_questions():
    ids = [f"trace-{i}" for i in range(10)] + ["odd#name", "odd#x"]
    held = heldout_docs(ids, 0.5)
    assert len(held) == 6


@pytest.mark.parametrize("ids, fraction, message", [
    (_ids(5, 1), 1.0, r"holdout must be a share of the traces in \[0, 1\)"),
    (_ids(5, 1), -0.1, "holdout must be a share"),
    (_ids(1, 4), 0.5, "has 1 question"),
])
def test_bad_holdouts(ids, fraction, message):
    with pytest.raises(ThinksaeError, match=message):
        heldout_docs(ids, fraction)


def test_unknown_split():
    with pytest.raises(ThinksaeError, match="unknown split 'test'"):
        split_docs(_ids(4, 1), 0.25, "test")


def make_store(path, questions: int = 12, samples: int = 2, tokens_per_doc: int = 40,
               docs_per_shard: int = 5, nan_docs=()) -> ActivationStore:
    """A store in harvest's layout: ``questions × samples`` documents with trace ids; the
    activations of ``nan_docs`` are NaN."""
    ids = _ids(questions, samples)
    gen = torch.Generator().manual_seed(0)
    norms = []
    basis = torch.randn(6, D_IN, generator=gen)
    shards, total = [], 0
    for s, first in enumerate(range(0, len(ids), docs_per_shard)):
        docs = list(range(first, min(first + docs_per_shard, len(ids))))
        m = tokens_per_doc * len(docs)
        x = torch.randn(m, 6, generator=gen).relu() @ basis + 0.05 * torch.randn(m, D_IN,
                                                                                generator=gen)
        doc_index = torch.tensor(docs, dtype=torch.int32).repeat_interleave(tokens_per_doc)
        norms.append(x.norm(dim=1)[torch.arange(m) % 3 + 1 != 3])  # harvest's median: no NaN
        for d in nan_docs:
            x[doc_index == d] = float("nan")
        name = f"shard-{s:05d}.safetensors"
        write_shard(path / name, {
            "activations": x, "token_ids": torch.arange(m, dtype=torch.int32) % 50,
            "regions": (torch.arange(m) % 3 + 1).to(torch.uint8),
            "behaviours": torch.zeros(m, dtype=torch.uint8), "doc_index": doc_index,
            "positions": torch.arange(tokens_per_doc, dtype=torch.int32).repeat(len(docs)),
        })
        shards.append({"file": name, "num_tokens": m, "first_doc": first, "num_docs": len(docs),
                       "trace_ids": [ids[d] for d in docs]})
        total += m
    atomic.write_json(path / MANIFEST, {
        "format": FORMAT, "model": "tiny", "hookpoint": "layers.1", "tokenizer_hash": "t",
        "corpus_hash": "c", "dtype": "float32", "d_in": D_IN, "num_tokens": total,
        "num_docs": len(ids), "shards": shards, "complete": True,
        "regions": ["prompt", "think", "answer", "special"], "behaviours": ["none"],
        "sink_rule": {"norm_multiple": 10.0, "median_norm": float(torch.cat(norms).median())},
    })
    return ActivationStore(path)


def test_store_reads_keep_only_the_given_documents(tmp_path):
    store = make_store(tmp_path / "store")
    assert store.trace_ids == _ids(12, 2)
    held = store.split_docs(0.25, "heldout")
    doc_index = store.labels("doc_index")
    indices = store.token_indices(docs=held)
    assert np.array_equal(indices, np.flatnonzero(np.isin(doc_index, held)))
    think = store.token_indices(["think"], docs=held)
    assert set(think.tolist()) == set(indices.tolist()) & set(store.token_indices(["think"]).tolist())
    chunks = list(store.iter_chunks(chunk_tokens=7, docs=held))
    assert all(len(c["activations"]) <= 7 for c in chunks)
    got = torch.cat([c["activations"] for c in chunks])
    torch.testing.assert_close(got, store.gather(indices), rtol=0, atol=0)
    assert set(torch.cat([c["doc_index"] for c in chunks]).tolist()) == set(held.tolist())
    batches = list(store.iter_batches(8, seed=3, docs=held))
    assert len(batches) == len(indices) // 8 == store.num_batches(8, docs=held)


def _train_cfg(tmp_path, store, **kw):
    base = dict(store=str(store.path), out=str(tmp_path / "sae"), batch_size=32,
                sae=SaeConfig(num_latents=64, k=4), lr=1e-2, lr_warmup_steps=2, epochs=3,
                dtype="float32", device="cpu", log_every=5, save_every=1000, progress=False)
    return TrainConfig(**{**base, **kw})


def test_training_never_reads_held_out_traces(tmp_path):
    """The held-out traces' activations are NaN: the trainer's NaN guard would stop at once if
    a single one of their tokens reached a batch."""
    ids = _ids(12, 2)
    held = heldout_docs(ids, 0.25).tolist()
    store = make_store(tmp_path / "store", nan_docs=held)
    with pytest.raises(ThinksaeError, match="non-finite"):
        train(_train_cfg(tmp_path, store, out=str(tmp_path / "no-holdout")))
    sae_dir = train(_train_cfg(tmp_path, store, holdout=0.25))
    card = json.loads((sae_dir / "thinksae.json").read_text())
    assert card["training"]["holdout"] == 0.25
    assert card["data"]["heldout_traces"] == [ids[i] for i in held]
    train_docs = store.split_docs(0.25, "train")
    train_tokens = len(store.token_indices(docs=train_docs))
    sinks = card["training"]["sinks"]  # the special tokens are left out of training
    assert sinks["special"] == len(store.token_indices(["special"], docs=train_docs))
    assert card["training"]["steps"] == 3 * ((train_tokens - sinks["sinks"]) // 32)


def test_holdout_needs_a_store(tmp_path):
    cfg = TrainConfig(model="m", corpus="c.jsonl", hookpoint="layers.1", holdout=0.1,
                      out=str(tmp_path / "x"))
    with pytest.raises(ThinksaeError, match="--holdout needs --store"):
        train(cfg)
    with pytest.raises(ThinksaeError, match="holdout must be"):
        train(TrainConfig(store="s", holdout=1.5, out=str(tmp_path / "x")))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("split")
    store = make_store(root / "store")
    sae_dir = train(_train_cfg(root, store, holdout=0.25))
    return root, store, sae_dir


def _fvu(sae, x: torch.Tensor) -> float:
    with torch.no_grad():
        x_hat = sae.decode(*sae.encode(x)).double()
    x = x.double()
    return float(((x - x_hat) ** 2).sum() / ((x - x.mean(0)) ** 2).sum())


def test_eval_on_the_held_out_traces_only(trained):
    root, store, sae_dir = trained
    sae = load_sae(sae_dir, dtype=torch.float32)
    results = {}
    for split in ("heldout", "train", "all"):
        results[split] = evaluate(EvalConfig(sae=str(sae_dir), store=str(store.path), split=split,
                                             out=str(root / f"{split}.json"), update_card=False,
                                             chunk_tokens=13, device="cpu", progress=False))
    for split in ("heldout", "train"):
        docs = store.split_docs(0.25, split)
        indices = store.token_indices(docs=docs)
        got = results[split].metrics["all"]
        kept = indices[~store.sinks[indices]]  # eval leaves the sink tokens out
        assert got["tokens"] == len(kept) and got["tokens"] + got["sinks"] == len(indices)
        assert got["fvu"] == pytest.approx(_fvu(sae, store.gather(kept)), rel=1e-6)
        assert results[split].data.split == split
        assert results[split].data.traces == len(docs)
    tokens = {s: r.metrics["all"]["tokens"] + r.metrics["all"]["sinks"] for s, r in results.items()}
    assert tokens["heldout"] + tokens["train"] == tokens["all"] == store.num_tokens
    assert results["all"].data.traces is None


def test_split_refused_on_other_data_or_without_a_holdout(trained, tmp_path):
    root, store, sae_dir = trained
    other = make_store(tmp_path / "other", questions=10)
    with pytest.raises(ThinksaeError, match="is not the data the SAE"):
        evaluate(EvalConfig(sae=str(sae_dir), store=str(other.path), split="heldout",
                            out=str(tmp_path / "e.json"), device="cpu", progress=False))
    plain = train(_train_cfg(tmp_path, store, epochs=1))
    with pytest.raises(ThinksaeError, match="trained without a holdout"):
        evaluate(EvalConfig(sae=str(plain), store=str(store.path), split="heldout",
                            out=str(tmp_path / "e.json"), device="cpu", progress=False))
    # a card without the list of held-out ids: the same rule on the same store picks them again
    def split_eval(split):
        return evaluate(EvalConfig(sae=str(sae_dir), store=str(store.path), split=split,
                                   out=str(tmp_path / f"{split}.json"), update_card=False,
                                   device="cpu", progress=False))

    want = {split: split_eval(split) for split in ("heldout", "train")}
    card_path = sae_dir / "thinksae.json"
    card = json.loads(card_path.read_text())
    saved = card_path.read_text()
    del card["data"]["heldout_traces"]
    card_path.write_text(json.dumps(card))
    try:
        for split, result in want.items():
            got = split_eval(split)
            assert got.metrics == result.metrics
            assert got.data.traces == result.data.traces
    finally:
        card_path.write_text(saved)
    (tmp_path / "heldout.json").unlink()
    (tmp_path / "train.json").unlink()
    with pytest.raises(ThinksaeError, match="unknown split 'dev'"):
        evaluate(EvalConfig(sae=str(sae_dir), store=str(store.path), split="dev",
                            out=str(tmp_path / "e.json"), device="cpu", progress=False))
    assert not (tmp_path / "e.json").exists()


def test_eval_documents_of_a_split(tmp_path, tokenizer, corpus_path):
    """The documents the spliced evaluation feeds the model: from a store or a corpus, only
    those of the split, whole and in order."""
    from thinksae.corpus import read_traces, tokenize_trace
    from thinksae.evaluate.sources import corpus_docs, store_docs

    store = make_store(tmp_path / "store", tokens_per_doc=9)
    held = store.split_docs(0.25, "heldout")
    docs = list(store_docs(store, chunk_tokens=4, docs=held))
    token_ids, doc_index = store.labels("token_ids"), store.labels("doc_index")
    assert len(docs) == len(held)
    for doc, d in zip(docs, held):
        assert doc.input_ids.tolist() == token_ids[doc_index == d].tolist()
    traces = read_traces(corpus_path)
    picked = list(corpus_docs(corpus_path, tokenizer, 2048, docs=[1, 4]))
    assert [d.input_ids.tolist() for d in picked] == [
        tokenize_trace(tokenizer, traces[i], max_length=2048).input_ids for i in (1, 4)]
