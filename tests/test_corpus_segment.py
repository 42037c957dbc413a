"""Region segmentation and behaviour tagging, with the real R1 tokenizer and a plain BPE."""

from __future__ import annotations

import pytest
from helpers_corpus import plain_tokenizer, r1_tokenizer  # noqa: F401  (fixtures)

from thinksae.corpus import (
    BEHAVIOUR_VOCAB,
    Region,
    Trace,
    behaviour_names,
    find_behaviours,
    tokenize_trace,
)

P, T, A, S = Region.PROMPT, Region.THINK, Region.ANSWER, Region.SPECIAL
CODE = {name: i for i, name in enumerate(behaviour_names())}
EOS = "<｜end▁of▁sentence｜>"


def r1_prompt(tok, question: str, think_in_prompt: bool) -> str:
    text = tok.apply_chat_template([{"role": "user", "content": question}],
                                   add_generation_prompt=True, tokenize=False)
    assert text.endswith("<｜Assistant｜>")
    return text + "<think>\n" if think_in_prompt else text


def labelled(tok, trace: Trace, **kw):
    """``[(token text, region, behaviour name)]`` plus the TokenizedTrace."""
    out = tokenize_trace(tok, trace, **kw)
    text = trace.full_text
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    pieces = [text[a:b] for a, b in enc["offset_mapping"]][: len(out.input_ids)]
    names = behaviour_names()
    return [(p, Region(r), names[b]) for p, r, b in zip(pieces, out.regions, out.behaviours,
                                                          strict=True)], out


def region_text(rows, region) -> str:
    return "".join(p for p, r, _ in rows if r == region)


@pytest.mark.parametrize("think_in_prompt", [False, True])
def test_r1_regions(r1_tokenizer, think_in_prompt):  # noqa: F811
    prompt = r1_prompt(r1_tokenizer, "What is 2+2?", think_in_prompt)
    body = "Okay, 2+2 is 4.\n</think>\n\nThe answer is 4." + EOS
    completion = body if think_in_prompt else "<think>\n" + body
    rows, out = labelled(r1_tokenizer, Trace("t", prompt, completion))
    assert out.warnings == []
    assert len(out.input_ids) == len(out.regions) == len(out.behaviours)
    assert out.input_ids == r1_tokenizer(prompt + completion, add_special_tokens=False)["input_ids"]
    assert region_text(rows, P) == "What is 2+2?"
    assert region_text(rows, T) == "\nOkay, 2+2 is 4.\n"
    assert region_text(rows, A) == "\n\nThe answer is 4."
    assert region_text(rows, S) == (
        "<｜begin▁of▁sentence｜><｜User｜><｜Assistant｜><think></think>" + EOS
    )
    # tokens come in order prompt → think → answer, specials aside
    order = [r for _, r, _ in rows if r != S]
    assert order == sorted(order)


def test_r1_truncated_trace_is_all_thinking(r1_tokenizer):  # noqa: F811
    prompt = r1_prompt(r1_tokenizer, "What is 7*6?", think_in_prompt=False)
    rows, out = labelled(r1_tokenizer, Trace("t", prompt, "<think>\nLet me compute 7*6 = 4"))
    assert any("</think>" in w for w in out.warnings)
    assert region_text(rows, T) == "\nLet me compute 7*6 = 4"
    assert region_text(rows, A) == ""


def test_no_think_marker_means_answer(r1_tokenizer):  # noqa: F811
    prompt = r1_prompt(r1_tokenizer, "Say hi.", think_in_prompt=False)
    rows, out = labelled(r1_tokenizer, Trace("t", prompt, "Hi there, wait for it." + EOS))
    assert any("<think>" in w for w in out.warnings)
    assert region_text(rows, T) == ""
    assert region_text(rows, A) == "Hi there, wait for it."
    assert ("wait", A, "backtracking") in [(p.strip(), r, b) for p, r, b in rows]


def test_close_without_open_starts_thinking_at_completion(r1_tokenizer):  # noqa: F811
    prompt = r1_prompt(r1_tokenizer, "Q?", think_in_prompt=False)
    rows, out = labelled(r1_tokenizer, Trace("t", prompt, "I think 3.\n</think>\n\n3"))
    assert out.warnings
    assert region_text(rows, T) == "I think 3.\n"
    assert region_text(rows, A) == "\n\n3"


def test_plain_tokenizer_with_text_think_markers(plain_tokenizer):  # noqa: F811
    system = "Think step by step inside <think> </think> tags, then give the final answer."
    prompt = plain_tokenizer.apply_chat_template(
        [{"role": "system", "content": system}, {"role": "user", "content": "What?"}],
        add_generation_prompt=True, tokenize=False)
    completion = "<think>\nWait, hmm.\n</think>\n\nSo the answer is 4.<|im_end|>"
    rows, out = labelled(plain_tokenizer, Trace("t", prompt, completion))
    assert out.warnings == []
    markers = [p for p, r, _ in rows if r == S and p not in ("<|im_start|>", "<|im_end|>")]
    assert len(markers) > 2  # <think> and </think> are several plain tokens each ...
    assert "".join(markers) == "<think></think>"  # ... all labelled special
    assert region_text(rows, T) == "\nWait, hmm.\n"
    assert region_text(rows, A) == "\n\nSo the answer is 4."
    # the <think> mentioned in the system prompt is prompt text, not a thinking start
    assert "inside <think> </think> tags" in region_text(rows, P)
    assert "".join(p for p, _, b in rows if b == "backtracking") == "Wait"
    assert "".join(p for p, _, b in rows if b == "uncertainty") == "hmm"
    assert "".join(p for p, _, b in rows if b == "conclusion") == "So the answer"


