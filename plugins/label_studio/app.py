"""The ML-backend HTTP protocol Label Studio 1.23 speaks, as a Starlette app (served by uvicorn:
``auralsam2 labelstudio serve``).

Why not ``label-studio-ml``: PyPI has only its 2023 1.0.9 release (old API, pinned to Flask
1.1.2), the current 2.x is not published there, and ``label-studio-sdk`` would downgrade numpy
and OpenCV in the model's environment; the four documented endpoints are small enough to serve
here.

``GET /health``, ``POST /setup``, ``POST /predict``, ``POST /webhook`` (plus ``GET /metrics``
and ``GET /jobs`` for operators). With credentials configured (``BASIC_AUTH_USER`` /
``BASIC_AUTH_PASS``, Label Studio's "Use basic authentication"), every endpoint but the bare
liveness probe ``GET /`` (``{"status": "UP"}``, for container probes) needs them, ``/health``
included (so that Label Studio's connection check reports wrong credentials): 401 before any
of the body is read.
Handlers translate JSON to :class:`~.backend.Backend` calls; bad requests get a 4xx with a
message, never a traceback; a body over ``max_body_bytes`` is refused with 413 as soon as that
many bytes have arrived (chunked or not: the rest is never read).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import logging

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from auralsam2_core.errors import BadRequest

from .backend import Backend

_log = logging.getLogger("auralsam2.labelstudio")
OPEN_PATHS = ("/",)  # the liveness probe: {"status": "UP"}, nothing else


def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON")


async def _json(request: Request, limit: int) -> dict:
    declared = request.headers.get("content-length")
    if declared is not None and not declared.isdigit():
        raise BadRequest("bad Content-Length")
    if declared is not None and int(declared) > limit:
        raise BadRequest(f"request body larger than {limit} bytes", status=413)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BadRequest(f"request body larger than {limit} bytes", status=413)
        chunks.append(chunk)
    try:  # NaN and Infinity are not JSON, whatever Python's json module allows
        body = json.loads(b"".join(chunks) or b"{}", parse_constant=_no_constant)
    except (ValueError, RecursionError):
        raise BadRequest("the request body is not JSON") from None
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    return body


def _basic_auth_ok(header: str, expected: tuple[str, str]) -> bool:
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        user, sep, password = base64.b64decode(value.strip(), validate=True).decode().partition(
            ":")
    except (binascii.Error, ValueError):
        return False
    # Both compared in full, in constant time: no early exit telling which one was wrong.
    ok_user = hmac.compare_digest(user.encode(), expected[0].encode())
    ok_pass = hmac.compare_digest(password.encode(), expected[1].encode())
    return bool(sep) and ok_user and ok_pass


def create_app(backend: Backend) -> Starlette:
    credentials = backend.settings.basic_auth
    limit = backend.settings.max_body_bytes

    async def call(request: Request, method) -> JSONResponse:
        if credentials and request.url.path not in OPEN_PATHS and not _basic_auth_ok(
                request.headers.get("authorization", ""), credentials):
            return JSONResponse({"status": "error", "message": "HTTP Basic authentication "
                                 "required (Label Studio: Settings -> Model -> Use basic "
                                 "authentication)"}, status_code=401,
                                headers={"WWW-Authenticate": 'Basic realm="AuralSAM2"',
                                         "Connection": "close"})  # its body goes unread
        try:
            body = await _json(request, limit) if request.method == "POST" else {}
            status, out = await run_in_threadpool(method, body)
        except BadRequest as e:
            # A 413 leaves the rest of the body unread: the connection cannot be reused.
            headers = {"Connection": "close"} if e.status == 413 else None
            return JSONResponse({"status": "error", "message": str(e)}, status_code=e.status,
                                headers=headers)
        except Exception as e:  # noqa: BLE001 - answered, logged without payloads
            _log.exception("unexpected error in %s", request.url.path)
            return JSONResponse({"status": "error", "message": f"{type(e).__name__}: {e}"},
                                status_code=500)
        return JSONResponse(out, status_code=status)

    async def alive(request: Request) -> JSONResponse:
        return await call(request, lambda _b: (200, {"status": "UP"}))

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
        Route("/", alive), Route("/health", health), Route("/setup", setup, methods=["POST"]),
        Route("/predict", predict, methods=["POST"]),
        Route("/webhook", webhook, methods=["POST"]), Route("/metrics", metrics),
        Route("/jobs", jobs)])
