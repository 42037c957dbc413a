"""The workbench's HTTP API over a small run (tiny model): the index (search, sort, filter,
verdicts, explanations), try text (exactly Sae.encode), steer side by side (exactly the steer
module's batched generation, KL and steered positions), save as sweep (the CLI's steer.json),
bad requests, one model user at a time, client disconnect, the CLI."""

from __future__ import annotations

import json
import threading
import time

import pytest
import torch
from helpers_serve import make_run
from test_monitor_helpers import HOOKPOINT, QUESTION, tiny_sae

from thinksae.cli import build_parser, main
from thinksae.serve import ServeConfig, create_app

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_model_dir, corpus_path, tiny_model, tokenizer, one_thread):
    return make_run(tmp_path_factory.mktemp("serve") / "run", tiny_model_dir, corpus_path,
                    tiny_model, tokenizer)


@pytest.fixture(scope="module")
def app(run_dir, tiny_model, tokenizer):
    cfg = ServeConfig(run=str(run_dir), max_new_tokens=40, max_text_tokens=64, max_body=4096)
    return create_app(run_dir, tiny_model, tokenizer, tiny_sae(), cfg)


@pytest.fixture(scope="module")
def client(app):
    with TestClient(app) as c:
        yield c


def events(response) -> list[dict]:
    out = []
    for frame in response.text.split("\n\n"):
        data = [line[5:] for line in frame.splitlines() if line.startswith("data:")]
        if data:
            out.append(json.loads("\n".join(data)))
    return out


def rows_of(client, query: str = "") -> dict:
    r = client.get("/api/features?limit=1000&" + query)
    assert r.status_code == 200, r.text
    return r.json()


def test_pages_and_info(client):
    info = client.get("/api/info").json()
    assert info["hookpoint"] == HOOKPOINT and info["num_latents"] == 256 and info["k"] == 8
    assert info["features_analysed"] == 256 and info["busy"] is False
    defaults = info["steer_defaults"]  # the R1 tokenizer: single <think> tokens, no run sections
    assert (defaults["start"], defaults["end"], defaults["think_prefill"]) == \
        ("sentence", "think_end", False) and defaults["think_tokens"] is True
    for path, needle in (("/", "features"), ("/try", "try text"), ("/steer", "steer"),
                         ("/monitor/", "thinksae monitor"), ("/run/index.html", "run report"),
                         ("/static/common.js", "postJSON"), ("/monitor/sse.js", "postEvents")):
        r = client.get(path)
        assert r.status_code == 200 and needle in r.text, path
    for page in ("/", "/try", "/steer"):  # the event-stream reader is the monitor's, loaded first
        text = client.get(page).text
        assert 0 <= text.index('src="/monitor/sse.js"') < text.index('src="/static/common.js"'), page
    assert client.get("/monitor/api/info").json()["hookpoint"] == HOOKPOINT
    assert client.get("/features/index.html", follow_redirects=False).headers["location"] == "/"


def test_index_search_sort_and_filter(client, run_dir):
    every = rows_of(client)
    assert every["total"] == 256 and {"freq", "max_act", "reason_score"} <= set(every["scores"])
    by_verdict = rows_of(client, "q=token%20detector")["rows"]
    assert [r["feature"] for r in by_verdict] == [3]
    assert rows_of(client, "verdict=reasoning%20candidate")["rows"][0]["feature"] == 5
    fired = [r for r in every["rows"] if r["top_token_text"]]
    token = fired[0]["top_token_text"]
    hits = rows_of(client, "q=" + token)["rows"]
    assert fired[0]["feature"] in [r["feature"] for r in hits]
    assert all(any(token.lower() in str(r.get(k) or "").lower()
                   for k in ("top_token_text", "label", "verdict", "explanation")) for r in hits)
    label = fired[0]["label"]
    assert {r["label"] for r in rows_of(client, "label=" + label)["rows"]} == {label}
    ranked = rows_of(client, "sort=freq&dir=desc")["rows"]
    expected = sorted(every["rows"], key=lambda r: (r["freq"], r["feature"]), reverse=True)
    assert [r["feature"] for r in ranked] == [r["feature"] for r in expected]
    lo = sorted(r["max_act"] for r in every["rows"] if r["max_act"])[-5]
    bounded = rows_of(client, f"min.max_act={lo}&max.max_act=1e9")["rows"]
    assert sorted(r["feature"] for r in bounded) == sorted(
        r["feature"] for r in every["rows"] if r["max_act"] is not None and r["max_act"] >= lo)
    page = rows_of(client, "sort=freq&dir=desc&offset=2&limit=3")
    assert page["total"] == 256 and [r["feature"] for r in page["rows"]] == \
        [r["feature"] for r in ranked[2:5]]


