"""The monitor's HTTP API: streaming, bad and oversized requests (4xx, the server goes on),
one generation at a time."""

from __future__ import annotations

import json
import time

import pytest
from test_monitor_helpers import HOOKPOINT, QUESTION, tiny_sae

from thinksae.monitor import Monitor, read_alerts
from thinksae.monitor.server import create_app

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

RULES = [{"name": "seen", "feature": 5, "threshold": 0.0, "severity": "warning", "once": True}]


@pytest.fixture(scope="module")
def app_and_log(tiny_model, tokenizer, tmp_path_factory):
    log = tmp_path_factory.mktemp("monitor") / "alerts.jsonl"
    mon = Monitor(tiny_model, tokenizer, tiny_sae(), HOOKPOINT, [1, 2], RULES, alert_log=log,
                  max_new_tokens=16)
    return create_app(mon, max_body=4096, max_prompt_chars=500, max_features=8), log


@pytest.fixture(scope="module")
def client(app_and_log):
    with TestClient(app_and_log[0]) as c:
        yield c


def events(response) -> list[dict]:
    out = []
    for frame in response.text.split("\n\n"):
        data = [line[5:] for line in frame.splitlines() if line.startswith("data:")]
        if data:
            out.append(json.loads("\n".join(data)))
    return out


def generate(client, **body):
    return client.post("/api/generate", json={"prompt": QUESTION, "max_new_tokens": 4, **body})


def test_page_and_info(client):
    page = client.get("/")
    assert page.status_code == 200 and "thinksae monitor" in page.text
    assert '<script src="sse.js">' in page.text  # relative: also right where the app is mounted
    js = client.get("/sse.js")
    assert js.status_code == 200 and js.headers["content-type"].startswith("text/javascript")
    assert "async function postEvents" in js.text
    info = client.get("/api/info").json()
    assert info["hookpoint"] == HOOKPOINT and info["num_latents"] == 256
    assert info["features"] == [1, 2, 5] and info["rules"][0]["name"] == "seen"
    assert info["busy"] is False
    assert info["value"] == "topk" and info["values"]["pre"] == "relu(pre-activation)"


def test_generate_streams_events_and_logs_alerts(client, app_and_log):
    r = generate(client)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    evs = events(r)
    kinds = [e["type"] for e in evs]
    assert kinds.count("token") == 4 and kinds[-1] == "done" and "alert" in kinds
    assert set(evs[0]["acts"]) == {"1", "2", "5"} and evs[0]["value"] == "topk"
    alert = next(e for e in evs if e["type"] == "alert")
    assert alert["rule"] == "seen" and alert["value"] == "topk"
    assert any(a["run_id"] == alert["run_id"] for a in read_alerts(app_and_log[1]))


def test_request_features_and_rules(client):
    rules = [{"name": "mine", "features": [3, 4], "match": "all", "threshold": 0.0,
              "action": "stop"}]
    evs = events(generate(client, features="7, 8", rules=rules))
    assert set(evs[0]["acts"]) == {"7", "8", "3", "4"}
    assert evs[-1]["reason"] == "stopped" and evs[-1]["rule"] == "mine"


def test_request_value(client):
    feats = list(range(8))
    pre = [e for e in events(generate(client, features=feats, value="pre")) if e["type"] != "done"]
    topk = [e for e in events(generate(client, features=feats)) if e["type"] == "token"]
    assert {e["value"] for e in pre} == {"pre"}
    pre = [e for e in pre if e["type"] == "token"]
    pairs = [(p["acts"][f], t["acts"][f]) for p, t in zip(pre, topk) for f in map(str, feats)]
    assert all(t in (0.0, p) for p, t in pairs)  # the SAE keeps a latent (same value) or reads 0
    assert any(p > 0 and t == 0 for p, t in pairs)


