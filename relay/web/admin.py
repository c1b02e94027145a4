"""Operator endpoints, bearer-authenticated with RELAY_ADMIN_TOKEN (not served without it).

    GET  /admin/queue                       depths: ready, in flight, delayed, dead
    GET  /admin/stats                       Queue.stats(): messages by state, oldest age, reasons, failures
    GET  /admin/dead-letters                dead letters, oldest first
    POST /admin/dead-letters/replay         {"ids": [...]} or {"all": true}, and "force": true; same
                                            client_message_id. Without force, a user message an earlier
                                            attempt may have delivered more than an hour ago is held
                                            back (the device forgets ids after an hour: it could run twice)
    POST /admin/dead-letters/drop           {"ids": [...]}
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from relay.errors import BadRequest, QueueUnavailable
from relay.metrics import Metrics
from relay.policy import DEVICE_DEDUP_WINDOW, replay_may_repeat
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


def requested_ids(body: bytes, allow_all: bool) -> tuple[list[str] | None, bool]:
    """{"ids": [...]} → the ids; {"all": true} → None (every one); either with "force": true
    when `allow_all` (replay). Raises BadRequest."""
    data = json_object(body)
    force = data.pop("force", False) if allow_all else False
    if force is not True and force is not False:
        raise BadRequest("force must be true or false")
    if allow_all and set(data) == {"all"} and data["all"] is True:  # not `== {"all": True}`: 1 == True
        return None, force
    ids = data.get("ids")
    if set(data) != {"ids"} or not isinstance(ids, list) or not ids or not all(isinstance(i, str) for i in ids):
        raise BadRequest('body must be {"ids": ["client_message_id", …]}' + (' or {"all": true}' if allow_all else ""))
    return ids, force


@dataclass
class Settled:
    done: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    held: list[str] = field(default_factory=list)  # replays that could run twice; force to replay


HELD_REASON = (f"an earlier attempt may have reached the device more than {DEVICE_DEDUP_WINDOW / 3600:g} h ago, "
               "and the device forgets ids after that: the agent may see it twice")


async def settle(queue: Queue, verb: str, ids: list[str] | None, *, force: bool = False,
                 now: float | None = None) -> Settled:
    """Replay or drop the dead letters `ids` (None: every one); `relay dlq` too."""
    chosen, missing = await queue.dead_by_id(ids)
    now = time.time() if now is None else now
    out = Settled(missing=missing)
    for entry in chosen:
        if verb == "replay" and not force and _may_repeat(entry, now):
            out.held.append(entry.client_message_id)
        elif await (queue.replay(entry) if verb == "replay" else queue.drop(entry)):
            out.done.append(entry.client_message_id)
    return out


def _may_repeat(entry: DeadEntry, now: float) -> bool:
    e = entry.envelope
    return replay_may_repeat(e.kind, e.attempts, entry.code, e.received_at, e.queued_at, now)


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
        ids, force = requested_ids(await read_body(request, limit), True)
        out = await settle(queue, "replay", ids, force=force)
        return JSONResponse({"replayed": out.done, "missing": out.missing, "held": out.held,
                             **({"held_because": HELD_REASON} if out.held else {})})

    async def drop(request: Request) -> Response:
        ids, _ = requested_ids(await read_body(request, limit), False)
        out = await settle(queue, "drop", ids)
        return JSONResponse({"dropped": out.done, "missing": out.missing})

    return [
        Route("/admin/queue", admin(depth)),
        Route("/admin/stats", admin(stats)),
        Route("/admin/dead-letters", admin(dead_letters)),
        Route("/admin/dead-letters/replay", admin(replay), methods=["POST"]),
        Route("/admin/dead-letters/drop", admin(drop), methods=["POST"]),
    ]
