"""Approval cards in Discord: the model of cards.py (Slack), with buttons in a channel.

One card per tool call and agent, however many watchers ask (a claim in Redis, then the stored
card; a crash between the two frees the claim after `cards.CLAIM_TTL`). Who may decide: the route's
Discord `approvers` (user ids) and members of its `approver_roles`, in one of its servers;
nothing about the tool call is shown to anyone else. The first decision wins, whatever its
source: it is queued under the tool call's one decision id (`messages.decision_id`), so a Slack
click, a GitHub `/approve` or a second Discord click after it is acknowledged and sends nothing.
Records (through `Queue`, 7 days): `rec:discord-card:{card}`, `rec:discord-card-claim:{card}`.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, replace
from typing import Any, Callable

from relay.cards import post_once
from relay.discord_api import DiscordApi
from relay.errors import UpstreamError
from relay.intake import Intake, Queued
from relay.logs import fields
from relay.messages import ApprovalRequest, Inbound, approval_decision, approval_message, client_message_id, \
    envelope_for
from relay.queue import Queue
from relay.routing import Destination, Route, Router
from relay.sources import discord as source
from relay.sources.slack import Decision

log = logging.getLogger("relay.discord_cards")

KIND = "discord-card"
CLAIM = "discord-card-claim"
CARD_TTL = 7 * 24 * 3600.0


@dataclass(frozen=True)
class DiscordCard:
    card_id: str
    tool_call_id: str
    tool_name: str
    arguments: dict[str, Any]
    route: str
    destination: Destination
    channel: str
    message_id: str | None = None
    request_id: str | None = None
    decision: Decision | None = None
    closed: str | None = None

    def to_json(self) -> str:
        data = asdict(self)
        data["destination"] = self.destination.to_dict()
        return json.dumps(data, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> DiscordCard:
        data = json.loads(text)
        decision = data.pop("decision")
        return cls(**{**data, "destination": Destination.from_dict(data["destination"]),
                      "decision": Decision(**decision) if decision else None})

    def decision_inbound(self, decision: Decision) -> Inbound:
        message_id = client_message_id(KIND, self.card_id)
        message = approval_message([approval_decision(self.tool_call_id, decision.approve, decision.reason)])
        return Inbound(source.SOURCE, f"card:{self.card_id}", message_id, message, route=self.route,
                       reply={"via": "discord-card", "channel": self.channel, "message": self.message_id})


def card_id_for(destination: Destination, tool_call_id: str) -> str:
    return client_message_id(KIND, destination.agent_id, tool_call_id)


def pending_message(card: DiscordCard) -> dict[str, Any]:
    text = "**Approval needed**\n" + source.tool_text(card.destination.agent_id, card.tool_name, card.arguments,
                                                      card.route, card.tool_call_id)
    return {**source.message(text), "components": source.card_components(card.card_id)}


def shown_message(card: DiscordCard) -> dict[str, Any]:
    """The card once decided or closed: what happened, and no buttons."""
    tool = source.tool_text(card.destination.agent_id, card.tool_name, card.arguments, card.route, card.tool_call_id)
    lines = []
    if card.decision is not None:
        verdict = "Approved" if card.decision.approve else "Denied"
        lines.append(f"{'✅' if card.decision.approve else '⛔'} **{verdict}** by <@{card.decision.user}> "
                     f"<t:{int(card.decision.at)}:f>")
        if card.decision.reason:
            lines.append(f"> {card.decision.reason[:500]}")
    if card.closed:
        lines.append(f"ℹ️ {card.closed}")
    if not lines:
        lines.append("**Approval needed**")
    return {**source.message("\n".join(lines) + "\n" + tool), "components": []}


class DiscordCards:
    def __init__(self, queue: Queue, discord: DiscordApi, router: Router, intake: Intake,
                 clock: Callable[[], float] = time.time) -> None:
        self.queue, self.discord, self.router, self.intake, self.clock = queue, discord, router, intake, clock

    async def ask(self, route: Route, request: ApprovalRequest, channel: str) -> tuple[DiscordCard, bool]:
        """The card for an agent's request in `channel`, unless the tool call has one. Returns
        (card, newly posted). Raises UpstreamError (Discord refused) or QueueUnavailable."""
        card = DiscordCard(card_id_for(route.destination, request.tool_call_id), request.tool_call_id,
                           request.tool_name, request.input, route.name, route.destination, channel,
                           request_id=request.request_id)
        return await post_once(self.queue, CLAIM, card.card_id, self.load, lambda: self._post_claimed(card))

    async def _post_claimed(self, card: DiscordCard) -> DiscordCard:
        try:
            message_id = await self.discord.post_message(card.channel, pending_message(card))
        except UpstreamError:
            await self.queue.delete_record(CLAIM, card.card_id)
            raise
        card = replace(card, message_id=message_id)
        await self.queue.create_record(KIND, card.card_id, card.to_json(), CARD_TTL)
        log.info("card posted", extra=fields(card=card.card_id, route=card.route, where="discord"))
        return card

    async def load(self, card_id: str) -> DiscordCard | None:
        raw = await self.queue.record(KIND, card_id)
        return DiscordCard.from_json(raw) if raw else None

    def refusal(self, card: DiscordCard, guild: str, user: str, roles: tuple[str, ...]) -> str | None:
        """Why this Discord user may not decide this card, or None if they may."""
        route = self.router.get(card.route)
        rule = route.discord if route else None
        if rule is None or not rule.has_approvers:
            return f"no approvers are configured for route `{card.route}`"
        if guild not in rule.guilds:
            return "this server may not decide tool calls for this route"
        return None if rule.may_decide(user, roles) else f"you are not an approver for route `{card.route}`"

    async def decide(self, card: DiscordCard, decision: Decision) -> Queued:
        """Queue the decision's approval message; on success remember it on the card."""
        envelope = envelope_for(card.decision_inbound(decision), Route(card.route, card.destination), self.clock())
        result = await self.intake.enqueue(envelope)
        if result is Queued.QUEUED:
            await self.queue.update_record(KIND, card.card_id, replace(card, decision=decision).to_json())
        return result

    async def close(self, destination: Destination, tool_call_id: str, note: str, *,
                    decided_too: bool = False) -> bool:
        """The request ended elsewhere: show `note`, drop the buttons. As `Cards.close`."""
        card = await self.load(card_id_for(destination, tool_call_id))
        if card is None or card.closed is not None or (card.decision is not None and not decided_too):
            return False
        card = replace(card, closed=note)
        if not await self.queue.update_record(KIND, card.card_id, card.to_json()):
            return False
        if card.message_id:
            try:
                await self.discord.edit_message(card.channel, card.message_id, shown_message(card))
            except UpstreamError as exc:
                log.warning("could not update the closed card", extra=fields(card=card.card_id, error=exc.code))
        return True
