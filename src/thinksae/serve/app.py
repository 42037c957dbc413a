"""The workbench web app (FastAPI) over one run directory. Pages and their JSON endpoints:

=====================================  ===============================================================
``GET /``                              features index (search, sort, filter); data: ``GET /api/features``
``GET /features/feature-N.html``       a feature's page (the dashboard's, with verdict and explanation);
                                       data: ``GET /api/features/N``
``GET /try``                           try text (:mod:`.trytext`); ``POST /api/encode``
                                       ``{"text", "template", "special_tokens"}``, traces to pick:
                                       ``GET /api/traces``
``GET /steer``                         steer side by side; ``POST /api/steer`` (server-sent events),
                                       ``POST /api/steer/save`` (writes ``steer.json`` as the CLI)
``GET /monitor/``                      the monitor's own app (:mod:`thinksae.monitor.server`), mounted
``GET /run/...``                       the run directory's files (report ``/run/index.html``, dashboard)
``GET /api/info``                      run, model, SAE, hookpoint, limits, whether a generation runs,
                                       the steer form's defaults and the index's score
                                       (:mod:`.defaults`)
=====================================  ===============================================================

``/api/features`` query: ``q`` (substring of trigger token, label, verdict or explanation),
``sort`` (any score; ``default``: the run's, :func:`~.defaults.index_sort`), ``dir``
(asc/desc), ``label``, ``verdict``, ``min.SCORE``/``max.SCORE``
(any number of them), ``live`` (1: leave out dead and rare features), ``offset``, ``limit``
(≤ 1000). Answers ``{total, features, dead_or_rare, default_sort, scores, rows}``; each row has
the analysis' scores plus ``verdict``, ``explanation``, ``top_tokens`` and ``context``
(:mod:`.snippets`).

The model is used by one request at a time (encode, steer, save, monitor share one lock); a
request that finds it busy gets 429 with ``Retry-After``. Bad input gets a 4xx with
``{"error": one line}`` (413 body too large, 400 not JSON, 422 invalid); the server goes on. A
client that goes away stops its generation after the current token.
"""

from __future__ import annotations

import time
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from ..errors import ThinksaeError
from ..features.card import feature_info
from ..features.dashboard import feature_page as render
from ..features.scores import LABELS
from ..monitor.engine import Monitor
from ..monitor.server import RequestError, add_error_handlers, error_response, event_stream, read_json
from ..monitor.server import create_app as monitor_app
from ..validate.verdicts import VERDICTS, read_verdicts
from .config import ServeConfig
from .defaults import HIDDEN_LABELS, prompting
from .steering import parse_steer, save_sweep, stream_steer
from .trytext import encode_text, strongest
from .workbench import Query, Workbench, read_traces, scores_of, select

STATIC = Path(__file__).parent / "static"
MAX_PROMPT_CHARS = 8000


def _busy() -> JSONResponse:
    return error_response(429, "the model is busy with another request; try again when it ends",
                          {"Retry-After": "2"})


def _page(name: str) -> HTMLResponse:
    return HTMLResponse((STATIC / name).read_text())


def _query(request: Request, scores: list[str], default_sort: str) -> Query:
    """The index query of ``request`` (module docstring); ``sort=default`` is ``default_sort``,
    highest first unless ``dir`` says otherwise."""
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
    direction = params.get("dir", "desc" if sort == "default" else "asc")
    sort = default_sort if sort == "default" else sort
    if sort not in scores + ["feature", "label", "verdict", "top_token_text"]:
        raise RequestError(422, f"sort: no column {sort!r}")
    if direction not in ("asc", "desc") or not 0 <= offset or not 1 <= limit <= 1000:
        raise RequestError(422, "dir: asc or desc; offset >= 0; limit in 1..1000")
    live = params.get("live", "0")
    if live not in ("0", "1"):
        raise RequestError(422, "live: 0 or 1")
    return Query(params.get("q", "")[:200], sort, direction == "desc",
                 params.get("label") or None, params.get("verdict") or None, bounds, offset, limit,
                 live == "1")


