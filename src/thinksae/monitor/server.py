"""The monitor's web app (FastAPI): a page, and generations streamed as server-sent events.

- ``GET /`` the page (``GET /sse.js`` its event-stream reader); ``GET /api/info`` the SAE,
  hookpoint, default features and rules; ``GET /api/alerts?limit=N`` the last alerts of the JSONL log.
- ``POST /api/generate`` with a JSON body ``{"prompt": str, "features": [int] | "1,2",
  "rules": [rule, ...], "max_new_tokens": int, "value": "topk" | "pre"}`` (all but the prompt
  optional; ``value`` defaults to the monitor's) answers
  ``text/event-stream``: one ``token``, ``alert`` or ``done`` event per message (data: the event
  as JSON), or an ``error`` event if generation fails.

Bad requests get a 4xx with ``{"error": one line}`` and the server goes on: 413 for a body over
the limit, 400 for malformed JSON, 422 for invalid fields or rules, 429 while another generation
runs (one at a time; the model is never shared). Generation runs in a worker thread; when the
client goes away it is cancelled after the current token. Binds 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import asyncio
import json
import math
import threading
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, StreamingResponse

from ..errors import ThinksaeError
from .alerts import read_alerts
from .events import VALUE_LABELS, VALUES

PAGE = Path(__file__).parent / "static" / "index.html"
SSE_JS = PAGE.with_name("sse.js")  # also loaded by the workbench pages
_FIELDS = {"prompt", "features", "rules", "max_new_tokens", "value"}


def _finite(obj):
    """``obj`` with NaN/inf floats as None (JSON has no such numbers; browsers reject them)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


def sse(item: dict) -> str:
    """One server-sent event: ``event: <type>`` and the item as strict JSON."""
    try:
        data = json.dumps(item, allow_nan=False)
    except ValueError:
        data = json.dumps(_finite(item))
    return f"event: {item['type']}\ndata: {data}\n\n"


