"""The monitor page in headless Chromium, served by uvicorn on 127.0.0.1: a prompt streams tokens
with highlights and alerts into the DOM; a bad rule shows the server's one-line error."""

from __future__ import annotations

import fcntl
import json
import os
import select
import shutil
import socket
import subprocess
import threading
import time
import urllib.request
from html.parser import HTMLParser
from urllib.parse import urlencode

import pytest
from test_monitor_helpers import HOOKPOINT, QUESTION, tiny_sae

from thinksae.monitor import Monitor, read_alerts

CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))
                 if p), None)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary (apt-get install chromium)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tiny_model, tokenizer, tmp_path_factory):
    import uvicorn

    from thinksae.monitor.server import create_app

    log = tmp_path_factory.mktemp("page") / "alerts.jsonl"
    rules = [{"name": "feature-5-up", "feature": 5, "threshold": 0.0, "severity": "critical",
              "once": True}]
    mon = Monitor(tiny_model, tokenizer, tiny_sae(), HOOKPOINT, [1, 2], rules, alert_log=log,
                  max_new_tokens=32)
    port = _free_port()
    config = uvicorn.Config(create_app(mon), host="127.0.0.1", port=port, log_level="warning")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    for _ in range(100):  # bounded wait for startup
        try:
            urllib.request.urlopen(url + "/api/info", timeout=1).read()
            break
        except OSError:
            time.sleep(0.1)
    yield url, log
    srv.should_exit = True
    thread.join(timeout=10)


class Browser:
    """Headless Chromium driven over the DevTools protocol on a pipe (fds 3 and 4), so a test
    can wait for the streamed page to finish instead of guessing a time budget."""

    def __init__(self, profile):
        cmd_r, cmd_w = os.pipe()
        res_r, res_w = os.pipe()

        def wire():  # in the child: commands on fd 3, responses on fd 4
            a, b = fcntl.fcntl(cmd_r, fcntl.F_DUPFD, 10), fcntl.fcntl(res_w, fcntl.F_DUPFD, 10)
            os.dup2(a, 3)
            os.dup2(b, 4)

        self.proc = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--disable-extensions", "--remote-debugging-pipe", f"--user-data-dir={profile}",
             "about:blank"],
            preexec_fn=wire, close_fds=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(cmd_r)
        os.close(res_w)
        self.out, self.inp, self.buf, self.next_id = cmd_w, res_r, b"", 0
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]

    def call(self, method: str, timeout: float = 30, session: bool = False, **params) -> dict:
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params}
        if session:
            msg["sessionId"] = self.session
        os.write(self.out, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            while b"\0" in self.buf:
                raw, self.buf = self.buf.split(b"\0", 1)
                reply = json.loads(raw)
                if reply.get("id") == self.next_id:
                    assert "error" not in reply, reply["error"]
                    return reply["result"]
            left = deadline - time.monotonic()
            assert left > 0, f"no answer to {method}"
            if select.select([self.inp], [], [], left)[0]:
                chunk = os.read(self.inp, 1 << 16)
                assert chunk, "chromium went away"
                self.buf += chunk

    def evaluate(self, expression: str):
        res = self.call("Runtime.evaluate", session=True, expression=expression,
                        returnByValue=True)
        return res["result"].get("value")

    def open_and_wait(self, url: str, until: str, timeout: float = 90) -> str:
        """Load ``url``, wait until the JS expression ``until`` is truthy; the DOM as HTML."""
        self.call("Page.navigate", session=True, url=url)
        deadline = time.monotonic() + timeout
        while not self.evaluate(until):
            assert time.monotonic() < deadline, f"page never got to {until!r}"
            time.sleep(0.2)
        return self.evaluate("document.documentElement.outerHTML")

    def close(self):
        try:
            self.call("Browser.close", timeout=10)
        except (AssertionError, OSError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        os.close(self.out)
        os.close(self.inp)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    b = Browser(tmp_path_factory.mktemp("chromium-profile"))
    yield b
    b.close()


FINISHED = ("document.getElementById('status').dataset.done || "
            "document.getElementById('error').textContent")


class Dom(HTMLParser):
    """Elements with their attributes and text (enough for these checks)."""

    def __init__(self, html: str):
        super().__init__()
        self.elements: list[dict] = []
        self.stack: list[dict] = []
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        el = {"tag": tag, **{k: v or "" for k, v in attrs}, "text": ""}
        self.elements.append(el)
        if tag not in ("br", "input", "meta", "link", "img"):
            self.stack.append(el)

    def handle_endtag(self, tag):
        while self.stack:
            if self.stack.pop()["tag"] == tag:
                break

    def handle_data(self, data):
        for el in self.stack:
            el["text"] += data

    def find(self, **attrs) -> list[dict]:
        return [e for e in self.elements
                if all(k in e and (v in e[k].split() if k == "class" else e[k] == v)
                       for k, v in attrs.items())]


def test_page_streams_tokens_and_alerts(server, browser):
    url, log = server
    query = urlencode({"prompt": QUESTION, "features": "1, 17", "max_new_tokens": 6,
                       "autostart": 1})
    dom = Dom(browser.open_and_wait(f"{url}/?{query}", FINISHED))
    toks = dom.find(tag="span", **{"class": "tok"})
    assert len(toks) == 6
    assert [t["data-step"] for t in toks] == [str(i) for i in range(6)]
    assert all("#1:" in t["title"] and "#5:" in t["title"] for t in toks)
    assert all(t["title"].startswith("top-k activation\n") for t in toks)
    assert any("background" in t.get("style", "") for t in toks)  # highlighted by activation
    shown = dom.find(id="shown")[0]
    assert shown["data-value"] == "topk" and "values shown: top-k activation" in shown["text"]
    assert "top-k activation" in dom.find(tag="li", **{"class": "alert"})[0]["text"]
    alerts = dom.find(tag="li", **{"class": "alert"})
    assert [a["data-rule"] for a in alerts] == ["feature-5-up"]
    assert "sev-critical" in alerts[0]["class"] and "critical" in alerts[0]["text"]
    assert len(dom.find(**{"class": "alerted"})) == 1
    status = dom.find(id="status")[0]
    assert status["data-done"] == "max_tokens" and "6 tokens" in status["text"]
    assert "layers.1" in dom.find(id="info")[0]["text"]
    assert [a["rule"] for a in read_alerts(log)] == ["feature-5-up"]


def test_page_shows_a_bad_rule_as_one_line(server, browser):
    url, _ = server
    rules = json.dumps([{"name": "broken", "feature": 1, "threshold": "high"}])
    dom = Dom(browser.open_and_wait(f"{url}/?" + urlencode({"prompt": QUESTION, "rules": rules,
                                                             "autostart": 1}), FINISHED))
    error = dom.find(id="error")[0]["text"]
    assert "HTTP 422" in error and "rule 1 ('broken'): field 'threshold'" in error
    assert not dom.find(tag="span", **{"class": "tok"})


def test_page_can_watch_the_pre_activation(server, browser):
    url, _ = server
    query = urlencode({"prompt": QUESTION, "features": "1, 17", "max_new_tokens": 3,
                       "value": "pre", "autostart": 1})
    dom = Dom(browser.open_and_wait(f"{url}/?{query}", FINISHED))
    toks = dom.find(tag="span", **{"class": "tok"})
    assert len(toks) == 3 and all(t["title"].startswith("relu(pre-activation)\n") for t in toks)
    assert dom.find(id="shown")[0]["data-value"] == "pre"
    assert "relu(pre-activation)" in dom.find(tag="li", **{"class": "alert"})[0]["text"]
