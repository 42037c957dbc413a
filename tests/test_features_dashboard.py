"""The HTML dashboard, rendered by headless Chromium: DOM after the scripts ran, and screenshots."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from html.parser import HTMLParser

import pytest
import torch

from thinksae.features import AnalyzeConfig, analyze, feature_info
from thinksae.features.dashboard import show_token
from thinksae.sae import Sae, SaeConfig
from thinksae.sae.formats import save_sparsify
from thinksae.store import HarvestConfig, harvest

CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))
                 if p), None)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary (apt-get install chromium)")


def _chromium(*args, timeout: int = 90) -> str:
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
           "--no-first-run", "--disable-extensions", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def dump_dom(url: str) -> str:
    return _chromium("--virtual-time-budget=5000", "--dump-dom", url)


def screenshot(url: str, path, size=(1200, 900)):
    from PIL import Image

    _chromium(f"--window-size={size[0]},{size[1]}", f"--screenshot={path}", url)
    return Image.open(path).convert("RGB")


class Dom(HTMLParser):
    """Just enough of a DOM: elements with attributes, and each element's text."""

    def __init__(self, html: str):
        super().__init__()
        self.elements: list[dict] = []
        self._open: list[dict] = []
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        el = {"tag": tag, "attrs": dict(attrs), "text": "", "children": []}
        if self._open:
            self._open[-1]["children"].append(el)
        self.elements.append(el)
        if tag not in ("meta", "input", "br", "img", "link"):
            self._open.append(el)

    def handle_endtag(self, tag):
        while self._open:
            if self._open.pop()["tag"] == tag:
                break

    def handle_data(self, data):
        for el in self._open:
            el["text"] += data

    def select(self, tag=None, cls=None, **attrs):
        out = []
        for el in self.elements:
            classes = el["attrs"].get("class", "").split()
            if tag and el["tag"] != tag or cls and cls not in classes:
                continue
            if all(el["attrs"].get(k.replace("_", "-")) == v for k, v in attrs.items()):
                out.append(el)
        return out


@pytest.fixture(scope="module")
def analysis(tmp_path_factory, corpus_path, tiny_model, tokenizer):
    root = tmp_path_factory.mktemp("dash")
    (store,) = harvest(HarvestConfig(model="tiny", corpus=str(corpus_path), hookpoint="layers.1",
                                     out=str(root / "store"), device="cpu", dtype="float32",
                                     progress=False), tiny_model, tokenizer)
    torch.manual_seed(1)
    save_sparsify(Sae(64, SaeConfig(num_latents=64, k=4)), root / "sae" / "layers.1")
    out = analyze(AnalyzeConfig(sae=str(root / "sae"), store=str(store), out=str(root / "out"),
                                top_n=5, window=4, progress=False, device="cpu"),
                  model=tiny_model, tokenizer=tokenizer)
    rows = [json.loads(line) for line in (out / "features.jsonl").read_text().splitlines()]
    return out, rows


def _rows(dom: Dom) -> list[dict]:
    return [el for el in dom.select("tr") if "data-feature" in el["attrs"]]


