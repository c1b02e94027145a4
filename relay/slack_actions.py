"""What relay does with a Slack command, event or interaction, whichever door carried it.

A door is how a request arrives: an HTTP route (web/slack.py, signed requests) or the app's
Socket Mode connection (socket_mode.py). The source (sources/slack.py) reads what it carries.
This module acts on it: route, queue (through the intake, so de-duplication is the same), decide
cards (who asks is checked before anything of a card is shown; decisions go through
`Cards.decide`), and say what to answer, as an `Answer` each door turns into its own reply.

Decisions and messages are queued before answering; what only informs people (replacing a
card, an ephemeral note) is the answer's `then`, run after the answer is sent. relay POSTs only
to response_urls under SLACK_HOOKS_URL: a payload naming another is still acted on, and nothing
is posted there.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from relay.cards import Cards
from relay.errors import NoRoute, QueueUnavailable, UpstreamError
from relay.intake import Intake, Queued
from relay.logs import fields
from relay.messages import Envelope, envelope_for
from relay.metrics import Metrics
from relay.routing import Route, Router
from relay.settings import Settings
from relay.slack_api import SlackApi
from relay.sources import slack as source
from relay.sources.slack import Card, Challenge, Click, Command, Decision, Ignored, Mention, ReasonGiven

log = logging.getLogger("relay.slack")

Later = Callable[[], Awaitable[None]]


@dataclass(frozen=True)
class Answer:
    """How a door answers one Slack request.

    `acknowledge`: False when nothing could be stored (Redis away) and Slack should send the
    request again: HTTP 503, no Socket Mode acknowledgement. `body`: the immediate answer (an
    ephemeral message, a challenge, a form's errors); None for a bare 200 or acknowledgement.
    `then`: what only informs people, to run once the answer is sent; it never raises.
    """

    acknowledge: bool = True
    body: dict[str, Any] | None = None
    then: Later | None = None


NOT_STORED = Answer(acknowledge=False)
DONE = Answer()


def agent_label(route: Route) -> str:
    return f"agent `{route.destination.agent_id}` (route `{route.name}`)"


def already_text(card: Card) -> str:
    decision = card.decision
    assert decision is not None
    verdict = "approved" if decision.approve else "denied"
    return (f"Already {verdict} by <@{decision.user}> "
            f"<!date^{int(decision.at)}^{{date_short_pretty}} at {{time}}|earlier>; nothing changed.")


def closed_text(card: Card) -> str:
    return f"This approval request is no longer pending ({source.escape(card.closed or '')}); nothing was sent."


def ephemeral(text: str) -> Answer:
    return Answer(body={"response_type": "ephemeral", "text": text})


def form_error(text: str) -> Answer:
    """A view submission refused: the text shows under the form's reason field."""
    return Answer(body={"response_action": "errors", "errors": {source.REASON_BLOCK: text}})


class SlackActions:
    def __init__(self, settings: Settings, intake: Intake, router: Router, slack: SlackApi, cards: Cards | None,
                 clock: Callable[[], float], metrics: Metrics) -> None:
        self.settings, self.intake, self.router, self.slack = settings, intake, router, slack
        self.cards, self.clock, self.metrics = cards, clock, metrics

    async def answer(self, request: Command | Challenge | Ignored | Mention | Click | ReasonGiven) -> Answer:
        """Any parsed request (a Socket Mode envelope's payload can be any of them)."""
        if isinstance(request, Command):
            return await self.command(request)
        if isinstance(request, (Click, ReasonGiven)):
            return await self.interaction(request)
        return await self.event(request)

    # -- slash commands ------------------------------------------------------------------------

    async def command(self, command: Command) -> Answer:
        if not command.text:
            return ephemeral(f"Tell the agent something, for example `{command.command} summarize the incident`.")
        try:
            route = self.router.for_slack(command.team, command.channel)
        except NoRoute as exc:
            log.warning("not routed", extra=fields(source="slack", team=command.team, channel=command.channel,
                                                   reason=exc.reason))
            self.metrics.request(source.SOURCE, "ignored")
            return ephemeral(f"Not sent: {exc.reason}.")
        inbound = command.inbound(answer_on_response_url=self._may_post_to(command.response_url))
        result = await self._enqueue(envelope_for(inbound, route, self.clock()))
        if result is Queued.UNAVAILABLE:
            return ephemeral("Not sent: relay could not queue the message just now. Please try again.")
        if result is Queued.DUPLICATE:
            return ephemeral(f"Already sent to {agent_label(route)}.")
        return ephemeral(f"Sent to {agent_label(route)}. I'll confirm here when it is delivered.")

    # -- events --------------------------------------------------------------------------------

    async def event(self, event: Challenge | Ignored | Mention) -> Answer:
        if isinstance(event, Challenge):
            return Answer(body={"challenge": event.value})
        if isinstance(event, Ignored):
            log.debug("ignored", extra=fields(source="slack", reason=event.reason))
            self.metrics.request(source.SOURCE, "ignored")
            return DONE
        try:
            route = self.router.for_slack(event.team, event.channel)
        except NoRoute as exc:
            log.warning("not routed", extra=fields(source="slack", delivery_id=event.event_id, team=event.team,
                                                   channel=event.channel, reason=exc.reason))
            self.metrics.request(source.SOURCE, "ignored")
            return DONE
        result = await self._enqueue(envelope_for(event.inbound(), route, self.clock()))
        return NOT_STORED if result is Queued.UNAVAILABLE else DONE  # not stored: Slack sends it again

    # -- interactions: card clicks and the deny-with-reason form -------------------------------

    async def interaction(self, interaction: Click | ReasonGiven | Ignored) -> Answer:
        if isinstance(interaction, Ignored) or self.cards is None:
            return DONE
        if isinstance(interaction, Click):
            return await self.click(self.cards, interaction)
        return await self.reason_given(self.cards, interaction)

    async def click(self, cards: Cards, c: Click) -> Answer:
        try:
            card = await cards.load(c.card_id)
        except QueueUnavailable:
            return self._tell(c.response_url, "relay is unavailable right now; nothing was sent. Please try again.")
        if card is None:
            return self._tell(c.response_url, "This approval request is unknown or has expired; nothing was sent.")
        refusal = await cards.refusal(card, c.team, c.user)  # before anything of the card is shown
        if refusal is not None:
            log.warning("decision refused", extra=fields(card=card.card_id, user=c.user, reason=refusal))
            return self._tell(c.response_url, f"Not allowed: {refusal}. Nothing was sent.")
        if card.decision is not None:
            return self._show(c, source.decided_message(card), already_text(card))
        if card.closed is not None:
            return self._show(c, source.closed_message(card), closed_text(card))
        if c.action == "deny_with_reason":
            try:
                await self.slack.open_view(c.trigger_id, source.reason_modal(card))
            except UpstreamError as exc:
                log.warning("could not open the reason form", extra=fields(card=card.card_id, error=exc.code))
                return self._tell(c.response_url, "Could not open the reason form; nothing was sent. Please try again.")
            return DONE
        decision = Decision(approve=c.action == "approve", user=c.user, user_name=c.user_name, at=self.clock())
        result = await self._decide(cards, card, decision)
        if result is Queued.UNAVAILABLE:
            return self._tell(c.response_url, "relay could not record your decision just now; please click again.")
        if result is Queued.DUPLICATE:
            latest = await cards.load(card.card_id)
            if latest is not None and latest.decision is not None:
                return self._show(c, source.decided_message(latest), already_text(latest))
            return self._tell(c.response_url, "This tool call was already decided; nothing changed.")
        log.info("decided", extra=fields(card=card.card_id, approve=decision.approve, user=c.user))
        replacement = {"replace_original": True, **source.decided_message(card.decided(decision))}
        return Answer(then=self._later(self._respond, c.response_url, replacement))

    async def reason_given(self, cards: Cards, r: ReasonGiven) -> Answer:
        try:
            card = await cards.load(r.card_id)
        except QueueUnavailable:
            return form_error("relay is unavailable right now; nothing was sent. Please try again.")
        if card is None:
            return form_error("This approval request is unknown or has expired; nothing was sent.")
        refusal = await cards.refusal(card, r.team, r.user)  # before anything of the card is shown
        if refusal is not None:
            return form_error(f"Not allowed: {refusal}. Nothing was sent.")
        if card.decision is not None:
            return form_error(already_text(card))
        if card.closed is not None:
            return form_error(closed_text(card))
        decision = Decision(approve=False, user=r.user, user_name=r.user_name, at=self.clock(), reason=r.reason)
        result = await self._decide(cards, card, decision)
        if result is Queued.UNAVAILABLE:
            return form_error("relay could not record your decision just now; please submit again.")
        if result is Queued.DUPLICATE:
            return form_error("This tool call was already decided; nothing changed.")
        log.info("decided", extra=fields(card=card.card_id, approve=False, user=r.user))
        if not card.ts:
            return DONE
        decided = source.decided_message(card.decided(decision))
        return Answer(then=self._later(self.slack.update_message, card.channel, card.ts, decided))

    # -- the parts -----------------------------------------------------------------------------

    async def _enqueue(self, envelope: Envelope) -> Queued:
        result = await self.intake.enqueue(envelope)
        self._count(result)
        return result

    async def _decide(self, cards: Cards, card: Card, decision: Decision) -> Queued:
        try:
            result = await cards.decide(card, decision)
        except QueueUnavailable:
            result = Queued.UNAVAILABLE
        self._count(result)
        return result

    def _count(self, result: Queued) -> None:
        outcome = {Queued.QUEUED: "accepted", Queued.DUPLICATE: "duplicate", Queued.UNAVAILABLE: "unavailable"}
        self.metrics.request(source.SOURCE, outcome[result])

    def _may_post_to(self, response_url: str) -> bool:
        if source.response_url_allowed(response_url, self.settings.slack_hooks_url):
            return True
        log.warning("response_url is not under SLACK_HOOKS_URL: nothing is posted to it",
                    extra=fields(source="slack"))
        return False

    async def _respond(self, response_url: str, payload: dict[str, Any]) -> None:
        if self._may_post_to(response_url):
            await self.slack.respond(response_url, payload)

    def _tell(self, response_url: str, text: str) -> Answer:
        """Answer now; send the person an ephemeral note right after."""
        payload = {"response_type": "ephemeral", "replace_original": False, "text": text}
        return Answer(then=self._later(self._respond, response_url, payload))

    def _show(self, c: Click, message: dict[str, Any], note: str) -> Answer:
        """Tell the clicker `note` (why nothing was sent), and make sure the card shows `message`."""
        async def run() -> None:
            await self._respond(c.response_url, {"replace_original": True, **message})
            await self._respond(c.response_url, {"response_type": "ephemeral", "replace_original": False,
                                                 "text": note})
        return Answer(then=self._later(run))

    @staticmethod
    def _later(call: Callable[..., Awaitable[Any]], *args: Any) -> Later:
        async def run() -> None:
            try:
                await call(*args)
            except UpstreamError as exc:
                log.warning("slack call failed", extra=fields(method=exc.method, error=exc.code))
            except Exception as exc:  # after the answer: nobody to tell but the log, and it must not raise
                log.error("slack call failed", exc_info=exc, extra=fields(error=type(exc).__name__))
        return run
