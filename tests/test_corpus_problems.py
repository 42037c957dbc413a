"""Built-in math problems (answers re-checked), prompt sources, numeric answer extraction."""

from __future__ import annotations

import json
import math
from importlib import resources

import pytest

from thinksae.corpus import (
    answers_match,
    builtin_problems,
    extract_numeric_answer,
    load_prompts,
    safe_arithmetic,
)
from thinksae.errors import ThinksaeError


def _rows() -> list[dict]:
    text = resources.files("thinksae").joinpath("data/math_problems.jsonl").read_text("utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_builtin_answers_agree_with_independent_checks():
    rows = _rows()
    assert len(rows) >= 60
    assert len({r["id"] for r in rows}) == len(rows)
    assert len({r["question"] for r in rows}) == len(rows)
    for r in rows:
        assert set(r) == {"id", "question", "answer", "check"}
        assert isinstance(r["answer"], (int, float)) and not isinstance(r["answer"], bool)
        assert math.isclose(safe_arithmetic(r["check"]), r["answer"], rel_tol=1e-9), r["id"]
    problems = builtin_problems()
    assert [p.id for p in problems] == [r["id"] for r in rows]
    assert all(isinstance(p.answer, float) for p in problems)


def test_safe_arithmetic_refuses_anything_else():
    assert safe_arithmetic("-(3 + 4) * 2 ** 3 / 4 - 7 // 2 + 7 % 4") == -14 - 3 + 3
    assert safe_arithmetic("(9**2+12**2)**0.5") == 15.0
    for bad in ("__import__('os')", "x + 1", "[1][0]", "abs(-1)", "1 if 1 else 2", "'a'*3",
                "2**1000", "1 +"):
        with pytest.raises(ThinksaeError):
            safe_arithmetic(bad)


@pytest.mark.parametrize(("text", "value"), [
    ("so the total is 42.", 42),
    ("It costs $1,234.50 in all", 1234.5),
    ("The answer is -7", -7),
    ("10 - 3 = 7", 7),
    ("use 3/4 of a cup", 0.75),
    (r"\boxed{\frac{5}{2}} and later 99", 2.5),
    (r"\boxed{\dfrac{-1}{4}}", -0.25),
    (r"\boxed{1{,}000}", 1000),
    (r"\$2\,500", 2500),
    ("<think>maybe 5, maybe 6</think>\n\nThe answer is **12**.", 12),
    ("<think>it is 5</think>\n\nNo idea.", None),
    ("1,2,3", 3),
    ("no number", None),
    ("0.5 kg or .25 kg", 0.25),
])
def test_extract_numeric_answer(text, value):
    got = extract_numeric_answer(text)
    assert got == value if value is None else math.isclose(got, value)


def test_answers_match():
    assert answers_match(12.0, 12)
    assert answers_match("The answer is $12.00.", "12")
    assert answers_match("1/3", 0.3333333334)
    assert not answers_match("13", "12")
    assert not answers_match(None, 12) and not answers_match("nothing", "12")
    assert answers_match(0.0, 0)


def test_load_prompts_sources(tmp_path, monkeypatch):
    assert len(load_prompts("builtin", limit=5)) == 5
    txt = tmp_path / "qs.txt"
    txt.write_text("What is 1+1?\n\nWhat is 2+2?\n")
    got = load_prompts(str(txt))
    assert [p.question for p in got] == ["What is 1+1?", "What is 2+2?"]
    assert got[0].id != got[1].id and got[0].answer is None
    jl = tmp_path / "qs.jsonl"
    jl.write_text(json.dumps({"question": "A?", "answer": "so #### 1,200"}) + "\n"
                  + json.dumps({"id": "b", "problem": "B?", "answer": 3}) + "\n")
    a, b = load_prompts(str(jl))
    assert (a.question, a.answer) == ("A?", 1200.0) and (b.id, b.answer) == ("b", 3.0)
    with pytest.raises(ThinksaeError, match="not 'builtin'"):
        load_prompts(str(tmp_path / "missing.jsonl"))

    import thinksae.corpus.traces as loading

    monkeypatch.setattr(loading, "hub_reachable", lambda timeout=3.0: False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    with pytest.raises(ThinksaeError, match="openai/gsm8k.*builtin"):
        load_prompts("gsm8k")
