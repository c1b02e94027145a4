"""Operator endpoints, bearer-authenticated with RELAY_ADMIN_TOKEN (not served without it).

    GET  /admin/queue                       depths: ready, in flight, delayed, dead
    GET  /admin/stats                       Queue.stats(): messages by state, oldest age, reasons, failures
    GET  /admin/dead-letters                dead letters, oldest first
    POST /admin/dead-letters/replay         {"ids": [...]} or {"all": true}; same client_message_id
    POST /admin/dead-letters/drop           {"ids": [...]}
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from relay.errors import BadRequest, QueueUnavailable
from relay.metrics import Metrics
from relay.queue import DeadEntry, Queue
from relay.settings import Settings
from relay.sources.payloads import json_object
from relay.web.common import guarded, read_body, require_bearer, unavailable

ADMIN_BODY_LIMIT = 64 * 1024  # a list of ids; never more than RELAY_MAX_BODY_BYTES either


def dead_letter_view(entry: DeadEntry) -> dict[str, Any]:
    e = entry.envelope
    return {"client_message_id": entry.client_message_id, "at": entry.at, "code": entry.code,
            "reason": entry.reason, "route": e.route, "source": e.source, "delivery_id": e.delivery_id,
            "kind": e.kind, "attempts": e.attempts}


def requested_ids(body: bytes, allow_all: bool) -> list[str] | None:
    """{"ids": [...]} → the ids; {"all": true} → None (every one). Raises BadRequest."""
    data = json_object(body)
    if allow_all and set(data) == {"all"} and data["all"] is True:  # not `== {"all": True}`: 1 == True
        return None
    ids = data.get("ids")
    if set(data) != {"ids"} or not isinstance(ids, list) or not ids or not all(isinstance(i, str) for i in ids):
        raise BadRequest('body must be {"ids": ["client_message_id", …]}' + (' or {"all": true}' if allow_all else ""))
    return ids


async def settle(queue: Queue, verb: str, ids: list[str] | None) -> tuple[list[str], list[str]]:
    """Replay or drop the dead letters `ids` (None: every one) → (done, missing); `relay dlq` too."""
    chosen, missing = await queue.dead_by_id(ids)
    act = queue.replay if verb == "replay" else queue.drop
    return [e.client_message_id for e in chosen if await act(e)], missing


def routes(settings: Settings, queue: Queue, metrics: Metrics) -> list[Route]:
    token = settings.admin_token
    if token is None:
        return []
    limit = min(ADMIN_BODY_LIMIT, settings.max_body_bytes)

    def admin(handler: Any) -> Any:
        async def endpoint(request: Request) -> Response:
            require_bearer(request, token)
            try:
                return await handler(request)
            except QueueUnavailable:
                return unavailable()
        return guarded("admin", endpoint, metrics)

    async def depth(request: Request) -> Response:
        return JSONResponse(asdict(await queue.depth()))

    async def stats(request: Request) -> Response:
        return JSONResponse(asdict(await queue.stats()))

    async def dead_letters(request: Request) -> Response:
        return JSONResponse({"dead_letters": [dead_letter_view(e) for e in await queue.dead_letters()]})

    async def replay(request: Request) -> Response:
        done, missing = await settle(queue, "replay", requested_ids(await read_body(request, limit), True))
        return JSONResponse({"replayed": done, "missing": missing})

    async def drop(request: Request) -> Response:
        done, missing = await settle(queue, "drop", requested_ids(await read_body(request, limit), False))
        return JSONResponse({"dropped": done, "missing": missing})

    return [
        Route("/admin/queue", admin(depth)),
        Route("/admin/stats", admin(stats)),
        Route("/admin/dead-letters", admin(dead_letters)),
        Route("/admin/dead-letters/replay", admin(replay), methods=["POST"]),
        Route("/admin/dead-letters/drop", admin(drop), methods=["POST"]),
    ]
