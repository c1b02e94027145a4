"""POST /linear/webhook: Linear agent sessions, and comments with the trigger → the routed agent.

Trust before anything is read: the signature header's shape is checked before the body is
read; the body is verified with the secret of the route its workspace and team go to (a
route's own `secret_env`, else LINEAR_WEBHOOK_SECRET), then its signed `webhookTimestamp` must
be fresh. Linear wants an answer within 5 seconds: the message is queued before answering.

Linear shows an agent session as unresponsive unless a first activity comes within 10 s: with
LINEAR_API_KEY, relay answers a new session with a `thought` ("Received…") right after
queueing it, and reacts 👀 to a comment it queued.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from relay.door_rules import LinearRule, linear_secret, pick_linear
from relay.errors import BadRequest, BadSignature, NoRoute, UpstreamError
from relay.intake import Intake, Queued
from relay.linear_api import LinearApi
from relay.logs import fields
from relay.messages import Inbound, envelope_for
from relay.metrics import Metrics
from relay.routing import Router
from relay.settings import Settings
from relay.sources import linear as source
from relay.sources.linear import CommentEvent, Ignored, SessionEvent
from relay.sources.payloads import json_object
from relay.web.common import count_queued, guarded, ignore, read_body, unavailable

log = logging.getLogger("relay.web.linear")

RECEIVED = "Received. Passing this to the agent…"


def admitted(event: SessionEvent | CommentEvent, rule: LinearRule) -> Inbound | str:
    """What an event becomes under a route's rule, or why it is ignored."""
    if isinstance(event, SessionEvent):
        return event.inbound()  # Linear made the session for the agent: a person asked
    if not rule.comments:
        return "comments are not enabled for this route"
    if event.written_by_a_bot:
        return "written by an integration or by relay"
    if not event.mentions(rule.trigger):
        return f"no {rule.trigger}"
    return event.inbound()


def routes(settings: Settings, intake: Intake, router: Router, linear: LinearApi | None,
           clock: Callable[[], float], metrics: Metrics) -> list[Route]:
    if not any(r.linear for r in settings.routes):
        return []
    shared = settings.linear_webhook_secret

    def ignored(reason: str, delivery: str | None = None) -> Response:
        return ignore(metrics, source.SOURCE, reason, delivery)

    def verified(request: Request, body: bytes) -> dict[str, Any]:
        """The payload, verified with the secret of the route it claims (read only to choose it)."""
        try:
            data: dict[str, Any] | None = json_object(body)
        except BadRequest as exc:
            data, problem = None, exc
        team = source.claimed(data) if data is not None else None
        secret = (linear_secret(router.routes, team.organization, team.key, team.id) if team else None) or shared
        if secret is None:
            raise BadSignature("no signing secret is configured for the team this delivery names")
        source.verify(request.headers, body, secret)
        if data is None:
            raise problem
        source.fresh(data, clock())
        return data

    async def webhook(request: Request) -> Response:
        source.signature_of(request.headers)  # before the body is read
        body = await read_body(request, settings.max_body_bytes)
        event = source.parse(verified(request, body))
        if isinstance(event, Ignored):
            return ignored(event.reason)
        try:
            route = pick_linear(router.routes, event.team.organization, event.team.key, event.team.id)
        except NoRoute as exc:
            return ignored(exc.reason)
        assert route.linear is not None
        inbound = admitted(event, route.linear)
        if isinstance(inbound, str):
            return ignored(inbound, event.comment_id if isinstance(event, CommentEvent) else event.session_id)
        result = await intake.enqueue(envelope_for(inbound, route, clock()))
        count_queued(metrics, source.SOURCE, [result])
        if result is Queued.UNAVAILABLE:
            return unavailable()
        background = BackgroundTask(acknowledge, linear, event) if linear and result is Queued.QUEUED else None
        return JSONResponse({"client_message_id": inbound.client_message_id,
                             "duplicate": result is Queued.DUPLICATE}, background=background)

    return [Route("/linear/webhook", guarded(source.SOURCE, webhook, metrics, "linear-delivery"), methods=["POST"])]


async def acknowledge(linear: LinearApi, event: SessionEvent | CommentEvent) -> None:
    """A new session's first activity (Linear's 10 s), or 👀 on a comment. Best-effort."""
    try:
        if isinstance(event, SessionEvent):
            if event.action == "created":
                await linear.activity(event.session_id, "thought", RECEIVED)
        else:
            await linear.react(event.comment_id, "👀")
    except UpstreamError as exc:
        log.warning("could not acknowledge on Linear", extra=fields(source=source.SOURCE, error=exc.code))
    except Exception as exc:  # after the answer: nobody to tell but the log, and it must not raise
        log.error("could not acknowledge on Linear", exc_info=exc, extra=fields(error=type(exc).__name__))
