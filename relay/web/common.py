"""What every door shares: reading the raw body under a limit, bearer tokens, refusing, and
never answering a 500 without counting and logging it."""

from __future__ import annotations

import hmac
import logging
import time
from typing import Awaitable, Callable, Sequence

from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from relay.errors import BadRequest, BadSignature, Rejected, TooLarge, quoted
from relay.intake import Queued
from relay.logs import fields
from relay.metrics import Metrics

Endpoint = Callable[[Request], Awaitable[Response]]

log = logging.getLogger("relay.web")


MAX_TOKEN_LENGTH = 1024


async def read_body(request: Request, limit: int) -> bytes:
    """The raw body, refusing (413) past `limit` bytes without reading the rest."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not (declared.isascii() and declared.isdigit()):
            raise BadRequest("Content-Length is not a number of bytes")
        if len(declared) > 18 or int(declared) > limit:  # bounded before int()
            raise TooLarge(f"body is larger than {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise TooLarge(f"body is larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def require_bearer(request: Request, token: str) -> None:
    """Constant-time check of `Authorization: Bearer <token>`; raises BadSignature (401)."""
    given = request.headers.get("authorization", "")
    if len(given) > MAX_TOKEN_LENGTH:
        raise BadSignature("missing or wrong bearer token")
    scheme, _, value = given.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), token.encode()):
        raise BadSignature("missing or wrong bearer token")


def guarded(source: str, handler: Endpoint, metrics: Metrics, delivery_header: str | None = None) -> Endpoint:
    """A door's endpoint: a Rejected request gets its status and JSON reason, and is logged with
    the delivery id it claims (unverified, so shortened); a vanished client gets a 400. Each
    answer's latency is observed, each refusal counted. A bug is a counted, logged 500, not an
    exception for the server (which would drop the connection)."""
    async def endpoint(request: Request) -> Response:
        started = time.perf_counter()
        try:
            return await handler(request)
        except Rejected as exc:
            metrics.rejected(source, exc)
            claimed = request.headers.get(delivery_header) if delivery_header else None
            return refuse(source, quoted(claimed, 80) if claimed else None, exc)
        except ClientDisconnect:
            metrics.request(source, "rejected", "disconnected")
            return Response(status_code=400)
        except Exception as exc:
            metrics.request(source, "error", "internal")
            log.error("internal error", exc_info=exc, extra=fields(source=source, error=type(exc).__name__))
            return JSONResponse({"error": "internal error"}, status_code=500)
        finally:
            metrics.answered(source, time.perf_counter() - started)
    return endpoint


def count_queued(metrics: Metrics, source: str, results: Sequence[Queued]) -> None:
    """One request's messages queued: unavailable if Redis failed, duplicate if all were."""
    if Queued.UNAVAILABLE in results:
        outcome = "unavailable"
    elif all(r is Queued.DUPLICATE for r in results):
        outcome = "duplicate"
    else:
        outcome = "accepted"
    metrics.request(source, outcome)


def ignore(metrics: Metrics, source: str, reason: str, delivery_id: str | None = None) -> Response:
    """A signed request relay acknowledges and acts on no further: logged, counted, answered 200."""
    logging.getLogger(f"relay.web.{source}").info("ignored", extra=fields(source=source, delivery_id=delivery_id,
                                                                          reason=reason))
    metrics.request(source, "ignored")
    return JSONResponse({"ignored": reason})


def refuse(source: str, delivery_id: str | None, exc: Rejected) -> Response:
    log.warning("rejected", extra=fields(source=source, delivery_id=delivery_id,
                                         status=exc.status, reason=exc.reason))
    return JSONResponse({"error": exc.reason}, status_code=exc.status)


def unavailable() -> Response:
    return JSONResponse({"error": "queue unavailable; retry later"}, status_code=503, headers={"Retry-After": "5"})
