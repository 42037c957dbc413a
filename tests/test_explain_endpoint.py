"""The OpenAI-compatible endpoint explainer against a fake server on 127.0.0.1 (a daemon thread,
shut down after each test and by itself after 60 s): a good reply, a timeout, bad JSON and HTTP 500
each give a one-line error (exit 2) and cache nothing."""

from __future__ import annotations

import json
import shutil
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch
from helpers_explain import ScriptedModel

from thinksae.cli import main
from thinksae.errors import ThinksaeError
from thinksae.explain import ExplainConfig, explain
from thinksae.explain.explainers import EndpointExplainer
from thinksae.features import AnalyzeConfig, analyze
from thinksae.sae import Sae, SaeConfig
from thinksae.sae.formats import save_sparsify
from thinksae.store import HarvestConfig, harvest

pytestmark = pytest.mark.usefixtures("one_thread")


class Handler(BaseHTTPRequestHandler):
    """Path picks the behaviour: /ok, /think, /slow, /badjson, /nochoices, /fail."""

    seen: list[dict] = []

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        Handler.seen.append({"path": self.path, "body": body, "auth": self.headers.get("Authorization")})
        mode = self.path.split("/")[1]
        if mode == "slow":
            time.sleep(1.5)
        if mode == "fail":
            return self._send(500, b"internal error: model crashed\nTraceback ...")
        if mode == "badjson":
            return self._send(200, b"<html>not json</html>")
        if mode == "nochoices":
            return self._send(200, json.dumps({"error": "no"}).encode())
        content = "<think>\nlet me see</think>\nExplanation: endpoint text" if mode == "think" else \
            "Explanation: endpoint text"
        self._send(200, json.dumps({"choices": [{"message": {"role": "assistant",
                                                             "content": content}}]}).encode())

    def _send(self, code: int, data: bytes):
        try:
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.daemon_threads = True
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    stopper = threading.Timer(60, srv.shutdown)  # stops by itself whatever happens
    stopper.daemon = True
    stopper.start()
    Handler.seen = []
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    stopper.cancel()
    srv.shutdown()
    srv.server_close()
    thread.join(5)


def test_client_reads_the_reply_and_sends_the_request(server, monkeypatch):
    client = EndpointExplainer(server + "/ok/v1", "big-model", timeout=5, max_tokens=77, api_key="k")
    assert client.replies(["hello"]) == ["Explanation: endpoint text"]
    req = Handler.seen[-1]
    assert req["path"] == "/ok/v1/chat/completions" and req["auth"] == "Bearer k"
    assert req["body"]["model"] == "big-model" and req["body"]["max_tokens"] == 77
    assert req["body"]["messages"][-1] == {"role": "user", "content": "hello"}


@pytest.mark.parametrize("mode, message", [
    ("slow", "did not answer within 0.3 s"),
    ("badjson", "sent no usable JSON"),
    ("nochoices", "sent no usable JSON"),
    ("fail", "answered HTTP 500: internal error: model crashed"),
])
def test_client_errors_are_one_line(server, mode, message):
    client = EndpointExplainer(f"{server}/{mode}/v1", "m", timeout=0.3)
    with pytest.raises(ThinksaeError, match=message.replace("(", r"\(")) as err:
        client.replies(["x"])
    assert "\n" not in str(err.value)


def test_unreachable_endpoint_is_one_line():
    with pytest.raises(ThinksaeError, match="unreachable"):
        EndpointExplainer("http://127.0.0.1:9/v1", "m", timeout=2).replies(["x"])


@pytest.fixture(scope="module")
def analysis_dir(tmp_path_factory, corpus_path, tiny_model, tokenizer):
    root = tmp_path_factory.mktemp("explain_ep")
    (store,) = harvest(HarvestConfig(model="tiny", corpus=str(corpus_path), hookpoint="layers.1",
                                     out=str(root / "store"), device="cpu", dtype="float32",
                                     progress=False), tiny_model, tokenizer)
    torch.manual_seed(4)
    save_sparsify(Sae(64, SaeConfig(num_latents=16, k=4)), root / "sae" / "layers.1")
    return analyze(AnalyzeConfig(sae=str(root / "sae"), store=str(store), out=str(root / "analysis"),
                                 top_n=3, window=2, progress=False, device="cpu", dashboard=False),
                   model=tiny_model, tokenizer=tokenizer)


@pytest.mark.parametrize("mode", ["slow", "badjson", "fail"])
def test_cli_endpoint_failure_exits_2_and_caches_nothing(server, analysis_dir, tmp_path, capsys, mode):
    analysis = tmp_path / "a"
    shutil.copytree(analysis_dir, analysis)
    rc = main(["explain", "--analysis", str(analysis), "--endpoint", f"{server}/{mode}/v1",
               "--timeout", "0.3", "--top", "2", "--by", "fires", "--progress", "false",
               "--scorers", ""])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("thinksae: error: explainer endpoint") and err.count("\n") == 1
    assert not (analysis / "explain").exists()  # nothing created: no empty folder left either


def test_endpoint_explains_with_thinking_stripped(server, analysis_dir, tmp_path, tiny_model, tokenizer):
    analysis = tmp_path / "a"
    shutil.copytree(analysis_dir, analysis)
    cfg = ExplainConfig(analysis=str(analysis), endpoint=f"{server}/think/v1", top=2, by="fires",
                        n_score=4, bins=2, progress=False, device="cpu", scorers="detection")
    res = explain(cfg, ScriptedModel(tiny_model, tokenizer), tokenizer)  # the scorer: a real forward
    assert [r["explanation"] for r in res.rows] == ["endpoint text"] * 2
    assert all(r["llm_detection_auroc"] is not None for r in res.rows)
    assert len([s for s in Handler.seen if s["path"].startswith("/think")]) == 2
