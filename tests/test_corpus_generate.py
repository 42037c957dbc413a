"""Trace generation with a tiny random Qwen2: JSONL as it goes, resume, determinism, batching."""

from __future__ import annotations

import pytest
import torch
from helpers_corpus import (  # noqa: F401  (fixtures)
    NO_SYSTEM_TEMPLATE,
    build_plain_tokenizer,
    r1_tokenizer,
    tiny_qwen2,
)

from thinksae.chat import THINK_SYSTEM_PROMPT, build_prompt
from thinksae.corpus import Problem, generate_traces, read_traces
from thinksae.errors import ThinksaeError
from thinksae.generation import GenerationConfig
from thinksae.generation.batches import trim_at_stop

QUESTIONS = [
    Problem("a", "What is 2+2?", 4.0),
    Problem("b", "A pen costs $3. How much do 5 pens cost?", 15.0),
    Problem("c", "Tom has 7 apples and eats 2 of them. How many apples are left now?", 5.0),
    Problem("d", "What is 10% of 50?", 5.0),
]
GEN = dict(generation=GenerationConfig(max_new_tokens=6), progress=False)
PREFILL = dict(GEN, generation=GenerationConfig(max_new_tokens=6, think_prefill=True))


@pytest.fixture(scope="module")
def model(r1_tokenizer):  # noqa: F811
    return tiny_qwen2(len(r1_tokenizer))


class CountingModel:
    """Wraps a model and counts ``generate`` calls (optionally failing on the n-th)."""

    def __init__(self, model, fail_on: int | None = None):
        self.model, self.calls, self.fail_on = model, 0, fail_on

    def __getattr__(self, name):
        return getattr(self.model, name)

    def generate(self, **kw):
        self.calls += 1
        if self.calls == self.fail_on:
            raise KeyboardInterrupt
        return self.model.generate(**kw)


def test_traces_written_as_they_come_and_resumed(tmp_path, model, r1_tokenizer):  # noqa: F811
    path = tmp_path / "traces.jsonl"
    counting = CountingModel(model, fail_on=2)
    with pytest.raises(KeyboardInterrupt):  # interrupted during the second batch
        generate_traces(counting, r1_tokenizer, QUESTIONS, path, batch_size=2, **GEN)
    assert [t.id for t in read_traces(path)] == ["a", "b"]  # the first batch survived

    counting = CountingModel(model)
    got = generate_traces(counting, r1_tokenizer, QUESTIONS, path, batch_size=2, **GEN)
    assert counting.calls == 1  # only the missing batch was generated
    assert [t.id for t in got] == ["a", "b", "c", "d"]
    assert read_traces(path) == got

    before = path.read_bytes()
    counting = CountingModel(model)
    again = generate_traces(counting, r1_tokenizer, QUESTIONS, path, batch_size=2, **GEN)
    assert counting.calls == 0 and again == got and path.read_bytes() == before

    fresh = generate_traces(model, r1_tokenizer, QUESTIONS, tmp_path / "fresh.jsonl",
                            batch_size=2, **GEN)
    assert fresh == got  # an interrupted + resumed run equals an uninterrupted one


def test_a_batch_cut_short_is_redone_with_the_same_rows(tmp_path, model, r1_tokenizer):  # noqa: F811
    fresh = generate_traces(model, r1_tokenizer, QUESTIONS, tmp_path / "fresh.jsonl",
                            batch_size=3, **GEN)
    path = tmp_path / "cut.jsonl"  # a crash mid-write left one trace of the second batch
    lines = (tmp_path / "fresh.jsonl").read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:1]))
    seen = []

    class Recording(CountingModel):
        def generate(self, **kw):
            seen.append(kw["input_ids"].shape)
            return super().generate(**kw)

    got = generate_traces(Recording(model), r1_tokenizer, QUESTIONS, path, batch_size=3, **GEN)
    assert [s[0] for s in seen] == [3, 1]  # the whole first batch again, then the second
    assert got == fresh
    assert sorted(path.read_text().splitlines()) == sorted(line.rstrip("\n") for line in lines)


