"""The peer's ingest: relay's generic door, with arq's enqueue_job in place of relay's queue.

Per request the same work as relay/web/generic.py: read the body under the same limit,
`generic.receive` (Standard Webhooks HMAC check, JSON parse, normalization), `envelope_for`,
then one arq job holding the encoded envelope, `_job_id` = client_message_id (arq's
de-duplication: an id already queued or finished is not queued again). Served by uvicorn on
`relay.serving.server_config`, on uvloop, as `relay serve` is. The door is written out here
rather than taken from relay.web, whose package brings the rest of relay (metrics, Slack …)
that an arq app would not have.

    python -m bench.arq_peer.app PORT REDIS_URL      (hook secret in RELAY_HOOK_SECRET)
"""

from __future__ import annotations

import os
import sys
import time

import uvicorn
from arq.connections import ArqRedis, RedisSettings, create_pool
from redis.exceptions import RedisError
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from bench.arq_peer.shared import FUNCTION, HOOK_SECRET_ENV, ROUTE, SETTINGS
from relay import serving
from relay.errors import Rejected
from relay.messages import encode, envelope_for
from relay.sources import generic
from relay.web.common import read_body


def create_app(pool: ArqRedis, secret: bytes) -> Starlette:
    async def hook(request: Request) -> Response:
        try:
            body = await read_body(request, SETTINGS.max_body_bytes)
            now = time.time()
            inbound = generic.receive(request.headers, body, secret, now)
        except Rejected as exc:
            return JSONResponse({"error": exc.reason}, status_code=exc.status)
        except ClientDisconnect:
            return Response(status_code=400)
        envelope = envelope_for(inbound, ROUTE, now)
        try:
            job = await pool.enqueue_job(FUNCTION, encode(envelope), _job_id=envelope.client_message_id)
        except (RedisError, OSError):
            return JSONResponse({"error": "queue unavailable; retry later"}, status_code=503,
                                headers={"Retry-After": "5"})
        if job is None:
            return JSONResponse({"client_message_id": envelope.client_message_id, "duplicate": True})
        return JSONResponse({"client_message_id": envelope.client_message_id}, status_code=202)

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    return Starlette(routes=[Route("/hooks/generic", hook, methods=["POST"]), Route("/healthz", healthz)])


async def serve(port: int, redis_url: str, secret: bytes) -> None:
    pool = await create_pool(RedisSettings.from_dsn(redis_url))
    try:
        await uvicorn.Server(serving.server_config(create_app(pool, secret), "127.0.0.1", port)).serve()
    finally:
        await pool.aclose()


if __name__ == "__main__":
    serving.run(serve(int(sys.argv[1]), sys.argv[2], generic.decode_secret(os.environ[HOOK_SECRET_ENV])))