@pytest.mark.parametrize("query,needle", [
    ("sort=colour", "sort: no column 'colour'"), ("min.colour=1", "no score 'colour'"),
    ("min.freq=abc", "bad number"), ("limit=0", "limit in 1..1000"), ("dir=up", "dir: asc or desc"),
])
def test_index_bad_queries(client, query, needle):
    r = client.get("/api/features?" + query)
    assert r.status_code == 422 and needle in r.json()["error"]


def test_explanations_are_searched_when_the_stage_exists(run_dir, tiny_model, tokenizer,
                                                         monkeypatch):
    def read_explanations(folder):
        assert folder == run_dir / "explain"
        return {7: {"explanation": "counts apples"}, 9: "mentions pencils"}

    import thinksae.serve.workbench as workbench

    monkeypatch.setattr(workbench, "read_explanations", read_explanations)
    (run_dir / "explain").mkdir(exist_ok=True)
    try:
        with TestClient(create_app(run_dir, tiny_model, tokenizer, tiny_sae())) as c:
            assert [r["feature"] for r in rows_of(c, "q=APPLES")["rows"]] == [7]
            assert rows_of(c, "q=pencils")["rows"][0]["explanation"] == "mentions pencils"
            assert "counts apples" in c.get("/features/feature-7.html").text
    finally:
        (run_dir / "explain").rmdir()


def test_explanations_absent_show_nothing(client):
    assert all(r["explanation"] is None for r in rows_of(client)["rows"])


def test_feature_page_and_data(client):
    data = client.get("/api/features/3").json()
    assert data["row"]["feature"] == 3 and data["row"]["verdict"] == "token detector"
    assert data["verdict"]["verdict"] == "token detector" and "contexts" in data["details"]
    page = client.get("/features/feature-3.html").text
    assert "thinksae workbench" in page and "token detector" in page and "/try?feature=3" in page
    assert client.get("/features/feature-256.html").status_code == 404
    assert client.get("/api/features/abc").status_code == 422


def test_encode_is_exactly_sae_encode(client, tiny_model, tokenizer):
    from thinksae.chat import build_prompt

    text = "Wait, let me check: 15% of 80 is 12.\nTherefore the answer is 12."
    r = client.post("/api/encode", json={"text": text})
    assert r.status_code == 200, r.text
    got = r.json()
    # wrapped in the run's chat template (this run: no system prompt, no think prefill)
    ids = tokenizer(build_prompt(tokenizer, text), add_special_tokens=False)["input_ids"]
    body = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert got["ids"] == ids and got["tokens"][0] == tokenizer.bos_token and got["k"] == 8
    assert got["wrapped"] == "chat template" and ids[2:2 + len(body)] == body
    assert got["parts"] == ["template"] * 2 + ["text"] * len(body) + \
        ["template"] * (len(ids) - 2 - len(body))
    with torch.no_grad():
        hidden = tiny_model(torch.tensor([ids]), output_hidden_states=True).hidden_states[2][0]
        acts, idx = tiny_sae().encode(hidden)
    for t in range(len(ids)):
        want = sorted(zip(idx[t].tolist(), acts[t].tolist()), key=lambda p: -p[1])
        assert [tuple(p) for p in got["top"][t]] == want
    assert got["norms"] == pytest.approx(hidden.norm(dim=-1).tolist(), rel=1e-5)
    as_given = client.post("/api/encode", json={"text": text, "template": False}).json()
    assert as_given["ids"] == tokenizer(text)["input_ids"] and as_given["wrapped"] == "as given"
    plain = client.post("/api/encode", json={"text": text, "template": False,
                                             "special_tokens": False}).json()
    assert plain["ids"] == tokenizer(text)["input_ids"][1:] and set(plain["parts"]) == {"text"}


@pytest.mark.parametrize("kwargs,status,needle", [
    ({"content": b"{nope", "headers": {"content-type": "application/json"}}, 400, "not valid JSON"),
    ({"json": {"txt": "hi"}}, 422, 'expected {"text"'),
    ({"json": {"text": "hi", "special_tokens": "yes"}}, 422, 'expected {"text"'),
    ({"json": {"text": "hi", "template": 1}}, 422, 'expected {"text"'),
    ({"json": {"text": ""}, "special": False}, 422, "no tokens"),
    ({"json": {"text": "word " * 100}}, 422, "at most 64"),
    ({"json": {"text": "x" * 5000}}, 413, "over 4096 bytes"),
])
def test_encode_bad_requests(client, kwargs, status, needle):
    kwargs.pop("special", None)
    if kwargs.get("json") == {"text": ""}:
        kwargs["json"]["special_tokens"] = False
    r = client.post("/api/encode", **kwargs)
    assert r.status_code == status, r.text
    assert needle in r.json()["error"] and "\n" not in r.json()["error"]
    assert client.get("/api/info").json()["busy"] is False


