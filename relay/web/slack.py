"""POST /slack/commands, /slack/events, /slack/interactions.

Each checks the signature headers before reading a body, then verifies the Slack signature on
the raw body (401 and nothing else otherwise). Slack wants an answer within 3 s: decisions and
messages are queued before answering; what only informs people (replacing a card, an
ephemeral note) runs after the response is sent. relay POSTs only to response_urls under
SLACK_HOOKS_URL: a signed payload naming another is still acted on, and nothing is posted there.
A click is answered with a card's contents only once the clicker may decide it.
"""

from __future__ import annotations

import logging
from typing import Any, Awaitable, Callable

from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from relay.cards import Cards
from relay.errors import NoRoute, QueueUnavailable, UpstreamError
from relay.intake import Intake, Queued
from relay.logs import fields
from relay.messages import envelope_for
from relay.metrics import Metrics
from relay.routing import Route as Destinations
from relay.routing import Router
from relay.settings import Settings
from relay.slack_api import SlackApi
from relay.sources import slack as source
from relay.sources.slack import Card, Challenge, Click, Decision, Ignored, ReasonGiven
from relay.web.common import count_queued, guarded, read_body, unavailable

log = logging.getLogger("relay.web.slack")


def agent_label(route: Destinations) -> str:
    return f"agent `{route.destination.agent_id}` (route `{route.name}`)"


def already_text(card: Card) -> str:
    decision = card.decision
    assert decision is not None
    verdict = "approved" if decision.approve else "denied"
    return (f"Already {verdict} by <@{decision.user}> "
            f"<!date^{int(decision.at)}^{{date_short_pretty}} at {{time}}|earlier>; nothing changed.")


def closed_text(card: Card) -> str:
    return f"This approval request is no longer pending ({source.escape(card.closed or '')}); nothing was sent."


