"""The new doors end to end: a signed Linear, GitLab, Discord or mapped request over real HTTP →
real Redis → worker → the strict Letta stand-in (server and simulated device) → relay watch →
the platform's loopback stand-in; and a Discord card click the device takes as its approval."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import replace
from typing import Any, Iterator

import httpx
import pytest

from relay.queue import Queue
from relay.door_rules import DiscordRule, GitLabRule, HmacScheme, LinearRule, MappedRule
from relay.routing import Destination, Route, WatchRule
from relay.settings import Settings
from relay.sources import linear as linear_source, mapped as mapped_source
from relay.standin import Device, LettaStandIn
from relay.standin.device import ANSWER
from relay.template import parse
from tests.conftest import DEVICE
from tests.discord_standin import DiscordStandIn
from tests.gitlab_standin import GitLabStandIn
from tests.linear_standin import LinearStandIn
from tests.sources import test_discord
from tests.sources.test_gitlab import sample as gitlab_sample
from tests.sources.test_linear import sample as linear_sample
from tests.support import ServerThread
from tests.whole_relay import Relay

pytestmark = pytest.mark.anyio
API_KEY = "test-key"
LINEAR_SECRET, GITLAB_TOKEN, PD_SECRET = b"linear-e2e-secret", b"gitlab-e2e-token", b"pd-e2e-secret"
SESSION = "a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d"
GUILD, CHANNEL, APPROVER = "1300000000000000001", "1400000000000000002", "1800000000000000006"


def route(name: str, **doors: Any) -> Route:
    return Route(name, Destination(agent_id=f"agent-{name}", device_id=DEVICE), watch=WatchRule(), **doors)


@pytest.fixture
def letta() -> Iterator[tuple[LettaStandIn, str]]:
    standin = LettaStandIn([Device(DEVICE, "test-box", "conn-test")], api_key=API_KEY)
    with ServerThread(standin.app) as server:
        yield standin, server.url


@pytest.fixture
def platforms() -> Iterator[tuple[LinearStandIn, GitLabStandIn, DiscordStandIn]]:
    linear, gitlab, discord = LinearStandIn(sessions={SESSION}), GitLabStandIn(members={(5, 1): 40}), DiscordStandIn()
    with ServerThread(linear.app) as l, ServerThread(gitlab.app) as g, ServerThread(discord.app) as d:
        linear.url, gitlab.url, discord.base_url = l.url + "/graphql", g.url, d.url
        yield linear, gitlab, discord


@pytest.fixture
def doors_settings(settings: Settings, platforms: tuple[LinearStandIn, GitLabStandIn, DiscordStandIn]) -> Settings:
    linear, gitlab, discord = platforms
    pagerduty = MappedRule("hmac", parse("PagerDuty {{ event.event_type }}: {{ event.data.title }}"), ("event.id",),
                           key=PD_SECRET, hmac=HmacScheme("x-pagerduty-signature", prefix="v1=", separator=","))
    routes = (route("eng", linear=LinearRule(teams=("ENG",))),
              route("gl", gitlab=GitLabRule(projects=("gitlab-org/*",), approvers=("root",))),
              route("disc", discord=DiscordRule(guilds=(GUILD,), approvers=(APPROVER,))),
              route("pd", mapped=pagerduty))
    return replace(settings, routes=routes, letta_api_key=API_KEY, linear_webhook_secret=LINEAR_SECRET,
                   linear_api_key=linear.token, linear_api_url=linear.url, gitlab_webhook_token=GITLAB_TOKEN,
                   gitlab_token=gitlab.token, gitlab_url=gitlab.url, discord_public_key=test_discord.RFC_PUBLIC,
                   discord_bot_token=discord.bot_token, discord_api_url=discord.base_url)


async def until(predicate: Any, timeout: float = 15.0) -> None:
    assert await asyncio.to_thread(predicate, timeout)


async def sockets_open(standin: LettaStandIn) -> None:
    """relay watch has each route's status socket open (a turn's events reach it)."""
    for name in ("eng", "gl", "disc", "pd"):
        await until(lambda t: standin.wait_for_open(1, (f"agent-{name}", "default"), timeout=t))


async def post(relay: Relay, path: str, body: bytes, headers: dict[str, str]) -> httpx.Response:
    async with httpx.AsyncClient() as http:
        return await http.post(f"{relay.web_url}{path}", content=body,
                               headers={"content-type": "application/json", **headers})


def user_texts(letta: LettaStandIn) -> list[str]:
    return [m["content"] for a in letta.delivered() for m in a.body["messages"] if m.get("role") == "user"]


async def test_a_linear_session_gets_a_first_thought_then_the_agents_response(
        letta: tuple[LettaStandIn, str], doors_settings: Settings, real_redis_url: str, real_redis: Any,
        prefix: str, platforms: tuple[LinearStandIn, GitLabStandIn, DiscordStandIn]) -> None:
    standin, letta_url = letta
    linear = platforms[0]
    relay = Relay(doors_settings, real_redis_url, real_redis, prefix, letta_url, None, None)
    async with relay.running():
        await sockets_open(standin)
        data = linear_sample("agent_session.created.json")
        data["webhookTimestamp"] = int(time.time() * 1000)
        body = json.dumps(data).encode()
        answer = await post(relay, "/linear/webhook", body, {"linear-signature": linear_source.sign(LINEAR_SECRET, body)})
        assert answer.status_code == 200
        await until(lambda t: linear.wait_for(lambda s: "response" in s.kinds(), t))
    kinds, activities = linear.kinds(), linear.activities
    # Received (Linear's 10 s), delivered, what the agent does while its turn runs, then the answer.
    assert kinds[:2] == ["thought", "thought"] and kinds[-1] == "response", kinds
    assert activities[0].body == "Received. Passing this to the agent…" and activities[1].ephemeral
    assert all(a.ephemeral or a.type == "action" for a in activities[1:-1])
    assert activities[-1].body == ANSWER
    assert "ENG-482" in user_texts(standin)[0] and linear.refused == []


async def test_a_gitlab_note_gets_eyes_a_rocket_and_the_answer_in_its_discussion(
        letta: tuple[LettaStandIn, str], doors_settings: Settings, real_redis_url: str, real_redis: Any,
        prefix: str, platforms: tuple[LinearStandIn, GitLabStandIn, DiscordStandIn]) -> None:
    standin, letta_url = letta
    gitlab = platforms[1]
    relay = Relay(doors_settings, real_redis_url, real_redis, prefix, letta_url, None, None)
    async with relay.running():
        await sockets_open(standin)
        body = json.dumps(gitlab_sample("note.issue.json")).encode()
        answer = await post(relay, "/gitlab/webhook", body, {"x-gitlab-token": GITLAB_TOKEN.decode()})
        assert answer.status_code == 202
        await until(lambda t: gitlab.wait_for(lambda s: len(s.notes) == 1, t))
    assert sorted(gitlab.names()) == ["eyes", "rocket"]
    [note] = gitlab.notes
    assert (note.project, note.noteable, note.iid, note.discussion) == (5, "issues", 17,
                                                                       "7a4df0c1b3b42b41f0d7c09e3c7d0e0c10ac3c77")
    assert note.body.startswith(ANSWER) and note.body.endswith("<!-- relay -->")


async def test_a_discord_command_s_approval_is_a_card_whose_click_reaches_the_device(
        letta: tuple[LettaStandIn, str], doors_settings: Settings, real_redis_url: str, real_redis: Any,
        prefix: str, platforms: tuple[LinearStandIn, GitLabStandIn, DiscordStandIn]) -> None:
    standin, letta_url = letta
    discord = platforms[2]
    device = standin.simulated()
    relay = Relay(doors_settings, real_redis_url, real_redis, prefix, letta_url, None, None)
    command = json.loads(test_discord.sample("command.agent.json"))
    command["data"]["options"][0]["value"] = "check the deploy !tool"
    discord.interaction(command["application_id"], command["token"])
    async with relay.running():
        await sockets_open(standin)
        body = json.dumps(command).encode()
        answer = await post(relay, "/discord/interactions", body, test_discord.headers(body, int(time.time())))
        assert answer.json() == {"type": 5}  # deferred, within Discord's 3 s
        await until(lambda t: discord.wait_for(lambda s: "post_message" in s.kinds(), t))
        [card] = [c for c in discord.calls if c.kind == "post_message"]
        assert card.where == CHANNEL and "Approval needed" in card.data["content"]
        card_id = card.data["components"][0]["components"][0]["custom_id"].split(":")[2]
        for _ in range(100):  # posted, then stored: click once it is stored
            if await Queue(real_redis, prefix=prefix).record("discord-card", card_id):
                break
            await asyncio.sleep(0.05)
        click = json.loads(test_discord.sample("component.approve.json", card_id))
        click["member"]["roles"] = []  # an approver by user id
        body = json.dumps(click).encode()
        clicked = await post(relay, "/discord/interactions", body, test_discord.headers(body, int(time.time())))
        assert clicked.json()["type"] == 7 and "Approved" in clicked.json()["data"]["content"], clicked.text
        await until(lambda t: discord.wait_for(lambda s: any("The tool ran" in c.data.get("content", "")
                                                             for c in s.calls if c.kind == "follow_up"), t))
    [decision] = device.decisions
    assert decision.behavior == "allow" and device.violations == []
    edits = [c.data["content"] for c in discord.calls if c.kind == "edit_original"]
    assert edits == ["✅ Delivered to agent `agent-disc`."]
    assert discord.refused == []


async def test_a_mapped_pagerduty_incident_reaches_the_agent_once(
        letta: tuple[LettaStandIn, str], doors_settings: Settings, real_redis_url: str, real_redis: Any,
        prefix: str) -> None:
    standin, letta_url = letta
    relay = Relay(doors_settings, real_redis_url, real_redis, prefix, letta_url, None, None)
    body = (test_discord.SAMPLES.parent / "mapped" / "pagerduty.incident.triggered.json").read_bytes()
    scheme = HmacScheme("x-pagerduty-signature", prefix="v1=")
    headers = {"x-pagerduty-signature": mapped_source.sign_hmac(scheme, PD_SECRET, body)}
    async with relay.running():
        first = await post(relay, "/hooks/mapped/pd", body, headers)
        again = await post(relay, "/hooks/mapped/pd", body, headers)
        assert (first.status_code, again.status_code) == (202, 200)
        await until(lambda t: standin.wait_for(lambda s: len(s.delivered()) == 1, t))
        await asyncio.sleep(0.3)  # room for a second delivery, were there one
    assert user_texts(standin) == ["PagerDuty incident.triggered: A little bump in the road"]


async def test_a_gitlab_started_turn_asks_for_its_approval_in_the_discussion_and_an_approver_answers_there(
        letta: tuple[LettaStandIn, str], doors_settings: Settings, real_redis_url: str, real_redis: Any,
        prefix: str, platforms: tuple[LinearStandIn, GitLabStandIn, DiscordStandIn]) -> None:
    standin, letta_url = letta
    gitlab, device = platforms[1], standin.simulated()
    relay = Relay(doors_settings, real_redis_url, real_redis, prefix, letta_url, None, None)

    def note(text: str, note_id: int) -> bytes:
        data = gitlab_sample("note.issue.json")
        data["object_attributes"].update(note=text, id=note_id, url=f"{data['object_attributes']['url']}-{note_id}")
        return json.dumps(data).encode()

    def prompt(s: GitLabStandIn) -> Any:
        return next((n for n in s.notes if "The agent asks to run `Bash`" in n.body), None)

    async with relay.running():
        await sockets_open(standin)
        answer = await post(relay, "/gitlab/webhook", note("@agent tidy the repo !tool", 2001),
                            {"x-gitlab-token": GITLAB_TOKEN.decode()})
        assert answer.status_code == 202
        await until(lambda t: gitlab.wait_for(lambda s: prompt(s) is not None, t))
        [request_id] = device.pending(("agent-gl", "default"))
        tool_call_id = request_id.removeprefix("perm-")
        asked = prompt(gitlab)
        assert asked.discussion == "7a4df0c1b3b42b41f0d7c09e3c7d0e0c10ac3c77"  # in the note's own discussion
        assert f"/approve {tool_call_id}" in asked.body and "@root" in asked.body
        answer = await post(relay, "/gitlab/webhook", note(f"/approve {tool_call_id}", 2002),
                            {"x-gitlab-token": GITLAB_TOKEN.decode()})  # root: the route's approver
        assert answer.status_code == 202
        await until(lambda t: gitlab.wait_for(lambda s: any("The tool ran; done." in n.body for n in s.notes), t))
        await until(lambda t: gitlab.wait_for(lambda s: "Closed" in prompt(s).body, t))
    [decision] = device.decisions
    assert (decision.request_id, decision.behavior) == (request_id, "allow")
    assert prompt(gitlab).edits and all(n.body.endswith("<!-- relay -->") for n in gitlab.notes)
