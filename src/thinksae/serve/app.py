"""The workbench web app (FastAPI) over one run directory. Pages and their JSON endpoints:

=====================================  ===============================================================
``GET /``                              features index (search, sort, filter); data: ``GET /api/features``
``GET /features/feature-N.html``       a feature's page (the dashboard's, with verdict and explanation);
                                       data: ``GET /api/features/N``
``GET /try``                           try text; ``POST /api/encode`` ``{"text", "special_tokens"}``,
                                       traces to pick: ``GET /api/traces``
``GET /steer``                         steer side by side; ``POST /api/steer`` (server-sent events),
                                       ``POST /api/steer/save`` (writes ``steer.json`` as the CLI)
``GET /monitor/``                      the monitor's own app (:mod:`thinksae.monitor.server`), mounted
``GET /run/...``                       the run directory's files (report ``/run/index.html``, dashboard)
``GET /api/info``                      run, model, SAE, hookpoint, limits, whether a generation runs
=====================================  ===============================================================

``/api/features`` query: ``q`` (substring of trigger token, label, verdict or explanation),
``sort`` (any score), ``dir`` (asc/desc), ``label``, ``verdict``, ``min.SCORE``/``max.SCORE``
(any number of them), ``offset``, ``limit`` (≤ 1000). Answers ``{total, scores, rows}``.

The model is used by one request at a time (encode, steer, save, monitor share one lock); a
request that finds it busy gets 429 with ``Retry-After``. Bad input gets a 4xx with
``{"error": one line}`` (413 body too large, 400 not JSON, 422 invalid); the server goes on. A
client that goes away stops its generation after the current token.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from ..chat import ThinkMarkers
from ..errors import ThinksaeError
from ..features.card import feature_info
from ..features.dashboard import feature_page as render
from ..features.scores import LABELS
from ..generation.decode import Decoding
from ..monitor.engine import Monitor
from ..monitor.server import RequestError, add_error_handlers, error_response, event_stream, read_json
from ..monitor.server import create_app as monitor_app
from ..runs import read_run
from ..validate.verdicts import VERDICTS, read_verdicts
from .config import ServeConfig
from .steering import parse_steer, save_sweep, stream_steer
from .workbench import Query, encode_text, feature_rows, load_run, read_traces, scores_of, select

STATIC = Path(__file__).parent / "static"
MAX_PROMPT_CHARS = 8000


class Workbench:
    """The run, the loaded model and SAE, the generation lock and cached index rows."""

    def __init__(self, cfg: ServeConfig, model=None, tokenizer=None, sae=None):
        self.cfg, self.info = cfg, read_run(cfg.run)
        self.bound = load_run(self.info, model, tokenizer, sae, {
            "model": cfg.model, "device": cfg.device, "dtype": cfg.dtype})
        self.model, self.tokenizer, self.sae = self.bound.model, self.bound.tokenizer, self.bound.sae
        self.lock: threading.Lock = threading.Lock()
        self._rows: tuple[tuple, list[dict]] | None = None
        self._markers = None

    def rows(self) -> list[dict]:
        """Index rows, re-read when the analysis, verdicts or explanations change."""
        root, feats = self.info.root, self.info.analysis
        watched = [feats / "features.jsonl", root / "validate", feats / "validate", root / "explain"]
        key = tuple(p.stat().st_mtime_ns if p.exists() else 0 for p in watched)
        if self._rows is None or self._rows[0] != key:
            self._rows = (key, feature_rows(self.info))
        return self._rows[1]

    def markers(self) -> ThinkMarkers:
        if self._markers is None:
            self._markers = self.bound.markers(sentences=True)
        return self._markers

    def decoding(self) -> Decoding:
        """How the workbench decodes: the run's model and SAE, the tokenizer's markers."""
        return Decoding(self.model, self.tokenizer, self.sae, self.info.hookpoint,
                        markers=self.markers())

    def max_act(self, feature: int) -> float | None:
        rows = self.rows()
        value = rows[feature].get("max_act") if 0 <= feature < len(rows) else None
        return float(value) if isinstance(value, (int, float)) else None


def _busy() -> JSONResponse:
    return error_response(429, "the model is busy with another request; try again when it ends",
                          {"Retry-After": "2"})


def _page(name: str) -> HTMLResponse:
    return HTMLResponse((STATIC / name).read_text())


def _query(request: Request, scores: list[str]) -> Query:
    params = request.query_params
    bounds: dict = {}
    try:
        for key, value in params.items():
            side, _, score = key.partition(".")
            if side in ("min", "max") and score:
                if score not in scores:
                    raise RequestError(422, f"{key}: no score {score!r} (scores: {', '.join(scores)})")
                lo, hi = bounds.get(score, (None, None))
                bounds[score] = (float(value), hi) if side == "min" else (lo, float(value))
        offset, limit = int(params.get("offset", 0)), int(params.get("limit", 100))
    except ValueError as e:
        raise RequestError(422, f"bad number in the query ({e})") from None
    sort = params.get("sort", "feature")
    if sort not in scores + ["feature", "label", "verdict", "top_token_text"]:
        raise RequestError(422, f"sort: no column {sort!r}")
    if params.get("dir", "asc") not in ("asc", "desc") or not 0 <= offset or not 1 <= limit <= 1000:
        raise RequestError(422, "dir: asc or desc; offset >= 0; limit in 1..1000")
    return Query(params.get("q", "")[:200], sort, params.get("dir") == "desc",
                 params.get("label") or None, params.get("verdict") or None, bounds, offset, limit)


def _feature_routes(app: FastAPI, wb: Workbench) -> None:
    @app.get("/api/features")
    async def features(request: Request):

        rows = wb.rows()
        scores = scores_of(rows)
        total, page = select(rows, _query(request, scores))
        return {"total": total, "features": len(rows), "scores": scores, "labels": list(LABELS),
                "verdicts": list(VERDICTS), "rows": page}

    @app.get("/api/features/{index}")
    async def feature(index: int):

        rows = wb.rows()
        if not 0 <= index < len(rows):
            raise RequestError(404, f"no feature {index} in the analysis ({len(rows)} features)")
        row, det = feature_info(wb.info.analysis, index)
        verdict = (read_verdicts(wb.info.root / "validate") or read_verdicts(wb.info.analysis)
                   ).get(index)
        return {"row": {**row, "verdict": rows[index].get("verdict"),
                        "explanation": rows[index].get("explanation")},
                "details": det, "verdict": verdict}

    @app.get("/features/feature-{index}.html", response_class=HTMLResponse)
    async def feature_page(index: int):
        from html import escape

        data = await feature(index)
        html = render(data["row"], data["details"], {}, data["verdict"])
        nav = (STATIC / "nav.html").read_text()
        text = data["row"].get("explanation")
        if text:
            nav += f'<p class="explanation" id="explanation"><b>explanation:</b> {escape(text)}</p>'
        nav += f'<p><a href="/try?feature={index}">try text with this feature</a> · ' \
               f'<a href="/steer?features={index}%3Dx4">steer it</a></p>'
        return HTMLResponse(html.replace("<body>", "<body>" + nav, 1))

    @app.get("/features/index.html")
    async def features_index():
        return RedirectResponse("/")

    @app.get("/api/traces")
    async def traces(limit: int = 200):
        if not 1 <= limit <= 10000:
            raise RequestError(422, "limit: expected 1..10000")
        return {"traces": read_traces(wb.info, limit)}


def _steer_request(wb: Workbench, body):
    """A checked :class:`~.steering.SteerRequest` (422 with the reason otherwise)."""
    try:
        req = parse_steer(body, wb.sae.num_latents, wb.cfg.max_new_tokens, MAX_PROMPT_CHARS,
                          wb.max_act)
    except ThinksaeError as e:
        raise RequestError(422, str(e)) from None
    if not wb.markers().single_token and (req.window.start, req.window.end) != ("prompt", "none"):
        raise RequestError(422, "this tokenizer has no single <think>/</think> tokens: use "
                                "start prompt, end none")
    return req


def _event_stream(wb: Workbench, work) -> StreamingResponse:
    """Run ``work(emit, cancel)`` in a thread holding the model lock (already acquired) and
    stream what it emits as server-sent events; the client going away sets ``cancel``."""
    return event_stream(wb.lock, work, "thinksae-serve")


def _generation_routes(app: FastAPI, wb: Workbench) -> None:
    cfg = wb.cfg

    @app.post("/api/encode")
    async def encode(request: Request):
        body = await read_json(request, cfg.max_body)
        if not isinstance(body, dict) or not isinstance(body.get("text"), str) or set(body) - {
                "text", "special_tokens"} or not isinstance(body.get("special_tokens", True), bool):
            raise RequestError(422, 'expected {"text": str, "special_tokens": bool (optional)}')
        if not wb.lock.acquire(blocking=False):
            return _busy()
        try:
            enc = await run_in_threadpool(encode_text, wb.model, wb.tokenizer, wb.sae,
                                          wb.info.hookpoint, body["text"],
                                          body.get("special_tokens", True), cfg.max_text_tokens)
        except ThinksaeError as e:
            raise RequestError(422, str(e)) from None
        finally:
            wb.lock.release()
        return {"ids": enc.ids, "tokens": enc.tokens, "top": enc.top, "k": wb.sae.cfg.k}

    @app.post("/api/steer")
    async def steer(request: Request):
        req = _steer_request(wb, await read_json(request, cfg.max_body))
        if not wb.lock.acquire(blocking=False):
            return _busy()
        return _event_stream(wb, lambda emit, cancel: stream_steer(wb.decoding(), req, emit,
                                                                    cancel))

    @app.post("/api/steer/save")
    async def save(request: Request):
        req = _steer_request(wb, await read_json(request, cfg.max_body))
        if not wb.lock.acquire(blocking=False):
            return _busy()
        out = base = wb.info.root / "serve" / time.strftime("steer-%Y%m%d-%H%M%S")
        for n in range(1, 1000):  # never over an earlier save
            if not out.exists():
                break
            out = base.with_name(f"{base.name}-{n}")
        try:
            return await run_in_threadpool(save_sweep, wb.info.sae_dir, wb.info.hookpoint,
                                           wb.model, wb.tokenizer, req, out)
        except ThinksaeError as e:
            raise RequestError(422, str(e)) from None
        finally:
            wb.lock.release()


def create_app(run_dir: str | Path, model=None, tokenizer=None, sae=None,
               cfg: ServeConfig | None = None) -> FastAPI:
    """The workbench over ``run_dir`` (module docstring). ``model``/``tokenizer``/``sae``
    replace loading the run's; ``cfg`` sets the limits (its ``run`` is replaced by ``run_dir``)."""
    from dataclasses import replace


    cfg = replace(cfg or ServeConfig(run=str(run_dir)), run=str(run_dir))
    wb = Workbench(cfg, model, tokenizer, sae)
    monitor = Monitor(wb.model, wb.tokenizer, wb.sae, wb.info.hookpoint,
                      alert_log=wb.info.root / "serve" / "alerts.jsonl",
                      max_new_tokens=cfg.max_new_tokens)
    mon = monitor_app(monitor, max_body=cfg.max_body)
    wb.lock = mon.state.lock  # one lock for every use of the model
    app = FastAPI(title="thinksae workbench", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.workbench = wb
    add_error_handlers(app)

    @app.get("/api/info")
    async def info():
        return {"run": str(wb.info.root), "model": wb.info.config.get("model"),
                "hookpoint": wb.info.hookpoint, "sae": str(wb.info.sae_dir),
                "num_latents": wb.sae.num_latents, "k": wb.sae.cfg.k,
                "features_analysed": len(wb.rows()), "max_new_tokens": cfg.max_new_tokens,
                "max_text_tokens": cfg.max_text_tokens, "max_body": cfg.max_body,
                "busy": wb.lock.locked()}

    for path, name in (("/", "index.html"), ("/try", "try.html"), ("/steer", "steer.html")):
        app.add_api_route(path, lambda name=name: _page(name), methods=["GET"],
                          response_class=HTMLResponse)
    _feature_routes(app, wb)
    _generation_routes(app, wb)
    app.mount("/static", StaticFiles(directory=STATIC))
    app.mount("/monitor", mon)
    app.mount("/run", StaticFiles(directory=wb.info.root, html=True))
    return app
