"""Cards for the agent's own approval requests: one per request across relays, closed when the
request ends elsewhere. Against the loopback Slack stand-in, on fakeredis and real Redis."""

from __future__ import annotations

import asyncio
import json
from typing import Any, AsyncIterator

import httpx
import pytest

from relay.cards import CLAIM, Cards
from relay.intake import Intake
from relay.messages import ApprovalRequest
from relay.queue import Queue
from relay.routing import Route, Router
from relay.settings import Settings
from relay.slack_api import SlackApi
from relay.sources import slack as source
from relay.sources.slack import card_id_for
from relay.web import create_app
from tests.conftest import APPROVER, SLACK_CHANNEL
from tests.slack_standin import SlackStandIn
from tests.web.test_slack import click, queued, submit_reason

pytestmark = pytest.mark.anyio

THREAD = "1700000000.000100"


def request(request_id: str = "req-1", tool_call_id: str = "toolu_01") -> ApprovalRequest:
    return ApprovalRequest(request_id=request_id, tool_call_id=tool_call_id, tool_name="bash",
                           input={"command": "rm -rf build/"}, agent_id="agent-incidents",
                           turn_message_id="m-1")


def incidents(settings: Settings) -> Route:
    [route] = [r for r in settings.routes if r.name == "incidents"]
    return route


@pytest.fixture
async def slack(slack_settings: Settings, slack_stand_in: SlackStandIn) -> AsyncIterator[SlackApi]:
    client = SlackApi(slack_settings.slack_bot_token, base_url=slack_stand_in.api_url)
    yield client
    await client.aclose()


def cards_for(queue: Queue, slack: SlackApi, settings: Settings) -> Cards:
    return Cards(queue, slack, Router(settings.routes), Intake(queue))


@pytest.fixture
def cards(queue: Queue, slack: SlackApi, slack_settings: Settings) -> Cards:
    return cards_for(queue, slack, slack_settings)


def buttons(message: dict[str, Any]) -> list[dict[str, Any]]:
    return [e for b in message.get("blocks", []) if b["type"] == "actions" for e in b["elements"]]


async def test_a_request_becomes_a_card_in_the_thread_of_its_turn(cards: Cards, slack_settings: Settings,
                                                                   slack_stand_in: SlackStandIn) -> None:
    route = incidents(slack_settings)
    card, created = await cards.ask(route, request(), SLACK_CHANNEL, THREAD)
    assert created and card.ts
    assert card.card_id == card_id_for(route.destination, "toolu_01")
    assert (card.request_id, card.route, card.arguments) == ("req-1", "incidents", {"command": "rm -rf build/"})
    [posted] = slack_stand_in.of("chat.postMessage")
    assert (posted.body["channel"], posted.body["thread_ts"]) == (SLACK_CHANNEL, THREAD)
    assert {b["value"] for b in buttons(posted.body)} == {card.card_id}
    assert await cards.load(card.card_id) == card


async def test_a_card_outside_any_thread_is_posted_in_the_channel(cards: Cards, slack_settings: Settings,
                                                                  slack_stand_in: SlackStandIn) -> None:
    await cards.ask(incidents(slack_settings), request(), SLACK_CHANNEL, None)
    [posted] = slack_stand_in.of("chat.postMessage")
    assert "thread_ts" not in posted.body


async def test_asking_again_returns_the_card_already_posted(cards: Cards, slack_settings: Settings,
                                                            slack_stand_in: SlackStandIn) -> None:
    first, _ = await cards.ask(incidents(slack_settings), request(), SLACK_CHANNEL, THREAD)
    again, created = await cards.ask(incidents(slack_settings), request(), SLACK_CHANNEL, THREAD)
    assert (again, created) == (first, False)
    assert len(slack_stand_in.of("chat.postMessage")) == 1


