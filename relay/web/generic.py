"""POST /hooks/generic: Standard Webhooks signed JSON → one message."""

from __future__ import annotations

from typing import Callable

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from relay.messages import envelope_for
from relay.metrics import Metrics
from relay.routing import Router
from relay.settings import Settings
from relay.sources import generic
from relay.intake import Intake, Queued
from relay.web.common import count_queued, guarded, read_body, unavailable


def routes(settings: Settings, intake: Intake, router: Router, clock: Callable[[], float],
           metrics: Metrics) -> list[Route]:
    secret = settings.hook_secret
    if secret is None:
        return []

    async def hook(request: Request) -> Response:
        generic.signature_headers(request.headers, clock())  # before the body is read
        body = await read_body(request, settings.max_body_bytes)
        inbound = generic.receive(request.headers, body, secret, clock())
        envelope = envelope_for(inbound, router.pick(inbound.route), clock())
        result = await intake.enqueue(envelope)
        count_queued(metrics, generic.SOURCE, [result])
        if result is Queued.UNAVAILABLE:
            return unavailable()
        if result is Queued.DUPLICATE:
            return JSONResponse({"client_message_id": envelope.client_message_id, "duplicate": True})
        # The id is a UUID: no escaping needed, and no JSON encoder on the hot path.
        return Response(b'{"client_message_id":"%s"}' % envelope.client_message_id.encode(), status_code=202,
                        media_type="application/json")

    return [Route("/hooks/generic", guarded(generic.SOURCE, hook, metrics, "webhook-id"), methods=["POST"])]
