"""POST /slack/commands, /slack/events, /slack/interactions: Slack's HTTP door.

Each checks the signature headers before reading a body, then verifies the Slack signature on
the raw body (401 and nothing else otherwise), parses it (sources/slack.py) and lets
relay/slack_actions.py act on it, as the Socket Mode door does. Slack wants an answer within
3 s: decisions and messages are queued before answering; what only informs people runs after
the response is sent. An answer that stored nothing (Redis away) is a 503, so Slack retries.
"""

from __future__ import annotations

from typing import Any, Callable

from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from relay.cards import Cards
from relay.intake import Intake
from relay.metrics import Metrics
from relay.routing import Router
from relay.settings import Settings
from relay.slack_actions import Answer, SlackActions
from relay.slack_api import SlackApi
from relay.sources import slack as source
from relay.web.common import guarded, read_body, unavailable


def response(answer: Answer, empty: dict[str, Any] | None = None) -> Response:
    """An Answer as HTTP: 503 when nothing was stored, else 200 with its body (or `empty`)."""
    if not answer.acknowledge:
        return unavailable()
    background = BackgroundTask(answer.then) if answer.then else None
    body = answer.body if answer.body is not None else empty
    if body is None:
        return Response(status_code=200, background=background)
    return JSONResponse(body, background=background)


def routes(settings: Settings, intake: Intake, router: Router, slack: SlackApi | None,
           cards: Cards | None, clock: Callable[[], float], metrics: Metrics) -> list[Route]:
    secret = settings.slack_signing_secret
    if secret is None or slack is None:
        return []
    actions = SlackActions(settings, intake, router, slack, cards, clock, metrics)

    async def verified(request: Request) -> bytes:
        source.signature_headers(request.headers, clock())  # before the body is read
        body = await read_body(request, settings.max_body_bytes)
        source.verify(request.headers, body, secret, clock())
        return body

    async def commands(request: Request) -> Response:
        return response(await actions.command(source.parse_command(await verified(request))))

    async def events(request: Request) -> Response:
        return response(await actions.event(source.parse_event(await verified(request))), empty={"ok": True})

    async def interactions(request: Request) -> Response:
        return response(await actions.interaction(source.parse_interaction(await verified(request))))

    return [
        Route("/slack/commands", guarded(source.SOURCE, commands, metrics), methods=["POST"]),
        Route("/slack/events", guarded(source.SOURCE, events, metrics), methods=["POST"]),
        Route("/slack/interactions", guarded(source.SOURCE, interactions, metrics), methods=["POST"]),
    ]
