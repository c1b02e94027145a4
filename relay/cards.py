"""Approval cards: post one per tool call, check who may decide, record the first decision.

One card per tool call and agent, however many relays ask at once (POST /approvals, or
`relay watch` replicas seeing the same control request): whoever claims the card first
("card-claim", `CLAIM_TTL`) posts it; the others wait for the stored card. A crash between the
claim and the post frees the claim when it expires. Cards are kept in Redis (records of kind
"card", keyed by agent and tool call) for `CARD_TTL`.

The first decision wins atomically, whatever its source: every decision on a tool call is
queued under the same id (`messages.decision_id`), so the queue's de-duplication refuses a
second one however clicks, GitHub `/approve` lines and webhooks race.
A card whose request ended elsewhere is closed: its note replaces the buttons, and a late
click is told it is no longer pending.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import replace
from typing import Awaitable, Callable, TypeVar

from relay.errors import QueueUnavailable, UpstreamError
from relay.logs import fields
from relay.messages import ApprovalRequest, envelope_for
from relay.queue import Queue
from relay.routing import Destination, Route, Router
from relay.settings import Settings
from relay.slack_api import SlackApi
from relay.sources.slack import Card, Decision, card_id_for, card_message, closed_message
from relay.intake import Intake, Queued

log = logging.getLogger("relay.cards")

CARD_TTL = 7 * 24 * 3600.0
KIND = "card"
CLAIM = "card-claim"
#: How long a claim to post a card holds without the card being stored: longer than a slow
#: chat.postMessage (SlackApi's timeout is 10 s), short enough that a crash blocks little.
CLAIM_TTL = 30.0
#: How long to wait for a card another relay is posting before giving up (its claim lapses first).
WAIT_FOR_OTHERS = 2 * CLAIM_TTL
WAIT_STEP = 0.05
T = TypeVar("T")


async def post_once(queue: Queue, claim_kind: str, card_id: str, load: Callable[[str], Awaitable[T | None]],
                    post: Callable[[], Awaitable[T]]) -> tuple[T, bool]:
    """The stored card `card_id`, else the one `post` makes under a claim no other relay holds
    (waiting for another relay's post while its claim lasts). Returns (card, newly posted)."""
    deadline = time.monotonic() + WAIT_FOR_OTHERS
    while True:
        existing = await load(card_id)
        if existing is not None:
            return existing, False
        if await queue.create_record(claim_kind, card_id, "posting", CLAIM_TTL) is None:
            return await post(), True
        if time.monotonic() > deadline:
            raise QueueUnavailable(f"card {card_id} is still being posted by another relay")
        await asyncio.sleep(WAIT_STEP)


class Cards:
    def __init__(self, queue: Queue, slack: SlackApi, router: Router, intake: Intake,
                 clock: Callable[[], float] = time.time) -> None:
        self.queue, self.slack, self.router, self.intake, self.clock = queue, slack, router, intake, clock

    async def post(self, card: Card) -> tuple[Card, bool]:
        """Post a card unless this tool call already has one. Returns (card, newly posted).

        Raises UpstreamError when Slack refuses the post, QueueUnavailable when Redis is away
        or another relay's post of this card neither finished nor lapsed in time.
        """
        return await post_once(self.queue, CLAIM, card.card_id, self.load, lambda: self._post_claimed(card))

    async def _post_claimed(self, card: Card) -> Card:
        try:
            ts = await self.slack.post_message(card.channel, card_message(card), card.thread_ts)
        except UpstreamError:
            await self.queue.delete_record(CLAIM, card.card_id)  # so that asking again can succeed
            raise
        card = replace(card, ts=ts)
        # The claim is left to lapse: from now on the stored card answers everyone who asks.
        await self.queue.create_record(KIND, card.card_id, card.to_json(), CARD_TTL)
        log.info("card posted", extra=fields(card=card.card_id, route=card.route, channel=card.channel,
                                              request_id=card.request_id))
        return card

    async def ask(self, route: Route, request: ApprovalRequest, channel: str,
                  thread_ts: str | None) -> tuple[Card, bool]:
        """The card for an agent's control request, posted in `channel` (in `thread_ts`'s
        thread) unless the tool call already has one. Returns (card, newly posted).

        A card closed earlier ("no longer pending") whose tool call is asked for again is
        opened again: the device is waiting on it after all. Raises like `post`.
        """
        if route.slack is None or not route.slack.has_approvers:
            log.warning("card for a route without approvers: nobody can decide it",
                        extra=fields(route=route.name, request_id=request.request_id))
        card = Card(card_id=card_id_for(route.destination, request.tool_call_id),
                    tool_call_id=request.tool_call_id, tool_name=request.tool_name, arguments=request.input,
                    route=route.name, destination=route.destination, channel=channel, thread_ts=thread_ts,
                    request_id=request.request_id)
        card, created = await self.post(card)
        if not created and card.closed is not None and card.decision is None:
            card = await self._reopen(card)
        return card, created

    async def _reopen(self, card: Card) -> Card:
        card = replace(card, closed=None)
        await self.queue.update_record(KIND, card.card_id, card.to_json())
        if card.ts:
            try:
                await self.slack.update_message(card.channel, card.ts, card_message(card))
            except UpstreamError as exc:
                log.warning("could not show the card again", extra=fields(card=card.card_id, error=exc.code))
        log.info("card opened again", extra=fields(card=card.card_id, route=card.route))
        return card

    async def close(self, destination: Destination, tool_call_id: str, note: str, *,
                    decided_too: bool = False) -> bool:
        """The request behind a tool call's card ended elsewhere: show `note`, remove the
        buttons, and make later clicks answer "no longer pending". Only an undecided card,
        unless `decided_too` (a decision the device no longer accepted). True when this call
        closed it; False for no card, a card already closed, or a decided one. The Slack update
        is best-effort (logged); the record is what later clicks read.
        """
        card = await self.load(card_id_for(destination, tool_call_id))
        if card is None or card.closed is not None or (card.decision is not None and not decided_too):
            return False
        card = card.closed_with(note)
        if not await self.queue.update_record(KIND, card.card_id, card.to_json()):
            return False  # expired meanwhile
        if card.ts:
            try:
                await self.slack.update_message(card.channel, card.ts, closed_message(card))
            except UpstreamError as exc:
                log.warning("could not update the closed card", extra=fields(card=card.card_id, error=exc.code))
        log.info("card closed", extra=fields(card=card.card_id, route=card.route, decided=card.decision is not None))
        return True

    async def load(self, card_id: str) -> Card | None:
        raw = await self.queue.record(KIND, card_id)
        return Card.from_json(raw) if raw else None

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


def cards_for(settings: Settings, queue: Queue, slack: SlackApi | None) -> Cards | None:
    """relay's own Cards, as the watcher and the worker use them; None when Slack cannot post."""
    if slack is None or not slack.can_post:
        return None
    return Cards(queue, slack, Router(settings.routes, settings.slack_fallback, settings.github_fallback),
                 Intake(queue))
