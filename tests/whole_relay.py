"""relay serve + relay worker + relay watch in one test process, on real Redis, wired as the
commands wire them (approvals over the status socket, cards, origins, replies; with
SLACK_APP_TOKEN in the settings, relay serve's Socket Mode door too)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import replace
from typing import Any, AsyncIterator, Callable
from urllib.parse import urlencode

import httpx
from tenacity import wait_none

from relay.approval_delivery import Deliverer
from relay.cards import cards_for
from relay.enrich import Enricher
from relay.github_api import GitHubApi
from relay.letta import LettaClient
from relay.metrics import Metrics
from relay.origins import Origins
from relay.platforms import Platforms
from relay.policy import Backoff
from relay.queue import Queue, connect
from relay.replies import Replier
from relay.settings import Settings
from relay.slack_api import SlackApi
from relay.socket_mode import socket_door_for
from relay.sources import slack as slack_source
from relay.sources.slack import card_id_for
from relay.watch import watcher_for
from relay.web import create_app
from relay.worker import Worker
from tests.conftest import APPROVER, SLACK_SECRET, SLACK_TEAM
from tests.github_standin import GitHubStandIn
from tests.slack_standin import SlackStandIn
from tests.support import ServerThread


class Relay:
    """relay serve + relay worker + relay watch, on real Redis, for the duration of a test."""

    def __init__(self, settings: Settings, redis_url: str, redis: Any, prefix: str, letta_url: str,
                 slack: SlackStandIn | None, github: GitHubStandIn | None, *, api_key: str = "test-key",
                 platforms: Callable[[], Platforms] | None = None) -> None:
        self.settings = replace(settings, key_prefix=prefix)
        # Linear, GitLab, Discord: new clients for each process, from the settings by default.
        self.platforms = platforms or (lambda: Platforms.from_settings(self.settings))
        self.api_key = api_key
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
        web_platforms, platforms = self.platforms(), self.platforms()
        app = create_app(self.settings, Queue(connect(self.redis_url), prefix=self.prefix), slack_api=web_slack,
                         github_api=web_github, **web_platforms.web_apis())
        slack, github = self.apis()
        queue = Queue(self.redis, prefix=self.prefix, consumer="worker-1")
        letta = LettaClient(self.letta_url, self.api_key, retry_wait=wait_none())
        worker = Worker(queue, Deliverer(letta, self.settings, records=queue), self.settings, poll_interval=0.01,
                        replier=Replier(slack, github, cards=cards_for(self.settings, queue, slack),
                                        others=platforms.repliers(self.settings, queue)),
                        origins=Origins(self.redis, self.prefix), enricher=Enricher(self.settings, queue, slack, github))
        watcher = watcher_for(self.settings, self.redis, Queue(self.redis, prefix=self.prefix), letta, slack, github,
                              platforms=platforms)
        watcher.backoff, watcher.check_every = Backoff(0.05, 0.3), 0.5
        stop = asyncio.Event()
        with ServerThread(app) as server:
            self.web_url = server.url
            tasks = [asyncio.create_task(worker.run(stop)), asyncio.create_task(watcher.run(stop))]
            door_slack = SlackApi("xoxb-test-token", base_url=self.slack_url) if self.slack_url else None
            door = socket_door_for(self.settings, Queue(self.redis, prefix=self.prefix), door_slack, Metrics(),
                                   ping_interval=1.0) if door_slack else None
            if door is not None:
                tasks.append(asyncio.create_task(door.run(stop)))
            try:
                yield self
            finally:
                stop.set()
                await asyncio.wait_for(asyncio.gather(*tasks), timeout=30)
                for client in (letta, slack, github, web_slack, web_github, door_slack):
                    if client is not None:
                        await client.aclose()
                await platforms.aclose()
                # The web's clients belong to the server thread's event loop, closed with it.

    async def slack(self, path: str, body: bytes, content_type: str) -> httpx.Response:
        headers = slack_source.signed_headers(SLACK_SECRET, int(time.time()), body, content_type)
        async with httpx.AsyncClient() as http:
            return await http.post(f"{self.web_url}{path}", content=body, headers=headers)

    async def click(self, slack_stand_in: SlackStandIn, route_name: str, tool_call_id: str, action: str,
                    key: str) -> None:
        """A person who may decide clicks a button on the card (a signed interaction), once it is stored."""
        route = next(r for r in self.settings.routes if r.name == route_name)
        card_id = await self._stored_card(card_id_for(route.destination, tool_call_id))
        click = {"type": "block_actions", "user": {"id": APPROVER, "username": "bob", "team_id": SLACK_TEAM},
                 "team": {"id": SLACK_TEAM}, "trigger_id": "9.9.9", "response_url": slack_stand_in.response_url(key),
                 "actions": [{"action_id": action, "type": "button", "value": card_id}]}
        clicked = await self.slack("/slack/interactions", urlencode({"payload": json.dumps(click)}).encode(),
                                   "application/x-www-form-urlencoded")
        assert clicked.status_code == 200

    async def deny_with_reason(self, slack_stand_in: SlackStandIn, route_name: str, tool_call_id: str,
                               reason: str) -> None:
        """A person who may decide submits the deny-with-reason form of the card."""
        route = next(r for r in self.settings.routes if r.name == route_name)
        card_id = await self._stored_card(card_id_for(route.destination, tool_call_id))
        submitted = {"type": "view_submission", "user": {"id": APPROVER, "username": "bob", "team_id": SLACK_TEAM},
                     "team": {"id": SLACK_TEAM}, "view": {
                         "callback_id": slack_source.REASON_VIEW, "private_metadata": card_id, "state": {"values": {
                             slack_source.REASON_BLOCK: {slack_source.REASON_INPUT: {"value": reason}}}}}}
        answer = await self.slack("/slack/interactions", urlencode({"payload": json.dumps(submitted)}).encode(),
                                  "application/x-www-form-urlencoded")
        assert answer.status_code == 200

    async def _stored_card(self, card_id: str) -> str:
        for _ in range(100):
            if await Queue(self.redis, prefix=self.prefix).record("card", card_id):
                break
            await asyncio.sleep(0.05)
        return card_id
