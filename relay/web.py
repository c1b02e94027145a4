"""The web process: Starlette routes that read the raw body, call a source, enqueue, answer.

    POST /hooks/generic   Standard Webhooks → 202 {"client_message_id"} once durably queued
    GET  /healthz         the process is up
    GET  /readyz          Redis answers

Every refusal is a JSON `{"error": reason}` with the status the source chose (401, 400, 413,
415); Redis trouble is a 503 with Retry-After. Nothing is enqueued unless the whole request
was accepted.
"""

from __future__ import annotations

import logging
import time
from typing import Callable

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from relay.errors import QueueUnavailable, Rejected, TooLarge, quoted
from relay.logs import fields
from relay.messages import Envelope, envelope_for
from relay.queue import Queue
from relay.routing import Router
from relay.settings import Settings
from relay.sources import generic

log = logging.getLogger("relay.web")


async def read_body(request: Request, limit: int) -> bytes:
    """The raw body, refusing (413) past `limit` bytes without reading the rest."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise TooLarge(f"body is larger than {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise TooLarge(f"body is larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def create_app(settings: Settings, queue: Queue, *, clock: Callable[[], float] = time.time) -> Starlette:
    router = Router(settings.routes)

    async def accept(envelope: Envelope) -> Response:
        context = envelope.log_fields()
        try:
            queued = await queue.enqueue(envelope)
        except QueueUnavailable as exc:
            log.error("queue unavailable", extra=fields(**context, error=str(exc)))
            return JSONResponse({"error": "queue unavailable; retry later"}, status_code=503,
                                headers={"Retry-After": "5"})
        if not queued:
            log.info("duplicate", extra=fields(**context))
            return JSONResponse({"client_message_id": envelope.client_message_id, "duplicate": True})
        log.info("accepted", extra=fields(**context, kind=envelope.kind))
        return JSONResponse({"client_message_id": envelope.client_message_id}, status_code=202)

    def refuse(source: str, delivery_id: str | None, exc: Rejected) -> Response:
        log.warning("rejected", extra=fields(source=source, delivery_id=delivery_id,
                                             status=exc.status, reason=exc.reason))
        return JSONResponse({"error": exc.reason}, status_code=exc.status)

    async def generic_hook(request: Request) -> Response:
        secret = settings.hook_secret
        assert secret is not None  # the route exists only when the secret is set
        try:
            body = await read_body(request, settings.max_body_bytes)
            inbound = generic.receive(request.headers, body, secret, clock())
            envelope = envelope_for(inbound, router.pick(inbound.route), clock())
        except Rejected as exc:
            claimed = request.headers.get("webhook-id")
            return refuse(generic.SOURCE, quoted(claimed, 80) if claimed else None, exc)
        except ClientDisconnect:
            return Response(status_code=400)
        return await accept(envelope)

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        try:
            await queue.ping()
        except QueueUnavailable:
            return JSONResponse({"status": "redis unavailable"}, status_code=503)
        return JSONResponse({"status": "ready"})

    routes = [Route("/healthz", healthz), Route("/readyz", readyz)]
    if settings.hook_secret is not None:
        routes.append(Route("/hooks/generic", generic_hook, methods=["POST"]))
    return Starlette(routes=routes, exception_handlers={HTTPException: _http_error, Exception: _server_error})


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    reason = {404: "not found", 405: "method not allowed"}.get(exc.status_code, exc.detail)
    return JSONResponse({"error": reason}, status_code=exc.status_code, headers=exc.headers)


async def _server_error(request: Request, exc: Exception) -> Response:
    log.error("internal error", exc_info=exc, extra=fields(path=request.url.path))
    return JSONResponse({"error": "internal error"}, status_code=500)
