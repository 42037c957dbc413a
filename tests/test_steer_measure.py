"""Steering measurements of hand-made R1 traces: thinking length, behaviour words, </think>,
answers, steered positions and KL; summaries and deltas."""

from __future__ import annotations

import math

import pytest

from thinksae.chat import build_prompt
from thinksae.steer import ThinkMarkers, Window, behaviour_counts, compare, summarize, trace_record

EOS, PAD = 151643, 151654


def test_behaviour_counts():
    counts = behaviour_counts("Wait, hmm. WAIT! Let me  check. Alternatively... await waiting")
    assert counts["wait"] == 2 and counts["hmm"] == 1 and counts["let me check"] == 1
    assert counts["alternatively"] == 1 and counts["check"] == 0 and counts["maybe"] == 0


def _tokens(tokenizer, completion: str, pads: int = 2, eos: bool = True):
    prompt = build_prompt(tokenizer, "What is 2+2?")
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    new = tokenizer(completion, add_special_tokens=False)["input_ids"]
    return [PAD] * pads + ids + new + ([EOS, PAD] if eos else []), pads + len(ids), new


def test_closed_trace(tokenizer):
    thinking = "\nOkay, so the user asks 2+2. Wait, hmm, let me check: 2+2=4. Alternatively 4.\n"
    completion = f"<think>{thinking}</think>\n\nThe answer is \\boxed{{4}}."
    tokens, width, new = _tokens(tokenizer, completion)
    rec = trace_record(tokenizer, tokens, width, ThinkMarkers(stop_ids=frozenset({EOS, PAD})),
                       Window("think", "think_end"), 4.0)
    n_think = len(tokenizer(thinking, add_special_tokens=False)["input_ids"])
    assert rec["completion"] == completion and rec["new_tokens"] == len(new)
    assert rec["think_tokens"] == n_think
    assert rec["reached_think_end"] and rec["finished"]
    assert rec["answer"] == 4.0 and rec["correct"] is True
    b = rec["behaviours"]
    assert (b["wait"], b["hmm"], b["let me check"], b["alternatively"], b["but"]) == (1, 1, 1, 1, 0)
    assert "steered_positions" not in rec


def test_unclosed_trace_has_no_answer_and_steering_numbers(tokenizer):
    completion = "<think>\nOkay, 2+2 is 4. Maybe 5"
    tokens, width, new = _tokens(tokenizer, completion, eos=False)
    steered = [i >= width for i in range(len(tokens))]
    kl = [float("nan")] * len(tokens)
    for i in range(width, len(tokens)):
        kl[i] = 0.5 if i % 2 else 0.25
    rec = trace_record(tokenizer, tokens, width, ThinkMarkers(stop_ids=frozenset({EOS})),
                       Window("prompt", "think_end"), 4.0, steered, kl)
    assert not rec["reached_think_end"] and not rec["finished"]
    assert rec["answer"] is None and rec["correct"] is False
    assert rec["think_tokens"] == len(new) - 1 and rec["behaviours"]["maybe"] == 1
    assert rec["steered_positions"] == len(new)
    values = kl[width:]
    assert rec["kl_sum"] == pytest.approx(sum(values))
    assert rec["kl_mean"] == pytest.approx(sum(values) / len(values))


def _rec(think, closed, correct, words, new, steered=None, kl=None):
    rec = {"think_tokens": think, "reached_think_end": closed, "finished": closed,
           "correct": correct, "behaviours": {"wait": words, "hmm": 0}, "new_tokens": new}
    if steered is not None:
        rec.update(steered_positions=steered, kl_sum=kl, kl_mean=kl / steered if steered else None)
    return rec


def test_summaries_and_deltas():
    base = summarize([_rec(100, True, True, 2, 120), _rec(200, False, False, 4, 200),
                      _rec(None, False, None, 0, 50)])
    assert base["traces"] == 3 and base["opened_think"] == 2
    assert base["think_tokens_mean"] == 150 and base["think_tokens_median"] == 150
    assert base["reached_think_end"] == pytest.approx(1 / 3)
    assert base["graded"] == 2 and base["accuracy"] == 0.5
    assert base["behaviour_words_per_trace"] == 2 and base["behaviours_per_trace"]["wait"] == 2
    assert "kl_mean" not in base

    steered = summarize([_rec(150, True, True, 1, 170, 10, 1.0),
                         _rec(300, True, True, 3, 310, 30, 3.0),
                         _rec(None, False, None, 0, 50, 0, 0.0)])
    assert steered["steered_positions"] == 40 and steered["kl_mean"] == pytest.approx(0.1)
    delta = compare(base, steered)
    assert delta["think_tokens_mean"] == 75 and delta["think_tokens_change"] == 0.5
    assert delta["accuracy"] == 0.5 and delta["reached_think_end"] == pytest.approx(1 / 3)
    assert math.isclose(delta["behaviour_words_per_trace"], -0.6666666, rel_tol=1e-5)

    empty = summarize([])
    assert empty["traces"] == 0 and empty["accuracy"] is None and empty["think_tokens_mean"] is None
    assert compare(empty, steered)["think_tokens_change"] is None


def test_plain_text_thinking_when_markers_are_not_tokens(tokenizer):
    """The one thinking tracker in text mode (markers found in the decoded text, as for
    Qwen2.5-Coder): tokens strictly between the marker-completing tokens, and the text between."""
    from thinksae.chat import ThinkMarkers, ThinkTracker

    def ids(text):
        return tokenizer(text, add_special_tokens=False).input_ids

    def follow(prompt, new):
        plain = ThinkMarkers(stop_ids=frozenset({tokenizer.eos_token_id}), single_token=False)
        tracker = ThinkTracker(plain, len(prompt), lambda t: tokenizer.decode(t))
        for t in prompt + new:
            tracker.push(t)
        return tracker.think_tokens, tracker.close_pos is not None, tracker.thinking_text

    body = ids("Let me add 2 and 2.\n")
    assert follow(ids("Q?<think>\n"), body + ids("</think>\n\n4")) == (
        len(body), True, "Let me add 2 and 2.\n")
    count, closed, text = follow(ids("Q?"), ids("Sure. <think>Hmm"))
    assert closed is False and text == "Hmm" and count == len(ids("Hmm"))
    assert follow(ids("Q?"), ids("No thinking here.")) == (None, False, None)


def test_divergence_counts_changed_generations_and_where_they_first_differ():
    from thinksae.steer.measure import divergence

    base = [{"new_ids": [1, 2, 3]}, {"new_ids": [4, 5]}, {"new_ids": [6, 7]}, {"new_ids": [8]}]
    steered = [{"new_ids": [1, 9, 3]}, {"new_ids": [4, 5]}, {"new_ids": [6, 7, 0]},
               {"new_ids": [5]}]
    assert divergence(base, steered) == {"changed": 0.75, "first_change_mean": 1.0}  # 1, 2, 0
    assert divergence(base, base) == {"changed": 0.0, "first_change_mean": None}
    with pytest.raises(ValueError):
        divergence(base, steered[:2])
