"""The monitor engine: watch-list values, generation, regions, actions, the alert log."""

from __future__ import annotations

import threading

import pytest
import torch
from test_monitor_helpers import HOOKPOINT, QUESTION, tiny_sae

from thinksae.chat import PREFILL_TAIL, ThinkMarkers, ThinkTracker, build_prompt
from thinksae.errors import ThinksaeError
from thinksae.models import capture, decoder_stack, resolve_hookpoint
from thinksae.monitor import (
    AlertEvent,
    DoneEvent,
    Monitor,
    TokenEvent,
    WatchList,
    read_alerts,
)

WATCH = [0, 5, 17, 42, 99, 128, 200, 255]


@pytest.fixture(scope="module")
def sae():
    return tiny_sae()


def tokens(events):
    return [e for e in events if isinstance(e, TokenEvent)]


def test_watch_list_values(sae):
    """Token by token (as the monitor encodes): ``topk`` is ``Sae.encode`` at the watched
    features; ``pre`` is relu of the watched rows' pre-activation, bit for bit the ``topk`` value
    wherever the feature is in the top k."""
    torch.manual_seed(0)
    topk, pre = WatchList(sae, WATCH), WatchList(sae, WATCH, "pre")
    hits = 0
    with torch.no_grad():
        for _ in range(64):
            x = torch.randn(1, 64) * 3
            full_pre = sae.pre_acts(x)
            assert torch.equal(pre.values(x), full_pre[:, WATCH].relu())
            dense = sae.dense_acts(x)[:, WATCH]
            assert torch.equal(topk.values(x), dense)
            active = dense > 0
            hits += int(active.sum())
            assert torch.equal(pre.values(x)[active], dense[active])
    assert hits > 0


def test_watch_list_refuses_unknown_features(sae):
    with pytest.raises(ThinksaeError, match="feature 256 is not a latent"):
        WatchList(sae, [1, 256])


def test_greedy_tokens_and_activations_match_the_model(tiny_model, tokenizer, sae):
    mon = Monitor(tiny_model, tokenizer, sae, HOOKPOINT, WATCH)
    events = list(mon.watch(QUESTION, max_new_tokens=6))
    toks = tokens(events)
    assert isinstance(events[-1], DoneEvent) and events[-1].tokens == len(toks) == 6
    prompt = tokenizer(build_prompt(tokenizer, QUESTION), add_special_tokens=False,
                       return_tensors="pt").input_ids
    ref = tiny_model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=6,
                              do_sample=False, pad_token_id=0)[0, prompt.shape[1]:]
    assert [e.token_id for e in toks] == ref.tolist()
    assert [e.position for e in toks] == list(range(prompt.shape[1], prompt.shape[1] + 6))
    full = torch.cat([prompt[0], ref])[None]
    x = capture(tiny_model, HOOKPOINT, full)[HOOKPOINT][0, prompt.shape[1]:]
    got = torch.tensor([[e.acts[f] for f in WATCH] for e in toks])
    torch.testing.assert_close(got, sae.dense_acts(x)[:, WATCH], atol=1e-4, rtol=1e-4)
    pre = Monitor(tiny_model, tokenizer, sae, HOOKPOINT, WATCH, value="pre")
    got = torch.tensor([[e.acts[f] for f in WATCH] for e in tokens(pre.watch(QUESTION, max_new_tokens=6))])
    torch.testing.assert_close(got, WatchList(sae, WATCH, "pre").values(x), atol=1e-4, rtol=1e-4)


def test_sampled_text_and_regions(tiny_model, tokenizer, sae):
    mon = Monitor(tiny_model, tokenizer, sae, HOOKPOINT, [1], do_sample=True, temperature=1.0,
                  top_p=1.0, seed=3, think_prefill=True)
    events = list(mon.watch(QUESTION, max_new_tokens=12))
    again = list(mon.watch(QUESTION, max_new_tokens=12))
    assert [e.token_id for e in tokens(events)] == [e.token_id for e in tokens(again)]
    done = events[-1]
    assert "".join(e.text for e in tokens(events)) == done.text
    assert all(e.region in ("think", "special") for e in tokens(events))


def _regions(tokenizer, prompt: list[int], seq: list[int], special=()) -> list[str]:
    """Regions of ``seq`` generated after ``prompt``, as the monitor labels them."""
    markers = ThinkMarkers.from_tokenizer(tokenizer, sentences=False, special_ids=special)
    tracker = ThinkTracker(markers, len(prompt), lambda ids: tokenizer.decode(ids))
    for t in prompt:
        tracker.push(t)
    return [tracker.push(t) for t in seq]


def test_region_tracker(tokenizer):
    open_id, close_id = tokenizer.convert_tokens_to_ids(["<think>", "</think>"])
    word = tokenizer("hello", add_special_tokens=False).input_ids[0]
    seq = [word, open_id, word, word, close_id, word]
    assert _regions(tokenizer, [1, 2, 3], seq) == [
        "answer", "special", "think", "think", "special", "answer"]
    assert _regions(tokenizer, [1, open_id, 2], [word]) == ["think"]
    assert PREFILL_TAIL == 4 and _regions(tokenizer, [open_id, 1, 2, 3, 4], [word]) == ["answer"]


class _PlainThink:
    """The R1 tokenizer as a tokenizer without <think>/</think> tokens would look (text only)."""

    def __init__(self, tok):
        self.tok = tok
        self.eos_token_id = tok.eos_token_id

    def convert_tokens_to_ids(self, tokens):
        return [None for _ in tokens]

    def decode(self, ids):
        return self.tok.decode(ids)


