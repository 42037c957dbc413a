"""Corpus engines: the llama.cpp loop on a fake backend (the tiny Qwen2 behind it), vLLM through a fake
module, the one-line refusals before anything loads, and `batch_size: auto`."""

from __future__ import annotations

import contextlib
import sys
import types

import pytest
import torch
from helpers_corpus import r1_tokenizer, tiny_qwen2  # noqa: F401  (fixtures)

from thinksae.corpus import CorpusConfig, Problem, build_corpus, generate_traces, read_traces
from thinksae.corpus.engines import (
    HFEngine,
    Row,
    auto_batch_size,
    check_batch_size,
    check_engine,
)
from thinksae.corpus.engines.hf import batch_for_memory, sequence_bytes
from thinksae.corpus.engines.llamacpp import ROOM_SLACK, LlamaCppEngine, _common_prefix
from thinksae.errors import ThinksaeError
from thinksae.generation import GenerationConfig as Gen

QUESTIONS = [
    Problem("a", "What is 2+2?", 4.0),
    Problem("b", "A pen costs $3. How much do 5 pens cost?", 15.0),
    Problem("c", "Tom has 7 apples and eats 2 of them. How many apples are left now?", 5.0),
    Problem("d", "What is 10% of 50?", 5.0),
]


@pytest.fixture(scope="module")
def model(r1_tokenizer):  # noqa: F811
    return tiny_qwen2(len(r1_tokenizer))


class FakeSession:
    """Recomputes each sequence from its whole history with the HF model; checks positions."""

    def __init__(self, backend, n_ctx, seeds):
        self.backend, self.n_ctx, self.history = backend, n_ctx, {}
        self.log = {"n_ctx": n_ctx, "seeds": list(seeds), "steps": [], "fed": [], "reseeds": []}
        backend.sessions.append(self.log)

    def _next(self, seq: int) -> int:
        if self.backend.script is not None:
            return self.backend.script[seq][len(self.history[seq]) - self.backend.prompt_len[seq]]
        ids = torch.tensor([self.history[seq]])
        with torch.no_grad():
            return int(self.backend.model(ids).logits[0, -1].argmax())

    def prefill(self, seq, ids, held=0):
        assert self.history.get(seq, []) == list(ids[:held])  # it holds exactly what it is told
        self.history[seq] = list(ids)
        self.backend.prompt_len[seq] = len(ids)
        self.log["fed"].append(len(ids) - held)
        return self._next(seq)

    def forget(self, seq, keep):
        self.history[seq] = self.history[seq][:keep]

    def share_prefix(self, seqs, ids):
        assert all(s not in self.history for s in seqs)
        self.history.update({s: list(ids) for s in seqs})
        self.log["shared"] = len(ids)

    def reseed(self, seq, seed):
        self.log["reseeds"].append((seq, seed))

    def step(self, seqs, tokens, positions):
        self.log["steps"].append(list(seqs))
        out = []
        for s, t, p in zip(seqs, tokens, positions):
            assert p == len(self.history[s])  # the token goes right after what the sequence holds
            self.history[s].append(t)
            out.append(self._next(s))
        total = sum(map(len, self.history.values()))
        assert total <= self.n_ctx
        return out


class FakeBackend:
    """What LlamaCppEngine needs of llama.cpp; ``script`` gives fixed tokens per sequence."""

    def __init__(self, model=None, n_vocab=152064, eos=(151643,), max_seqs=64, script=None):
        self.model, self.n_vocab, self.eos, self.max_seqs = model, n_vocab, list(eos), max_seqs
        self.script, self.sessions, self.prompt_len = script, [], {}
        self.samplings = []

    def eos_ids(self):
        return self.eos

    @contextlib.contextmanager
    def session(self, n_ctx, sampling, seeds):
        self.samplings.append(sampling)
        yield FakeSession(self, n_ctx, seeds)


def llama(tokenizer, backend, **sampling):
    return LlamaCppEngine("fake.gguf", tokenizer, Gen(**sampling), backend=backend)