def steer(client, **body):
    return client.post("/api/steer", json={"prompt": QUESTION, "start": "prompt", "end": "none",
                                           "max_new_tokens": 6, **body})


def test_steer_streams_both_rows_as_the_steer_module_generates_them(client, tiny_model, tokenizer,
                                                                    app):
    from thinksae.chat import build_prompt
    from thinksae.generation import GenerationConfig
    from thinksae.generation.batches import Batch
    from thinksae.generation.decode import Decoding, generate_rows
    from thinksae.interventions.spec import parse_interventions, parse_window

    r = steer(client, features="3=+6, 17=off")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    evs = events(r)
    assert evs[0]["type"] == "start" and evs[0]["features"] == ["3=+6", "17=off"]
    tokens = [e for e in evs if e["type"] == "token"]
    assert [e["row"] for e in tokens[:2]] == ["baseline", "steered"]  # interleaved per step
    done = evs[-1]
    assert done["type"] == "done" and done["reason"] == "max_tokens"
    for row in ("baseline", "steered"):
        streamed = [e["id"] for e in tokens if e["row"] == row]
        assert streamed == [t["id"] for t in done[row]["tokens"]]
        assert "".join(e["text"] for e in tokens if e["row"] == row) == done[row]["text"]
    # the reference: the steer module's own batched generation of the same two rows
    prompt = build_prompt(tokenizer, QUESTION)
    width = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    wb = app.state.workbench
    dec = Decoding(tiny_model, tokenizer, wb.sae, HOOKPOINT, parse_window("prompt", "none"),
                   wb.markers())
    ref = generate_rows(dec, [prompt], ["q"], [Batch([(0, 0), (1, 0)], width)],
                        GenerationConfig(max_new_tokens=6), [[], parse_interventions("3=+6, 17=off")])
    gen, _ = ref[1][0]
    assert [t["id"] for t in done["baseline"]["tokens"]] == gen.ids[0, width:].tolist()
    assert [t["id"] for t in done["steered"]["tokens"]] == gen.ids[1, width:].tolist()
    flags = gen.steered[1, width - 1:-1].tolist()
    kl = gen.kl[1, width - 1:-1].tolist()
    assert [t["steered"] for t in done["steered"]["tokens"]] == flags == [True] * 6
    assert [t["kl"] for t in done["steered"]["tokens"]] == kl
    assert done["steered_positions"] == int(gen.steered[1].sum())
    assert done["mean_kl"] == pytest.approx(sum(kl) / len(kl), rel=1e-12)


def test_identity_steering_reproduces_the_baseline(client):
    done = events(steer(client, features="3=x1"))[-1]
    assert done["steered"]["text"] == done["baseline"]["text"]
    assert all(t["kl"] == pytest.approx(0.0, abs=1e-9) for t in done["steered"]["tokens"])


@pytest.mark.parametrize("body,needle", [
    ({"colour": 1}, "unknown field 'colour'"),
    ({"features": "3=zz"}, "3=zz"),
    ({"features": "999=off"}, "feature 999 is not a latent"),
    ({"features": ""}, "no --feature given"),
    ({"features": "3=off", "max_new_tokens": 41}, "1..40"),
    ({"features": "3=off", "start": "5", "end": "2"}, "not before"),
    ({"features": "3=off", "prompt": " "}, "prompt: missing or empty"),
    ({"features": "3=off", "think_prefill": "yes"}, "think_prefill"),
    ({"features": [3.5]}, "features: expected"),
])
def test_steer_bad_requests(client, body, needle):
    r = steer(client, **body)
    assert r.status_code == 422, r.text
    assert needle in r.json()["error"] and "\n" not in r.json()["error"]


def test_smax_takes_the_analysis_max(client, app):
    wb = app.state.workbench
    f = next(r["feature"] for r in wb.rows() if r.get("max_act"))
    done = events(steer(client, features=f"{f}=2max"))[-1]
    assert done["type"] == "done"
    assert wb.max_act(f) == wb.rows()[f]["max_act"]


def test_one_model_user_at_a_time(client, app):
    lock = app.state.workbench.lock
    assert lock.acquire(blocking=False)
    try:
        for r in (steer(client, features="3=off"), client.post("/api/encode", json={"text": "hi"}),
                  client.post("/monitor/api/generate", json={"prompt": "hi", "max_new_tokens": 2})):
            assert r.status_code == 429 and r.headers["retry-after"] == "2"
    finally:
        lock.release()
    assert events(steer(client, features="3=off"))[-1]["type"] == "done"