def test_region_tracker_follows_plain_text_markers(tokenizer):
    open_id, close_id = tokenizer.convert_tokens_to_ids(["<think>", "</think>"])
    word = tokenizer("hello", add_special_tokens=False).input_ids[0]
    plain = _PlainThink(tokenizer)
    seq = [word, open_id, word, word, close_id, word]
    assert _regions(plain, tokenizer("Question?", add_special_tokens=False).input_ids, seq) == [
        "answer", "answer", "think", "think", "think", "answer"]
    prefilled = tokenizer("Q?<think>\n", add_special_tokens=False).input_ids
    assert _regions(plain, prefilled, [word]) == ["think"]


def test_stop_action_stops_generation_and_logs(tiny_model, tokenizer, sae, tmp_path):
    log = tmp_path / "alerts.jsonl"
    hooks_before = _hooks(tiny_model)
    rules = [{"name": "watch-5", "feature": 5, "threshold": 0.0, "severity": "info"},
             {"name": "halt", "feature": 17, "threshold": 0.0, "consecutive": 3,
              "action": "stop", "severity": "critical", "message": "stopping"}]
    mon = Monitor(tiny_model, tokenizer, sae, HOOKPOINT, rules=rules, alert_log=log)
    events = list(mon.watch(QUESTION, max_new_tokens=20))
    done = events[-1]
    assert (done.reason, done.rule, done.tokens) == ("stopped", "halt", 3)
    alerts = [e for e in events if isinstance(e, AlertEvent)]
    assert [(a.rule, a.step) for a in alerts] == [("watch-5", 0), ("halt", 2)]
    logged = read_alerts(log)
    assert [(a["rule"], a["step"], a["severity"]) for a in logged] == [
        ("watch-5", 0, "info"), ("halt", 2, "critical")]
    assert logged[1]["message"] == "stopping" and logged[1]["run_id"] == done.run_id
    assert logged[0]["prompt"] == QUESTION
    # a second run appends
    list(mon.watch(QUESTION, max_new_tokens=20))
    assert len(read_alerts(log)) == 4
    assert _hooks(tiny_model) == hooks_before


def _hooks(model) -> tuple[list, list]:
    """Hooks on the hookpoint and the decoder stack (transformers may hold its own there)."""
    return (list(resolve_hookpoint(model, HOOKPOINT)._forward_hooks.values()),
            list(decoder_stack(model)._forward_pre_hooks.values()))


def test_steer_action_switches_steering_on(tiny_model, tokenizer, sae):
    hooks_before = _hooks(tiny_model)
    base = Monitor(tiny_model, tokenizer, sae, HOOKPOINT, [5])
    ref = tokens(list(base.watch(QUESTION, max_new_tokens=6)))
    rules = [{"name": "steer-it", "feature": 5, "threshold": 0.0, "once": True,
              "action": {"steer": "5=+400"}}]
    mon = Monitor(tiny_model, tokenizer, sae, HOOKPOINT, rules=rules)
    events = list(mon.watch(QUESTION, max_new_tokens=6))
    got = tokens(events)
    alerts = [e for e in events if isinstance(e, AlertEvent)]
    assert [(a.rule, a.step, a.action) for a in alerts] == [("steer-it", 0, "steer")]
    assert got[0].token_id == ref[0].token_id and got[0].acts == ref[0].acts
    assert [e.token_id for e in got[1:]] != [e.token_id for e in ref[1:]]
    # steering ends with the generation
    assert _hooks(tiny_model) == hooks_before
    again = tokens(list(base.watch(QUESTION, max_new_tokens=6)))
    assert [e.token_id for e in again] == [e.token_id for e in ref]


def test_cancel_and_overrides(tiny_model, tokenizer, sae):
    mon = Monitor(tiny_model, tokenizer, sae, HOOKPOINT, [1, 2])
    cancel = threading.Event()
    it = mon.watch(QUESTION, max_new_tokens=50, cancel=cancel, features=[7])
    first = next(it)
    assert set(first.acts) == {7}
    cancel.set()
    rest = list(it)
    assert rest[-1].reason == "cancelled" and rest[-1].tokens == 1
    ev = next(mon.watch(QUESTION, rules=[{"name": "a", "feature": 9, "threshold": 99}]))
    assert list(ev.acts) == [1, 2, 9]


def test_bad_arguments_fail_before_generating(tiny_model, tokenizer, sae):
    mon = Monitor(tiny_model, tokenizer, sae, HOOKPOINT, [1])
    with pytest.raises(ThinksaeError, match="written for value pre, but the monitor watches topk"):
        mon.watch(QUESTION, rules=[{"name": "t", "feature": 1, "threshold": 1, "value": "pre"}])
    with pytest.raises(ThinksaeError, match="--value must be one of topk, pre"):
        mon.watch(QUESTION, value="acts")
    with pytest.raises(ThinksaeError, match="feature 300 is not a latent"):
        mon.watch(QUESTION, features=[300])
    with pytest.raises(ThinksaeError, match="rule 1 \\('x'\\): field 'threshold'"):
        Monitor(tiny_model, tokenizer, sae, HOOKPOINT, rules=[{"name": "x", "feature": 1}])
    with pytest.raises(ThinksaeError, match="unknown hookpoint"):
        Monitor(tiny_model, tokenizer, sae, "layer.1", [1])
    wide = tiny_sae()
    wide.d_in = 65
    with pytest.raises(ThinksaeError, match="d_in 65"):
        list(Monitor(tiny_model, tokenizer, wide, HOOKPOINT, [1]).watch(QUESTION, max_new_tokens=2))