def routes(settings: Settings, intake: Intake, router: Router, slack: SlackApi | None,
           cards: Cards | None, clock: Callable[[], float], metrics: Metrics) -> list[Route]:
    secret = settings.slack_signing_secret
    if secret is None or slack is None:
        return []

    async def verified(request: Request) -> bytes:
        source.signature_headers(request.headers, clock())  # before the body is read
        body = await read_body(request, settings.max_body_bytes)
        source.verify(request.headers, body, secret, clock())
        return body

    def may_post_to(response_url: str) -> bool:
        if source.response_url_allowed(response_url, settings.slack_hooks_url):
            return True
        log.warning("response_url is not under SLACK_HOOKS_URL: nothing is posted to it",
                    extra=fields(source="slack"))
        return False

    async def respond(response_url: str, payload: dict[str, Any]) -> None:
        if may_post_to(response_url):
            await slack.respond(response_url, payload)

    def ephemeral(text: str) -> Response:
        return JSONResponse({"response_type": "ephemeral", "text": text})

    def later(call: Callable[..., Awaitable[Any]], *args: Any) -> BackgroundTask:
        async def run() -> None:
            try:
                await call(*args)
            except UpstreamError as exc:
                log.warning("slack call failed", extra=fields(method=exc.method, error=exc.code))
            except Exception as exc:  # after the answer: nobody to tell but the log, and it must not raise
                log.error("slack call failed", exc_info=exc, extra=fields(error=type(exc).__name__))
        return BackgroundTask(run)

    def tell(response_url: str, text: str) -> Response:
        """Answer 200 now; send the person an ephemeral note right after."""
        payload = {"response_type": "ephemeral", "replace_original": False, "text": text}
        return Response(status_code=200, background=later(respond, response_url, payload))

    async def commands(request: Request) -> Response:
        command = source.parse_command(await verified(request))
        if not command.text:
            return ephemeral(f"Tell the agent something, for example `{command.command} summarize the incident`.")
        try:
            route = router.for_slack(command.team, command.channel)
        except NoRoute as exc:
            log.warning("not routed", extra=fields(source="slack", team=command.team, channel=command.channel,
                                                   reason=exc.reason))
            metrics.request(source.SOURCE, "ignored")
            return ephemeral(f"Not sent: {exc.reason}.")
        inbound = command.inbound(answer_on_response_url=may_post_to(command.response_url))
        result = await intake.enqueue(envelope_for(inbound, route, clock()))
        count_queued(metrics, source.SOURCE, [result])
        if result is Queued.UNAVAILABLE:
            return ephemeral("Not sent: relay could not queue the message just now. Please try again.")
        if result is Queued.DUPLICATE:
            return ephemeral(f"Already sent to {agent_label(route)}.")
        return ephemeral(f"Sent to {agent_label(route)}. I'll confirm here when it is delivered.")

    async def events(request: Request) -> Response:
        event = source.parse_event(await verified(request))
        if isinstance(event, Challenge):
            return JSONResponse({"challenge": event.value})
        if isinstance(event, Ignored):
            log.debug("ignored", extra=fields(source="slack", reason=event.reason))
            metrics.request(source.SOURCE, "ignored")
            return JSONResponse({"ok": True})
        try:
            route = router.for_slack(event.team, event.channel)
        except NoRoute as exc:
            log.warning("not routed", extra=fields(source="slack", delivery_id=event.event_id, team=event.team,
                                                   channel=event.channel, reason=exc.reason))
            metrics.request(source.SOURCE, "ignored")
            return JSONResponse({"ok": True})
        envelope = envelope_for(event.inbound(), route, clock())
        result = await intake.enqueue(envelope)
        count_queued(metrics, source.SOURCE, [result])
        if result is Queued.UNAVAILABLE:
            return unavailable()  # Slack retries the event
        return JSONResponse({"ok": True})

    async def interactions(request: Request) -> Response:
        interaction = source.parse_interaction(await verified(request))
        if isinstance(interaction, Ignored) or cards is None:
            return Response(status_code=200)
        if isinstance(interaction, Click):
            return await click(cards, interaction)
        return await reason_given(cards, interaction)

    async def click(cards: Cards, c: Click) -> Response:
        try:
            card = await cards.load(c.card_id)
        except QueueUnavailable:
            return tell(c.response_url, "relay is unavailable right now; nothing was sent. Please try again.")
        if card is None:
            return tell(c.response_url, "This approval request is unknown or has expired; nothing was sent.")
        refusal = await cards.refusal(card, c.team, c.user)  # before anything of the card is shown
        if refusal is not None:
            log.warning("decision refused", extra=fields(card=card.card_id, user=c.user, reason=refusal))
            return tell(c.response_url, f"Not allowed: {refusal}. Nothing was sent.")
        if card.decision is not None:
            return show_decided(c, card)
        if card.closed is not None:
            return show_closed(c, card)
        if c.action == "deny_with_reason":
            try:
                await slack.open_view(c.trigger_id, source.reason_modal(card))
            except UpstreamError as exc:
                log.warning("could not open the reason form", extra=fields(card=card.card_id, error=exc.code))
                return tell(c.response_url, "Could not open the reason form; nothing was sent. Please try again.")
            return Response(status_code=200)
        decision = Decision(approve=c.action == "approve", user=c.user, user_name=c.user_name, at=clock())
        try:
            result = await cards.decide(card, decision)
        except QueueUnavailable:
            result = Queued.UNAVAILABLE
        count_queued(metrics, source.SOURCE, [result])
        if result is Queued.UNAVAILABLE:
            return tell(c.response_url, "relay could not record your decision just now; please click again.")
        if result is Queued.DUPLICATE:
            latest = await cards.load(card.card_id)
            if latest is not None and latest.decision is not None:
                return show_decided(c, latest)
            return tell(c.response_url, "This tool call was already decided; nothing changed.")
        log.info("decided", extra=fields(card=card.card_id, approve=decision.approve, user=c.user))
        replacement = {"replace_original": True, **source.decided_message(card.decided(decision))}
        return Response(status_code=200, background=later(respond, c.response_url, replacement))

    def show_decided(c: Click, card: Card) -> Response:
        return show(c, source.decided_message(card), already_text(card))

    def show_closed(c: Click, card: Card) -> Response:
        return show(c, source.closed_message(card), closed_text(card))

    def show(c: Click, message: dict[str, Any], note: str) -> Response:
        """Tell the clicker `note` (why nothing was sent), and make sure the card shows `message`."""
        async def run() -> None:
            await respond(c.response_url, {"replace_original": True, **message})
            await respond(c.response_url, {"response_type": "ephemeral", "replace_original": False, "text": note})
        return Response(status_code=200, background=later(run))

    async def reason_given(cards: Cards, r: ReasonGiven) -> Response:
        def error(text: str) -> Response:
            return JSONResponse({"response_action": "errors", "errors": {source.REASON_BLOCK: text}})

        try:
            card = await cards.load(r.card_id)
        except QueueUnavailable:
            return error("relay is unavailable right now; nothing was sent. Please try again.")
        if card is None:
            return error("This approval request is unknown or has expired; nothing was sent.")
        refusal = await cards.refusal(card, r.team, r.user)  # before anything of the card is shown
        if refusal is not None:
            return error(f"Not allowed: {refusal}. Nothing was sent.")
        if card.decision is not None:
            return error(already_text(card))
        if card.closed is not None:
            return error(closed_text(card))
        decision = Decision(approve=False, user=r.user, user_name=r.user_name, at=clock(), reason=r.reason)
        try:
            result = await cards.decide(card, decision)
        except QueueUnavailable:
            result = Queued.UNAVAILABLE
        count_queued(metrics, source.SOURCE, [result])
        if result is Queued.UNAVAILABLE:
            return error("relay could not record your decision just now; please submit again.")
        if result is Queued.DUPLICATE:
            return error("This tool call was already decided; nothing changed.")
        log.info("decided", extra=fields(card=card.card_id, approve=False, user=r.user))
        decided = source.decided_message(card.decided(decision))
        if not card.ts:
            return Response(status_code=200)
        return Response(status_code=200, background=later(slack.update_message, card.channel, card.ts, decided))

    return [
        Route("/slack/commands", guarded(source.SOURCE, commands, metrics), methods=["POST"]),
        Route("/slack/events", guarded(source.SOURCE, events, metrics), methods=["POST"]),
        Route("/slack/interactions", guarded(source.SOURCE, interactions, metrics), methods=["POST"]),
    ]