@pytest.mark.parametrize("kwargs, status, needle", [
    ({"content": b"{not json", "headers": {"content-type": "application/json"}}, 400, "not valid JSON"),
    ({"content": b"\xff\xfe", "headers": {"content-type": "application/json"}}, 400, "not valid JSON"),
    ({"json": [1, 2]}, 422, "expected a JSON object"),
    ({"json": {"prompt": ""}}, 422, "prompt: missing or empty"),
    ({"json": {"prompt": 3}}, 422, "prompt"),
    ({"json": {"prompt": "x" * 600}}, 422, "at most 500"),
    ({"json": {"prompt": "hi", "colour": 1}}, 422, "unknown field 'colour'"),
    ({"json": {"prompt": "hi", "features": "1,a"}}, 422, "'a' is not a feature index"),
    ({"json": {"prompt": "hi", "features": [999]}}, 422, "feature 999 is not a latent"),
    ({"json": {"prompt": "hi", "features": list(range(9))}}, 422, "at most 8"),
    ({"json": {"prompt": "hi", "max_new_tokens": 0}}, 422, "max_new_tokens"),
    ({"json": {"prompt": "hi", "max_new_tokens": 17}}, 422, "1..16"),
    ({"json": {"prompt": "hi", "rules": "all"}}, 422, "rules: expected a list"),
    ({"json": {"prompt": "hi", "value": "act"}}, 422, "value: expected one of topk, pre"),
    ({"json": {"prompt": "hi", "value": ["pre"]}}, 422, "value: expected one of topk, pre"),
    ({"json": {"prompt": "hi", "rules": [{"name": "p", "feature": 1, "threshold": 1,
                                          "value": "pre"}]}}, 422, "written for value pre"),
    ({"json": {"prompt": "hi", "rules": [{"name": "b", "feature": 1, "threshold": "x"}]}}, 422,
     "rules: rule 1 ('b'): field 'threshold'"),
    ({"json": {"prompt": "x" * 5000}}, 413, "over 4096 bytes"),
    ({"content": b"[" * 10000, "headers": {"content-type": "application/json"}}, 413, "over 4096"),
])
def test_bad_requests_get_4xx_and_the_server_goes_on(client, kwargs, status, needle):
    r = client.post("/api/generate", **kwargs)
    assert r.status_code == status, r.text
    message = r.json()["error"]
    assert needle in message and "\n" not in message
    assert client.get("/api/info").json()["busy"] is False


def test_chunked_oversized_body(client):
    def chunks():
        for _ in range(100):
            yield b"x" * 100

    r = client.post("/api/generate", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413


def test_other_bad_requests(client):
    assert client.get("/api/generate").status_code == 405
    assert client.get("/nope").status_code == 404
    assert client.get("/api/alerts?limit=0").status_code == 422
    assert client.get("/api/alerts?limit=abc").status_code == 422
    assert client.get("/api/alerts?limit=1").json()["alerts"][-1]["rule"] in ("seen", "mine")
    assert generate(client).status_code == 200


def test_one_generation_at_a_time(client, app_and_log):
    lock = app_and_log[0].state.lock
    assert lock.acquire(blocking=False)
    try:
        r = generate(client)
        assert r.status_code == 429 and "already running" in r.json()["error"]
    finally:
        lock.release()
    assert events(generate(client))[-1]["type"] == "done"


def test_client_going_away_cancels_and_frees_the_model(client, app_and_log):
    lock = app_and_log[0].state.lock
    with client.stream("POST", "/api/generate", json={"prompt": QUESTION,
                                                      "max_new_tokens": 16}) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data:"):
                break
    for _ in range(100):  # bounded wait for the worker to notice
        if not lock.locked():
            break
        time.sleep(0.05)
    assert not lock.locked()
    assert events(generate(client))[-1]["type"] == "done"


def test_events_are_strict_json():
    from thinksae.monitor.server import sse

    frame = sse({"type": "token", "acts": {"1": float("nan"), "2": 1.5}, "x": [float("inf")]})
    assert frame.startswith("event: token\ndata: ") and frame.endswith("\n\n")
    assert json.loads(frame.split("data: ", 1)[1]) == {"type": "token", "acts": {"1": None, "2": 1.5},
                                                       "x": [None]}
