"""POST /approvals: ask people in Slack to approve or deny an agent's tool call.

Bearer-authenticated with RELAY_ADMIN_TOKEN. Body:

    {"tool_call_id": "…", "tool_name": "…", "arguments": {…},
     "route": "name" | "destination": {agent_id, conversation_id?, one selector},
     "channel": "C…", "thread_ts": "…"?}

The route (named, or the one listing the channel) decides who may approve. Asking twice for
the same tool call returns the card already posted.
"""

from __future__ import annotations

import re
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from relay.cards import Cards
from relay.errors import BadRequest, ConfigError, QueueUnavailable, UpstreamError, quoted
from relay.metrics import Metrics
from relay.routing import Router
from relay.routes_file import destination_from
from relay.settings import Settings
from relay.sources.payloads import json_object
from relay.sources.slack import Card, card_id_for
from relay.web.common import guarded, read_body, require_bearer, unavailable

FIELDS = {"tool_call_id", "tool_name", "arguments", "route", "destination", "channel", "thread_ts"}


def parse_card_request(body: bytes, router: Router) -> Card:
    """The request body → a Card to post. Raises BadRequest naming the problem."""
    data = json_object(body)
    unknown = sorted(set(data) - FIELDS)
    if unknown:
        raise BadRequest(f"unknown field {quoted(unknown[0])}")
    for name in ("tool_call_id", "tool_name", "channel"):
        value = data.get(name)
        if not isinstance(value, str) or not value.strip() or len(value) > 256:
            raise BadRequest(f"{name} must be a non-empty string of at most 256 characters")
    if not re.fullmatch(r"[CGD][A-Z0-9]{2,31}", data["channel"]):
        raise BadRequest("channel must be a Slack channel id such as C0123ABC")
    arguments = data.get("arguments", {})
    if not isinstance(arguments, dict):
        raise BadRequest("arguments must be an object")
    thread_ts = data.get("thread_ts")
    if thread_ts is not None and not (isinstance(thread_ts, str) and re.fullmatch(r"[0-9]+\.[0-9]+", thread_ts)):
        raise BadRequest("thread_ts must be a Slack message ts such as 1700000000.000100")
    if ("route" in data) == ("destination" in data):
        raise BadRequest("give exactly one of route or destination")
    if "route" in data:
        if not isinstance(data["route"], str):
            raise BadRequest("route must be a string")
        route = router.pick(data["route"])
        destination = route.destination
    else:
        if not isinstance(data["destination"], dict):
            raise BadRequest("destination must be an object")
        try:
            destination = destination_from(data["destination"], "destination")
        except ConfigError as exc:
            raise BadRequest(str(exc)) from None
        route = router.listing_slack_channel(data["channel"])
    if route.slack is None or not route.slack.has_approvers:
        raise BadRequest(f"route {quoted(route.name)} has no approvers: set approvers or approver_groups "
                         f"in [routes.{route.name}.slack]")
    return Card(card_id=card_id_for(destination, data["tool_call_id"]), tool_call_id=data["tool_call_id"],
                tool_name=data["tool_name"], arguments=arguments, route=route.name, destination=destination,
                channel=data["channel"], thread_ts=thread_ts)


def routes(settings: Settings, router: Router, cards: Cards | None, metrics: Metrics) -> list[Route]:
    token = settings.admin_token
    if cards is None or token is None:
        return []

    async def create(request: Request) -> Response:
        require_bearer(request, token)
        card = parse_card_request(await read_body(request, settings.max_body_bytes), router)
        try:
            card, created = await cards.post(card)
        except QueueUnavailable:
            return unavailable()
        except UpstreamError as exc:
            return JSONResponse({"error": f"slack {exc.method}: {exc.code}"}, status_code=502)
        answer: dict[str, Any] = {"card_id": card.card_id, "channel": card.channel, "ts": card.ts,
                                  "created": created, "decided": card.decision is not None}
        return JSONResponse(answer, status_code=201 if created else 200)

    return [Route("/approvals", guarded("approvals", create, metrics), methods=["POST"])]
