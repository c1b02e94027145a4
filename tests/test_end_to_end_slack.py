"""Slack end to end: signed Slack requests over real HTTP → real Redis → worker → the Letta
stand-in, and what Slack is told afterwards (the Slack stand-in)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any, AsyncIterator, Iterator
from urllib.parse import urlencode

import httpx
import pytest
from relay.cards import cards_for
from relay.queue import Queue, connect
from relay.replies import Replier
from relay.settings import Settings
from relay.slack_api import SlackApi
from relay.sources import slack as source
from relay.standin import LettaStandIn
from relay.web import create_app
from tests.conftest import ADMIN_TOKEN, APPROVER, SLACK_CHANNEL, SLACK_SECRET, SLACK_TEAM
from tests.slack_standin import SlackStandIn
from tests.support import ServerThread, running_worker

pytestmark = pytest.mark.anyio


@pytest.fixture
def relay_web(real_redis_url: str, prefix: str, slack_settings: Settings, slack_stand_in: SlackStandIn) -> Iterator[str]:
    slack = SlackApi(slack_settings.slack_bot_token, base_url=slack_stand_in.api_url)
    app = create_app(slack_settings, Queue(connect(real_redis_url), prefix=prefix), slack_api=slack)
    with ServerThread(app) as server:
        yield server.url


@contextlib.asynccontextmanager
async def worker(real_redis: Any, prefix: str, settings: Settings, letta_url: str,
                 slack_stand_in: SlackStandIn) -> AsyncIterator[None]:
    slack = SlackApi(settings.slack_bot_token, base_url=slack_stand_in.api_url)
    cards = cards_for(settings, Queue(real_redis, prefix=prefix), slack)
    async with running_worker(real_redis, prefix, settings, letta_url, replier=Replier(slack, cards=cards)):
        yield
    await slack.aclose()


def slack_post(url: str, path: str, body: bytes, content_type: str) -> httpx.Response:
    headers = source.signed_headers(SLACK_SECRET, int(time.time()), body, content_type)
    return httpx.post(f"{url}{path}", content=body, headers=headers, timeout=10)


async def wait(predicate, timeout: float = 15.0) -> None:  # type: ignore[no-untyped-def]
    assert await asyncio.to_thread(predicate, timeout)


async def test_slash_command_reaches_the_agent_and_slack_hears_it_was_delivered(
        relay_web: str, real_redis: Any, prefix: str, slack_settings: Settings,
        stand_in: tuple[LettaStandIn, str], slack_stand_in: SlackStandIn) -> None:
    letta, letta_url = stand_in
    body = urlencode({"team_id": SLACK_TEAM, "channel_id": SLACK_CHANNEL, "user_id": "U0ALICE",
                      "user_name": "alice", "command": "/agent", "text": "summarize the incident",
                      "response_url": slack_stand_in.response_url("cmd"), "trigger_id": "1.2.3"}).encode()
    async with worker(real_redis, prefix, slack_settings, letta_url, slack_stand_in):
        answer = await asyncio.to_thread(slack_post, relay_web, "/slack/commands", body,
                                         "application/x-www-form-urlencoded")
        assert answer.status_code == 200 and "Sent to agent `agent-incidents`" in answer.json()["text"]
        await wait(lambda t: letta.wait_for(lambda s: len(s.delivered()) == 1, t))
        await wait(lambda t: slack_stand_in.wait_for(lambda s: len(s.responses("cmd")) == 1, t))
    [attempt] = letta.delivered()
    [message] = attempt.body["messages"]
    assert attempt.body["agentId"] == "agent-incidents"
    assert message["role"] == "user" and message["content"].endswith("summarize the incident")
    assert message["client_message_id"] == message["otid"]
    assert "Delivered to agent `agent-incidents`" in slack_stand_in.responses("cmd")[0]["text"]


INCIDENTS = ("agent-incidents", "default")  # the incidents route's conversation, on device-test


async def click_approve(relay_web: str, slack_stand_in: SlackStandIn, card_id: str, key: str) -> httpx.Response:
    payload = {"type": "block_actions", "user": {"id": APPROVER, "username": "bob", "team_id": SLACK_TEAM},
               "team": {"id": SLACK_TEAM}, "trigger_id": "9.9.9", "response_url": slack_stand_in.response_url(key),
               "actions": [{"action_id": source.ACTION_APPROVE, "value": card_id, "type": "button"}]}
    body = urlencode({"payload": json.dumps(payload)}).encode()
    return await asyncio.to_thread(slack_post, relay_web, "/slack/interactions", body,
                                   "application/x-www-form-urlencoded")


async def post_card(relay_web: str, tool_call_id: str) -> str:
    async with httpx.AsyncClient() as http:
        card = await http.post(f"{relay_web}/approvals", headers={"authorization": f"Bearer {ADMIN_TOKEN}"},
                               json={"tool_call_id": tool_call_id, "tool_name": "deploy",
                                     "arguments": {"env": "prod"}, "route": "incidents", "channel": SLACK_CHANNEL})
    assert card.status_code == 201
    return str(card.json()["card_id"])


async def test_a_card_click_reaches_the_device_as_one_accepted_approval_response(
        relay_web: str, real_redis: Any, prefix: str, slack_settings: Settings,
        stand_in: tuple[LettaStandIn, str], slack_stand_in: SlackStandIn) -> None:
    letta, letta_url = stand_in
    device = letta.simulated()
    request_id = device.request_approval(INCIDENTS, "toolu_42", "deploy", {"env": "prod"})
    async with worker(real_redis, prefix, slack_settings, letta_url, slack_stand_in):
        card_id = await post_card(relay_web, "toolu_42")
        assert (await click_approve(relay_web, slack_stand_in, card_id, "click")).status_code == 200
        assert (await click_approve(relay_web, slack_stand_in, card_id, "again")).status_code == 200
        await wait(lambda t: letta.wait_for(lambda s: len(device.decisions) == 1, t))
        await asyncio.sleep(0.3)
    [decision] = device.decisions
    assert (decision.scope, decision.request_id, decision.behavior) == (INCIDENTS, request_id, "allow")
    assert letta.attempts == [] and device.violations == []
    [replaced] = slack_stand_in.responses("click")
    assert replaced["replace_original"] is True and "Approved" in replaced["text"]


async def test_a_click_on_a_request_answered_in_the_terminal_closes_the_card_and_sends_nothing(
        relay_web: str, real_redis: Any, prefix: str, slack_settings: Settings,
        stand_in: tuple[LettaStandIn, str], slack_stand_in: SlackStandIn) -> None:
    letta, letta_url = stand_in
    device = letta.simulated()
    device.answer_elsewhere(INCIDENTS, device.request_approval(INCIDENTS, "toolu_43"))
    async with worker(real_redis, prefix, slack_settings, letta_url, slack_stand_in):
        card_id = await post_card(relay_web, "toolu_43")
        assert (await click_approve(relay_web, slack_stand_in, card_id, "late")).status_code == 200
        await wait(lambda t: slack_stand_in.wait_for(
            lambda s: any("no longer pending" in json.dumps(c.body) for c in s.of("chat.update")), t))
        await wait(lambda t: slack_stand_in.wait_for(
            lambda s: any("no longer waiting" in c.body.get("text", "") for c in s.of("chat.postMessage")), t))
    assert device.decisions == []
    assert [c.frame["type"] for c in letta.commands] == ["sync"]  # it looked, and sent no decision
    [closed] = [c for c in slack_stand_in.of("chat.update") if "no longer pending" in json.dumps(c.body)]
    assert "actions" not in json.dumps(closed.body["blocks"])


async def test_mention_reaches_the_agent_and_gets_a_check_mark(
        relay_web: str, real_redis: Any, prefix: str, slack_settings: Settings,
        stand_in: tuple[LettaStandIn, str], slack_stand_in: SlackStandIn) -> None:
    letta, letta_url = stand_in
    body = json.dumps({"type": "event_callback", "team_id": SLACK_TEAM, "event_id": "Ev1",
                       "event": {"type": "app_mention", "user": "U0ALICE", "text": "<@U0BOT> please triage",
                                 "ts": "1700000005.000200", "channel": SLACK_CHANNEL}}).encode()
    async with worker(real_redis, prefix, slack_settings, letta_url, slack_stand_in):
        for _ in range(2):  # Slack's retry of the same event changes nothing
            answer = await asyncio.to_thread(slack_post, relay_web, "/slack/events", body, "application/json")
            assert answer.status_code == 200
        await wait(lambda t: slack_stand_in.wait_for(lambda s: len(s.of("reactions.add")) == 1, t))
    [attempt] = letta.delivered()
    assert attempt.body["messages"][0]["content"].endswith("please triage")
    assert slack_stand_in.of("reactions.add")[0].body == {"channel": SLACK_CHANNEL, "timestamp": "1700000005.000200",
                                                          "name": "white_check_mark"}
