"""POST /discord/interactions: PING, slash commands within Discord's 3 s, and approval cards
(approvers first, first decision wins)."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from typing import Any, AsyncIterator, Iterator

import httpx
import pytest

from relay.discord_api import DiscordApi
from relay.discord_cards import DiscordCards
from relay.door_rules import DiscordRule
from relay.intake import Intake
from relay.messages import ApprovalRequest, decision_id
from relay.queue import Queue
from relay.routing import Destination, Route, Router
from relay.settings import Settings
from relay.web import create_app
from tests.conftest import DEVICE
from tests.discord_standin import DiscordStandIn
from tests.sources.test_discord import RFC_PUBLIC, RFC_SEED, sample
from tests.sources import test_discord
from tests.support import ServerThread
from tests.web.test_github import queued

pytestmark = pytest.mark.anyio
GUILD, CHANNEL, APPROVER_ROLE, MEMBER = "1300000000000000001", "1400000000000000002", "1700000000000000005", \
    "1800000000000000006"
DESTINATION = Destination(agent_id="agent-discord", device_id=DEVICE)


@pytest.fixture
def discord_stand_in() -> Iterator[DiscordStandIn]:
    standin = DiscordStandIn()
    with ServerThread(standin.app) as server:
        standin.base_url = server.url
        yield standin


@pytest.fixture
def discord_settings(settings: Settings, discord_stand_in: DiscordStandIn) -> Settings:
    incidents = Route("incidents-discord", DESTINATION,
                      discord=DiscordRule(guilds=(GUILD,), channels=(CHANNEL,), approver_roles=(APPROVER_ROLE,)))
    return replace(settings, routes=(*settings.routes, incidents), discord_public_key=RFC_PUBLIC,
                   discord_bot_token=discord_stand_in.bot_token, discord_api_url=discord_stand_in.base_url)


@pytest.fixture
async def api(discord_stand_in: DiscordStandIn) -> AsyncIterator[DiscordApi]:
    client = DiscordApi(discord_stand_in.bot_token, base_url=discord_stand_in.base_url)
    yield client
    await client.aclose()


@pytest.fixture
async def http(queue: Queue, discord_settings: Settings, api: DiscordApi) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(discord_settings, queue, discord_api=api)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://relay") as client:
        yield client


async def interact(http: httpx.AsyncClient, body: bytes | dict[str, Any], **extra: str) -> httpx.Response:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    sent = {"content-type": "application/json", **test_discord.headers(raw, int(time.time()), RFC_SEED), **extra}
    return await http.post("/discord/interactions", content=raw, headers=sent)


async def posted_card(queue: Queue, settings: Settings, api: DiscordApi, tool_call_id: str = "toolu_disc") -> str:
    cards = DiscordCards(queue, api, Router(settings.routes), Intake(queue))
    route = next(r for r in settings.routes if r.discord)
    card, created = await cards.ask(route, ApprovalRequest("req-1", tool_call_id, "Bash", {"command": "ls"},
                                                           DESTINATION.agent_id), CHANNEL)
    assert created and card.message_id
    return card.card_id


async def test_ping_is_answered_pong(http: httpx.AsyncClient) -> None:
    answer = await interact(http, sample("ping.json"))
    assert answer.status_code == 200 and answer.json() == {"type": 1}


async def test_a_command_is_queued_and_answered_with_a_deferred_response(http: httpx.AsyncClient,
                                                                        queue: Queue) -> None:
    answer = await interact(http, sample("command.agent.json"))
    assert answer.status_code == 200 and answer.json() == {"type": 5}
    [envelope] = await queued(queue)
    assert envelope.route == "incidents-discord" and envelope.reply["via"] == "discord"
    again = await interact(http, sample("command.agent.json"))  # Discord never retries; a replay is no new message
    assert again.json()["type"] == 4 and "Already sent" in again.json()["data"]["content"]
    assert again.json()["data"]["flags"] == 64 and len(await queued(queue)) == 1


async def test_a_command_from_elsewhere_is_told_it_is_not_routed(http: httpx.AsyncClient, queue: Queue) -> None:
    data = json.loads(sample("command.agent.json"))
    data["channel_id"] = "1400000000000000099"
    answer = await interact(http, data)
    assert answer.json()["type"] == 4 and "not routed" in answer.json()["data"]["content"]
    dm = json.loads(sample("command.agent.json"))
    dm.pop("guild_id")
    dm["user"] = dm.pop("member")["user"]
    answer = await interact(http, dm)
    assert "direct messages" in answer.json()["data"]["content"]
    assert await queued(queue) == []


async def test_an_approver_clicks_approve_and_the_first_decision_wins(
        http: httpx.AsyncClient, queue: Queue, discord_settings: Settings, api: DiscordApi) -> None:
    card_id = await posted_card(queue, discord_settings, api)
    answer = await interact(http, sample("component.approve.json", card_id))
    assert answer.json()["type"] == 7 and answer.json()["data"]["components"] == []
    assert "Approved" in answer.json()["data"]["content"]
    [envelope] = await queued(queue)
    assert envelope.client_message_id == decision_id(DESTINATION, "toolu_disc")  # the tool call's one decision
    assert envelope.message["approvals"] == [{"type": "approval", "tool_call_id": "toolu_disc", "approve": True}]
    deny = json.loads(sample("component.approve.json", card_id).replace(b"relay:approve", b"relay:deny"))
    deny["id"] = "1600000000000000077"
    later = await interact(http, deny)
    assert later.json()["type"] == 7 and "Approved" in later.json()["data"]["content"]  # shows what won
    assert len(await queued(queue)) == 1


async def test_someone_who_may_not_decide_sees_nothing_of_the_tool_call(
        http: httpx.AsyncClient, queue: Queue, discord_settings: Settings, api: DiscordApi) -> None:
    card_id = await posted_card(queue, discord_settings, api)
    data = json.loads(sample("component.approve.json", card_id))
    data["member"]["roles"] = []
    answer = await interact(http, data)
    content = answer.json()["data"]["content"]
    assert answer.json()["type"] == 4 and answer.json()["data"]["flags"] == 64
    assert "Not allowed" in content and "Bash" not in content and "ls" not in content
    assert await queued(queue) == []


async def test_deny_with_reason_opens_a_form_whose_reason_denies(
        http: httpx.AsyncClient, queue: Queue, discord_settings: Settings, api: DiscordApi) -> None:
    card_id = await posted_card(queue, discord_settings, api)
    click = json.loads(sample("component.approve.json", card_id).replace(b"relay:approve", b"relay:reason"))
    form = await interact(http, click)
    assert form.json()["type"] == 9 and form.json()["data"]["custom_id"] == f"relay:reason:{card_id}"
    data = json.loads(sample("modal.reason.json", card_id))
    data["member"]["roles"] = [APPROVER_ROLE]
    answer = await interact(http, data)
    assert answer.json()["type"] == 7 and "Denied" in answer.json()["data"]["content"]
    [envelope] = await queued(queue)
    assert envelope.message["approvals"][0] == {"type": "approval", "tool_call_id": "toolu_disc", "approve": False,
                                                "reason": "not on production, please"}


async def test_an_unknown_card_says_so(http: httpx.AsyncClient, queue: Queue) -> None:
    answer = await interact(http, sample("component.approve.json", "00000000-0000-5000-8000-000000000000"))
    assert "unknown or has expired" in answer.json()["data"]["content"]


@pytest.mark.parametrize("case", ["unsigned", "wrong key", "stale", "altered"])
async def test_unsigned_or_stale_interactions_are_401(case: str, http: httpx.AsyncClient, queue: Queue) -> None:
    raw = sample("command.agent.json")
    sent = {"content-type": "application/json", **test_discord.headers(raw, int(time.time()), RFC_SEED)}
    if case == "unsigned":
        sent.pop("X-Signature-Ed25519")
    elif case == "wrong key":
        sent.update(test_discord.headers(raw, int(time.time()), b"\x07" * 32))
    elif case == "stale":
        sent.update(test_discord.headers(raw, int(time.time()) - 400, RFC_SEED))
    elif case == "altered":
        raw = raw.replace(b"summarize", b"delete all")
    answer = await http.post("/discord/interactions", content=raw, headers=sent)
    assert answer.status_code == 401 and await queued(queue) == []
