"""The protocol's text sets: reasoning pieces from a corpus's thinking, non-reasoning texts from
JSONL, plain text, a saved datasets directory, a hub name (a local stand-in), the packaged
plain-prose file; and every bad input refused in one line before a model loads."""

from __future__ import annotations

import json

import pytest

from thinksae.corpus.traces import Trace
from thinksae.errors import ThinksaeError
from thinksae.validate.ma2026 import Ma2026Options, check_options, check_text_counts
from thinksae.validate.ma2026.checks import min_selection_p
from thinksae.validate.ma2026.texts import (
    PLAIN_PROSE,
    load_texts,
    plain_prose,
    reasoning_pieces,
    text_sets,
    thinking_text,
)


def _one_line(excinfo, says):
    assert says in str(excinfo.value) and "\n" not in str(excinfo.value)


def test_thinking_text():
    t = Trace("a", "<｜User｜>q<｜Assistant｜>", "<think>\nlet me see\n</think>\n\nIt is 4.")
    assert thinking_text(t) == "\nlet me see\n"
    assert thinking_text(Trace("b", "...<think>\n", "so 2 + 2\n</think> 4")) == "so 2 + 2\n"
    assert thinking_text(Trace("c", "p", "<think>never closed")) == "never closed"
    assert thinking_text(Trace("d", "p", "no thinking here")) is None


def test_reasoning_pieces(corpus_path, tokenizer):
    pieces = reasoning_pieces(corpus_path, tokenizer, max_tokens=16)
    bos = len(tokenizer("")["input_ids"])
    assert bos == 1 and len(pieces) >= 6
    for p in pieces:
        assert len(tokenizer(p, add_special_tokens=False)["input_ids"]) == 15
        assert "<think>" not in p and "</think>" not in p and "answer is" not in p
    assert reasoning_pieces(corpus_path, tokenizer, max_tokens=16, limit=2) == pieces[:2]


def test_text_sets(corpus_path, tokenizer, tmp_path):
    reasoning, other = text_sets(corpus_path, None, tokenizer, max_tokens=16, n_texts=5)
    assert len(reasoning) == 5 and other == plain_prose(limit=5)
    (tmp_path / "o.txt").write_text("A.\n\nB.\n")
    assert text_sets(corpus_path, tmp_path / "o.txt", tokenizer, 16)[1] == ["A.", "B."]


def test_reasoning_pieces_bad_input(tmp_path, tokenizer):
    with pytest.raises(ThinksaeError) as e:
        reasoning_pieces(tmp_path / "none.jsonl", tokenizer)
    _one_line(e, "traces not found")
    path = tmp_path / "plain.jsonl"
    path.write_text(json.dumps({"id": "x", "prompt": "p", "completion": "an answer only"}) + "\n")
    with pytest.raises(ThinksaeError) as e:
        reasoning_pieces(path, tokenizer)
    _one_line(e, "no reasoning texts")


def test_load_texts_jsonl_plain_and_dataset_dir(tmp_path):
    jl = tmp_path / "t.jsonl"
    jl.write_text('{"text": "First text."}\n\n{"text": "  Second.  ", "x": 1}\n')
    assert load_texts(jl) == ["First text.", "Second."]
    assert load_texts(jl, limit=1) == ["First text."]
    txt = tmp_path / "t.txt"
    txt.write_text("One paragraph\nstill one.\n\nTwo.\n\n\n\nThree.\n")
    assert load_texts(txt) == ["One paragraph\nstill one.", "Two.", "Three."]
    import datasets

    datasets.Dataset.from_dict({"body": ["a b", "c d"]}).save_to_disk(str(tmp_path / "ds"))
    assert load_texts(tmp_path / "ds", field="body") == ["a b", "c d"]


def test_load_texts_hub_name_with_a_local_stand_in(monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(name, split, streaming):
        calls.append((name, split, streaming))
        return iter([{"text": "pile one"}, {"text": ""}, {"text": "pile two"}, {"text": "three"}])

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    assert load_texts("monology/pile-uncopyrighted", limit=2) == ["pile one", "pile two"]
    assert calls == [("monology/pile-uncopyrighted", "train", True)]
    with pytest.raises(ThinksaeError) as e:
        load_texts("monology/pile-uncopyrighted", field="content")
    _one_line(e, "no 'content' column")

    def broken(name, split, streaming):
        raise ConnectionError("no route to host\nmore")

    monkeypatch.setattr(datasets, "load_dataset", broken)
    with pytest.raises(ThinksaeError) as e:
        load_texts("someone/missing")
    _one_line(e, "no route to host")


@pytest.mark.parametrize("content, says", [
    ("", "holds no text"),
    ("\n\n   \n", "holds no text"),
    ('{"text": "ok"}\n{"text": ', "not valid JSON"),
    ('{"body": "ok"}\n', "string 'text' field"),
    ('["a list"]\n', "string 'text' field"),
])
def test_bad_nonreasoning_files(tmp_path, content, says):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(ThinksaeError) as e:
        load_texts(path)
    _one_line(e, says)


def test_missing_file_and_binary_file(tmp_path):
    with pytest.raises(ThinksaeError) as e:
        load_texts(tmp_path / "nope.txt")
    _one_line(e, "text file not found")
    (tmp_path / "b.bin").write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(ThinksaeError) as e:
        load_texts(tmp_path / "b.bin")
    _one_line(e, "UTF-8")


def test_packaged_plain_prose():
    texts = plain_prose()
    assert len(texts) >= 64
    rows = [json.loads(line) for line in PLAIN_PROSE.read_text().splitlines()]
    assert all(r["prompt"] and r["settings"]["think_prefill"] is False
               and r["settings"]["system_prompt"] is None for r in rows)
    assert not any("<think>" in t or "<|im_end|>" in t for t in texts)


@pytest.mark.parametrize("field, value, says", [
    ("strategies", "prepend,teleport", "unknown injection strategy 'teleport'"),
    ("n_texts", 1, "must be >= 2"),
    ("n_injection_texts", 0, "must be an integer >= 1"),
    ("mask", "none", "unknown masking mode"),
    ("texts_per_batch", 0, "must be an integer >= 1"),
    ("norm_multiple", 0.5, "norm multiple"),
    ("median_norm", -1.0, "median norm"),
])
def test_bad_options(field, value, says):
    with pytest.raises(ThinksaeError) as e:
        check_options(Ma2026Options(**{field: value}))
    _one_line(e, says)


def test_too_few_texts_for_the_corrected_selection():
    # 3 vs 3 perfectly separated: exact p = 2/C(6,3) = 0.1, times 10 latents = 1 > 0.01
    assert min_selection_p(3, 3) == pytest.approx(0.1)
    with pytest.raises(ThinksaeError) as e:
        check_text_counts(3, 3, 3, 10)
    _one_line(e, "no latent can reach")
    with pytest.raises(ThinksaeError) as e:
        check_text_counts(50, 1, 10, 10)
    _one_line(e, "too few texts")
    check_text_counts(30, 30, 2, 16384)  # asymptotic p ~ 3e-11 · 16384 < 0.01
    check_options(Ma2026Options(), num_latents=65536)  # the defaults can pass
