"""POST /hooks/mapped/{route}: a JSON webhook from any sender, mapped to a message by the route's
`[routes.NAME.mapped]` table (verification, identity, text template).

The route is named by the path, so its verification is known before anything is read: the
signature headers are checked first, then the body (under RELAY_MAX_BODY_BYTES) is verified,
decoded, and mapped. A template path the payload lacks renders empty and is logged (the path,
never the payload). A path naming no mapped route is a 404, as for any door that is not there.
"""

from __future__ import annotations

import logging
from typing import Callable

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from relay.errors import Rejected
from relay.intake import Intake, Queued
from relay.logs import fields
from relay.messages import envelope_for
from relay.metrics import Metrics
from relay.routing import Router
from relay.settings import Settings
from relay.sources import mapped as source
from relay.web.common import count_queued, guarded, read_body, unavailable

log = logging.getLogger("relay.web.mapped")


class NotMapped(Rejected):
    status = 404


def routes(settings: Settings, intake: Intake, router: Router, clock: Callable[[], float],
           metrics: Metrics) -> list[Route]:
    if not any(r.mapped for r in settings.routes):
        return []

    async def hook(request: Request) -> Response:
        route = router.get(request.path_params["route"])
        if route is None or route.mapped is None:
            raise NotMapped("no route maps webhooks at this path")
        rule = route.mapped
        source.signature_headers(rule, request.headers, clock())  # before the body is read
        body = await read_body(request, settings.max_body_bytes)
        mapped = source.receive(route.name, rule, request.headers, body, clock())
        if mapped.missing:
            log.warning("template paths missing from the payload; rendered empty",
                        extra=fields(source=source.SOURCE, delivery_id=mapped.inbound.delivery_id, route=route.name,
                                     missing=",".join(mapped.missing)))
        envelope = envelope_for(mapped.inbound, route, clock())
        result = await intake.enqueue(envelope)
        count_queued(metrics, source.SOURCE, [result])
        if result is Queued.UNAVAILABLE:
            return unavailable()
        if result is Queued.DUPLICATE:
            return JSONResponse({"client_message_id": envelope.client_message_id, "duplicate": True})
        return JSONResponse({"client_message_id": envelope.client_message_id}, status_code=202)

    return [Route("/hooks/mapped/{route}", guarded(source.SOURCE, hook, metrics, "webhook-id"), methods=["POST"])]