def test_index_renders_sorts_and_filters(analysis):
    out, rows = analysis
    index = out / "dashboard" / "index.html"
    dom = Dom(dump_dom(index.as_uri()))
    shown = _rows(dom)
    assert [int(r["attrs"]["data-feature"]) for r in shown] == list(range(64))
    assert "showing 64 of 64" in dom.select(id="shown")[0]["text"]
    assert [c["text"] for c in dom.select("td", data_key="top_token_text")] == [
        show_token(r["top_token_text"]) if r["top_token_text"] is not None else "–" for r in rows]
    assert [c["text"] for c in dom.select("td", data_key="label")] == [r["label"] for r in rows]
    for el in dom.select("a"):  # every link from the table opens a page that exists
        if el["attrs"]["href"].startswith("feature-"):
            assert (index.parent / el["attrs"]["href"]).is_file()
    assert len([el for el in dom.select("a") if el["attrs"]["href"].startswith("feature-")]) == sum(
        r["fires"] > 0 for r in rows)

    dom = Dom(dump_dom(index.as_uri() + "#sort=reason_score&dir=desc"))
    want = sorted(rows, key=lambda r: (-r["reason_score"], r["feature"]))
    assert [int(r["attrs"]["data-feature"]) for r in _rows(dom)] == [r["feature"] for r in want]
    (th,) = dom.select("th", data_key="reason_score")
    assert "sorted-desc" in th["attrs"]["class"]
    cells = [el for el in dom.select("td", data_key="reason_score")]
    assert cells[0]["text"] != "–"

    # any score, also one the table does not show by default: it becomes an extra column
    dom = Dom(dump_dom(index.as_uri() + "#sort=think_mean_ratio_hi&dir=desc"))
    want = sorted(rows, key=lambda r: (r["think_mean_ratio_hi"] is None,
                                       -(r["think_mean_ratio_hi"] or 0), r["feature"]))
    assert [int(r["attrs"]["data-feature"]) for r in _rows(dom)] == [r["feature"] for r in want]
    assert [th["text"] for th in dom.select("th")][-1] == "think_mean_ratio_hi"

    label = max({r["label"] for r in rows}, key=lambda x: sum(r["label"] == x for r in rows))
    dom = Dom(dump_dom(index.as_uri() + f"#sort=freq&dir=asc&label={label}"))
    got = _rows(dom)
    assert {r["attrs"]["data-label"] for r in got} == {label}
    assert len(got) == sum(r["label"] == label for r in rows) < 64
    freqs = [r["freq"] for r in rows]
    assert [freqs[int(r["attrs"]["data-feature"])] for r in got] == sorted(
        freqs[int(r["attrs"]["data-feature"])] for r in got)


def test_index_screenshot_shows_the_table(analysis, tmp_path):
    out, _ = analysis
    img = screenshot((out / "dashboard" / "index.html").as_uri(), tmp_path / "index.png")
    assert img.size == (1200, 900)
    colours = img.getcolors(maxcolors=1 << 20)
    assert len(colours) > 50  # text, badges, header: not a blank page
    dark = sum(n for n, (r, g, b) in colours if r + g + b < 200)
    header = sum(n for n, c in colours if c == (0xEE, 0xF1, 0xF6))  # the table header's fill
    assert dark > 2000 and header > 5000


def test_feature_page_marks_triggers_and_draws_charts(analysis, tmp_path):
    out, rows = analysis
    best = max(rows, key=lambda r: r["fires"])
    _, det = feature_info(out, best["feature"])
    page = out / "dashboard" / f"feature-{best['feature']}.html"
    dom = Dom(dump_dom(page.as_uri()))
    contexts = dom.select("div", cls="context")
    assert len(contexts) == len(det["contexts"]) > 0
    for el, ctx in zip(contexts, det["contexts"]):
        triggers = [c for c in el["children"] if "trigger" in c["attrs"].get("class", "")]
        assert len(triggers) == 1
        assert triggers[0]["text"] == show_token(ctx["trigger_token"])
    assert dom.select(id="label")[0]["text"] == best["label"]
    assert len(dom.select("svg", id="histogram")[0]["children"]) >= len(det["hist"]["counts"])
    assert len([c for c in dom.select("svg", id="region-bars")[0]["children"]
                if c["tag"] == "rect"]) == 4
    assert len(dom.select("ol", id="lens-pos")[0]["children"]) == 10
    assert len(dom.select("ol", id="lens-neg")[0]["children"]) == 10
    assert len(dom.select("table", id="top-tokens")[0]["children"][1]["children"]) == min(
        20, len(det["tokens"]))
    img = screenshot(page.as_uri(), tmp_path / "feature.png", size=(1200, 1400))
    colours = dict((c, n) for n, c in img.getcolors(maxcolors=1 << 20))
    assert colours.get((0xC0, 0x39, 0x2B), 0) > 20  # the trigger outline is drawn
    assert colours.get((0x2E, 0x86, 0xC1), 0) > 50  # histogram bars
    assert colours.get((0x27, 0xAE, 0x60), 0) > 50  # region bars


def test_dashboard_needs_nothing_online(analysis):
    out, _ = analysis
    for page in (out / "dashboard").glob("*.html"):
        html = page.read_text()
        assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html), page.name
        assert "<link" not in html and "@import" not in html