def _feature_routes(app: FastAPI, wb: Workbench) -> None:
    @app.get("/api/features")
    async def features(request: Request):

        rows = wb.rows()
        scores = scores_of(rows)
        query = _query(request, scores, wb.index_sort()["score"])
        total, page = select(rows, query)
        hidden = sum(r.get("label") in HIDDEN_LABELS for r in rows)
        return {"total": total, "features": len(rows), "dead_or_rare": hidden,
                "sort": query.sort, "dir": "desc" if query.desc else "asc",
                "default_sort": wb.index_sort(), "scores": scores, "labels": list(LABELS),
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
                          wb.max_act, wb.steer_defaults())
    except ThinksaeError as e:
        raise RequestError(422, str(e)) from None
    if not wb.markers().single_token and (req.window.start, req.window.end) != ("prompt", "none"):
        raise RequestError(422, "this tokenizer has no single <think>/</think> tokens, so that "
                                "window would never open: use start prompt, end none (the "
                                "page's defaults)")
    return req


def _encode_body(body) -> dict:
    """A checked try-text body: ``text``, ``template`` (default true: wrap the text in the run's
    chat template) and ``special_tokens`` (default true; without the template: the tokenizer's
    own special tokens, e.g. BOS)."""
    flags = ("template", "special_tokens")
    if not isinstance(body, dict) or not isinstance(body.get("text"), str) or \
            set(body) - {"text", *flags} or \
            not all(isinstance(body.get(k, True), bool) for k in flags):
        raise RequestError(422, 'expected {"text": str, "template": bool (optional), '
                                '"special_tokens": bool (optional)}')
    return {"text": body["text"], **{k: body.get(k, True) for k in flags}}


def _encode(wb: Workbench, body: dict) -> dict:
    """Try text's answer (:mod:`.trytext`): per token ids, texts, top-k, part, norm and sink
    mark, the sink rule used and the strongest features over the kept tokens."""
    rule, reference = wb.sink_rule()
    enc = encode_text(wb.bound, body["text"], (body["template"], body["special_tokens"]),
                      prompting(wb.info.config), wb.special_ids(), rule, wb.cfg.max_text_tokens)
    return {"ids": enc.ids, "tokens": enc.tokens, "top": enc.top, "k": wb.sae.cfg.k,
            "parts": enc.parts, "norms": enc.norms, "sink": [r is not None for r in enc.sinks],
            "sink_reason": enc.sinks, "wrapped": enc.how,
            "sink_rule": {"norm_multiple": rule.norm_multiple, "median_norm": enc.median_norm,
                          "reference": reference},
            "strongest": strongest(enc)}


def _event_stream(wb: Workbench, work) -> StreamingResponse:
    """Run ``work(emit, cancel)`` in a thread holding the model lock (already acquired) and
    stream what it emits as server-sent events; the client going away sets ``cancel``."""
    return event_stream(wb.lock, work, "thinksae-serve")


def _generation_routes(app: FastAPI, wb: Workbench) -> None:
    cfg = wb.cfg

    @app.post("/api/encode")
    async def encode(request: Request):
        body = _encode_body(await read_json(request, cfg.max_body))
        if not wb.lock.acquire(blocking=False):
            return _busy()
        try:
            return await run_in_threadpool(_encode, wb, body)
        except ThinksaeError as e:
            raise RequestError(422, str(e)) from None
        finally:
            wb.lock.release()

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
    prompt = prompting(wb.info.config)  # the monitor prompts the model as the run did
    monitor = Monitor(wb.model, wb.tokenizer, wb.sae, wb.info.hookpoint,
                      alert_log=wb.info.root / "serve" / "alerts.jsonl",
                      max_new_tokens=cfg.max_new_tokens, system_prompt=prompt.system_prompt,
                      think_prefill=prompt.think_prefill)
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
                "steer_defaults": {**wb.steer_defaults().to_dict(), **wb.steer_example(),
                                   "think_tokens": wb.markers().single_token},
                "index_sort": wb.index_sort(),
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