def test_llama_cpp_loop_makes_the_traces_hf_makes(tmp_path, model, r1_tokenizer):  # noqa: F811
    gen = dict(generation=Gen(max_new_tokens=6, think_prefill=True), progress=False, answer_tokens=4)
    hf = generate_traces(model, r1_tokenizer, QUESTIONS, tmp_path / "hf.jsonl", batch_size=3, **gen)
    backend = FakeBackend(model)
    got = generate_traces(None, r1_tokenizer, QUESTIONS, tmp_path / "ll.jsonl", batch_size=3,
                          engine=llama(r1_tokenizer, backend), **gen)
    assert read_traces(tmp_path / "ll.jsonl") == got
    assert [t.completion for t in got] == [t.completion for t in hf]
    assert [t.prompt for t in got] == [t.prompt for t in hf]
    for a, b in zip(got, hf):
        assert a.meta.pop("engine") == "llama.cpp" and b.meta.pop("engine") == "hf"
        assert a.meta.pop("model") == "fake.gguf"
        b.meta.pop("model")
        assert a.meta == b.meta  # finished, token counts, forced answers alike
    # per batch one context: thinking, all rows together, then the forced answer continues in it,
    # fed only what its prompt adds to the thinking it holds (`</think>` and the blank line)
    assert [len(s["seeds"]) for s in backend.sessions] == [3, 1]
    assert backend.sessions[0]["steps"][0] == [0, 1, 2]
    # the 3 prompts' common start (chat template, system prompt) fed once, then each its own rest
    prompt_ids = [r1_tokenizer(t.prompt, add_special_tokens=False)["input_ids"] for t in got[:3]]
    shared = backend.sessions[0]["shared"]
    assert 0 < shared == min(_common_prefix(prompt_ids[0], r) for r in prompt_ids)
    assert backend.sessions[0]["fed"][:3] == [len(r) - shared for r in prompt_ids]
    assert "shared" not in backend.sessions[1]  # one row: nothing to share
    assert len(backend.sessions[0]["steps"]) == 5 + 3  # 6 tokens: the prefill's, then 5 steps; answer: 3
    assert all(t.meta.get("forced_answer") for t in got)
    assert [len(s["reseeds"]) for s in backend.sessions] == [3, 1]
    answer_fed = backend.sessions[0]["fed"][3:] + backend.sessions[1]["fed"][1:]
    # fed at most the 6 thinking tokens (retokenized) and the closing ones: never the prompt again
    assert len(answer_fed) == 4 and all(1 <= n <= 6 + 4 for n in answer_fed) and min(answer_fed) <= 4


def test_llama_cpp_stops_and_budget(r1_tokenizer):  # noqa: F811
    eos, pad = r1_tokenizer.eos_token_id, r1_tokenizer.pad_token_id
    script = [[5, 6, eos, 9, 9], [7, 8, 9, 10, 11], [pad, 1, 1, 1, 1], [3, 151647, 1, 1, 1]]
    backend = FakeBackend(script=script, eos=(151647,))  # the GGUF's own end-of-turn token
    engine = llama(r1_tokenizer, backend)
    rows = engine.generate(["p"] * 4, list("abcd"), budget=4)
    assert rows == [Row([5, 6], True), Row([7, 8, 9, 10], False), Row([], True), Row([3], True)]
    assert backend.sessions[0]["steps"] == [[0, 1, 3], [0, 1], [1]]  # stopped rows drop out
    rows = engine.generate(["p"] * 2, list("ef"), budget=1)
    assert rows == [Row([5], False), Row([7], False)] and backend.sessions[-1]["steps"] == []
    backend.max_seqs = 3  # more prompts than the context holds sequences: run in chunks
    assert len(engine.generate(["p"] * 4, list("ghij"), budget=2)) == 4
    assert [len(s["seeds"]) for s in backend.sessions[-2:]] == [3, 1]
    with pytest.raises(ThinksaeError, match="do not belong together"):
        llama(r1_tokenizer, FakeBackend(n_vocab=1000))


