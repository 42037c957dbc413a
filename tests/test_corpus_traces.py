"""Trace records: JSONL round trip, import layouts (text, messages, question/thinking/answer)."""

from __future__ import annotations

import json

import pytest
from helpers_corpus import plain_tokenizer, r1_tokenizer  # noqa: F401  (fixtures)

from thinksae.corpus import (
    Trace,
    append_trace,
    iter_traces,
    load_traces,
    read_traces,
    traces_from_records,
    write_traces,
)
from thinksae.errors import ThinksaeError

EOS = "<｜end▁of▁sentence｜>"


def sample(i: int) -> Trace:
    return Trace(f"t{i}", "<｜User｜>Q ünï?<｜Assistant｜>", f"<think>\nhm {i}\n</think>\n\n{i}",
                 question="Q ünï?", reference_answer=str(i), meta={"k": [i]})


def test_jsonl_round_trip_and_append(tmp_path):
    path = tmp_path / "sub" / "traces.jsonl"
    write_traces([sample(0), sample(1)], path)
    append_trace(path, sample(2))
    got = read_traces(path)
    assert got == [sample(0), sample(1), sample(2)]
    assert got[0].full_text == "<｜User｜>Q ünï?<｜Assistant｜><think>\nhm 0\n</think>\n\n0"
    assert [t.id for t in iter_traces(path)] == ["t0", "t1", "t2"]
    assert len(path.read_text(encoding="utf-8").splitlines()) == 3


def test_broken_lines(tmp_path):
    path = tmp_path / "t.jsonl"
    write_traces([sample(0)], path)
    with open(path, "a") as f:
        f.write('{"id": "t1", "prom')  # an append cut short by a crash
    with pytest.warns(UserWarning, match="incomplete last line"):
        assert [t.id for t in read_traces(path)] == ["t0"]
    write_traces([sample(0)], path)
    with open(path, "ab") as f:
        f.write('{"id": "t1", "prompt": "<｜'.encode()[:-1])  # torn inside a UTF-8 character
    with pytest.warns(UserWarning, match="incomplete last line"):
        assert [t.id for t in read_traces(path)] == ["t0"]
    path.write_text('{"id": 1}\n' + json.dumps(sample(0).to_dict()) + "\n")
    with pytest.raises(ThinksaeError, match=r"t.jsonl:1: .*lacks \['prompt', 'completion'\]"):
        read_traces(path)
    path.write_text("not json\n\n")
    with pytest.raises(ThinksaeError, match="t.jsonl:1: not valid JSON"):
        read_traces(path)


def test_unknown_keys_go_to_meta():
    t = Trace.from_dict({"id": 3, "prompt": "p", "completion": "c", "reference_answer": 12,
                         "score": 0.5})
    assert t.id == "3" and t.reference_answer == "12" and t.meta == {"score": 0.5}


def test_text_layout_split_at_assistant_marker(r1_tokenizer):  # noqa: F811
    text = "<｜begin▁of▁sentence｜><｜User｜>Hi?<｜Assistant｜><think>\nok\n</think>\n\nHello" + EOS
    (t,) = traces_from_records([{"text": text}])
    assert t.prompt == "<｜begin▁of▁sentence｜><｜User｜>Hi?<｜Assistant｜>"
    assert t.completion == "<think>\nok\n</think>\n\nHello" + EOS
    chatml = "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nYo<|im_end|>"
    (t,) = traces_from_records([{"text": chatml, "id": "c"}])
    assert (t.id, t.completion) == ("c", "Yo<|im_end|>")
    (t,) = traces_from_records([{"text": "no markers at all"}])
    assert (t.prompt, t.completion) == ("", "no markers at all")


