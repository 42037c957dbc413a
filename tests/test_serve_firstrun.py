"""The workbench's first run on a demo-shaped run (issue 30): the steer form's defaults come from
the run and its tokenizer (here one without single <think> tokens, as the offline demo's
Qwen2.5-Coder), try text wraps the text in the chat template and marks the attention sinks by
thinksae's one rule with the store's median, and the index opens on live features by a score
with each feature's trigger tokens and context."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from helpers_serve import (
    DEMO_SECTIONS,
    DEMO_SYSTEM_PROMPT,
    PLAIN_WHY,
    make_run,
    plain_think_markers,
)
from test_monitor_helpers import HOOKPOINT, QUESTION, tiny_sae

from thinksae.chat import build_prompt
from thinksae.corpus.segment import control_token_ids
from thinksae.features.card import feature_info
from thinksae.serve import ServeConfig, create_app
from thinksae.serve.defaults import index_sort, steer_defaults
from thinksae.serve.trytext import Encoded, strongest
from thinksae.store import ActivationStore

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402


@pytest.fixture(scope="module")
def plain_markers():
    with plain_think_markers():
        yield


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_model_dir, corpus_path, tiny_model, tokenizer, one_thread):
    return make_run(tmp_path_factory.mktemp("firstrun") / "run", tiny_model_dir, corpus_path,
                    tiny_model, tokenizer, store=True)


def app_over(run_dir, tiny_model, tokenizer):
    cfg = ServeConfig(run=str(run_dir), max_new_tokens=8, max_text_tokens=64)
    return create_app(run_dir, tiny_model, tokenizer, tiny_sae(), cfg)


@pytest.fixture(scope="module")
def client(run_dir, tiny_model, tokenizer, plain_markers):
    with TestClient(app_over(run_dir, tiny_model, tokenizer)) as c:
        yield c


def copy_run(run_dir, tmp_path, sections=None, store=True):
    """The run copied (without its store when ``store`` is False), its config given
    ``sections``."""
    root = tmp_path / "run"
    shutil.copytree(run_dir, root, ignore=None if store else shutil.ignore_patterns("store"))
    config = json.loads((root / "run_config.json").read_text())
    (root / "run_config.json").write_text(json.dumps({**config, **(sections or {})}))
    return root


def frames(response) -> list[dict]:
    """The server-sent events of a response (one data line each)."""
    return [json.loads(line[5:]) for line in response.text.splitlines() if line.startswith("data:")]


# -- the steer form's defaults ---------------------------------------------------------------

@pytest.mark.parametrize("config,single,want", [
    ({}, True, ("sentence", "think_end", False, None, 64)),
    ({}, False, ("prompt", "none", False, None, 64)),
    (DEMO_SECTIONS, False, ("prompt", "none", True, DEMO_SYSTEM_PROMPT, 48)),
    (DEMO_SECTIONS, True, ("prompt", "none", True, DEMO_SYSTEM_PROMPT, 48)),
    ({"steer": {"start": "sentence", "end": "think_end"}}, False, ("prompt", "none", False, None, 64)),
    ({"steer": {"start": "think", "max_new_tokens": 500}}, True, ("think", "think_end", False, None, 100)),
    ({"steer": None, "corpus": {"think_prefill": True, "system_prompt": "S"}}, True,
     ("sentence", "think_end", True, "S", 64)),
])
def test_steer_defaults(config, single, want):
    d = steer_defaults(config, single, 100)
    assert (d.start, d.end, d.think_prefill, d.system_prompt, d.max_new_tokens) == want


def test_steer_defaults_say_why():
    assert steer_defaults({}, False, 100).why == PLAIN_WHY
    assert "stops at </think>" in steer_defaults({}, True, 100).why
    assert steer_defaults(DEMO_SECTIONS, False, 100).why == (
        "from the run's steer settings; system prompt and think prefill as the run's steer had them")
    # the run's think window cannot open on a plain tokenizer: the tokenizer's default, and why
    assert steer_defaults({"steer": {"start": "sentence"}}, False, 100).why == PLAIN_WHY
    corpus = steer_defaults({"corpus": {"think_prefill": True}}, True, 100).why
    assert corpus.endswith("as the run's corpus had them")


def test_info_gives_the_defaults_and_a_first_example(client, run_dir):
    d = client.get("/api/info").json()["steer_defaults"]
    assert {k: d[k] for k in ("start", "end", "think_prefill", "system_prompt", "max_new_tokens")} \
        == {"start": "prompt", "end": "none", "think_prefill": False, "system_prompt": None,
            "max_new_tokens": 8}
    assert d["why"] == PLAIN_WHY and d["think_tokens"] is False
    first = json.loads((run_dir / "corpus" / "traces.jsonl").read_text().splitlines()[0])
    assert d["prompt"] == first["question"]
    rows = client.get("/api/features?limit=1000").json()["rows"]
    score = index_sort(rows)["score"]
    live = [r for r in rows if r["label"] not in ("dead", "rare", "formatting")
            and r[score] is not None and r["max_act"] > 0]
    best = max(live, key=lambda r: (r[score], -r["feature"]))
    assert d["features"] == f"{best['feature']}=2max"


def test_first_steer_with_the_defaults_steers_every_token(client):
    """The request the page sends on its first click (only prompt and features) is steered with
    the defaults: on this tokenizer every generated token; the old defaults are refused."""
    d = client.get("/api/info").json()["steer_defaults"]
    r = client.post("/api/steer", json={"prompt": d["prompt"], "features": d["features"]})
    assert r.status_code == 200, r.text
    events = frames(r)
    assert events[0]["window"] == {"start": "prompt", "end": "none"}
    done = events[-1]
    assert done["type"] == "done" and len(done["steered"]["tokens"]) == 8
    assert all(t["steered"] for t in done["steered"]["tokens"]) and done["steered_positions"] >= 8
    bad = client.post("/api/steer", json={"prompt": QUESTION, "features": "3=off",
                                          "start": "sentence", "end": "think_end"})
    assert bad.status_code == 422 and "use start prompt, end none" in bad.json()["error"]


def test_demo_steer_settings_prompt_the_model_as_the_run_did(run_dir, tmp_path, tiny_model,
                                                             tokenizer, plain_markers):
    root = copy_run(run_dir, tmp_path, DEMO_SECTIONS)
    with TestClient(app_over(root, tiny_model, tokenizer)) as c:
        d = c.get("/api/info").json()["steer_defaults"]
        assert (d["start"], d["end"], d["think_prefill"], d["system_prompt"]) == \
            ("prompt", "none", True, DEMO_SYSTEM_PROMPT)
        r = c.post("/api/steer", json={"prompt": QUESTION, "features": "3=off",
                                       "max_new_tokens": 2})
        start = frames(r)[0]
        prompt = build_prompt(tokenizer, QUESTION, DEMO_SYSTEM_PROMPT, True)
        assert start["prompt_tokens"] == len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
        assert prompt.endswith("<think>\n") and DEMO_SYSTEM_PROMPT in prompt


# -- try text: template and sinks ------------------------------------------------------------

def hidden_at_hookpoint(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids]), output_hidden_states=True).hidden_states[2][0]


def lower_median(values) -> float:
    values = np.sort(np.asarray(values, dtype=np.float64))
    return float(values[(len(values) - 1) // 2])


def test_sinks_by_the_store_median(client, run_dir, tiny_model, tokenizer):
    text = "The shop sells pencils at 3 dollars each."
    got = client.post("/api/encode", json={"text": text}).json()
    ids = got["ids"]
    assert got["tokens"][0] == tokenizer.bos_token and got["parts"][0] == "template"
    store = ActivationStore(run_dir / "store" / HOOKPOINT)
    median = lower_median(store.norms[~store.special])  # the store's non-special tokens
    assert got["sink_rule"] == {"norm_multiple": 10.0, "median_norm": pytest.approx(median),
                                "reference": "store"}
    norms = hidden_at_hookpoint(tiny_model, ids).norm(dim=-1).tolist()
    special = [i in control_token_ids(tokenizer) for i in ids]
    assert got["sink"] == [s or n > 10 * median for s, n in zip(special, norms)]
    assert got["sink"][0] and got["sink_reason"][0] == "special"
    kept = [t for t in range(len(ids)) if got["parts"][t] == "text" and not got["sink"][t]]
    assert kept and 0 not in kept


def test_a_planted_norm_sink_is_marked_and_left_out_of_the_ranking(client, tiny_model):
    text = "The shop sells pencils at 3 dollars each."
    plain = client.post("/api/encode", json={"text": text}).json()
    p = plain["parts"].index("text") + 2  # an ordinary word of the text

    def plant(module, args, output):  # the residual at position p 50x larger, as a sink's
        hidden = (output[0] if isinstance(output, tuple) else output).clone()
        if hidden.shape[1] > p:
            hidden[:, p] *= 50
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    handle = tiny_model.model.layers[1].register_forward_hook(plant)
    try:
        got = client.post("/api/encode", json={"text": text}).json()
    finally:
        handle.remove()
    assert got["sink_reason"][p] == "norm" and not plain["sink"][p]
    assert got["norms"][p] == pytest.approx(50 * plain["norms"][p], rel=1e-4)
    assert got["top"][p][0][1] > max(a for t in plain["top"] for _, a in t[:1])
    assert all(s["position"] != p for s in got["strongest"])
    assert got["strongest"] == strongest(Encoded(got["ids"], got["tokens"], got["top"],
                                                 got["parts"], got["norms"], got["sink_reason"],
                                                 None, got["wrapped"]))


def test_without_a_store_the_median_is_the_texts(run_dir, tmp_path, tiny_model, tokenizer,
                                                 plain_markers):
    root = copy_run(run_dir, tmp_path, store=False)
    text = "Tom has 7 apples and eats 2."
    with TestClient(app_over(root, tiny_model, tokenizer)) as c:
        got = c.post("/api/encode", json={"text": text}).json()
    norms = hidden_at_hookpoint(tiny_model, got["ids"]).norm(dim=-1).tolist()
    special = [i in control_token_ids(tokenizer) for i in got["ids"]]
    median = lower_median([n for n, s in zip(norms, special) if not s])
    assert got["sink_rule"]["reference"] == "text"
    assert got["sink_rule"]["median_norm"] == pytest.approx(median, rel=1e-5)
    assert got["sink"] == [s or n > 10 * median for s, n in zip(special, norms)]


def test_strongest_by_hand():
    """Three tokens: a special one (sink), a template one and two text tokens."""
    top = [[(1, 90.0), (2, 5.0)], [(3, 7.0)], [(2, 4.0), (4, 4.0)], [(4, 6.0), (5, 0.0)],
           [(2, 3.0)]]
    enc = Encoded([0] * 5, ["<s>", "\n", "a", "b", "c"], top,
                  ["template", "template", "text", "text", "text"], [0.0] * 5,
                  ["special", None, None, None, None], None, "chat template")
    # kept: tokens 2, 3, 4 -> f2: max(4, 3) = 4 at 2; f4: max(4, 6) = 6 at 3; f5: 0 (not a firing)
    assert strongest(enc) == [{"feature": 4, "act": 6.0, "position": 3},
                              {"feature": 2, "act": 4.0, "position": 2}]
    assert strongest(enc, n=1) == [{"feature": 4, "act": 6.0, "position": 3}]


# -- the index -------------------------------------------------------------------------------

def test_index_sort_choice():
    live = {"label": "narrow"}
    assert index_sort([{**live, "reason_score": -0.1, "think_rate_ratio_lo": 2.0},
                       {"label": "dead", "reason_score": 0.5}])["score"] == "think_rate_ratio_lo"
    assert index_sort([{**live, "reason_score": 0.01}])["score"] == "reason_score"
    assert index_sort([{**live, "reason_score": 0.0, "think_rate_ratio_lo": None}])["score"] == "freq"


def test_index_opens_on_live_features_by_the_score_with_contexts(client, run_dir, tokenizer):
    every = client.get("/api/features?limit=1000").json()["rows"]
    got = client.get("/api/features?sort=default&live=1&limit=1000").json()
    score = index_sort(every)["score"]
    assert got["sort"] == score and got["dir"] == "desc" and got["default_sort"]["score"] == score
    live = [r for r in every if r["label"] not in ("dead", "rare")]
    assert got["total"] == len(live) and got["dead_or_rare"] == len(every) - len(live)
    present = sorted((r for r in live if r[score] is not None),
                     key=lambda r: (r[score], r["feature"]), reverse=True)
    assert [r["feature"] for r in got["rows"]][:len(present)] == [r["feature"] for r in present]
    special = {tokenizer.decode([i], skip_special_tokens=False) for i in control_token_ids(tokenizer)}
    on_special = 0
    for r in got["rows"]:
        _, det = feature_info(run_dir / "features", r["feature"])
        on_special += det["contexts"][0]["trigger_token"] in special
        # the strongest example not on a special token (an attention sink) among the first five,
        # else the strongest
        top = next((c for c in det["contexts"][:5] if c["trigger_token"] not in special),
                   det["contexts"][0])
        w = top["trigger"]
        assert r["context"] == {"left": "".join(top["tokens"][max(0, w - 8):w]),
                                "trigger": top["trigger_token"],
                                "right": "".join(top["tokens"][w + 1:w + 5]),
                                "act": pytest.approx(top["act"], rel=1e-3)}
        assert [(t["text"], t["share"]) for t in r["top_tokens"]] == \
            [(t["text"], pytest.approx(t["share"], rel=1e-2)) for t in det["tokens"][:3]]
    assert on_special == 0  # the analysis never keeps a sink (special token) as a top example
    assert client.get("/api/features?live=2").status_code == 422


def test_a_context_on_a_special_token_gives_way_to_the_next_example(run_dir):
    """A feature whose strongest example's trigger is made special shows its next example."""
    from thinksae.features.stats import FeatureStats
    from thinksae.serve.snippets import feature_snippets

    stats = FeatureStats.load(run_dir / "features" / "stats.safetensors")
    w = stats.meta["window"]
    triggers = stats.tensors["top_ctx"][:, :, w]
    f = next(f for f in range(len(triggers)) if stats.tensors["top_val"][f, 1] >= 0
             and triggers[f, 0] != triggers[f, 1])
    first = int(triggers[f, 0])
    _, det = feature_info(run_dir / "features", f)
    assert feature_snippets(run_dir / "features")[f]["context"]["trigger"] == \
        det["contexts"][0]["trigger_token"]
    moved = feature_snippets(run_dir / "features", frozenset({first}))[f]["context"]
    assert moved["trigger"] == det["contexts"][1]["trigger_token"]
    assert moved["act"] == pytest.approx(det["contexts"][1]["act"], rel=1e-3)
