"""Closing the loop, end to end: a signed Slack or GitHub request over real HTTP → real Redis →
worker → the strict Letta stand-in (its server and a simulated device, REST and status socket on
one loopback server) → relay watch → the Slack and GitHub stand-ins, and back through a signed
button click that the device takes as an approval_response."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from typing import Any, Iterator
from urllib.parse import urlencode

import httpx
import pytest

from relay.routing import WatchRule
from relay.settings import Settings
from relay.sources import github as github_source, slack as slack_source
from relay.sources.github import OWN_MARKER
from relay.standin import Device, LettaStandIn, SimulatedDevice
from relay.standin.device import ANSWER
from tests.conftest import DEVICE, GITHUB_SECRET, REPOSITORY, SLACK_CHANNEL, SLACK_TEAM
from tests.github_standin import GitHubStandIn
from tests.slack_standin import SlackStandIn
from tests.support import ServerThread
from tests.whole_relay import Relay
from tests.web.test_github import comment_payload

pytestmark = pytest.mark.anyio

API_KEY = "test-key"
SLACK_SCOPE = ("agent-incidents", "default")
GITHUB_SCOPE = ("agent-hello", "default")


@pytest.fixture
def letta() -> Iterator[tuple[LettaStandIn, str]]:
    """The strict stand-in; its device runs turns of its own ("!tool" asks for an approval first)."""
    standin = LettaStandIn([Device(DEVICE, "test-box", "conn-test")], api_key=API_KEY)
    with ServerThread(standin.app) as server:
        yield standin, server.url


@pytest.fixture
def scripted() -> Iterator[tuple[LettaStandIn, str]]:
    """The strict stand-in with a device whose every frame the test scripts."""
    standin = LettaStandIn([Device(DEVICE, "test-box", "conn-test", simulated=SimulatedDevice(auto_turns=False))],
                           api_key=API_KEY)
    with ServerThread(standin.app) as server:
        yield standin, server.url


def watching(settings: Settings, name: str) -> Settings:
    """The route `name` opts in to relay watch."""
    routes = tuple(replace(r, watch=WatchRule(slack_channel=SLACK_CHANNEL)) if r.name == name else r
                   for r in settings.routes)
    return replace(settings, routes=routes, letta_api_key=API_KEY)


async def until(predicate: Any, timeout: float = 15.0) -> None:
    assert await asyncio.to_thread(predicate, timeout)


def delivered_user_message(letta: LettaStandIn, index: int = 0) -> dict[str, Any]:
    users = [m for a in letta.delivered() for m in a.body["messages"] if m.get("role") == "user"]
    return users[index]


def posts(slack: SlackStandIn, containing: str) -> list[Any]:
    return [c for c in slack.of("chat.postMessage") if containing in c.body.get("text", "")]


def answered(slack: SlackStandIn, thread_ts: str, containing: str) -> bool:
    """The thread holds an answer with `containing`, and no message still shows progress."""
    thread = slack.thread(SLACK_CHANNEL, thread_ts)
    return any(containing in m.text for m in thread) and not any("hourglass" in m.text for m in thread)


def mention(text: str, ts: str, event_id: str) -> bytes:
    return json.dumps({"type": "event_callback", "team_id": SLACK_TEAM, "event_id": event_id,
                       "event": {"type": "app_mention", "user": "U0ALICE", "text": f"<@U0BOT> {text}",
                                 "ts": ts, "channel": SLACK_CHANNEL}}).encode()


async def test_a_mention_s_approval_and_answer_come_back_to_its_thread(
        letta: tuple[LettaStandIn, str], slack_settings: Settings, real_redis_url: str,
        real_redis: Any, prefix: str, slack_stand_in: SlackStandIn) -> None:
    standin, letta_url = letta
    device = standin.simulated()
    relay = Relay(watching(slack_settings, "incidents"), real_redis_url, real_redis, prefix, letta_url,
                  slack_stand_in, None)
    mention_ts = "1700000005.000200"
    async with relay.running():
        await until(lambda t: standin.wait_for_open(1, SLACK_SCOPE, timeout=t))
        event = mention("is the deploy ok? !tool", mention_ts, "Ev-loop")
        assert (await relay.slack("/slack/events", event, "application/json")).status_code == 200

        # The agent starts its turn, says something, and asks to run a tool: a card in the thread.
        await until(lambda t: slack_stand_in.wait_for(lambda s: len(posts(s, "Approval needed")) == 1, t))
        [card] = posts(slack_stand_in, "Approval needed")
        assert (card.body["channel"], card.body["thread_ts"]) == (SLACK_CHANNEL, mention_ts)
        [request_id] = device.pending(SLACK_SCOPE)
        tool_call_id = request_id.removeprefix("perm-")

        await relay.click(slack_stand_in, "incidents", tool_call_id, slack_source.ACTION_APPROVE, "click")

        # The device takes the decision, the tool runs, the agent answers and the turn ends: the
        # thread's progress message becomes the answer.
        await until(lambda t: slack_stand_in.wait_for(lambda s: answered(s, mention_ts, "The tool ran"), t))
        await asyncio.sleep(0.3)  # room for a duplicate, were there one
    [decision] = device.decisions
    assert (decision.request_id, decision.behavior) == (request_id, "allow")
    thread = slack_stand_in.thread(SLACK_CHANNEL, mention_ts)
    assert len(thread) == 2  # one progress message (now the answer) and the card: nothing else
    [card] = [m for m in thread if "Approval needed" in m.text]
    [progress] = [m for m in thread if m is not card]
    assert progress.text == "I need to run a command first.\n\nThe tool ran; done." and progress.edits >= 1
    assert "Approval needed" in card.text
    assert len(posts(slack_stand_in, "Approval needed")) == 1
    assert "Approved" in slack_stand_in.responses("click")[0]["text"]
    assert card.edits == 0  # a decided card is not closed afterwards
    assert {c.frame["type"] for c in standin.commands} <= {"sync", "input"}  # never runtime_start and the like
    assert device.violations == [] and device.stale_denials == [] and standin.refused == []
    assert [m.get("type") for a in standin.delivered() for m in a.body["messages"]] == [None]  # only the mention


async def test_a_deny_with_a_reason_reaches_the_device_and_the_agent_says_so_in_the_thread(
        letta: tuple[LettaStandIn, str], slack_settings: Settings, real_redis_url: str,
        real_redis: Any, prefix: str, slack_stand_in: SlackStandIn) -> None:
    standin, letta_url = letta
    device = standin.simulated()
    relay = Relay(watching(slack_settings, "incidents"), real_redis_url, real_redis, prefix, letta_url,
                  slack_stand_in, None)
    mention_ts = "1700000006.000300"
    async with relay.running():
        await until(lambda t: standin.wait_for_open(1, SLACK_SCOPE, timeout=t))
        event = mention("clean up !tool", mention_ts, "Ev-deny")
        assert (await relay.slack("/slack/events", event, "application/json")).status_code == 200
        await until(lambda t: slack_stand_in.wait_for(lambda s: len(posts(s, "Approval needed")) == 1, t))
        [request_id] = device.pending(SLACK_SCOPE)
        await relay.deny_with_reason(slack_stand_in, "incidents", request_id.removeprefix("perm-"),
                                     "not during the freeze")
        await until(lambda t: slack_stand_in.wait_for(lambda s: answered(s, mention_ts, "did not run it"), t))
    [decision] = device.decisions
    assert (decision.request_id, decision.behavior, decision.message) == (request_id, "deny", "not during the freeze")
    [said] = [m for m in slack_stand_in.thread(SLACK_CHANNEL, mention_ts) if "did not run it" in m.text]
    assert "not during the freeze" in said.text


async def test_a_slash_command_s_answer_survives_a_socket_drop_mid_turn(
        scripted: tuple[LettaStandIn, str], slack_settings: Settings, real_redis_url: str, real_redis: Any,
        prefix: str, slack_stand_in: SlackStandIn) -> None:
    standin, letta_url = scripted
    device = standin.simulated()
    relay = Relay(watching(slack_settings, "incidents"), real_redis_url, real_redis, prefix, letta_url,
                  slack_stand_in, None)
    command = urlencode({"team_id": SLACK_TEAM, "channel_id": SLACK_CHANNEL, "user_id": "U0ALICE",
                         "user_name": "alice", "command": "/agent", "text": "summarize the incident",
                         "response_url": slack_stand_in.response_url("cmd"), "trigger_id": "1.2.3"}).encode()
    async with relay.running():
        await until(lambda t: standin.wait_for_open(1, SLACK_SCOPE, timeout=t))
        assert (await relay.slack("/slack/commands", command, "application/x-www-form-urlencoded")).status_code == 200
        await until(lambda t: standin.wait_for(lambda s: len(s.delivered()) == 1, t))
        message_id = delivered_user_message(standin)["client_message_id"]
        device.loop_status(SLACK_SCOPE, "PROCESSING_API_RESPONSE", ["run-9"], {"run-9": [message_id]})
        device.chunks(SLACK_SCOPE, "run-9", "msg-9", "The incident began at 09:12 when ", pieces=2)
        first = max(s.id for s in standin.sockets)
        standin.drop()
        device.chunks(SLACK_SCOPE, "run-9", "msg-9", "the cache expired.", pieces=2)  # while away
        device.turn_finished(SLACK_SCOPE, "run-9")
        await until(lambda t: standin.wait_for(lambda s: any(x.open and x.id > first for x in s.sockets), t))
        await until(lambda t: slack_stand_in.wait_for(
            lambda s: any("cache expired" in r.get("text", "") for r in s.responses("cmd")), t))
    answers = [r for r in slack_stand_in.responses("cmd") if "cache expired" in r.get("text", "")]
    assert [a["text"] for a in answers] == ["The incident began at 09:12 when the cache expired."]
    assert answers[0]["response_type"] == "ephemeral"
    assert len([c for c in standin.commands if c.frame["type"] == "sync"]) >= 2  # asked again after the drop


async def test_a_github_comment_s_answer_is_a_comment_on_the_issue(
        letta: tuple[LettaStandIn, str], github_settings: Settings, real_redis_url: str, real_redis: Any,
        prefix: str, github_stand_in: GitHubStandIn) -> None:
    standin, letta_url = letta
    relay = Relay(watching(github_settings, "hello"), real_redis_url, real_redis, prefix, letta_url, None,
                  github_stand_in)
    raw = json.dumps(comment_payload("@agent why is CI red?")).encode()
    headers = {"x-github-event": "issue_comment", "x-github-delivery": "d6c1f0e2-0000-4000-8000-000000000001",
               "x-github-hook-id": "1234", "content-type": "application/json",
               "x-hub-signature-256": github_source.sign(GITHUB_SECRET, raw)}
    async with relay.running():
        await until(lambda t: standin.wait_for_open(1, GITHUB_SCOPE, timeout=t))
        async with httpx.AsyncClient() as http:
            assert (await http.post(f"{relay.web_url}/github/webhook", content=raw, headers=headers)).status_code == 202
        await until(lambda t: github_stand_in.wait_for(lambda s: len(s.comments) == 1, t))
    [comment] = github_stand_in.comments
    assert (comment.repository, comment.number) == (REPOSITORY, 1)
    assert ANSWER in comment.body


async def test_a_github_comment_gets_a_tracking_comment_an_approval_prompt_and_the_answer(
        letta: tuple[LettaStandIn, str], github_settings: Settings, real_redis_url: str, real_redis: Any,
        prefix: str, github_stand_in: GitHubStandIn) -> None:
    standin, letta_url = letta
    device = standin.simulated()
    relay = Relay(watching(github_settings, "hello"), real_redis_url, real_redis, prefix, letta_url, None,
                  github_stand_in)

    async def comment(body: str, comment_id: int) -> None:
        raw = json.dumps(comment_payload(body, id=comment_id)).encode()
        headers = {"x-github-event": "issue_comment", "x-github-delivery": f"d-{comment_id}", "x-github-hook-id": "1",
                   "content-type": "application/json", "x-hub-signature-256": github_source.sign(GITHUB_SECRET, raw)}
        async with httpx.AsyncClient() as http:
            assert (await http.post(f"{relay.web_url}/github/webhook", content=raw, headers=headers)).status_code == 202

    def prompt(s: GitHubStandIn) -> Any:
        return next((c for c in s.comments if "The agent asks to run `Bash`" in c.body), None)

    async with relay.running():
        await until(lambda t: standin.wait_for_open(1, GITHUB_SCOPE, timeout=t))
        await comment("@agent please clean the build !tool", 5001)
        await until(lambda t: github_stand_in.wait_for(lambda s: prompt(s) is not None, t))
        [request_id] = device.pending(GITHUB_SCOPE)
        tool_call_id = request_id.removeprefix("perm-")
        assert f"/approve {tool_call_id}" in prompt(github_stand_in).body
        await comment(f"/approve {tool_call_id}", 5002)  # Codertocat is the route's approver
        await until(lambda t: github_stand_in.wait_for(
            lambda s: any("The tool ran; done." in c.body for c in s.comments), t))
        await until(lambda t: github_stand_in.wait_for(lambda s: "Closed" in prompt(s).body, t))
    [decision] = device.decisions
    assert (decision.request_id, decision.behavior) == (request_id, "allow")
    tracking = [c for c in github_stand_in.comments if c is not prompt(github_stand_in)]
    assert len(tracking) == 1  # one tracking comment, replaced by the answer: nothing else posted
    [answer] = tracking
    assert answer.edits and "⏳" in answer.edits[0] and "⏳" not in answer.body
    assert answer.body.startswith("I need to run a command first.\n\nThe tool ran; done.")
    assert all(OWN_MARKER in c.body for c in github_stand_in.comments)  # never read back as requests


async def test_a_first_mention_in_a_thread_brings_the_thread_and_a_small_text_file_to_the_agent(
        letta: tuple[LettaStandIn, str], slack_settings: Settings, real_redis_url: str,
        real_redis: Any, prefix: str, slack_stand_in: SlackStandIn) -> None:
    standin, letta_url = letta
    relay = Relay(watching(slack_settings, "incidents"), real_redis_url, real_redis, prefix, letta_url,
                  slack_stand_in, None)
    root = "1700000300.000100"
    slack_stand_in.users.update({"U0ALICE": "alice", "U0BOB": "bob"})
    slack_stand_in.replies[(SLACK_CHANNEL, root)] = [
        {"user": "U0BOB", "text": "the deploy failed at 09:12", "ts": root},
        {"user": "U0ALICE", "text": "rolled back, errors stopped", "ts": "1700000301.000100"},
    ]
    slack_stand_in.files["notes.txt"] = b"pod crashloop: OOMKilled (limit 256Mi)"
    notes = {"name": "notes.txt", "mimetype": "text/plain", "size": 39, "url_private": slack_stand_in.file_url("notes.txt"),
             "permalink": "https://example.slack.com/files/U0ALICE/F1/notes.txt"}

    def mention_in_thread(text: str, ts: str, event_id: str, **extra: Any) -> bytes:
        return json.dumps({"type": "event_callback", "team_id": SLACK_TEAM, "event_id": event_id, "event": {
            "type": "app_mention", "user": "U0ALICE", "text": f"<@U0BOT> {text}", "ts": ts, "thread_ts": root,
            "channel": SLACK_CHANNEL, **extra}}).encode()

    async with relay.running():
        await until(lambda t: standin.wait_for_open(1, SLACK_SCOPE, timeout=t))
        first = mention_in_thread("what happened here?", "1700000302.000100", "Ev-ctx-1", files=[notes])
        assert (await relay.slack("/slack/events", first, "application/json")).status_code == 200
        await until(lambda t: standin.wait_for(lambda s: len(s.delivered()) == 1, t))
        second = mention_in_thread("and now?", "1700000303.000100", "Ev-ctx-2")
        assert (await relay.slack("/slack/events", second, "application/json")).status_code == 200
        await until(lambda t: standin.wait_for(lambda s: len(s.delivered()) == 2, t))
    first_content, second_content = (delivered_user_message(standin, i)["content"] for i in range(2))
    assert "what happened here?" in first_content
    assert "Earlier in this Slack thread:\n@bob: the deploy failed at 09:12\n@alice: rolled back, errors stopped" \
        in first_content
    assert "Attached file: notes.txt — https://example.slack.com/files/U0ALICE/F1/notes.txt" in first_content
    assert "pod crashloop: OOMKilled (limit 256Mi)" in first_content
    assert "Earlier in this Slack thread" not in second_content  # the agent has the thread already
    assert [c.authorization for c in slack_stand_in.of("file:notes.txt")] == ["Bearer xoxb-test-token"]
