"""The workbench pages in headless Chromium (uvicorn on 127.0.0.1), driven as a person would, on a
demo-shaped run (a store, and a tokenizer without single <think> tokens, as the offline demo's):
the index opens on live features by a score with their contexts, then search and sort; paste a
plain sentence and see the highlights with the attention sinks (token 0, a planted norm sink)
left out, click a token; the steer page's first click with its defaults fills both columns; edit
a monitor rule and see an alert (and a bad one refused). Each page's screenshot is checked for
its elements (their pixels) and saved under docs/img/ for the docs."""

from __future__ import annotations

import base64
import io
import json
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from helpers_serve import (
    DEMO_SECTIONS,
    DEMO_SYSTEM_PROMPT,
    PLAIN_WHY,
    make_run,
    plain_think_markers,
)
from test_monitor_helpers import QUESTION, tiny_sae
from test_monitor_page import CHROMIUM, Browser, Dom, _free_port

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary (apt-get install chromium)")
IMG = Path(__file__).parent.parent / "docs" / "img"
SIZE = (1100, 700)


STEER_TOKENS = 8


@pytest.fixture(scope="module")
def plain_markers():
    with plain_think_markers():
        yield


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_model_dir, corpus_path, tiny_model, tokenizer, one_thread,
           plain_markers):
    import uvicorn

    from thinksae.serve import ServeConfig, create_app

    run = make_run(tmp_path_factory.mktemp("serve-page") / "run", tiny_model_dir, corpus_path,
                   tiny_model, tokenizer, {"corpus": DEMO_SECTIONS["corpus"]}, store=True)
    port = _free_port()
    cfg = ServeConfig(run=str(run), max_new_tokens=STEER_TOKENS)
    srv = uvicorn.Server(uvicorn.Config(create_app(run, tiny_model, tokenizer, tiny_sae(), cfg),
                                        host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    for _ in range(100):  # bounded wait for startup
        try:
            urllib.request.urlopen(url + "/api/info", timeout=1).read()
            break
        except OSError:
            time.sleep(0.1)
    yield url
    srv.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    b = Browser(tmp_path_factory.mktemp("chromium-profile"))
    b.call("Emulation.setDeviceMetricsOverride", session=True, width=SIZE[0], height=SIZE[1],
           deviceScaleFactor=1, mobile=False)
    yield b
    b.close()


def wait(b: Browser, until: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not b.evaluate(until):
        assert time.monotonic() < deadline, f"page never got to {until!r}"
        time.sleep(0.1)


def open_page(b: Browser, url: str, until: str) -> None:
    b.call("Page.navigate", session=True, url=url)
    wait(b, until)


def click(b: Browser, selector: str) -> None:
    """A real mouse click at the middle of the element."""
    box = b.evaluate(f"(() => {{ const r = document.querySelector({selector!r}).getBoundingClientRect();"
                     " return [r.x + r.width / 2, r.y + r.height / 2]; })()")
    for kind in ("mousePressed", "mouseReleased"):
        b.call("Input.dispatchMouseEvent", session=True, type=kind, x=box[0], y=box[1],
               button="left", clickCount=1)


def type_into(b: Browser, selector: str, text: str, clear: bool = True) -> None:
    """Focus the element (by clicking it), clear it, and type ``text`` as keyboard input."""
    click(b, selector)
    if clear:
        b.evaluate(f"document.querySelector({selector!r}).select()")
        b.call("Input.dispatchKeyEvent", session=True, type="keyDown", key="Backspace",
               windowsVirtualKeyCode=8)
        b.call("Input.dispatchKeyEvent", session=True, type="keyUp", key="Backspace",
               windowsVirtualKeyCode=8)
    b.call("Input.insertText", session=True, text=text)


def dom(b: Browser) -> Dom:
    return Dom(b.evaluate("document.documentElement.outerHTML"))


def shot(b: Browser, name: str):
    """The viewport as an RGB image, saved as docs/img/<name>.png."""
    from PIL import Image

    data = base64.b64decode(b.call("Page.captureScreenshot", session=True, format="png")["data"])
    image = Image.open(io.BytesIO(data)).convert("RGB")
    IMG.mkdir(parents=True, exist_ok=True)
    image.quantize(64).save(IMG / f"{name}.png", optimize=True)  # small files for the README
    return image


def rect(b: Browser, selector: str) -> list[float]:
    return b.evaluate(f"(() => {{ const r = document.querySelector({selector!r}).getBoundingClientRect();"
                      " return [r.x, r.y, r.width, r.height]; })()")


def pixel_at(image, box) -> tuple[int, int, int]:
    x, y, w, h = box
    assert 0 <= x and x + w <= SIZE[0] and 0 <= y and y + h <= SIZE[1], f"{box} is off screen"
    return image.getpixel((int(x + w / 2), int(y + h - 2)))


def test_features_index_opens_on_live_features_by_a_score(server, browser):
    open_page(browser, server + "/", "document.body.dataset.loaded")
    api = json.loads(urllib.request.urlopen(server + "/api/features?limit=1000").read())
    score = api["default_sort"]["score"]
    live = [r for r in api["rows"] if r["label"] not in ("dead", "rare")]
    assert 0 < len(live) < api["features"]
    d = dom(browser)
    assert d.find(tag="th", **{"data-sort": score})[0]["text"].endswith("▼")
    assert d.find(id="sorted")[0]["title"] == api["default_sort"]["why"]
    rows = d.find(tag="tr", **{"class": "row"})
    assert len(rows) == len(live) and not {r["data-label"] for r in rows} & {"dead", "rare"}
    values = [r[score] for r in sorted(live, key=lambda r: (r[score] is None, -(r[score] or 0)))]
    shown = browser.evaluate("[...document.querySelectorAll('tr.row')].map(r => r.dataset.feature)")
    by_id = {r["feature"]: r for r in live}
    assert [by_id[int(f)][score] for f in shown] == values  # highest first, missing last
    contexts = d.find(tag="b", **{"class": "trigger"})
    assert len(contexts) == sum(r["context"] is not None for r in live) > 0
    assert len(d.find(tag="span", **{"class": "chip"})) > 0
    width = browser.evaluate("document.getElementById('table').getBoundingClientRect().width")
    assert width > 0.9 * (SIZE[0] - 40)  # full width, and no wider
    assert browser.evaluate("document.documentElement.scrollWidth") <= SIZE[0]
    image = shot(browser, "serve-features")
    assert pixel_at(image, rect(browser, "#nav")) == (0x1d, 0x23, 0x30)  # the dark nav bar
    r, g, b = pixel_at(image, rect(browser, "tr.row b.trigger"))
    assert r > 200 and b < 200  # the trigger token's orange mark
    click(browser, "#all")  # dead and rare come back on request
    wait(browser, f"document.getElementById('count').dataset.total === '{api['features']}'")
    type_into(browser, "#q", "token detector")
    wait(browser, "document.getElementById('count').dataset.total === '1'")
    rows = dom(browser).find(tag="tr", **{"class": "row"})
    assert [r["data-feature"] for r in rows] == ["3"] and "token detector" in rows[0]["text"]
    type_into(browser, "#q", "")
    wait(browser, f"document.getElementById('count').dataset.total === '{api['features']}'")
    click(browser, 'th[data-sort="freq"]')
    wait(browser, "document.querySelector('th[data-sort=\"freq\"]').textContent.includes('▼')")
    freqs = browser.evaluate("[...document.querySelectorAll('tr.row td.col-freq')].map(td => "
                             "td.textContent)")
    assert len(freqs) == 200


def test_feature_page(server, browser):
    open_page(browser, server + "/features/feature-3.html", "!!document.getElementById('nav')")
    html = browser.evaluate("document.body.innerText")
    assert "token detector" in html and "try text with this feature" in html
    shot(browser, "serve-feature")


def planted_sink(model, position: int, scale: float = 50.0):
    """A forward hook on the hookpoint's layer making the residual at ``position`` ``scale``
    times larger: a norm sink like the demo's "\\n" (remove the returned handle)."""
    def plant(module, args, output):
        hidden = (output[0] if isinstance(output, tuple) else output).clone()
        if hidden.shape[1] > position:
            hidden[:, position] *= scale
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    return model.model.layers[1].register_forward_hook(plant)


def test_try_text_leaves_the_sinks_out(server, browser, tiny_model):
    open_page(browser, server + "/try", "document.getElementById('trace').options.length > 1")
    text = "Wait, let me check. Hmm, maybe 15% of 80 is 12."
    type_into(browser, "#text", text)
    type_into(browser, "#feature", "")
    request = urllib.request.Request(server + "/api/encode", json.dumps({"text": text}).encode(),
                                     {"Content-Type": "application/json"})
    parts = json.loads(urllib.request.urlopen(request).read())["parts"]
    sink = parts.index("text") + 2  # a word of the text, after the run's template
    handle = planted_sink(tiny_model, sink)
    try:
        click(browser, "#go")
        wait(browser, "document.getElementById('status').dataset.done")
    finally:
        handle.remove()
    d = dom(browser)
    toks = d.find(tag="span", **{"class": "tok"})
    assert toks[0]["text"] == "<｜begin▁of▁sentence｜>" and len(toks) > 10
    assert "sink" in toks[0]["class"] and "special token" in toks[0]["title"]
    assert "sink" in toks[sink]["class"] and "tmpl" not in toks[sink]["class"]
    assert "attention sink: norm" in toks[sink]["title"] and "store median" in toks[sink]["title"]
    kept = [i for i, t in enumerate(toks) if t["data-kept"] == "1"]
    assert 0 not in kept and sink not in kept and len(kept) > 5
    values = [float(t["data-value"]) for t in toks]
    scale = float(d.find(id="tokens")[0]["data-scale"])
    assert scale == max(values[i] for i in kept) < values[sink]  # sinks out of the colour scale
    assert all("background" not in toks[i]["style"] for i in (0, sink))
    ranked = d.find(tag="li", **{"class": "feat"})
    assert ranked  # the strongest features over the kept tokens only
    positions = browser.evaluate("[...document.querySelectorAll('#strongest li')].map(li => "
                                 "+li.title.split('token ')[1])")
    assert sink not in positions and 0 not in positions and set(positions) <= set(kept)
    strongest = max(kept, key=lambda i: values[i])
    image = shot(browser, "serve-try")
    r, g, b = pixel_at(image, rect(browser, f'.tok[data-i="{strongest}"]'))
    assert r > 200 and b < 120  # the orange highlight of the strongest token
    r, g, b = pixel_at(image, rect(browser, '.tok[data-i="0"]'))
    assert abs(r - b) < 30  # grey hatching, no orange
    click(browser, "#strongest li")  # highlight the strongest feature of the text
    wait(browser, "document.getElementById('tokens').dataset.feature !== 'top'")
    assert browser.evaluate("document.getElementById('feature').value") == ranked[0]["data-feature"]
    click(browser, f'.tok[data-i="{strongest}"]')
    wait(browser, "!!document.querySelector('#detail tr.feat')")
    links = dom(browser).find(tag="a")
    assert any(a["href"].startswith("/features/feature-") for a in links)
    assert "picked" in dom(browser).find(tag="span", **{"data-i": str(strongest)})[0]["class"]
    shot(browser, "serve-try")


def test_steer_first_click_with_the_defaults(server, browser):
    open_page(browser, server + "/steer", "document.body.dataset.ready")
    value = "(id => document.getElementById(id).value)"
    assert [browser.evaluate(f"{value}({k!r})") for k in ("start", "end", "max_new_tokens")] == \
        ["prompt", "none", str(STEER_TOKENS)]
    assert browser.evaluate(f"{value}('prompt')") and browser.evaluate(f"{value}('features')")
    assert dom(browser).find(id="why")[0]["text"] == \
        f"defaults: {PLAIN_WHY}; system prompt and think prefill as the run's corpus had them"
    assert browser.evaluate("document.getElementById('think_prefill').checked")
    assert browser.evaluate(f"{value}('system_prompt')") == DEMO_SYSTEM_PROMPT
    assert browser.evaluate("[...document.getElementById('start').options].filter(o => o.disabled)"
                            ".map(o => o.value)") == ["sentence", "think"]
    click(browser, "#run")  # nothing typed: the first click
    wait(browser, "document.getElementById('status').dataset.done || "
                  "document.getElementById('error').textContent")
    d = dom(browser)
    assert not d.find(id="error")[0]["text"]
    base = [t for t in d.find(tag="span", **{"class": "tok"}) if "steered" not in t["class"]]
    steered = d.find(tag="span", **{"class": "steered"})
    assert len(steered) == STEER_TOKENS and len(base) == STEER_TOKENS
    assert all("KL" in t["title"] for t in steered)
    assert "steered positions, mean KL" in d.find(id="summary")[0]["text"]
    image = shot(browser, "serve-steer")
    x, y, w, h = rect(browser, "#steered .tok")
    below = [image.getpixel((int(x + w / 2), int(y + h - dy))) for dy in range(1, 7)]
    assert any(r > 150 and b < 100 for r, g, b in below), below  # the orange underline


def test_monitor_rule_edited_in_the_page(server, browser):
    finished = ("document.getElementById('status').dataset.done || "
                "document.getElementById('error').textContent")
    open_page(browser, server + "/monitor/", "document.getElementById('info').textContent.includes('layers')")
    type_into(browser, "#prompt", QUESTION)
    type_into(browser, "#rules", '[{"name": "broken", "feature": 5, "threshold": "high"}]')
    click(browser, "button[type=submit]")
    wait(browser, finished)
    assert "rule 1 ('broken'): field 'threshold'" in dom(browser).find(id="error")[0]["text"]
    type_into(browser, "#rules", '[{"name": "feature-5-up", "feature": 5, "threshold": 0.0, '
                                 '"severity": "critical", "once": true}]')
    type_into(browser, "#max_new_tokens", "8")
    click(browser, "button[type=submit]")
    wait(browser, "!!document.querySelector('li.alert')")
    wait(browser, finished)
    alerts = dom(browser).find(tag="li", **{"class": "alert"})
    assert [a["data-rule"] for a in alerts] == ["feature-5-up"]
    image = shot(browser, "serve-monitor")
    r, g, b = pixel_at(image, rect(browser, "li.alert"))
    assert r > 240 and g < 245  # the critical alert's pink background
