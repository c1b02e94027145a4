"""Closing the loop, end to end: a signed Slack or GitHub request over real HTTP → real Redis →
worker → the Letta stand-in (REST and status WebSocket on one loopback server) → relay watch →
the Slack and GitHub stand-ins, and back through a signed button click."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import replace
from typing import Any, AsyncIterator, Iterator
from urllib.parse import urlencode

import httpx
import pytest
from tenacity import wait_none

from relay.github_api import GitHubApi
from relay.letta import LettaClient
from relay.origins import Origins
from relay.policy import Backoff
from relay.queue import Queue, connect
from relay.replies import Replier
from relay.routing import WatchRule
from relay.settings import Settings
from relay.slack_api import SlackApi
from relay.socket_approvals import deliverer_for
from relay.sources import github as github_source, slack as slack_source
from relay.sources.slack import card_id_for
from relay.standin import Device, LettaStandIn
from relay.watch import watcher_for
from relay.web import create_app
from relay.worker import Worker
from tests.conftest import APPROVER, DEVICE, GITHUB_SECRET, REPOSITORY, SLACK_CHANNEL, SLACK_SECRET, SLACK_TEAM
from tests.github_standin import GitHubStandIn
from tests.letta_socket_standin import StatusSocketStandIn
from tests.slack_standin import SlackStandIn
from tests.support import ServerThread
from tests.web.test_github import comment_payload

pytestmark = pytest.mark.anyio

API_KEY = "test-key"
SLACK_SCOPE = ("agent-incidents", "default")
GITHUB_SCOPE = ("agent-hello", "default")


@pytest.fixture
def letta() -> Iterator[tuple[StatusSocketStandIn, str]]:
    sockets = StatusSocketStandIn(LettaStandIn([Device(DEVICE, "test-box", "conn-test")]), API_KEY)
    with ServerThread(sockets.app) as server:
        yield sockets, server.url


def watching(settings: Settings, name: str, approvals: str) -> Settings:
    """The route `name` opts in to relay watch, with `approvals` as its path."""
    routes = tuple(replace(r, watch=WatchRule(slack_channel=SLACK_CHANNEL, approvals=approvals))
                   if r.name == name else r for r in settings.routes)
    return replace(settings, routes=routes, letta_api_key=API_KEY)


class Relay:
    """relay serve + relay worker + relay watch, on real Redis, for the duration of a test."""

    def __init__(self, settings: Settings, redis_url: str, redis: Any, prefix: str, letta_url: str,
                 slack: SlackStandIn | None, github: GitHubStandIn | None) -> None:
        self.settings = replace(settings, key_prefix=prefix)
        self.redis_url, self.redis, self.prefix, self.letta_url = redis_url, redis, prefix, letta_url
        self.slack_url = slack.api_url if slack else None
        self.github_url = github.base_url if github else None
        self.web_url = ""

    def apis(self) -> tuple[SlackApi | None, GitHubApi | None]:
        slack = SlackApi("xoxb-test-token", base_url=self.slack_url) if self.slack_url else None
        github = GitHubApi("ghp_test_token", base_url=self.github_url) if self.github_url else None
        return slack, github

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Relay]:
        web_slack, web_github = self.apis()
        app = create_app(self.settings, Queue(connect(self.redis_url), prefix=self.prefix), slack_api=web_slack,
                         github_api=web_github)
        slack, github = self.apis()
        queue = Queue(self.redis, prefix=self.prefix, consumer="worker-1")
        letta = LettaClient(self.letta_url, API_KEY, retry_wait=wait_none())
        worker = Worker(queue, deliverer_for(self.settings, letta, queue, slack, base_url=self.letta_url),
                        self.settings, poll_interval=0.01, replier=Replier(slack, github),
                        origins=Origins(self.redis, self.prefix))
        watcher = watcher_for(self.settings, self.redis, Queue(self.redis, prefix=self.prefix), letta, slack, github,
                              base_url=self.letta_url)
        watcher.backoff, watcher.check_every = Backoff(0.05, 0.3), 0.5
        stop = asyncio.Event()
        with ServerThread(app) as server:
            self.web_url = server.url
            tasks = [asyncio.create_task(worker.run(stop)), asyncio.create_task(watcher.run(stop))]
            try:
                yield self
            finally:
                stop.set()
                await asyncio.wait_for(asyncio.gather(*tasks), timeout=30)
                for client in (letta, slack, github, web_slack, web_github):
                    if client is not None:
                        await client.aclose()

    async def slack(self, path: str, body: bytes, content_type: str) -> httpx.Response:
        headers = slack_source.signed_headers(SLACK_SECRET, int(time.time()), body, content_type)
        async with httpx.AsyncClient() as http:
            return await http.post(f"{self.web_url}{path}", content=body, headers=headers)


async def until(predicate: Any, timeout: float = 15.0) -> None:
    assert await asyncio.to_thread(predicate, timeout)


def delivered_user_message(sockets: StatusSocketStandIn, index: int = 0) -> dict[str, Any]:
    users = [m for a in sockets.letta.delivered() for m in a.body["messages"] if m.get("role") == "user"]
    return users[index]


def posts(slack: SlackStandIn, containing: str) -> list[Any]:
    return [c for c in slack.of("chat.postMessage") if containing in c.body.get("text", "")]


@pytest.mark.parametrize("approvals", ["rest", "socket"])
async def test_a_mention_s_approval_and_answer_come_back_to_its_thread(
        approvals: str, letta: tuple[StatusSocketStandIn, str], slack_settings: Settings, real_redis_url: str,
        real_redis: Any, prefix: str, slack_stand_in: SlackStandIn) -> None:
    sockets, letta_url = letta
    relay = Relay(watching(slack_settings, "incidents", approvals), real_redis_url, real_redis, prefix, letta_url,
                  slack_stand_in, None)
    mention_ts = "1700000005.000200"
    event = json.dumps({"type": "event_callback", "team_id": SLACK_TEAM, "event_id": "Ev-loop",
                        "event": {"type": "app_mention", "user": "U0ALICE", "text": "<@U0BOT> is the deploy ok?",
                                  "ts": mention_ts, "channel": SLACK_CHANNEL}}).encode()
    async with relay.running():
        await until(lambda t: sockets.wait_for_open(2, SLACK_SCOPE, timeout=t))
        assert (await relay.slack("/slack/events", event, "application/json")).status_code == 200
        await until(lambda t: sockets.letta.wait_for(lambda s: len(s.delivered()) == 1, t))
        message_id = delivered_user_message(sockets)["client_message_id"]

        # The agent starts its turn, says something, and asks to run a tool.
        sockets.loop_status(SLACK_SCOPE, "PROCESSING_API_RESPONSE", ["run-1"], {"run-1": [message_id]})
        sockets.chunks(SLACK_SCOPE, "run-1", "msg-1", "Let me check the deploy.")
        sockets.stop(SLACK_SCOPE, "run-1", "requires_approval")
        request_id = sockets.request_approval(SLACK_SCOPE, "toolu_e2e", "Bash", {"command": "kubectl rollout status"})
        await until(lambda t: slack_stand_in.wait_for(lambda s: len(posts(s, "Approval needed")) == 1, t))
        [card] = posts(slack_stand_in, "Approval needed")
        assert (card.body["channel"], card.body["thread_ts"]) == (SLACK_CHANNEL, mention_ts)

        # A person who may decide clicks Approve (a signed interaction), once the card is stored.
        route = next(r for r in relay.settings.routes if r.name == "incidents")
        card_id = card_id_for(route.destination, "toolu_e2e")
        for _ in range(100):
            if await Queue(real_redis, prefix=prefix).record("card", card_id):
                break
            await asyncio.sleep(0.05)
        click = {"type": "block_actions", "user": {"id": APPROVER, "username": "bob", "team_id": SLACK_TEAM},
                 "team": {"id": SLACK_TEAM}, "trigger_id": "9.9.9",
                 "response_url": slack_stand_in.response_url("click"),
                 "actions": [{"action_id": slack_source.ACTION_APPROVE, "type": "button",
                              "value": card_id}]}
        clicked = await relay.slack("/slack/interactions", urlencode({"payload": json.dumps(click)}).encode(),
                                    "application/x-www-form-urlencoded")
        assert clicked.status_code == 200

        # The decision reaches the device the configured way.
        if approvals == "socket":
            await until(lambda t: sockets.wait_for(lambda s: len(s.inputs()) == 1, t))
            [decision] = sockets.inputs()
            assert decision["payload"] == {"kind": "approval_response", "request_id": request_id,
                                           "decision": {"behavior": "allow"}}
            assert [m.get("type") for a in sockets.letta.delivered() for m in a.body["messages"]] == [None]
        else:
            await until(lambda t: sockets.letta.wait_for(lambda s: len(s.delivered()) == 2, t))
            [approved] = sockets.letta.delivered()[1].body["messages"]
            assert approved["approvals"] == [{"type": "approval", "tool_call_id": "toolu_e2e", "approve": True}]
            assert sockets.inputs() == []
            sockets.answer_elsewhere(SLACK_SCOPE, request_id, "run-2")  # the device takes it: the tool runs

        # The tool ran; the agent answers and the turn ends.
        sockets.chunks(SLACK_SCOPE, "run-2", "msg-2", "The rollout finished; all pods are ready.")
        sockets.stop(SLACK_SCOPE, "run-2")
        sockets.loop_status(SLACK_SCOPE, "WAITING_ON_INPUT", [], {"run-1": [message_id]})
        await until(lambda t: slack_stand_in.wait_for(lambda s: len(posts(s, "pods are ready")) == 1, t))
        await asyncio.sleep(0.3)  # room for a duplicate, were there one
    [answer] = posts(slack_stand_in, "pods are ready")
    assert (answer.body["channel"], answer.body["thread_ts"]) == (SLACK_CHANNEL, mention_ts)
    assert answer.body["text"] == "Let me check the deploy.\n\nThe rollout finished; all pods are ready."
    assert len(posts(slack_stand_in, "Approval needed")) == 1
    assert "Approved" in slack_stand_in.responses("click")[0]["text"]
    assert slack_stand_in.of("chat.update") == []  # a decided card is not closed afterwards
    assert {c.frame["type"] for c in sockets.commands} <= {"sync", "input"}  # never runtime_start and the like


async def test_a_slash_command_s_answer_survives_a_socket_drop_mid_turn(
        letta: tuple[StatusSocketStandIn, str], slack_settings: Settings, real_redis_url: str, real_redis: Any,
        prefix: str, slack_stand_in: SlackStandIn) -> None:
    sockets, letta_url = letta
    relay = Relay(watching(slack_settings, "incidents", "rest"), real_redis_url, real_redis, prefix, letta_url,
                  slack_stand_in, None)
    command = urlencode({"team_id": SLACK_TEAM, "channel_id": SLACK_CHANNEL, "user_id": "U0ALICE",
                         "user_name": "alice", "command": "/agent", "text": "summarize the incident",
                         "response_url": slack_stand_in.response_url("cmd"), "trigger_id": "1.2.3"}).encode()
    async with relay.running():
        await until(lambda t: sockets.wait_for_open(2, SLACK_SCOPE, timeout=t))
        assert (await relay.slack("/slack/commands", command, "application/x-www-form-urlencoded")).status_code == 200
        await until(lambda t: sockets.letta.wait_for(lambda s: len(s.delivered()) == 1, t))
        message_id = delivered_user_message(sockets)["client_message_id"]
        sockets.loop_status(SLACK_SCOPE, "PROCESSING_API_RESPONSE", ["run-9"], {"run-9": [message_id]})
        sockets.chunks(SLACK_SCOPE, "run-9", "msg-9", "The incident began at 09:12 when ", pieces=2)
        first = max(s.id for s in sockets.sockets)
        sockets.drop()
        sockets.chunks(SLACK_SCOPE, "run-9", "msg-9", "the cache expired.", pieces=2)  # while away
        sockets.stop(SLACK_SCOPE, "run-9")
        await until(lambda t: sockets.wait_for_open(2, SLACK_SCOPE, after=first, timeout=t))
        await until(lambda t: slack_stand_in.wait_for(
            lambda s: any("cache expired" in r.get("text", "") for r in s.responses("cmd")), t))
    answers = [r for r in slack_stand_in.responses("cmd") if "cache expired" in r.get("text", "")]
    assert [a["text"] for a in answers] == ["The incident began at 09:12 when the cache expired."]
    assert answers[0]["response_type"] == "ephemeral"
    assert len(sockets.of("sync")) >= 2  # asked for the state again after the drop


async def test_a_github_comment_s_answer_is_a_comment_on_the_issue(
        letta: tuple[StatusSocketStandIn, str], github_settings: Settings, real_redis_url: str, real_redis: Any,
        prefix: str, github_stand_in: GitHubStandIn) -> None:
    sockets, letta_url = letta
    relay = Relay(watching(github_settings, "hello", "rest"), real_redis_url, real_redis, prefix, letta_url, None,
                  github_stand_in)
    raw = json.dumps(comment_payload("@agent why is CI red?")).encode()
    headers = {"x-github-event": "issue_comment", "x-github-delivery": "d6c1f0e2-0000-4000-8000-000000000001",
               "x-github-hook-id": "1234", "content-type": "application/json",
               "x-hub-signature-256": github_source.sign(GITHUB_SECRET, raw)}
    async with relay.running():
        await until(lambda t: sockets.wait_for_open(2, GITHUB_SCOPE, timeout=t))
        async with httpx.AsyncClient() as http:
            assert (await http.post(f"{relay.web_url}/github/webhook", content=raw, headers=headers)).status_code == 202
        await until(lambda t: sockets.letta.wait_for(lambda s: len(s.delivered()) == 1, t))
        message_id = delivered_user_message(sockets)["client_message_id"]
        sockets.reply(GITHUB_SCOPE, "run-gh", "A flaky test: test_timeouts. Re-running fixes it.", [message_id])
        await until(lambda t: github_stand_in.wait_for(lambda s: len(s.comments) == 1, t))
    [comment] = github_stand_in.comments
    assert (comment.repository, comment.number) == (REPOSITORY, 1)
    assert "A flaky test: test_timeouts. Re-running fixes it." in comment.body
