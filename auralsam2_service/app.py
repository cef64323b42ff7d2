"""The service's HTTP API (Starlette, served by uvicorn: ``auralsam2 serve``).

=====================================  ==========================================================
``GET /health``                        liveness, model version, queue depth (no token needed)
``POST /v1/jobs``                      ``{"video": path or URL, "options": {...}}`` -> 202 job
``GET /v1/jobs/{id}``                  status and progress
``GET /v1/jobs/{id}/results``          the engine's results JSON (409 until done)
``GET /metrics``                       Prometheus text
=====================================  ==========================================================

Everything but ``/health`` needs ``Authorization: Bearer <token>`` (401 otherwise, before any
of the body is read). A full queue answers 429 with ``Retry-After``; paths outside the media
roots and URLs on other hosts 403; a body over ``max_body_bytes`` 413 as soon as that many
bytes have arrived (chunked or not: the rest is never read); anything malformed 400 with the
field at fault (``{"error": ..., "field": ...}``), never a 500.
"""

from __future__ import annotations

import hmac
import json

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

from .job_service import JobService, Refused


def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON")


async def read_json(request: Request, limit: int):
    """The request's JSON, reading no more than ``limit`` bytes of its body (413 beyond)."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise Refused(413 if declared.isdigit() else 400,
                      f"request body larger than {limit} bytes" if declared.isdigit()
                      else "bad Content-Length")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise Refused(413, f"request body larger than {limit} bytes")
        chunks.append(chunk)
    try:  # NaN and Infinity are not JSON, whatever Python's json module allows
        return json.loads(b"".join(chunks), parse_constant=_no_constant)
    except (ValueError, RecursionError):
        raise Refused(400, "the body must be JSON") from None


def create_app(service: JobService) -> Starlette:
    token = service.settings.token.encode()

    def authorised(request: Request) -> bool:
        got = request.headers.get("authorization", "")
        scheme, _, value = got.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(value.encode(), token)

    def refused(e: Refused) -> JSONResponse:
        headers = {"Retry-After": str(e.retry_after)} if e.retry_after else {}
        if e.status == 413:  # the rest of the body is not read: end the connection
            headers["Connection"] = "close"
        body = {"error": str(e), **({"field": e.field} if e.field else {})}
        return JSONResponse(body, status_code=e.status, headers=headers)

    def guarded(handler):
        async def endpoint(request: Request):
            if not authorised(request):
                return JSONResponse({"error": "missing or wrong bearer token"},
                                    status_code=401, headers={"WWW-Authenticate": "Bearer",
                                                              "Connection": "close"})
            try:
                return await handler(request)
            except Refused as e:
                return refused(e)
        return endpoint

    async def health(request: Request) -> JSONResponse:
        return JSONResponse(service.health())

    async def submit(request: Request) -> JSONResponse:
        body = await read_json(request, service.settings.max_body_bytes)
        if not isinstance(body, dict) or "video" not in body:
            raise Refused(400, "the body must be {\"video\": ..., \"options\": {...}}")
        unknown = sorted(set(body) - {"video", "options"})
        if unknown:
            raise Refused(400, "unknown field; the body is {\"video\": ..., \"options\": "
                               "{...}}", field=unknown[0][:40])
        job = await run_in_threadpool(service.submit, body["video"], body.get("options"))
        return JSONResponse(job.public(), status_code=202,
                            headers={"Location": f"/v1/jobs/{job.id}"})

    async def status(request: Request) -> JSONResponse:
        return JSONResponse(service.get(request.path_params["job_id"]).public())

    async def results(request: Request) -> JSONResponse:
        doc = await run_in_threadpool(service.results, request.path_params["job_id"])
        return JSONResponse(doc)

    async def metrics(request: Request) -> PlainTextResponse:
        return PlainTextResponse(service.metrics_text())

    return Starlette(routes=[
        Route("/health", health),
        Route("/v1/jobs", guarded(submit), methods=["POST"]),
        Route("/v1/jobs/{job_id}", guarded(status)),
        Route("/v1/jobs/{job_id}/results", guarded(results)),
        Route("/metrics", guarded(metrics)),
    ])
