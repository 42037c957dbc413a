"""The streaming pass: equal to a dense brute-force computation, whatever the chunking; bounded."""

from __future__ import annotations

import pytest
import torch

from thinksae.errors import ThinksaeError
from thinksae.features import FeatureCollector, ReasonMatcher, TokenInfo
from thinksae.features.stats import FeatureStats, hist_bin
from thinksae.features.traces import TRACE_TENSORS

F, K, TOP_N, W = 12, 3, 4, 3
TEXTS = [
    "Okay, so 3 * 4 = 12. Wait, but let me check: maybe 12 is wrong? Hmm, the butter costs 2.",
    "Alternatively, another way: therefore 12.\n\nHowever, perhaps not. Let me see.",
    "So the answer is 12.",
    "Wait. Wait, wait!",
]


def synthetic_stream(tokenizer, seed: int = 0, repeat: int = 1) -> dict[str, torch.Tensor]:
    """Documents of real text (BOS first, EOS last) with random sparse activations."""
    g = torch.Generator().manual_seed(seed)
    ids, docs, pos = [], [], []
    for d in range(len(TEXTS) * repeat):
        t = [tokenizer.bos_token_id, *tokenizer(TEXTS[d % len(TEXTS)],
                                                add_special_tokens=False).input_ids,
             tokenizer.eos_token_id]
        ids += t
        docs += [d] * len(t)
        pos += list(range(len(t)))
    n = len(ids)
    idx = torch.stack([torch.randperm(F, generator=g)[:K] for _ in range(n)])
    acts = torch.rand((n, K), generator=g) * 3
    acts[torch.rand((n, K), generator=g) < 0.3] = 0.0  # fewer than k fire
    return {"token_ids": torch.tensor(ids), "doc_index": torch.tensor(docs),
            "positions": torch.tensor(pos), "regions": torch.randint(0, 4, (n,), generator=g),
            "behaviours": torch.randint(0, 3, (n,), generator=g), "acts": acts, "idx": idx}


def run(stream, info, matcher, chunk: int, **kw) -> tuple[FeatureStats, FeatureCollector]:
    c = FeatureCollector(F, info, matcher, behaviours=["none", "a", "b"], top_n=TOP_N, window=W,
                         **kw)
    n = len(stream["token_ids"])
    for a in range(0, n, chunk):
        c.update({k: v[a : a + chunk] for k, v in stream.items()})
    return c.finish(), c


@pytest.fixture(scope="module")
def info(tokenizer):
    return TokenInfo.from_tokenizer(tokenizer)


@pytest.fixture(scope="module")
def matcher(tokenizer):
    return ReasonMatcher.from_tokenizer(tokenizer)


def dense(stream) -> torch.Tensor:
    n = len(stream["token_ids"])
    return torch.zeros(n, F).scatter_(1, stream["idx"], stream["acts"])


