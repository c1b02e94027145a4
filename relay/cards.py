"""Approval cards: post one per tool call, check who may decide, record the first decision.

The first decision wins atomically: its approval message is queued under an id derived from
the card, so the queue's de-duplication refuses a second decision however the clicks race.
Cards are kept in Redis (records of kind "card") for `CARD_TTL`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from typing import Callable

from relay.errors import NoRoute, UpstreamError
from relay.logs import fields
from relay.messages import envelope_for
from relay.queue import Queue
from relay.routing import Route, Router
from relay.slack_api import SlackApi
from relay.sources.slack import Card, Decision, card_message
from relay.intake import Intake, Queued

log = logging.getLogger("relay.cards")

CARD_TTL = 7 * 24 * 3600.0
KIND = "card"


class Cards:
    def __init__(self, queue: Queue, slack: SlackApi, router: Router, intake: Intake,
                 clock: Callable[[], float] = time.time) -> None:
        self.queue, self.slack, self.router, self.intake, self.clock = queue, slack, router, intake, clock

    async def post(self, card: Card) -> tuple[Card, bool]:
        """Post a card unless this tool call already has one. Returns (card, newly posted)."""
        existing = await self.queue.create_record(KIND, card.card_id, card.to_json(), CARD_TTL)
        if existing is not None:
            return Card.from_json(existing), False
        try:
            ts = await self.slack.post_message(card.channel, card_message(card), card.thread_ts)
        except UpstreamError:
            await self.queue.delete_record(KIND, card.card_id)  # so that asking again can succeed
            raise
        card = replace(card, ts=ts)
        await self.queue.update_record(KIND, card.card_id, card.to_json())
        log.info("card posted", extra=fields(card=card.card_id, route=card.route, channel=card.channel))
        return card, True

    async def load(self, card_id: str) -> Card | None:
        raw = await self.queue.record(KIND, card_id)
        return Card.from_json(raw) if raw else None

    def route_of(self, card: Card) -> Route:
        route = self.router.get(card.route)
        if route is None:
            raise NoRoute(f"route {card.route!r} is no longer configured")
        return route

    async def refusal(self, card: Card, team: str, user: str) -> str | None:
        """Why this Slack user may not decide this card, or None if they may."""
        route = self.router.get(card.route)
        rule = route.slack if route else None
        if rule is None or not rule.has_approvers:
            return f"no approvers are configured for route `{card.route}`"
        if team not in rule.teams:
            return "this workspace may not decide tool calls for this route"
        if user in rule.approvers:
            return None
        for group in rule.approver_groups:
            try:
                if user in await self.slack.group_members(group):
                    return None
            except UpstreamError as exc:
                log.warning("could not read a user group", extra=fields(group=group, error=exc.code))
        return f"you are not an approver for route `{card.route}`"

    async def decide(self, card: Card, decision: Decision) -> Queued:
        """Queue the decision's approval message; on success remember it on the card."""
        route = Route(card.route, card.destination)
        envelope = envelope_for(card.decision_inbound(decision), route, self.clock())
        result = await self.intake.enqueue(envelope)
        if result is Queued.QUEUED:
            await self.queue.update_record(KIND, card.card_id, card.decided(decision).to_json())
        return result