def test_messages_layout(r1_tokenizer):  # noqa: F811
    messages = [{"role": "user", "content": "What is 2+3?"},
                {"role": "assistant", "content": "<think>\n2+3=5\n</think>\n\n5"}]
    (t,) = traces_from_records([{"messages": messages}], r1_tokenizer)
    assert t.prompt == "<｜begin▁of▁sentence｜><｜User｜>What is 2+3?<｜Assistant｜>"
    assert t.completion == "<think>\n2+3=5\n</think>\n\n5"
    assert t.question == "What is 2+3?" and t.meta["layout"] == "messages"
    sharegpt = [{"from": "human", "value": "Hi?"}, {"from": "gpt", "value": "Hello"}]
    (t,) = traces_from_records([{"conversations": sharegpt}], r1_tokenizer)
    assert t.prompt.endswith("<｜User｜>Hi?<｜Assistant｜>") and t.completion == "Hello"


def test_question_thinking_answer_layout(r1_tokenizer):  # noqa: F811
    rec = {"question": "What is 2+3?", "thinking": "2+3=5", "answer": "5", "id": "x"}
    (t,) = traces_from_records([rec], r1_tokenizer)
    assert t.prompt == "<｜begin▁of▁sentence｜><｜User｜>What is 2+3?<｜Assistant｜>"
    assert t.completion == "<think>\n2+3=5\n</think>\n\n5"
    assert (t.id, t.question) == ("x", "What is 2+3?")


def test_no_duplicate_think_when_template_opens_it(r1_tokenizer):  # noqa: F811
    """The current hub R1 template ends the generation prompt with ``<think>\\n``."""
    tok = r1_tokenizer
    old = tok.chat_template
    tok.chat_template = old + "{% if add_generation_prompt %}<think>\n{% endif %}"
    try:
        rec = {"question": "Q?", "thinking": "hm", "answer": "1"}
        (t,) = traces_from_records([rec], tok)
        assert t.prompt.endswith("<｜Assistant｜><think>\n")
        assert t.completion == "hm\n</think>\n\n1"
        msgs = [{"role": "user", "content": "Q?"},
                {"role": "assistant", "content": "<think>\nhm\n</think>\n\n1"}]
        (t,) = traces_from_records([{"messages": msgs}], tok)
        assert t.completion == "hm\n</think>\n\n1"
        assert t.full_text.count("<think>") == 1
    finally:
        tok.chat_template = old


def test_unknown_layout_names_fields():
    with pytest.raises(ThinksaeError, match=r"fields \['foo', 'question'\]"):
        traces_from_records([{"question": "q", "foo": 1}])
    with pytest.raises(ThinksaeError, match="chat template"):
        traces_from_records([{"question": "q", "thinking": "t"}], tokenizer=None)


def test_load_traces_sources(tmp_path, r1_tokenizer):  # noqa: F811
    import datasets

    path = tmp_path / "t.jsonl"
    write_traces([sample(i) for i in range(3)], path)
    assert load_traces(path, limit=2) == [
        Trace(**{**sample(i).to_dict(), "meta": {"k": [i], "layout": "trace",
                                                 "source": str(path)}}) for i in range(2)]
    rows = [{"question": f"Q{i}?", "thinking": "hm", "answer": str(i)} for i in range(3)]
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows)}).save_to_disk(tmp_path / "ds")
    got = load_traces(tmp_path / "ds", r1_tokenizer)
    assert [t.question for t in got] == ["Q0?", "Q1?", "Q2?"]
    with pytest.raises(ThinksaeError, match="splits"):
        load_traces(tmp_path / "ds", r1_tokenizer, split="test")
    with pytest.raises(ThinksaeError, match="not found"):
        load_traces(tmp_path / "missing.jsonl")


def test_hub_unreachable_is_one_clear_error(monkeypatch):
    import thinksae.corpus.traces as loading

    monkeypatch.setattr(loading, "hub_reachable", lambda timeout=3.0: False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    with pytest.raises(ThinksaeError, match="unreachable.*local JSONL") as err:
        load_traces("someone/reasoning-traces")
    assert "\n" not in str(err.value)