def test_behaviour_phrases_on_r1_tokens(r1_tokenizer):  # noqa: F811
    prompt = r1_prompt(r1_tokenizer, "How much is it?", think_in_prompt=True)
    thinking = ("Wait, the total is 12. wait, I was awaiting the butter. Let me check it again, "
                "and double-check. Hmm, maybe another way. Actually, I should double check.\n"
                "Therefore 12.")
    completion = thinking + "\n</think>\n\nSo the answer is 12." + EOS
    rows, out = labelled(r1_tokenizer, Trace("t", prompt, completion))
    tagged = [(p, b) for p, _, b in rows if b != "none"]
    words = [p.strip() for p, _ in tagged]
    assert words.count("Wait") == 1 and words.count("wait") == 1
    assert not any("await" in w or "butter" in w for w in words)
    for phrase in ("Let me check", "double-check", "double check", "So the answer"):
        tokens = [w for w in r1_tokenizer.tokenize(" " + phrase)]
        assert len(tokens) > 1  # multi-token phrases
    assert [b for p, b in tagged if p.strip() in ("Let", "me")] == ["verification"] * 2
    assert [b for p, b in tagged if p.strip() == "So"] == ["conclusion"]
    # longest match wins: "check" inside "Let me check" / "double-check" is one verification span
    spans = find_behaviours(completion)
    checks = [completion[a:b] for a, b, c in spans if c == CODE["verification"]]
    assert checks == ["Let me check", "double-check", "double check"]
    by_code = {completion[a:b].lower(): c for a, b, c in spans}
    assert by_code["hmm"] == by_code["maybe"] == CODE["uncertainty"]
    assert by_code["another"] == CODE["exploration"]
    assert by_code["actually"] == CODE["backtracking"]
    assert by_code["therefore"] == CODE["conclusion"]
    # no tag on special tokens; answer-region tag kept (analysis filters by region)
    assert all(r != S for p, r, b in rows if b != "none")
    assert ("So", A, "conclusion") in [(p.strip(), r, b) for p, r, b in rows]
    assert out.behaviours.count(0) < len(out.behaviours)


def test_phrase_matches_across_whitespace_and_case():
    text = "LET ME\n  CHECK. checked, checking; Double-Check. so  the\nanswer"
    got = [(text[a:b], c) for a, b, c in find_behaviours(text)]
    v, c = CODE["verification"], CODE["conclusion"]
    assert got == [("LET ME\n  CHECK", v), ("Double-Check", v), ("so  the\nanswer", c)]


def test_custom_vocab_and_codes():
    vocab = {"greeting": ["hello"], "backtracking": ["wait"]}
    assert find_behaviours("Hello, wait!", vocab) == [(0, 5, 1), (7, 11, 2)]
    assert list(BEHAVIOUR_VOCAB)[0] == "backtracking" and CODE["backtracking"] == 1


def test_max_length_truncates_everything(r1_tokenizer):  # noqa: F811
    prompt = r1_prompt(r1_tokenizer, "What is 2+2?", think_in_prompt=True)
    trace = Trace("t", prompt, "Wait, 4.\n</think>\n\n4")
    full = tokenize_trace(r1_tokenizer, trace)
    cut = tokenize_trace(r1_tokenizer, trace, max_length=10)
    assert len(cut.input_ids) == len(cut.regions) == len(cut.behaviours) == 10
    assert cut.input_ids == full.input_ids[:10] and cut.regions == full.regions[:10]


def test_think_in_prompt_and_repeated_in_completion(r1_tokenizer):  # noqa: F811
    """New R1 template (``<think>\\n`` in the prompt) where the model writes ``<think>`` again."""
    prompt = r1_prompt(r1_tokenizer, "Q?", think_in_prompt=True)
    rows, out = labelled(r1_tokenizer, Trace("t", prompt, "<think>\nHmm.\n</think>\n\n5"))
    assert out.warnings == []
    assert region_text(rows, T) == "\n\nHmm.\n"
    assert region_text(rows, A) == "\n\n5"


def test_multibyte_characters_split_across_tokens(r1_tokenizer):  # noqa: F811
    """Byte-level BPE splits some characters over several tokens that share one offset span."""
    prompt = r1_prompt(r1_tokenizer, "Café? 😀", think_in_prompt=False)
    completion = "<think>\n😀wait 中文 maybe 🧮🧮\n</think>\n\n✓ 5"
    trace = Trace("t", prompt, completion)
    out = tokenize_trace(r1_tokenizer, trace)
    enc = r1_tokenizer(trace.full_text, add_special_tokens=False, return_offsets_mapping=True)
    offsets = enc["offset_mapping"]
    assert len(offsets) > len(set(map(tuple, offsets)))  # some characters span several tokens
    close_at = trace.full_text.index("</think>")
    specials = 0
    for (a, b), r, beh in zip(offsets, out.regions, out.behaviours, strict=True):
        if r == S:
            specials += 1
            continue
        expected = P if a < len(prompt) else T if a < close_at else A
        assert r == expected, (trace.full_text[a:b], Region(r))
        assert (beh != 0) == (trace.full_text[a:b].strip() in ("wait", "maybe")), (a, b)
    assert specials == 5  # BOS, <｜User｜>, <｜Assistant｜>, <think>, </think>
