"""POST /discord/interactions: Discord slash commands and approval-card buttons.

Trust before anything is read: the signature headers' shape and the timestamp's window are
checked before the body is read, then the Ed25519 signature over timestamp + body. `PING` is
answered `PONG`. Discord wants an answer within 3 s: a command is queued, then answered with a
deferred response ("thinking…"), which relay edits once the message is delivered (or not) and
follows with the agent's answer (the interaction's webhook, for 15 minutes).

A button on an approval card: the clicker must be one of the route's approvers (by user id or
role, in one of its servers) before anything about the tool call is shown; the first decision
wins (discord_cards.py) and the card is updated in place, without buttons. "Deny with
reason…" opens a form; its reason denies.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Callable

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from relay.discord_cards import DiscordCard, DiscordCards, shown_message
from relay.door_rules import pick_discord
from relay.errors import NoRoute, QueueUnavailable
from relay.intake import Intake, Queued
from relay.logs import fields
from relay.messages import envelope_for
from relay.metrics import Metrics
from relay.routing import Router
from relay.settings import Settings
from relay.sources import discord as source
from relay.sources.discord import Click, Command, Ignored, Ping, ReasonGiven, Who
from relay.sources.slack import Decision
from relay.web.common import count_queued, guarded, read_body

log = logging.getLogger("relay.web.discord")


def routes(settings: Settings, intake: Intake, router: Router, cards: DiscordCards | None,
           clock: Callable[[], float], metrics: Metrics) -> list[Route]:
    public_key = settings.discord_public_key
    if public_key is None:
        return []

    def say(text: str) -> Response:
        """An answer only the person who asked sees."""
        return JSONResponse(source.respond(source.CHANNEL_MESSAGE, source.message(text, ephemeral=True)))

    async def interactions(request: Request) -> Response:
        source.signature_headers(request.headers, clock())  # before the body is read
        body = await read_body(request, settings.max_body_bytes)
        source.verify(request.headers, body, public_key, clock())
        interaction = source.parse(body)
        if isinstance(interaction, Ping):
            return JSONResponse(source.respond(source.PONG))
        if isinstance(interaction, Ignored):
            metrics.request(source.SOURCE, "ignored")
            return say("relay does not handle this interaction.")
        if isinstance(interaction, Command):
            return await command(interaction)
        if cards is None:
            return say("Approval cards are not set up on this relay (DISCORD_BOT_TOKEN).")
        return await decision(cards, interaction)

    async def command(c: Command) -> Response:
        if not c.text:
            return say(f"Tell the agent something, for example `/{c.name} summarize the incident`.")
        try:
            route = pick_discord(router.routes, c.who.guild, c.who.channel) if c.who.guild else None
        except NoRoute as exc:
            route, reason = None, exc.reason
        else:
            reason = "direct messages are not routed to an agent"
        if route is None:
            log.warning("not routed", extra=fields(source=source.SOURCE, delivery_id=c.interaction, reason=reason))
            metrics.request(source.SOURCE, "ignored")
            return say(f"Not sent: {reason}.")
        result = await intake.enqueue(envelope_for(c.inbound(), route, clock()))
        count_queued(metrics, source.SOURCE, [result])
        if result is Queued.UNAVAILABLE:
            return say("Not sent: relay could not queue the message just now. Please try again.")
        if result is Queued.DUPLICATE:
            return say(f"Already sent to agent `{route.destination.agent_id}`.")
        return JSONResponse(source.respond(source.DEFERRED_CHANNEL_MESSAGE))

    async def decision(cards: DiscordCards, i: Click | ReasonGiven) -> Response:
        try:
            card = await cards.load(i.card_id)
        except QueueUnavailable:
            return say("relay is unavailable right now; nothing was sent. Please try again.")
        if card is None:
            return say("This approval request is unknown or has expired; nothing was sent.")
        refusal = cards.refusal(card, i.who.guild, i.who.user, i.who.roles)
        if refusal is not None:  # before anything about the tool call is shown
            log.warning("decision refused", extra=fields(card=card.card_id, user=i.who.user, reason=refusal))
            return say(f"Not allowed: {refusal}. Nothing was sent.")
        if card.decision is not None or card.closed is not None:
            return JSONResponse(source.respond(source.UPDATE_MESSAGE, shown_message(card)))
        if isinstance(i, Click) and i.action == "reason":
            return JSONResponse(source.reason_form(card.card_id, card.tool_name))
        approve = isinstance(i, Click) and i.action == "approve"
        made = Decision(approve=approve, user=i.who.user, user_name=i.who.username, at=clock(),
                        reason=i.reason if isinstance(i, ReasonGiven) else None)
        return await decide(cards, card, made, i.who)

    async def decide(cards: DiscordCards, card: DiscordCard, made: Decision, who: Who) -> Response:
        try:
            result = await cards.decide(card, made)
        except QueueUnavailable:
            result = Queued.UNAVAILABLE
        count_queued(metrics, source.SOURCE, [result])
        if result is Queued.UNAVAILABLE:
            return say("relay could not record your decision just now; please click again.")
        if result is Queued.DUPLICATE:
            latest = await cards.load(card.card_id)
            if latest is not None and latest.decision is not None:
                return JSONResponse(source.respond(source.UPDATE_MESSAGE, shown_message(latest)))
            return say("This tool call was already decided; nothing changed.")
        log.info("decided", extra=fields(card=card.card_id, approve=made.approve, user=who.user))
        return JSONResponse(source.respond(source.UPDATE_MESSAGE, shown_message(replace(card, decision=made))))

    return [Route("/discord/interactions", guarded(source.SOURCE, interactions, metrics), methods=["POST"])]