def test_cancel_stops_generation(app, tiny_model):
    """The steer worker stops at the next step once ``cancel`` is set (the server sets it when the
    client goes away: ``monitor.server.event_stream``)."""
    from thinksae.serve.app import _steer_request
    from thinksae.serve.steering import stream_steer

    wb = app.state.workbench
    req = _steer_request(wb, {"prompt": QUESTION, "features": "3=off", "start": "prompt",
                              "end": "none", "max_new_tokens": 40})
    calls, sent, cancel = [], [], threading.Event()

    def emit(event):
        sent.append(event)
        if event["type"] == "token":
            cancel.set()  # as a client leaving after its first token

    handle = tiny_model.model.register_forward_hook(lambda *_: calls.append(1))
    try:
        stream_steer(wb.decoding(), req, emit, cancel)
    finally:
        handle.remove()
    assert sent[-1] == {"type": "done", "reason": "cancelled"}
    assert len(calls) < 40  # stopped before the 40 decode steps (+ the KL passes) ran


def test_client_going_away_frees_the_model(client, app):
    lock = app.state.workbench.lock
    with client.stream("POST", "/api/steer", json={"prompt": QUESTION, "features": "3=off",
                                                   "start": "prompt", "end": "none",
                                                   "max_new_tokens": 40}) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if '"type": "token"' in line:
                break
    for _ in range(400):  # bounded wait for the worker to end
        if not lock.locked():
            break
        time.sleep(0.05)
    assert not lock.locked()
    assert events(steer(client, features="3=off"))[-1]["type"] == "done"


def test_save_as_sweep_writes_the_cli_steer_json(client, run_dir, tiny_model, tokenizer, tmp_path,
                                                 monkeypatch):
    from thinksae.generation import GenerationConfig
    from thinksae.steer.config import SteerConfig
    from thinksae.steer.run import run as steer_cli

    body = {"prompt": QUESTION, "features": "3", "sweep": "0,x2", "start": "prompt", "end": "none",
            "max_new_tokens": 4}
    r = client.post("/api/steer/save", json=body)
    assert r.status_code == 200, r.text
    saved = json.loads(open(r.json()["path"]).read())
    assert r.json()["path"].startswith(str(run_dir / "serve"))
    ref = steer_cli(SteerConfig(sae=str(run_dir / "sae" / HOOKPOINT), feature=["3"], sweep=["0,x2"],
                                prompt=[QUESTION], start="prompt", end="none",
                                generation=GenerationConfig(max_new_tokens=4),
                                out=str(tmp_path), show=0, progress=False), tiny_model, tokenizer)
    ref = ref.to_dict()
    assert saved["format"] == ref["format"] and saved["mode"] == "sweep"
    assert [x["label"] for x in saved["runs"]] == ["0", "x2"]
    assert saved["baseline"]["traces"] == ref["baseline"]["traces"]
    assert [x["traces"] for x in saved["runs"]] == [x["traces"] for x in ref["runs"]]
    assert {k: v for k, v in saved["config"].items() if k != "out"} == \
        {k: v for k, v in ref["config"].items() if k != "out"} | {"hookpoint": HOOKPOINT}
    import thinksae.serve.app as app_module

    monkeypatch.setattr(app_module.time, "strftime", lambda fmt: "steer-same-second")
    first, again = (client.post("/api/steer/save", json=body).json()["path"] for _ in range(2))
    assert again != first and json.loads(open(first).read())["runs"][0]["traces"] == \
        json.loads(open(again).read())["runs"][0]["traces"]
    bad = client.post("/api/steer/save", json={**body, "sweep": "0,nope"})
    assert bad.status_code == 422 and "nope" in bad.json()["error"]


def test_cli(tmp_path, capsys):
    args = build_parser().parse_args(["serve", str(tmp_path)])
    assert args.cfg.run == str(tmp_path) and args.cfg.host == "127.0.0.1"
    assert main(["serve", str(tmp_path)]) == 2
    assert "is not a run directory (no run_config.json)" in capsys.readouterr().err
    assert main(["serve", str(tmp_path), "--port", "0"]) == 2


def test_cli_serves_the_run_and_warns_when_exposed(run_dir, monkeypatch, capsys):
    import uvicorn

    import thinksae.serve.run as app_module

    served = {}
    monkeypatch.setattr(app_module, "create_app", lambda run, cfg: served.setdefault("cfg", cfg))
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: served.update(kw))
    assert main(["serve", str(run_dir), "--host", "0.0.0.0", "--port", "9001"]) == 0
    out = capsys.readouterr().out
    assert "warning: serving on 0.0.0.0" in out and "http://0.0.0.0:9001/" in out
    assert served["host"] == "0.0.0.0" and served["port"] == 9001
    assert served["cfg"].run == str(run_dir)
    assert main(["serve", str(run_dir)]) == 0
    assert "warning" not in capsys.readouterr().out and served["host"] == "127.0.0.1"