def test_llama_cpp_continues_a_question_in_the_context_that_holds_it(model, r1_tokenizer, monkeypatch):  # noqa: F811
    backend = FakeBackend(model)
    engine = llama(r1_tokenizer, backend)
    texts, keys = [q.question for q in QUESTIONS[:3]], ["a", "b", "c"]
    first = engine.generate(texts, keys, budget=5)
    longer = [t + r1_tokenizer.decode(r.ids) + " so" for t, r in zip(texts, first)]
    cont = engine.generate(longer[:2], keys[:2], budget=3)
    assert cont == llama(r1_tokenizer, FakeBackend(model)).generate(longer[:2], keys[:2], budget=3)
    assert len(backend.sessions) == 1
    ids = [r1_tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    fed = backend.sessions[0]["fed"][3:]
    assert len(fed) == 2 and all(1 <= n <= 3 for n in fed)  # " so" and what retokenizing moved
    assert engine.generate(texts[:1], keys[:1], budget=5) == first[:1]  # a shorter prompt: trimmed
    assert backend.sessions[0]["fed"][-1] == 1 and len(backend.sessions) == 1
    room = max(map(len, ids)) + 2 * 5 + ROOM_SLACK  # the longest prompt, twice the budget, slack
    engine.generate(longer[:1], keys[:1], budget=room)  # no room for that: a fresh context
    assert len(backend.sessions) == 2
    assert backend.sessions[1]["fed"] == [len(r1_tokenizer(longer[0], add_special_tokens=False)["input_ids"])]
    engine.generate(longer[:1], ["z"], budget=2)  # an unknown question: a fresh context
    assert len(backend.sessions) == 3

    def broken(self, seqs, tokens, positions):
        raise RuntimeError("decode failed")

    monkeypatch.setattr(FakeSession, "step", broken)
    with pytest.raises(RuntimeError):
        engine.generate(longer[:1], ["z"], budget=3)
    assert engine._kept is None  # what a failed context holds is never continued
    engine.close()


def test_llama_cpp_seeds_follow_the_question_not_the_batch(r1_tokenizer):  # noqa: F811
    backend = FakeBackend(script=[[1, 2, 3]] * 4)
    engine = llama(r1_tokenizer, backend, do_sample=True, temperature=0.7, top_p=0.9, seed=5)
    engine.generate(["p"] * 3, ["a", "b", "c"], budget=2)
    engine.generate(["p"] * 2, ["c", "d"], budget=2)
    engine.generate(["p"], ["c"], budget=2, stage="answer")  # continues in the second context
    first, second = (s["seeds"] for s in backend.sessions)
    [(seq, answer)] = backend.sessions[1]["reseeds"]
    assert first[2] == second[0] and len(set(first)) == 3 and (seq, answer) == (0, Gen(seed=5).row_seeds(
        ["c"], "answer")[0]) and answer != first[2]
    assert first[2] == Gen(seed=5).batch_seed(["c"]) % 2**32
    assert backend.samplings[0] == Gen(do_sample=True, temperature=0.7, top_p=0.9, seed=5)


class FakeVLLM:
    """A stand-in for the `vllm` module: records what it is given, answers with fixed ids."""

    def __init__(self, tokenizer):
        self.tokenizer, self.calls, self.loaded = tokenizer, [], []
        self.module = types.ModuleType("vllm")
        self.module.LLM = self.llm
        self.module.SamplingParams = lambda **kw: kw

    def llm(self, **kw):
        self.loaded.append(kw)
        fake = self

        class LLM:
            def generate(self, inputs, params, use_tqdm=True):
                fake.calls.append((inputs, params))
                hello = fake.tokenizer("Hello", add_special_tokens=False)["input_ids"]
                eos = fake.tokenizer.eos_token_id
                outs = [(hello + [eos], "stop"), (hello * 3, "length")]
                return [types.SimpleNamespace(outputs=[types.SimpleNamespace(
                    token_ids=outs[i % 2][0], finish_reason=outs[i % 2][1])])
                    for i in range(len(inputs))]
        return LLM()


def test_vllm_engine_with_a_fake_module(tmp_path, r1_tokenizer, monkeypatch):  # noqa: F811
    import thinksae.corpus.run as models

    fake = FakeVLLM(r1_tokenizer)
    monkeypatch.setitem(sys.modules, "vllm", fake.module)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(models, "load_model", lambda *a, **k: pytest.fail("HF model loaded"))
    model_dir = tmp_path / "m"
    model_dir.mkdir()
    (model_dir / "config.json").write_text("{}")
    cfg = CorpusConfig(model=str(model_dir), engine="vllm", out=str(tmp_path / "t.jsonl"), limit=3,
                       generation=Gen(5, do_sample=True, temperature=0.8, top_p=0.9, seed=3),
                       progress=False)
    build_corpus(cfg, tokenizer=r1_tokenizer)
    a, b, c = read_traces(tmp_path / "t.jsonl")
    assert a.completion == "Hello" and a.meta["finished"] and a.meta["engine"] == "vllm"
    assert b.completion == "HelloHelloHello" and not b.meta["finished"]
    assert fake.loaded == [dict(model=str(model_dir), dtype="auto", seed=3)]
    (inputs, params), = fake.calls  # three questions, one call (batch auto = 64)
    prompt_ids = r1_tokenizer(a.prompt, add_special_tokens=False)["input_ids"]
    assert inputs[0]["prompt_token_ids"] == prompt_ids  # one BOS: the template's
    assert prompt_ids.count(r1_tokenizer.bos_token_id) == 1
    assert [p["temperature"] for p in params] == [0.8] * 3 and params[0]["max_tokens"] == 5
    assert len({p["seed"] for p in params}) == 3 and r1_tokenizer.eos_token_id in params[0]["stop_token_ids"]


def test_engines_refused_in_one_line_before_anything_loads(tmp_path, monkeypatch):
    import thinksae.corpus.run as models

    monkeypatch.setattr(models, "load_model", lambda *a, **k: pytest.fail("model loaded"))
    not_gguf = tmp_path / "model.gguf"
    not_gguf.write_bytes(b"PK\x03\x04")
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # not installed
    monkeypatch.setitem(sys.modules, "vllm", None)
    cases = [(dict(engine="llama.cpp"), "needs llama-cpp-python"),
             (dict(engine="vllm"), "needs vLLM"),
             (dict(engine="onnx"), "unknown engine 'onnx'"),
             (dict(batch_size="big"), "batch_size must be a positive number or auto")]
    for bad, message in cases:
        cfg = CorpusConfig(out=str(tmp_path / "out" / "t.jsonl"), limit=1, progress=False, **bad)
        with pytest.raises(ThinksaeError, match=message):
            build_corpus(cfg)
    monkeypatch.setitem(sys.modules, "llama_cpp", types.ModuleType("llama_cpp"))  # installed
    for spec in (str(not_gguf), "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B", str(tmp_path)):
        with pytest.raises(ThinksaeError, match="runs GGUF models only"):
            check_engine("llama.cpp", spec)
    check_engine("llama.cpp", "offline")  # the offline model is a GGUF (fetched when opened)
    monkeypatch.setitem(sys.modules, "vllm", types.ModuleType("vllm"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ThinksaeError, match="needs a CUDA GPU"):
        check_engine("vllm", "some/model")
    assert not (tmp_path / "out").exists()


def test_sequence_bytes_by_hand():
    r1 = types.SimpleNamespace(num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
                               hidden_size=1536, intermediate_size=8960, vocab_size=151936)
    kv = 2 * 28 * 2 * 128 * 1000 * 4  # K and V · layers · kv heads · head dim · tokens · fp32
    prefill = 1000 * 8960 * 4 * 2  # gate and up activations of the longest prompt
    assert sequence_bytes(r1, 1000, 4) == kv + prefill + 2 * 151936 * 4 == 130_239_488
    assert batch_for_memory(130_239_488, 16 << 30) == 64  # plenty of memory: the cap
    assert batch_for_memory(130_239_488, 2 << 30) == 8  # half of 2 GiB / 130 MB
    assert batch_for_memory(130_239_488, 1 << 20) == 1
    for bad in (0, -3, "big", True, 2.5):
        with pytest.raises(ThinksaeError):
            check_batch_size(bad)
    check_batch_size("auto")
    check_batch_size(16)


def test_auto_batch_size_on_the_tiny_model(tmp_path, model, r1_tokenizer, monkeypatch):  # noqa: F811
    engine = HFEngine(model, r1_tokenizer, Gen())
    prompts = ["a"] * 100
    assert auto_batch_size(engine, r1_tokenizer, prompts, 10) == 64
    assert auto_batch_size(engine, r1_tokenizer, prompts[:5], 10) == 5
    calls = []
    real = model.generate
    monkeypatch.setattr(model, "generate", lambda **kw: calls.append(1) or real(**kw))
    got = generate_traces(model, r1_tokenizer, QUESTIONS, tmp_path / "t.jsonl", batch_size="auto",
                          generation=Gen(max_new_tokens=3), progress=False)
    assert len(calls) == 1 and len(got) == 4  # all four questions in one batch
    assert (CorpusConfig().batch_size, CorpusConfig().engine) == ("auto", "hf")


def test_cli_options():
    from thinksae.cli import build_parser

    args = build_parser().parse_args(["corpus", "--engine", "llama.cpp", "--batch_size", "16"])
    assert (args.cfg.engine, args.cfg.batch_size) == ("llama.cpp", 16)
    assert build_parser().parse_args(["corpus"]).cfg.batch_size == "auto"


def test_real_llama_cpp_on_a_tiny_gguf(tmp_path, model, r1_tokenizer):  # noqa: F811
    pytest.importorskip("llama_cpp")  # optional extra: compiled from source
    from helpers_corpus import R1_TOKENIZER_DIR
    from helpers_gguf import write_tiny_gguf

    gguf = write_tiny_gguf(model, R1_TOKENIZER_DIR, tmp_path / "tiny.gguf")
    hf = generate_traces(model, r1_tokenizer, QUESTIONS, tmp_path / "hf.jsonl", batch_size=4,
                         generation=Gen(max_new_tokens=8), progress=False)
    cfg = CorpusConfig(model=str(gguf), engine="llama.cpp", out=str(tmp_path / "ll.jsonl"),
                       generation=Gen(max_new_tokens=8), batch_size=3, progress=False)
    engine = LlamaCppEngine(gguf, r1_tokenizer, Gen())
    try:  # float32 weights in both: greedy traces agree token for token
        rows = engine.generate([t.prompt for t in hf], [t.id for t in hf], 8)
        assert [r1_tokenizer.decode(r.ids) for r in rows] == [t.completion for t in hf]
        sampled = LlamaCppEngine(gguf, r1_tokenizer, Gen(do_sample=True, temperature=1.0, top_p=1.0, seed=7),
                                 engine.backend)
        one = sampled.generate([hf[0].prompt] * 2, ["a", "b"], 8)
        assert one == sampled.generate([hf[0].prompt] * 2, ["a", "b"], 8)  # seeded
        assert one[0] != one[1]  # a seed per question
        sampled._release()  # its context, before the shared model goes
        # budget forcing: the answer pass continues in the thinking's context (trimmed, reseeded)
        gen = dict(generation=Gen(max_new_tokens=6, think_prefill=True), progress=False, answer_tokens=4)
        forced_hf = generate_traces(model, r1_tokenizer, QUESTIONS, tmp_path / "fhf.jsonl", batch_size=4,
                                    **gen)
        fresh = LlamaCppEngine(gguf, r1_tokenizer, Gen(), engine.backend)
        forced_ll = generate_traces(None, r1_tokenizer, QUESTIONS, tmp_path / "fll.jsonl", batch_size=4,
                                    engine=fresh, **gen)
        assert sum(bool(t.meta.get("forced_answer")) for t in forced_hf) >= 2
        assert [t.completion for t in forced_ll] == [t.completion for t in forced_hf]
        fresh._release()
    finally:
        engine.close()
    build_corpus(cfg, tokenizer=r1_tokenizer)
    got = read_traces(tmp_path / "ll.jsonl")[:4]
    assert [t.id for t in got] == ["math-001", "math-002", "math-003", "math-004"]
    assert all(t.meta["engine"] == "llama.cpp" and t.meta["model"] == str(gguf) for t in got)


def test_engine_auto_is_llama_cpp_for_a_gguf_only_when_it_is_installed(tmp_path, monkeypatch):
    import thinksae.corpus.engines as engines

    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF" + bytes(60))
    other = tmp_path / "model_dir"
    other.mkdir()
    monkeypatch.setattr(engines, "installed", lambda module: True)
    fp32 = {"device": "cpu", "dtype": "float32"}
    assert engines.resolve_engine("auto", str(gguf), **fp32) == "llama.cpp"
    assert engines.resolve_engine("auto", "offline", **fp32) == "llama.cpp"
    assert engines.resolve_engine("auto", str(other), **fp32) == "hf"
    assert engines.resolve_engine("auto", str(gguf), "cpu", "bfloat16") == "hf"  # fast bf16 here
    assert engines.resolve_engine("hf", str(gguf), **fp32) == "hf"
    monkeypatch.setattr(engines, "installed", lambda module: False)
    assert engines.resolve_engine("auto", str(gguf), **fp32) == "hf"