async def test_two_relays_asking_at_once_post_one_card(real_redis: Any, prefix: str, slack: SlackApi,
                                                       slack_settings: Settings,
                                                       slack_stand_in: SlackStandIn) -> None:
    replicas = [cards_for(Queue(real_redis, prefix=prefix), slack, slack_settings) for _ in range(2)]
    route = incidents(slack_settings)
    answers = await asyncio.gather(*(replica.ask(route, request(), SLACK_CHANNEL, THREAD)
                                     for replica in replicas * 2))
    assert len(slack_stand_in.of("chat.postMessage")) == 1
    assert sorted(created for _, created in answers) == [False, False, False, True]
    assert all(card == answers[0][0] for card, _ in answers) and answers[0][0].ts


async def test_a_relay_that_crashed_while_posting_holds_the_card_only_until_its_claim_lapses(
        cards: Cards, queue: Queue, slack_settings: Settings, slack_stand_in: SlackStandIn) -> None:
    route = incidents(slack_settings)
    card_id = card_id_for(route.destination, "toolu_01")
    # What a relay leaves behind when it dies between claiming the card and storing it
    # (with a short TTL here; CLAIM_TTL in production).
    await queue.create_record(CLAIM, card_id, "posting", 0.3)
    card, created = await cards.ask(route, request(), SLACK_CHANNEL, THREAD)
    assert created and card.ts
    assert len(slack_stand_in.of("chat.postMessage")) == 1


async def test_a_card_slack_refused_can_be_asked_for_again(cards: Cards, slack_settings: Settings,
                                                           slack_stand_in: SlackStandIn) -> None:
    from relay.errors import UpstreamError

    slack_stand_in.fail("chat.postMessage", "channel_not_found")
    with pytest.raises(UpstreamError):
        await cards.ask(incidents(slack_settings), request(), SLACK_CHANNEL, THREAD)
    card, created = await cards.ask(incidents(slack_settings), request(), SLACK_CHANNEL, THREAD)
    assert created and card.ts


async def test_closing_shows_the_note_and_removes_the_buttons_once(cards: Cards, slack_settings: Settings,
                                                                   slack_stand_in: SlackStandIn) -> None:
    card, _ = await cards.ask(incidents(slack_settings), request(), SLACK_CHANNEL, THREAD)
    assert await cards.close(incidents(slack_settings).destination, "toolu_01", "Answered in the terminal.") is True
    assert await cards.close(incidents(slack_settings).destination, "toolu_01", "Answered in the terminal.") is False  # idempotent
    [update] = slack_stand_in.of("chat.update")
    assert (update.body["channel"], update.body["ts"]) == (SLACK_CHANNEL, card.ts)
    assert buttons(update.body) == []
    assert "Answered in the terminal." in json.dumps(update.body["blocks"])
    stored = await cards.load(card.card_id)
    assert stored is not None and stored.closed == "Answered in the terminal."


async def test_closing_a_tool_call_without_a_card_does_nothing(cards: Cards, slack_settings: Settings,
                                                              slack_stand_in: SlackStandIn) -> None:
    assert await cards.close(incidents(slack_settings).destination, "toolu_unknown", "gone") is False
    assert slack_stand_in.calls == []


async def test_closing_one_agents_tool_call_leaves_another_agents_card_with_the_same_id_open(
        cards: Cards, slack_settings: Settings, slack_stand_in: SlackStandIn) -> None:
    from relay.routing import Destination

    card, _ = await cards.ask(incidents(slack_settings), request(), SLACK_CHANNEL, THREAD)
    other_agent = Destination(agent_id="agent-other", device_id="device-other")
    assert await cards.close(other_agent, "toolu_01", "answered elsewhere") is False
    stored = await cards.load(card.card_id)
    assert stored is not None and stored.closed is None
    assert slack_stand_in.of("chat.update") == []


async def test_a_card_posted_through_post_approvals_can_be_closed_too(cards: Cards, slack_settings: Settings,
                                                                     slack_stand_in: SlackStandIn) -> None:
    from relay.web.approvals import parse_card_request

    body = json.dumps({"tool_call_id": "toolu_09", "tool_name": "bash", "route": "incidents",
                       "channel": SLACK_CHANNEL}).encode()
    card, _ = await cards.post(parse_card_request(body, Router(slack_settings.routes)))
    assert await cards.close(incidents(slack_settings).destination, "toolu_09", "no longer pending") is True
    assert len(slack_stand_in.of("chat.update")) == 1


