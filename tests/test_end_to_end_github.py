"""GitHub end to end: a signed delivery over real HTTP → real Redis → worker → the Letta
stand-in, with the reactions GitHub gets (the GitHub API stand-in)."""

from __future__ import annotations

import asyncio
import json
from typing import Any, Iterator

import httpx
import pytest
from relay.github_api import GitHubApi
from relay.queue import Queue, connect
from relay.replies import Replier
from relay.settings import Settings
from relay.sources import github as source
from relay.standin import LettaStandIn
from relay.web import create_app
from tests.conftest import GITHUB_SECRET, REPOSITORY
from tests.github_standin import GitHubStandIn
from tests.support import ServerThread, running_worker
from tests.web.test_github import comment_payload

pytestmark = pytest.mark.anyio


@pytest.fixture
def relay_web(real_redis_url: str, prefix: str, github_settings: Settings,
              github_stand_in: GitHubStandIn) -> Iterator[str]:
    github = GitHubApi("ghp_test_token", base_url=github_stand_in.base_url)
    app = create_app(github_settings, Queue(connect(real_redis_url), prefix=prefix), github_api=github)
    with ServerThread(app) as server:
        yield server.url


async def test_mention_in_a_comment_reaches_the_agent_and_the_comment_gets_reactions(
        relay_web: str, real_redis: Any, prefix: str, github_settings: Settings,
        stand_in: tuple[LettaStandIn, str], github_stand_in: GitHubStandIn) -> None:
    letta, letta_url = stand_in
    device = letta.simulated()
    request_id = device.request_approval(("agent-hello", "default"), "toolu_09")
    github = GitHubApi("ghp_test_token", base_url=github_stand_in.base_url)
    async with running_worker(real_redis, prefix, github_settings, letta_url, replier=Replier(None, github)):
        raw = json.dumps(comment_payload("@agent please triage\n/approve toolu_09")).encode()
        headers = {"x-github-event": "issue_comment", "x-github-delivery": "72d3162e-cc78-11e3-81ab-4c9367dc0958",
                   "x-github-hook-id": "292430182", "content-type": "application/json",
                   "x-hub-signature-256": source.sign(GITHUB_SECRET, raw)}
        async with httpx.AsyncClient() as http:
            answer = await http.post(f"{relay_web}/github/webhook", content=raw, headers=headers)
            again = await http.post(f"{relay_web}/github/webhook", content=raw, headers=headers)  # redelivery
        assert answer.status_code == 202 and again.json()["duplicate"] is True
        assert await asyncio.to_thread(letta.wait_for, lambda s: len(s.delivered()) == 1, 15)
        assert await asyncio.to_thread(github_stand_in.wait_for,
                                       lambda s: s.contents().count("rocket") == 2, 15)
    await github.aclose()
    [decision] = device.decisions  # the /approve line: one approval_response, over the status socket
    assert (decision.scope, decision.request_id, decision.behavior) == (("agent-hello", "default"), request_id,
                                                                        "allow")
    [comment] = letta.delivered()[0].body["messages"]  # the mention: a message, over REST
    assert comment["role"] == "user" and REPOSITORY in comment["content"]
    assert github_stand_in.contents() == ["eyes", "rocket", "rocket"]
