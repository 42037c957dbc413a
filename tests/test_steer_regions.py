"""Smax from the baseline: the max over the steering window's positions in the SAE's training
regions (labelled as the store labels them), never special tokens unless trained on them."""

from __future__ import annotations

import pytest
import torch
from conftest import make_traces

from thinksae.corpus import Region, Trace, tokenize_trace
from thinksae.errors import ThinksaeError
from thinksae.steer import ThinkMarkers, Window, max_mask, position_regions, trained_regions


def test_trained_regions_from_the_report_card():
    assert trained_regions({"training": {"regions": "think, answer"}}) == ("think", "answer")
    assert trained_regions({"training": {"regions": "prompt,special"}}) == ("prompt", "special")
    for card in ({}, {"training": {"regions": None}}, {"training": {}}):
        assert trained_regions(card) == ("prompt", "think", "answer")  # never special tokens
    with pytest.raises(ThinksaeError, match=r"unknown training regions \['thinking'\]"):
        trained_regions({"training": {"regions": "thinking"}})


def test_position_regions_label_like_the_store(tokenizer):
    for raw in make_traces(tokenizer)[:3]:
        trace = Trace(raw["id"], raw["prompt"], raw["completion"])
        expected = tokenize_trace(tokenizer, trace)
        prompt_len = len(tokenizer(raw["prompt"], add_special_tokens=False)["input_ids"])
        got = position_regions(tokenizer, expected.input_ids, prompt_len)
        assert got == expected.regions
        assert {Region.PROMPT, Region.THINK, Region.ANSWER, Region.SPECIAL} <= set(got)


def test_max_mask_is_the_window_in_the_trained_regions(tokenizer):
    markers = ThinkMarkers.from_tokenizer(tokenizer, sentences=False)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is 2+2?"}],
                                           add_generation_prompt=True, tokenize=False)
    p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    body = tokenizer("<think>\nIt is 4.\n</think>\n\n4", add_special_tokens=False)["input_ids"]
    eos, pad = tokenizer.eos_token_id, 151654
    row = [pad, pad] + p_ids + body + [eos, pad]
    width = 2 + len(p_ids)
    ids = torch.tensor([row])
    real = torch.tensor([[False, False] + [True] * (len(row) - 3) + [False]])
    close = row.index(151649)
    think = list(range(width + 1, close))  # after <think>, before </think>
    got = max_mask(tokenizer, ids, real, width, Window("think", "none"), markers, ("think",))
    assert torch.nonzero(got[0]).flatten().tolist() == think
    # end at </think>, all non-special regions: the same; with the answer: up to EOS, excluded
    got = max_mask(tokenizer, ids, real, width, Window("prompt", "think_end"), markers,
                   ("prompt", "think", "answer"))
    assert torch.nonzero(got[0]).flatten().tolist() == think
    got = max_mask(tokenizer, ids, real, width, Window("think", "none"), markers,
                   ("think", "answer"))
    assert torch.nonzero(got[0]).flatten().tolist() == think + list(range(close + 1, len(row) - 2))
    # special tokens only where the SAE was trained on them: <think>, </think>
    got = max_mask(tokenizer, ids, real, width, Window("think", "none"), markers, ("special",))
    assert torch.nonzero(got[0]).flatten().tolist() == [width, close]