class RequestError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def error_response(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    """A JSON error: ``{"error": message}`` with ``status`` (and ``headers``)."""
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def add_error_handlers(app: FastAPI) -> None:
    """Answer a :class:`RequestError` with its status and ``{"error": message}``, a
    :class:`ThinksaeError` with 422, anything else with 500 and its first line (shared by the
    monitor and the workbench)."""

    @app.exception_handler(RequestError)
    async def request_error(_request: Request, exc: RequestError):
        return error_response(exc.status, str(exc))

    @app.exception_handler(ThinksaeError)
    async def thinksae_error(_request: Request, exc: ThinksaeError):
        return error_response(422, str(exc))

    @app.exception_handler(Exception)
    async def unexpected(_request: Request, exc: Exception):
        return error_response(500, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")


async def read_json(request: Request, limit: int) -> Any:
    """The request body parsed as JSON: 413 past ``limit`` bytes, 400 when it is not JSON."""
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > limit):
        raise RequestError(413, f"request body over {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise RequestError(413, f"request body over {limit} bytes")
    try:
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RequestError(400, f"the body is not valid JSON ({e})") from None


def _features(value: Any, cap: int) -> list[int]:
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list):
        raise RequestError(422, "features: expected a list of feature indices or '1,2,3'")
    out = []
    for item in items:
        if isinstance(item, str) and item.strip().isdigit():
            item = int(item.strip())
        elif isinstance(item, str) and not item.strip():
            continue
        if isinstance(item, bool) or not isinstance(item, int) or item < 0:
            raise RequestError(422, f"features: {item!r} is not a feature index")
        out.append(item)
    if len(out) > cap:
        raise RequestError(422, f"features: {len(out)} given, at most {cap}")
    return list(dict.fromkeys(out))


def parse_request(body: Any, monitor, max_prompt_chars: int, max_features: int):
    """A checked :class:`~thinksae.monitor.engine.Plan` from a request body."""
    if not isinstance(body, dict):
        raise RequestError(422, "expected a JSON object with a prompt")
    unknown = sorted(set(body) - _FIELDS)
    if unknown:
        raise RequestError(422, f"unknown field {unknown[0]!r} (fields: {', '.join(sorted(_FIELDS))})")
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise RequestError(422, "prompt: missing or empty")
    if len(prompt) > max_prompt_chars:
        raise RequestError(422, f"prompt: {len(prompt)} characters, at most {max_prompt_chars}")
    features = _features(body["features"], max_features) if "features" in body else None
    rules = body.get("rules")
    if rules is not None and isinstance(rules, dict):
        rules = rules.get("rules", rules)
    if rules is not None and not isinstance(rules, list):
        raise RequestError(422, "rules: expected a list of rules")
    limit = body.get("max_new_tokens", monitor.max_new_tokens)
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= monitor.max_new_tokens:
        raise RequestError(422, f"max_new_tokens: expected an integer in 1..{monitor.max_new_tokens}")
    value = body.get("value", monitor.value)
    if value not in VALUES:
        raise RequestError(422, f"value: expected one of {', '.join(VALUES)} (got {value!r})")
    try:
        plan = monitor.prepare(prompt, features=features, rules=rules, max_new_tokens=limit,
                               source="rules", value=value)
    except ThinksaeError as e:
        raise RequestError(422, str(e)) from None
    if plan.watch is not None and len(plan.watch.features) > max_features:
        raise RequestError(422, f"features: {len(plan.watch.features)} watched, at most "
                                f"{max_features}")
    return plan


def event_stream(lock: threading.Lock, work, name: str) -> StreamingResponse:
    """Run ``work(put, cancel)`` in a thread that holds ``lock`` (already acquired; released when
    it ends) and stream what it ``put``s as server-sent events; an error is sent as one
    ``error`` event (the server goes on) and the client going away sets ``cancel``."""
    cancel = threading.Event()
    queue: asyncio.Queue = asyncio.Queue()
    loop = asyncio.get_running_loop()

    def put(item) -> None:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, item)
        except RuntimeError:  # the event loop is gone: nobody listens any more
            cancel.set()

    def worker() -> None:
        try:
            work(put, cancel)
        except ThinksaeError as e:
            put({"type": "error", "message": str(e)})
        except Exception as e:  # reported to the client; the server goes on
            put({"type": "error", "message": f"{type(e).__name__}: {e}".splitlines()[0]})
        finally:
            lock.release()
            put(None)

    threading.Thread(target=worker, name=name, daemon=True).start()

    async def stream():
        try:
            while (item := await queue.get()) is not None:
                yield sse(item)
        finally:
            cancel.set()

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def create_app(monitor, max_body: int = 64 * 1024, max_prompt_chars: int = 8000,
               max_features: int = 64) -> FastAPI:
    """The app serving ``monitor`` (one generation at a time)."""
    app = FastAPI(title="thinksae monitor", docs_url=None, redoc_url=None, openapi_url=None)
    lock = threading.Lock()
    page = PAGE.read_text()
    app.state.lock = lock
    add_error_handlers(app)

    @app.get("/", response_class=HTMLResponse)
    async def index():
        return HTMLResponse(page)

    @app.get("/sse.js")
    async def sse_js():
        return FileResponse(SSE_JS, media_type="text/javascript")

    @app.get("/api/info")
    async def info():
        sae = monitor.sae
        return {"hookpoint": monitor.hookpoint, "num_latents": sae.num_latents, "k": sae.cfg.k,
                "features": monitor.features, "rules": [r.to_dict() for r in monitor.rules],
                "value": monitor.value, "values": VALUE_LABELS, "max_new_tokens": monitor.max_new_tokens,
                "max_features": max_features, "max_prompt_chars": max_prompt_chars,
                "busy": lock.locked()}

    @app.get("/api/alerts")
    async def alerts(limit: int = 100):
        if not 1 <= limit <= 10000:
            raise RequestError(422, "limit: expected 1..10000")
        if monitor.log is None:
            return {"log": None, "alerts": []}
        return {"log": str(monitor.log.path), "alerts": read_alerts(monitor.log.path)[-limit:]}

    @app.post("/api/generate")
    async def generate(request: Request):
        body = await read_json(request, max_body)
        plan = parse_request(body, monitor, max_prompt_chars, max_features)
        if not lock.acquire(blocking=False):
            return error_response(429, "a generation is already running; try again when it ends",
                                  {"Retry-After": "2"})
        def work(put, cancel) -> None:
            monitor.emit(plan, lambda event: put(event.to_dict()), cancel)
        return event_stream(lock, work, "thinksae-monitor")

    return app


def serve(monitor, host: str = "127.0.0.1", port: int = 8765) -> None:
    """Run the app with uvicorn until interrupted."""
    import uvicorn

    if host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: serving on {host}: anyone who can reach it can run generations "
              "(there is no authentication)")
    print(f"thinksae monitor: http://{host}:{port}/")
    uvicorn.run(create_app(monitor), host=host, port=port, log_level="warning",
                limit_concurrency=64, timeout_keep_alive=5)
