"""On-the-fly activations: every token once per epoch, seeded, resumable, rank-split; training."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from thinksae.errors import ThinksaeError
from thinksae.models import capture
from thinksae.sae import SaeConfig
from thinksae.sae.formats import load_sparsify
from thinksae.train import TrainConfig, train
from thinksae.train.on_the_fly import OnTheFlyActivations


@pytest.fixture(scope="module")
def qwen():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    return Qwen2ForCausalLM(cfg).eval()


@pytest.fixture(scope="module")
def docs():
    g = torch.Generator().manual_seed(1)
    lengths = torch.randint(3, 50, (24,), generator=g).tolist()
    return [torch.randint(0, 300, (n,), generator=g).tolist() for n in lengths]


def _rows_index(rows: torch.Tensor, ref: torch.Tensor) -> list[int]:
    """Index in ``ref`` of each row of ``rows`` (exact match), -1 where none matches."""
    out = []
    for row in rows:
        hit = (ref == row).all(-1).nonzero()
        out.append(int(hit[0]) if len(hit) else -1)
    return out


def test_each_token_once_per_epoch_with_exact_activations(qwen, docs):
    src = OnTheFlyActivations(qwen, "layers.1", docs, model_batch_size=1, shuffle_tokens=100)
    ref = torch.cat([capture(qwen, "layers.1", torch.tensor([d]))["layers.1"][0] for d in docs])
    batches = list(src.iter_batches(32, seed=3))
    assert src.num_tokens == len(ref) and src.d_in == 64
    assert len(batches) == src.num_tokens // 32
    assert all(b.shape == (32, 64) and b.dtype == torch.float32 for b in batches)
    idx = _rows_index(torch.cat(batches), ref)
    assert -1 not in idx and len(set(idx)) == len(idx)  # exact values, no token twice


def test_seeded_resumable_and_padding_free(qwen, docs):
    src = OnTheFlyActivations(qwen, "layers.0.mlp", docs, model_batch_size=5, shuffle_tokens=70)
    full = list(src.iter_batches(16, seed=7))
    again = list(src.iter_batches(16, seed=7))
    resumed = list(src.iter_batches(16, seed=7, start_batch=9))
    other = list(src.iter_batches(16, seed=8))
    assert all(torch.equal(a, b) for a, b in zip(full, again, strict=True))
    assert len(resumed) == len(full) - 9
    assert all(torch.equal(a, b) for a, b in zip(full[9:], resumed, strict=True))
    assert not torch.equal(full[0], other[0])
    # padded batches give the padding-free values up to float noise, and never padding rows
    ref = torch.cat([capture(qwen, "layers.0.mlp", torch.tensor([d]))["layers.0.mlp"][0]
                     for d in docs])
    dist = torch.cdist(torch.cat(full), ref).min(1).values
    assert dist.max() < 1e-2 * ref.norm(dim=1).min()


def test_ranks_split_each_batch(qwen, docs):
    src = OnTheFlyActivations(qwen, "layers.1", docs, model_batch_size=1, shuffle_tokens=64)
    ref = torch.cat([capture(qwen, "layers.1", torch.tensor([d]))["layers.1"][0] for d in docs])
    r0 = list(src.iter_batches(32, seed=0, rank=0, world_size=2))
    r1 = list(src.iter_batches(32, seed=0, rank=1, world_size=2))
    assert len(r0) == len(r1) == src.num_tokens // 32
    assert all(b.shape == (16, 64) for b in r0 + r1)
    idx = _rows_index(torch.cat(r0 + r1), ref)
    assert -1 not in idx and len(set(idx)) == len(idx)
    assert torch.equal(list(src.iter_batches(32, 0, 4, 1, 2))[0], r1[4])
    with pytest.raises(ThinksaeError, match="not divisible"):
        next(src.iter_batches(30, world_size=4))


def test_train_on_the_fly_end_to_end(qwen, docs, tmp_path):
    src = OnTheFlyActivations(qwen, "layers.1", docs, model_batch_size=4, shuffle_tokens=128)
    cfg = TrainConfig(model="tiny", corpus="x", hookpoint="layers.1", out=str(tmp_path),
                      sae=SaeConfig(expansion_factor=2, k=8), batch_size=32, epochs=3,
                      lr=5e-3, lr_warmup_steps=2, dtype="float32", device="cpu", log_every=5,
                      save_every=4, progress=False)
    sae_dir = train(cfg, source=src)
    assert sae_dir == tmp_path / "layers.1"
    rows = [json.loads(x) for x in (sae_dir / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 3 * (src.num_tokens // 32)
    assert rows[-1]["fvu"] < rows[0]["fvu"]
    card = json.loads((sae_dir / "thinksae.json").read_text())
    assert card["data"]["hash"] == src.hash and card["d_in"] == 64
    assert load_sparsify(sae_dir).num_latents == 128


def test_from_config_tokenizes_the_corpus(qwen, tmp_path, monkeypatch):
    import thinksae.train.on_the_fly as on_the_fly

    corpus = tmp_path / "traces.jsonl"
    traces = [{"id": f"t{i}", "ids": list(range(1 + i, 40 + 3 * i))} for i in range(5)]
    corpus.write_text("".join(json.dumps(t) + "\n" for t in traces))
    tokenizer = SimpleNamespace(get_vocab=lambda: {"a": 0}, added_tokens_decoder={})
    seen = {}

    def fake_load(spec, device, dtype, **kw):
        seen["load"] = (spec, device, dtype)
        return qwen, tokenizer

    monkeypatch.setattr(on_the_fly, "load_model", fake_load)
    monkeypatch.setattr(on_the_fly, "read_traces",
                        lambda p: [json.loads(x) for x in open(p)], raising=False)
    monkeypatch.setattr(on_the_fly, "tokenize_trace",
                        lambda tok, t, max_length: SimpleNamespace(input_ids=t["ids"][:max_length]),
                        raising=False)
    cfg = TrainConfig(model="tiny-spec", corpus=str(corpus), hookpoint="layers.0",
                      max_length=20, model_dtype="float32")
    src = OnTheFlyActivations.from_config(cfg, torch.device("cpu"))
    assert seen["load"] == ("tiny-spec", "cpu", "float32")
    assert src.num_tokens == 5 * 20 and src.manifest["model"] == "tiny-spec"
    assert src.manifest["corpus_hash"] and src.manifest["max_length"] == 20
    cfg.max_length = 30
    assert OnTheFlyActivations.from_config(cfg, torch.device("cpu")).hash != src.hash
    with pytest.raises(ThinksaeError, match="corpus not found"):
        OnTheFlyActivations.from_config(TrainConfig(model="m", corpus=str(tmp_path / "no"),
                                                    hookpoint="layers.0"), torch.device("cpu"))


def test_from_config_with_real_corpus_and_model_dir(tiny_model_dir, corpus_path, tokenizer,
                                                    tmp_path):
    from thinksae.corpus import read_traces, tokenize_trace

    cfg = TrainConfig(model=str(tiny_model_dir), corpus=str(corpus_path), hookpoint="layers.2",
                      max_length=64, model_dtype="float32", model_batch_size=3,
                      shuffle_tokens=128, out=str(tmp_path / "run"),
                      sae=SaeConfig(expansion_factor=2, k=4), batch_size=32, lr_warmup_steps=1,
                      dtype="float32", device="cpu", log_every=2, save_every=2, progress=False)
    src = OnTheFlyActivations.from_config(cfg, torch.device("cpu"))
    lengths = [len(tokenize_trace(tokenizer, t, max_length=64).input_ids)
               for t in read_traces(corpus_path)]
    assert src.num_tokens == sum(lengths) and src.d_in == 64
    assert src.manifest["model"] == str(tiny_model_dir) and src.manifest["tokenizer_hash"]
    sae_dir = train(cfg)  # opens the same source itself
    card = json.loads((sae_dir / "thinksae.json").read_text())
    assert card["data"]["hash"] == src.hash
    assert card["training"]["steps"] == src.num_tokens // 32


def test_keep_masks_serve_only_the_kept_tokens_with_their_full_context(qwen, docs):
    g = torch.Generator().manual_seed(2)
    keep = [(torch.rand(len(d), generator=g) < 0.4).tolist() for d in docs]
    keep[0] = [False] * len(docs[0])  # a document without kept tokens is not run at all
    src = OnTheFlyActivations(qwen, "layers.1", docs, model_batch_size=3, shuffle_tokens=40,
                              keep=keep)
    full = [capture(qwen, "layers.1", torch.tensor([d]))["layers.1"][0] for d in docs]
    kept = torch.cat([a[torch.tensor(k)] for a, k in zip(full, keep, strict=True)])
    dropped = torch.cat([a[~torch.tensor(k)] for a, k in zip(full, keep, strict=True)])
    assert src.num_tokens == len(kept) == sum(map(sum, keep)) and len(src.docs) == len(docs) - 1
    served = torch.cat(list(src.iter_batches(16, seed=1)))
    assert len(served) == len(kept) // 16 * 16
    exact = "donot_use_mm_for_euclid_dist"
    dist = torch.cdist(served, kept, compute_mode=exact).min(1)
    assert dist.values.max() < 1e-3 * kept.norm(dim=1).min()  # kept tokens (padding noise only)
    assert len(set(dist.indices.tolist())) == len(served)  # each once
    assert torch.cdist(served, dropped, compute_mode=exact).min() > 1e-2 * kept.norm(dim=1).min()
    plain = OnTheFlyActivations(qwen, "layers.1", docs, model_batch_size=3, shuffle_tokens=40)
    assert plain.hash != src.hash
    with pytest.raises(ThinksaeError, match="no token is in the regions"):
        OnTheFlyActivations(qwen, "layers.1", docs, keep=[[False] * len(d) for d in docs])


def test_regions_on_the_fly_train_on_those_tokens_only(tiny_model_dir, corpus_path, tokenizer,
                                                       tmp_path, capsys):
    from thinksae.corpus import read_traces, tokenize_trace
    from thinksae.corpus.segment import Region

    cfg = TrainConfig(model=str(tiny_model_dir), corpus=str(corpus_path), hookpoint="layers.2",
                      max_length=64, model_dtype="float32", regions="think, answer",
                      out=str(tmp_path / "run"), sae=SaeConfig(expansion_factor=2, k=4),
                      batch_size=16, lr_warmup_steps=1, dtype="float32", device="cpu",
                      log_every=4, progress=False)
    src = OnTheFlyActivations.from_config(cfg, torch.device("cpu"))
    labels = [tokenize_trace(tokenizer, t, max_length=64).regions
              for t in read_traces(corpus_path)]
    wanted = sum(r in (Region.THINK, Region.ANSWER) for doc in labels for r in doc)
    assert 0 < wanted < sum(map(len, labels)) and src.num_tokens == wanted
    assert src.manifest["region_filter"] == ["think", "answer"]
    sae_dir = train(cfg)  # opens the same source itself: no TypeError from the regions
    card = json.loads((sae_dir / "thinksae.json").read_text())
    assert card["training"]["steps"] == wanted // 16 and card["data"]["hash"] == src.hash
    assert card["training"]["regions"] == "think, answer"


def test_bad_regions_on_the_fly_refused_before_the_model_loads(tmp_path):
    cfg = TrainConfig(model=str(tmp_path / "no-model"), corpus=str(tmp_path / "no-corpus"),
                      hookpoint="layers.0", regions="think,reasoning", out=str(tmp_path / "o"))
    with pytest.raises(ThinksaeError, match=r"^--regions 'think,reasoning': give some of prompt"):
        train(cfg)
    assert not (tmp_path / "o").exists()


def test_regions_with_a_source_that_cannot_filter_is_one_line(tmp_path):
    from thinksae.train import SyntheticActivations

    cfg = TrainConfig(out=str(tmp_path / "o"), regions="think", sae=SaeConfig(expansion_factor=2),
                      batch_size=64, dtype="float32", device="cpu", progress=False)
    with pytest.raises(ThinksaeError, match="^--regions needs a store or --model/--corpus"):
        train(cfg, source=SyntheticActivations(d_in=16, num_tokens=256))