def test_resume_after_a_torn_last_line(tmp_path, model, r1_tokenizer):  # noqa: F811
    path = tmp_path / "t.jsonl"
    (a,) = generate_traces(model, r1_tokenizer, QUESTIONS[:1], path, **GEN)
    whole = path.read_bytes()
    path.write_bytes(whole + '{"id": "b", "prompt": "<｜'.encode()[:-1])  # torn mid-char
    got = generate_traces(model, r1_tokenizer, QUESTIONS[:2], path, **GEN)
    assert read_traces(path) == got and [t.id for t in got] == ["a", "b"]
    path.write_bytes(whole.rstrip(b"\n"))  # a whole last line without its newline is kept
    counting = CountingModel(model)
    assert generate_traces(counting, r1_tokenizer, QUESTIONS[:2], path, **GEN) == got
    assert counting.calls == 1 and read_traces(path) == [got[0], got[1]]


def test_trace_fields(tmp_path, model, r1_tokenizer):  # noqa: F811
    (t,) = generate_traces(model, r1_tokenizer, QUESTIONS[:1], tmp_path / "t.jsonl", **GEN)
    assert t.prompt == build_prompt(r1_tokenizer, "What is 2+2?")
    assert t.prompt.endswith("<｜Assistant｜>")
    assert t.question == "What is 2+2?" and t.reference_answer == "4"
    assert t.meta["num_new_tokens"] == 6 and t.meta["finished"] is False
    ids = r1_tokenizer(t.completion, add_special_tokens=False)["input_ids"]
    assert len(ids) >= 1 and r1_tokenizer.decode(ids) == t.completion


def test_batched_greedy_equals_unbatched(tmp_path, model, r1_tokenizer):  # noqa: F811
    one = generate_traces(model, r1_tokenizer, QUESTIONS, tmp_path / "1.jsonl", batch_size=1,
                          **GEN)
    four = generate_traces(model, r1_tokenizer, QUESTIONS, tmp_path / "4.jsonl", batch_size=4,
                           **GEN)
    assert [t.completion for t in one] == [t.completion for t in four]
    assert len({t.completion for t in one}) > 1  # prompts of different lengths, not all equal


def test_sampling_is_seeded(tmp_path, model, r1_tokenizer):  # noqa: F811
    def run(name, seed):
        return [t.completion for t in generate_traces(
            model, r1_tokenizer, QUESTIONS[:2], tmp_path / name, progress=False,
            generation=GenerationConfig(6, do_sample=True, temperature=1.0, top_p=1.0, seed=seed))]

    assert run("s0.jsonl", 0) == run("s0b.jsonl", 0)
    assert run("s0.jsonl", 0) != run("s1.jsonl", 1)


def test_system_prompt_kept_or_folded(r1_tokenizer):  # noqa: F811
    assert THINK_SYSTEM_PROMPT in build_prompt(r1_tokenizer, "Q?", THINK_SYSTEM_PROMPT)
    strict = build_plain_tokenizer(NO_SYSTEM_TEMPLATE)
    text = build_prompt(strict, "Q?", "Be brief.")
    assert text == "<|im_start|>user\nBe brief.\n\nQ?<|im_end|>\n<|im_start|>assistant\n"


def test_think_prefill_opens_the_thinking_once(r1_tokenizer):  # noqa: F811
    from thinksae.corpus import Region, Trace, tokenize_trace

    plain = build_prompt(r1_tokenizer, "Q?")
    opened = build_prompt(r1_tokenizer, "Q?", think_prefill=True)
    assert opened == plain + "<think>\n"
    assert build_prompt(_Opened(r1_tokenizer), "Q?", think_prefill=True).count("<think>") == 1
    trace = Trace(id="a", prompt=opened, completion="Hmm 2+2.\n</think>\n\n4")
    tok = tokenize_trace(r1_tokenizer, trace)
    think = [t for t, r in zip(tok.input_ids, tok.regions) if r == Region.THINK]
    assert r1_tokenizer.decode(think).strip() == "Hmm 2+2."


class _Opened:
    """A tokenizer whose chat template already ends the prompt with <think>."""

    def __init__(self, tok):
        self.tok = tok

    def __getattr__(self, name):
        return getattr(self.tok, name)

    def apply_chat_template(self, *a, **kw):
        return self.tok.apply_chat_template(*a, **kw) + "<think>\n"


class ScriptedModel(torch.nn.Module):
    """Returns fixed continuations: row 0 stops with EOS then padding, row 1 runs out."""

    def __init__(self, rows):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.rows = rows
        self.config = type("C", (), {"_name_or_path": "scripted"})()
        self.generation_config = type("G", (), {"eos_token_id": None})()

    def generate(self, input_ids, **kw):
        tail = torch.tensor(self.rows[: len(input_ids)])
        return torch.cat([input_ids, tail], dim=1)


