"""The ML-backend HTTP protocol Label Studio 1.23 speaks, as a Starlette app (served by uvicorn:
``auralsam2 labelstudio serve``).

``GET /health``, ``POST /setup``, ``POST /predict``, ``POST /webhook`` (plus ``GET /metrics``
and ``GET /jobs`` for operators). Handlers translate JSON to :class:`~.backend.Backend` calls;
bad requests get a 4xx with a message, never a traceback; requests larger than
``MAX_BODY_BYTES`` are refused.
"""

from __future__ import annotations

import json
import logging

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from .backend import Backend
from .errors import BadRequest

MAX_BODY_BYTES = 16 << 20
_log = logging.getLogger("auralsam2.labelstudio")


async def _json(request: Request) -> dict:
    size = int(request.headers.get("content-length") or 0)
    if size > MAX_BODY_BYTES:
        raise BadRequest(f"request body larger than {MAX_BODY_BYTES} bytes", status=413)
    raw = await request.body()
    if len(raw) > MAX_BODY_BYTES:
        raise BadRequest(f"request body larger than {MAX_BODY_BYTES} bytes", status=413)
    try:
        body = json.loads(raw or b"{}")
    except ValueError:
        raise BadRequest("the request body is not JSON") from None
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    return body


def create_app(backend: Backend) -> Starlette:
    async def call(request: Request, method) -> JSONResponse:
        try:
            body = await _json(request) if request.method == "POST" else {}
            status, out = await run_in_threadpool(method, body)
        except BadRequest as e:
            return JSONResponse({"status": "error", "message": str(e)}, status_code=e.status)
        except Exception as e:  # noqa: BLE001 - answered, logged without payloads
            _log.exception("unexpected error in %s", request.url.path)
            return JSONResponse({"status": "error", "message": f"{type(e).__name__}: {e}"},
                                status_code=500)
        return JSONResponse(out, status_code=status)

    async def health(request: Request) -> JSONResponse:
        return await call(request, lambda _b: (200, backend.health()))

    async def setup(request: Request) -> JSONResponse:
        return await call(request, lambda b: (200, backend.setup(b)))

    async def predict(request: Request) -> JSONResponse:
        return await call(request, lambda b: (200, backend.predict(b)))

    async def webhook(request: Request) -> JSONResponse:
        return await call(request, lambda b: (201, backend.webhook(b)))

    async def metrics(request: Request) -> JSONResponse:
        return await call(request, lambda _b: (200, backend.metrics()))

    async def jobs(request: Request) -> JSONResponse:
        return await call(request, lambda _b: (200, backend.jobs()))

    return Starlette(routes=[
        Route("/", health), Route("/health", health), Route("/setup", setup, methods=["POST"]),
        Route("/predict", predict, methods=["POST"]),
        Route("/webhook", webhook, methods=["POST"]), Route("/metrics", metrics),
        Route("/jobs", jobs)])