@pytest.mark.parametrize("chunk", [1, 7, 10_000])
def test_streaming_equals_brute_force(tokenizer, info, matcher, chunk):
    s = synthetic_stream(tokenizer)
    stats, _ = run(s, info, matcher, chunk, token_slots=64)
    t, x = stats.tensors, dense(s)
    tok, docs, reg = s["token_ids"], s["doc_index"], s["regions"]
    fired = x > 0
    assert stats.meta["num_tokens"] == len(tok) and stats.meta["num_docs"] == len(TEXTS)
    assert torch.equal(t["fires"], fired.sum(0))
    for r in range(4):
        assert torch.equal(t["fires_region"][:, r], fired[reg == r].sum(0))
        torch.testing.assert_close(t["act_sq_region"][:, r], (x[reg == r].double() ** 2).sum(0))
    assert torch.equal(t["region_tokens"], torch.bincount(reg, minlength=4))
    torch.testing.assert_close(t["act_sum"], x.double().sum(0))
    torch.testing.assert_close(t["act_max"], x.max(0).values)
    traces = torch.stack([fired[docs == d].any(0) for d in range(len(TEXTS))]).sum(0)
    assert torch.equal(t["traces"], traces)
    assert torch.equal(t["hist"].sum(1), fired.sum(0))
    assert torch.equal(t["hist"][0].nonzero().flatten().unique(),
                       hist_bin(x[fired[:, 0], 0]).unique())
    fmt = info.is_format[tok]
    torch.testing.assert_close(t["format_mass"], x[fmt].double().sum(0))
    for f in range(F):
        # token masses (exact: fewer distinct tokens than slots)
        want = {}
        for i in fired[:, f].nonzero().flatten().tolist():
            want[int(tok[i])] = want.get(int(tok[i]), 0.0) + float(x[i, f])
        got = {int(a): float(m) for a, m in zip(t["tok_ids"][f], t["tok_mass"][f]) if a >= 0}
        assert got.keys() == want.keys()
        assert all(abs(got[k] - want[k]) < 1e-4 for k in want)
        # top-N activations with their contexts
        order = torch.argsort(x[:, f], descending=True, stable=True)[:TOP_N]
        order = order[x[order, f] > 0]
        assert t["top_index"][f, : len(order)].tolist() == order.tolist()
        torch.testing.assert_close(t["top_val"][f, : len(order)], x[order, f])
        for j, i in enumerate(order.tolist()):
            assert int(t["top_doc"][f, j]) == int(docs[i]) and int(t["top_region"][f, j]) == int(reg[i])
            ctx = [int(tok[q]) if 0 <= q < len(tok) and docs[q] == docs[i] else -1
                   for q in range(i - W, i + W + 1)]
            assert t["top_ctx"][f, j].tolist() == ctx
            acts = [float(x[q, f]) if c >= 0 else 0.0 for q, c in zip(range(i - W, i + W + 1), ctx)]
            torch.testing.assert_close(t["top_ctx_act"][f, j].float(), torch.tensor(acts),
                                       atol=1e-2, rtol=1e-2)
            assert t["top_ctx"][f, j, W] == tok[i]  # the trigger token sits in the middle
    # per-trace counts (think = region 1, other = prompt 0 + answer 2; special 3 in neither)
    cls = torch.tensor([1, 0, 1, -1])[reg]
    assert t["trace_doc"].tolist() == list(range(len(TEXTS)))
    want_tok = torch.stack([torch.stack([((docs == d) & (cls == c)).sum() for c in (0, 1)])
                            for d in range(len(TEXTS))])
    assert torch.equal(t["trace_tokens"], want_tok)
    dense_fires = torch.zeros(len(TEXTS), F, 2, dtype=torch.int32)
    for d in range(len(TEXTS)):
        for j in range(t["trace_ptr"][d], t["trace_ptr"][d + 1]):
            dense_fires[d, t["trace_feature"][j]] = t["trace_fires"][j]
    want = torch.stack([torch.stack([fired[(docs == d) & (cls == c)].sum(0) for c in (0, 1)], 1)
                        for d in range(len(TEXTS))])
    assert torch.equal(dense_fires, want.int())
    # ReasonScore sums: the same as matching the whole stream at once
    groups = matcher.positives(tok, docs, info)
    ign = torch.isin(tok, torch.tensor(info.ignore_ids))
    groups &= ~ign[:, None]
    pos, neg = groups.any(1), ~groups.any(1) & ~ign
    assert stats.meta["reason_pos_tokens"] == int(pos.sum()) > 0
    assert stats.meta["reason_neg_tokens"] == int(neg.sum())
    torch.testing.assert_close(t["reason_pos_sum"], x[pos].double().sum(0))
    torch.testing.assert_close(t["reason_neg_sum"], x[neg].double().sum(0))
    torch.testing.assert_close(t["reason_group_sum"], x.double().T @ groups.double())


