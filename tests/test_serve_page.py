"""The workbench pages in headless Chromium (uvicorn on 127.0.0.1), driven as a person would:
type a search, sort; paste text and see the highlights, click a token; run a steer and see both
columns fill; edit a monitor rule and see an alert (and a bad one refused). Each page's
screenshot is checked for its elements (their pixels) and saved under docs/img/ for the README."""

from __future__ import annotations

import base64
import io
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from helpers_serve import make_run
from test_monitor_helpers import QUESTION, tiny_sae
from test_monitor_page import CHROMIUM, Browser, Dom, _free_port

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary (apt-get install chromium)")
IMG = Path(__file__).parent.parent / "docs" / "img"
SIZE = (1100, 700)


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_model_dir, corpus_path, tiny_model, tokenizer, one_thread):
    import uvicorn

    from thinksae.serve import create_app

    run = make_run(tmp_path_factory.mktemp("serve-page") / "run", tiny_model_dir, corpus_path,
                   tiny_model, tokenizer)
    port = _free_port()
    srv = uvicorn.Server(uvicorn.Config(create_app(run, tiny_model, tokenizer, tiny_sae()),
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


def test_features_index_search_and_sort(server, browser):
    open_page(browser, server + "/", "document.body.dataset.loaded")
    type_into(browser, "#q", "token detector")
    wait(browser, "document.getElementById('count').dataset.total === '1'")
    rows = dom(browser).find(tag="tr", **{"class": "row"})
    assert [r["data-feature"] for r in rows] == ["3"] and "token detector" in rows[0]["text"]
    type_into(browser, "#q", "")
    wait(browser, "document.getElementById('count').dataset.total === '256'")
    click(browser, 'th[data-sort="freq"]')
    wait(browser, "document.querySelector('th[data-sort=\"freq\"]').textContent.includes('▼')")
    freqs = browser.evaluate("[...document.querySelectorAll('tr.row')].map(r => r.children[5]"
                             ".textContent)")
    assert len(freqs) == 200
    image = shot(browser, "serve-features")
    assert pixel_at(image, rect(browser, "#nav")) == (0x1d, 0x23, 0x30)  # the dark nav bar
    assert rect(browser, "tr.row")[3] > 0 and "thinksae workbench" in dom(browser).find(id="nav")[0]["text"]


def test_feature_page(server, browser):
    open_page(browser, server + "/features/feature-3.html", "!!document.getElementById('nav')")
    html = browser.evaluate("document.body.innerText")
    assert "token detector" in html and "try text with this feature" in html
    shot(browser, "serve-feature")


def test_try_text_highlights_and_links(server, browser):
    open_page(browser, server + "/try", "document.getElementById('trace').options.length > 1")
    type_into(browser, "#text", "Wait, let me check. Hmm, maybe 15% of 80 is 12.")
    type_into(browser, "#feature", "")
    click(browser, "#go")
    wait(browser, "document.getElementById('status').dataset.done")
    d = dom(browser)
    toks = d.find(tag="span", **{"class": "tok"})
    assert toks[0]["text"] == "<｜begin▁of▁sentence｜>" and len(toks) > 10
    assert all("#" in t["title"] for t in toks)
    strongest = max(range(len(toks)), key=lambda i: float(toks[i]["data-value"]))
    image = shot(browser, "serve-try")
    r, g, b = pixel_at(image, rect(browser, f'.tok[data-i="{strongest}"]'))
    assert r > 200 and b < 120  # the orange highlight of the strongest token
    click(browser, f'.tok[data-i="{strongest}"]')
    wait(browser, "!!document.querySelector('#detail tr.feat')")
    links = dom(browser).find(tag="a")
    assert any(a["href"].startswith("/features/feature-") for a in links)
    assert "picked" in dom(browser).find(tag="span", **{"data-i": str(strongest)})[0]["class"]
    shot(browser, "serve-try")


def test_steer_fills_both_columns(server, browser):
    open_page(browser, server + "/steer?start=prompt&end=none", "!!document.getElementById('nav')")
    type_into(browser, "#prompt", QUESTION)
    type_into(browser, "#features", "3=+6, 17=off")
    type_into(browser, "#max_new_tokens", "6")
    click(browser, "#run")
    wait(browser, "document.getElementById('status').dataset.done || "
                  "document.getElementById('error').textContent")
    d = dom(browser)
    assert not d.find(id="error")[0]["text"]
    base = [t for t in d.find(tag="span", **{"class": "tok"}) if "steered" not in t["class"]]
    steered = d.find(tag="span", **{"class": "steered"})
    assert len(steered) == 6 and len(base) == 6 and all("KL" in t["title"] for t in steered)
    assert "steered positions, mean KL" in d.find(id="summary")[0]["text"]
    image = shot(browser, "serve-steer")
    assert pixel_at(image, rect(browser, "#steered .tok"))[0] > 150  # the orange underline


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