async def test_a_decided_card_is_closed_only_when_asked_to(cards: Cards, slack_settings: Settings,
                                                          slack_stand_in: SlackStandIn) -> None:
    card, _ = await cards.ask(incidents(slack_settings), request(), SLACK_CHANNEL, THREAD)
    await cards.decide(card, source.Decision(approve=True, user=APPROVER, user_name="bob", at=1700000001.0))
    assert await cards.close(incidents(slack_settings).destination, "toolu_01", "answered elsewhere") is False
    assert slack_stand_in.of("chat.update") == []
    assert await cards.close(incidents(slack_settings).destination, "toolu_01", "The device no longer waited for this decision.", decided_too=True)
    [update] = slack_stand_in.of("chat.update")
    shown = json.dumps(update.body["blocks"])
    assert f"<@{APPROVER}>" in shown and "no longer waited" in shown and buttons(update.body) == []


async def test_asking_again_for_a_closed_request_opens_its_card_again(cards: Cards, slack_settings: Settings,
                                                                      slack_stand_in: SlackStandIn) -> None:
    card, _ = await cards.ask(incidents(slack_settings), request(), SLACK_CHANNEL, THREAD)
    await cards.close(incidents(slack_settings).destination, "toolu_01", "no longer pending")
    again, created = await cards.ask(incidents(slack_settings), request("req-2"), SLACK_CHANNEL, THREAD)
    assert created is False and again.closed is None and again.ts == card.ts
    reopened = slack_stand_in.of("chat.update")[-1]
    assert {b["value"] for b in buttons(reopened.body)} == {card.card_id}
    assert len(slack_stand_in.of("chat.postMessage")) == 1


# -- clicks on a closed card, through the Slack door ------------------------------------------------


@pytest.fixture
async def http(queue: Queue, slack: SlackApi, slack_settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(slack_settings, queue, slack_api=slack)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://relay") as client:
        yield client


async def test_a_click_on_a_closed_card_is_answered_no_longer_pending_and_queues_nothing(
        http: httpx.AsyncClient, cards: Cards, queue: Queue, slack_settings: Settings,
        slack_stand_in: SlackStandIn) -> None:
    card, _ = await cards.ask(incidents(slack_settings), request(), SLACK_CHANNEL, THREAD)
    await cards.close(incidents(slack_settings).destination, "toolu_01", "answered elsewhere")
    response = await click(http, slack_stand_in, card.card_id, key="late")
    assert response.status_code == 200
    assert await queued(queue) == []
    replacement, note = slack_stand_in.responses("late")
    assert replacement["replace_original"] is True and buttons(replacement) == []
    assert note["response_type"] == "ephemeral"
    assert note["text"] == "This approval request is no longer pending (answered elsewhere); nothing was sent."


async def test_a_reason_submitted_after_the_card_closed_is_refused_in_the_form(
        http: httpx.AsyncClient, cards: Cards, queue: Queue, slack_settings: Settings) -> None:
    card, _ = await cards.ask(incidents(slack_settings), request(), SLACK_CHANNEL, THREAD)
    await cards.close(incidents(slack_settings).destination, "toolu_01", "no longer pending")
    response = await submit_reason(http, card.card_id, "not now")
    assert response.json()["response_action"] == "errors"
    assert "no longer pending" in response.json()["errors"]["reason"]
    assert await queued(queue) == []


async def test_a_click_on_an_open_card_asked_for_by_relay_queues_the_decision(
        http: httpx.AsyncClient, cards: Cards, queue: Queue, slack_settings: Settings,
        slack_stand_in: SlackStandIn) -> None:
    card, _ = await cards.ask(incidents(slack_settings), request(), SLACK_CHANNEL, THREAD)
    await click(http, slack_stand_in, card.card_id)
    [envelope] = await queued(queue)
    assert envelope.message["approvals"] == [{"type": "approval", "tool_call_id": "toolu_01", "approve": True}]