def test_bos_eos_are_in_neither_reason_set(tokenizer, info, matcher):
    s = synthetic_stream(tokenizer)
    stats, _ = run(s, info, matcher, 50)
    special = torch.isin(s["token_ids"], torch.tensor([tokenizer.bos_token_id,
                                                        tokenizer.eos_token_id]))
    assert int(special.sum()) == 2 * len(TEXTS)
    m = stats.meta
    assert m["reason_pos_tokens"] + m["reason_neg_tokens"] == m["num_tokens"] - int(special.sum())


def test_memory_does_not_grow_with_tokens(tokenizer, info, matcher):
    small = synthetic_stream(tokenizer, repeat=1)
    big = synthetic_stream(tokenizer, repeat=12)
    assert len(big["token_ids"]) > 10 * len(small["token_ids"]) > 250
    s1, c1 = run(small, info, matcher, 16)
    s2, c2 = run(big, info, matcher, 16)
    assert s2.meta["num_tokens"] > 10 * s1.meta["num_tokens"]
    assert c1.state_nbytes() == c2.state_nbytes()
    fixed = [k for k in s1.tensors if k not in TRACE_TENSORS]
    assert {k: s1.tensors[k].shape for k in fixed} == {k: s2.tensors[k].shape for k in fixed}
    # every tensor's first dimension is the feature count or a fixed label count, none the tokens
    assert all(s2.tensors[k].shape[0] in (F, 4, 3, 10) for k in fixed)
    # ...but for the per-trace counts: one row per trace, one per (trace, feature) pair fired
    docs = len(TEXTS) * 12
    assert s2.tensors["trace_tokens"].shape == (docs, 2) and s2.tensors["trace_ptr"].shape == (docs + 1,)
    assert len(s2.tensors["trace_feature"]) == int(s2.tensors["trace_ptr"][-1]) <= docs * F
    # the held-back tokens never exceed the lag
    c = FeatureCollector(F, info, matcher, top_n=TOP_N, window=W, behaviours=["none", "a", "b"])
    for a in range(0, len(big["token_ids"]), 16):
        c.update({k: v[a : a + 16] for k, v in big.items()})
        held = sum(len(p["token_ids"]) for p in (c._prev, c._hold) if p is not None)
        assert held <= 2 * c.lag + 16


def test_token_table_overflow_keeps_total_exact(tokenizer, info):
    s = synthetic_stream(tokenizer)
    stats, _ = run(s, info, None, 9, token_slots=2)
    t = stats.tensors
    x = dense(s)
    torch.testing.assert_close(t["tok_mass"].sum(1) + t["tail_mass"], x.double().sum(0))
    assert torch.equal(t["tok_count"].sum(1) + t["tail_count"], (x > 0).sum(0))
    distinct = torch.tensor([len(set(s["token_ids"][x[:, f] > 0].tolist())) for f in range(F)])
    assert torch.equal(t["token_overflow"], distinct > 2)


def test_bad_labels_and_token_ids_are_refused(tokenizer, info):
    s = synthetic_stream(tokenizer)
    c = FeatureCollector(F, info, None, regions=["prompt", "think"], behaviours=["none", "a", "b"])
    with pytest.raises(ThinksaeError, match="region code 3"):
        c.update(s)
    c = FeatureCollector(F, info, None, behaviours=["none", "a", "b"])
    bad = dict(s, token_ids=s["token_ids"].clone())
    bad["token_ids"][0] = info.vocab_size + 5
    with pytest.raises(ThinksaeError, match="another tokenizer"):
        c.update(bad)