def test_eos_and_padding_stripped(tmp_path, r1_tokenizer):  # noqa: F811
    tok = r1_tokenizer
    hello = tok("Hello there", add_special_tokens=False)["input_ids"]
    eos, pad = tok.eos_token_id, tok.pad_token_id
    more = tok(" and more!", add_special_tokens=False)["input_ids"]
    rows = [hello + [eos, pad, pad], hello + more]
    assert len(rows[0]) == len(rows[1])
    a, b = generate_traces(ScriptedModel(rows), tok, ["q1", "q2"], tmp_path / "t.jsonl", **GEN)
    assert a.completion == "Hello there" and a.meta["finished"] is True
    assert b.completion == "Hello there and more!" and b.meta["finished"] is False
    assert a.id != b.id and a.id.startswith("q-")
    assert trim_at_stop([5, 6, 0, 0], {9}, 0) == ([5, 6], False)
    assert trim_at_stop([5, 9, 6], {9}, 0) == ([5], True)


def test_bad_arguments(tmp_path, model, r1_tokenizer):  # noqa: F811
    with pytest.raises(ThinksaeError):
        generate_traces(model, r1_tokenizer, QUESTIONS, tmp_path / "t.jsonl", batch_size=0)
    with pytest.raises(ThinksaeError):
        generate_traces(model, r1_tokenizer, [3.5], tmp_path / "t.jsonl", **GEN)


def test_budget_forcing_closes_unfinished_thinking_and_generates_an_answer(
        tmp_path, model, r1_tokenizer):  # noqa: F811
    from thinksae.corpus import tokenize_trace
    from thinksae.corpus.segment import Region

    plain = generate_traces(model, r1_tokenizer, QUESTIONS, tmp_path / "plain.jsonl",
                            batch_size=3, **PREFILL)
    assert all("</think>" not in t.completion for t in plain)  # random weights never close it
    path = tmp_path / "forced.jsonl"
    counting = CountingModel(model)
    got = generate_traces(counting, r1_tokenizer, QUESTIONS, path, batch_size=3,
                          answer_tokens=5, **PREFILL)
    assert counting.calls == 4  # per batch: the thinking, then the answers of its open rows
    for before, after in zip(plain, got):
        head, _, answer = after.completion.partition("</think>\n\n")
        assert head.rstrip("\n") == before.completion.rstrip("\n")  # the thinking is kept
        assert after.meta["forced_answer"] and 0 < after.meta["answer_new_tokens"] <= 5
        assert after.meta["thinking_finished"] == before.meta["finished"]
        regions = tokenize_trace(r1_tokenizer, after).regions
        assert Region.THINK in regions and Region.ANSWER in regions
    cut = tmp_path / "cut.jsonl"
    with pytest.raises(KeyboardInterrupt):  # interrupted in the second batch's answers
        generate_traces(CountingModel(model, fail_on=4), r1_tokenizer, QUESTIONS, cut,
                        batch_size=3, answer_tokens=5, **PREFILL)
    resumed = generate_traces(model, r1_tokenizer, QUESTIONS, cut, batch_size=3,
                              answer_tokens=5, **PREFILL)
    assert resumed == got and cut.read_bytes() == path.read_bytes()


def test_a_closed_thinking_is_not_forced(tmp_path, model, r1_tokenizer):  # noqa: F811
    from thinksae.corpus.generate import close_thinking, still_thinking

    assert still_thinking("<｜Assistant｜><think>\n", "so 4")
    assert not still_thinking("<｜Assistant｜><think>\n", "so 4\n</think>\n\n4")
    assert still_thinking("<｜Assistant｜>", "<think>\nhm")
    assert not still_thinking("<｜Assistant｜>", "The answer is 4.")  # never opened
    assert close_thinking("so 4") == "so 4\n</think>\n\n" == close_thinking("so 4\n")
    counting = CountingModel(model)
    (t,) = generate_traces(counting, r1_tokenizer, QUESTIONS[:1], tmp_path / "t.jsonl",
                           answer_tokens=5, **GEN)  # no prefill: the thinking never opened
    assert counting.calls == 1 and "forced_answer" not in t.meta
    with pytest.raises(ThinksaeError, match="answer_tokens must be >= 0"):
        generate_traces(model, r1_tokenizer, QUESTIONS[:1], tmp_path / "x.jsonl",
                        answer_tokens=-1, **GEN)