def test_max_and_top_contexts_only_over_the_training_regions(tokenizer, info):
    s = synthetic_stream(tokenizer)
    special = torch.isin(s["token_ids"], torch.tensor([tokenizer.bos_token_id, tokenizer.eos_token_id]))
    s["regions"][special] = 3
    s["regions"][~special] = s["regions"][~special] % 3
    s["acts"][torch.nonzero(special)[1], 0] = 1000.0  # a special token with a huge activation
    f_big = int(s["idx"][torch.nonzero(special)[1], 0])
    x = dense(s)
    stats, _ = run(s, info, None, 7, max_regions=["prompt", "think", "answer"])
    t = stats.tensors
    torch.testing.assert_close(t["act_max"], x[~special].max(0).values)
    assert float(t["act_max"][f_big]) < 1000 and float(x[:, f_big].max()) == 1000
    assert not special[t["top_index"][t["top_index"] >= 0]].any()
    assert stats.meta["max_regions"] == ["prompt", "think", "answer"]
    # the default stays every token; an unknown region is refused
    everything, _ = run(s, info, None, 7)
    assert float(everything.tensors["act_max"][f_big]) == 1000 and everything.meta["max_regions"] is None
    with pytest.raises(ThinksaeError, match="max_regions"):
        run(s, info, None, 7, max_regions=["thinking"])


def test_sink_tokens_never_set_the_max_or_a_top_context(tokenizer, info):
    """A token the sink rule marks (the chunk's ``sinks`` column: here an ordinary token with a
    huge activation, as the "\n" at position 2 of Qwen prompts) is counted but never a maximum."""
    s = synthetic_stream(tokenizer)
    sink = torch.zeros(len(s["token_ids"]), dtype=torch.bool)
    sink[5] = True
    s["sinks"] = sink
    s["acts"][5, 0] = 1000.0
    f_big = int(s["idx"][5, 0])
    x = dense(s)
    stats, _ = run(s, info, None, 7)
    torch.testing.assert_close(stats.tensors["act_max"], x[~sink].max(0).values)
    assert float(stats.tensors["act_max"][f_big]) < 1000
    top = stats.tensors["top_index"]
    assert 5 not in top[top >= 0].tolist() and stats.meta["sink_tokens"] == 1
    assert int(stats.tensors["fires"][f_big]) == int((x[:, f_big] > 0).sum())  # still counted


def test_per_trace_counts_are_the_same_when_merged_while_streaming(tokenizer, info, monkeypatch):
    import thinksae.features.traces as traces

    s = synthetic_stream(tokenizer, repeat=5)
    whole, _ = run(s, info, None, 9)
    monkeypatch.setattr(traces, "MERGE_AT", 10)  # merge the pending tables almost every chunk
    merged, _ = run(s, info, None, 9)
    assert all(torch.equal(whole.tensors[k], merged.tensors[k]) for k in TRACE_TENSORS)


def _narrowed(stream: dict[str, torch.Tensor], chunk: int) -> list[dict[str, torch.Tensor]]:
    """The stream in chunks, each as an SAE with thresholds encodes it: per token the active
    latents first, cut to the widest token of the chunk (so chunks differ in width)."""
    out = []
    for a in range(0, len(stream["token_ids"]), chunk):
        c = {k: v[a : a + chunk] for k, v in stream.items()}
        acts, order = c["acts"].sort(-1, descending=True)
        width = max(int((acts > 0).sum(-1).max()), 1)
        out.append({**c, "acts": acts[:, :width], "idx": c["idx"].gather(1, order)[:, :width]})
    return out


def test_chunks_of_different_widths_give_the_same_statistics(tokenizer, info, matcher):
    """BatchTopK/JumpReLU encodes are padded per call: chunks of 1..K columns count the same as
    the fixed [n, K] pairs, contexts included (the padding must not hide a real activation)."""
    stream = synthetic_stream(tokenizer, seed=3)
    g = torch.Generator().manual_seed(1)
    stream["acts"][torch.rand(stream["acts"].shape, generator=g) < 0.4] = 0.0
    ref, _ = run(stream, info, matcher, chunk=3)
    chunks = _narrowed(stream, 3)
    assert len({c["acts"].shape[1] for c in chunks}) > 1
    c = FeatureCollector(F, info, matcher, behaviours=["none", "a", "b"], top_n=TOP_N, window=W)
    for part in chunks:
        c.update(part)
    got = c.finish()
    assert got.tensors.keys() == ref.tensors.keys()
    for key in ref.tensors:
        assert torch.equal(got.tensors[key], ref.tensors[key]), key
