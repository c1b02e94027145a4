"""Before its first delivery a message fetches its context; nothing there fails a delivery."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any, AsyncIterator

import fakeredis
import pytest

from relay.enrich import Enricher
from relay.github_api import GitHubApi
from relay.messages import Inbound, client_message_id, envelope_for, user_message
from relay.queue import Queue
from relay.routing import Destination, Route
from relay.settings import Settings
from relay.slack_api import SlackApi
from tests.github_standin import GitHubStandIn
from tests.slack_standin import SlackStandIn

pytestmark = pytest.mark.anyio
ROUTE = Route("r", Destination(agent_id="agent-e", device_id="d"))


@pytest.fixture
async def queue() -> AsyncIterator[Queue]:
    redis = fakeredis.FakeAsyncRedis(decode_responses=True)
    yield Queue(redis, prefix="enrich-test")
    await redis.aclose()


def envelope(context: dict[str, Any], source: str = "slack", text: str = "hello", n: int = 1) -> Any:
    message_id = client_message_id("test", "enrich", str(n))
    inbound = Inbound(source, str(n), message_id, user_message(text, message_id), context=context)
    return envelope_for(inbound, ROUTE, time.time())


def file(url: str, name: str = "a.txt", size: int | None = 10, mimetype: str = "text/plain") -> dict[str, Any]:
    return {"name": name, "url": f"https://acme.slack.com/files/{name}", "download": url, "mimetype": mimetype,
            "size": size}


async def enriched(settings: Settings, queue: Queue, slack_stand_in: SlackStandIn, envelope_: Any) -> str:
    slack = SlackApi("xoxb-test-token", base_url=slack_stand_in.api_url)
    try:
        out = await Enricher(settings, queue, slack).enrich(envelope_)
    finally:
        await slack.aclose()
    assert out.context is None and out.client_message_id == envelope_.client_message_id
    assert out.message["otid"] == out.client_message_id
    return str(out.message["content"])


async def test_a_file_too_large_or_unreadable_or_elsewhere_is_named_with_a_note(
        settings: Settings, queue: Queue, slack_stand_in: SlackStandIn) -> None:
    slack_stand_in.files.update({"big.txt": b"x" * 100, "ok.txt": b"fine"})
    small = replace(settings, inline_file_bytes=50)
    content = await enriched(small, queue, slack_stand_in, envelope({"files": [
        file(slack_stand_in.file_url("ok.txt"), "ok.txt", size=4),
        file(slack_stand_in.file_url("big.txt"), "big.txt", size=100),
        file(slack_stand_in.file_url("big.txt"), "unsized.txt", size=None),
        file(slack_stand_in.file_url("gone.txt"), "gone.txt"),
        file("https://evil.example/steal", "elsewhere.txt"),
        file(slack_stand_in.file_url("ok.txt"), "image.png", mimetype="image/png")]}))
    assert "fine" in content
    assert "big.txt — https://acme.slack.com/files/big.txt (100 bytes: too large to include)" in content
    assert "unsized.txt — https://acme.slack.com/files/unsized.txt (over 50 bytes: too large to include)" in content
    assert "gone.txt — https://acme.slack.com/files/gone.txt (could not be read: HTTP 404)" in content
    assert "elsewhere.txt — https://acme.slack.com/files/elsewhere.txt (relay may not read it)" in content
    assert content.endswith("image.png — https://acme.slack.com/files/image.png")
    assert not [c for c in slack_stand_in.calls if "evil" in c.method]


async def test_a_thread_slack_will_not_show_is_said_and_the_message_still_goes(
        settings: Settings, queue: Queue, slack_stand_in: SlackStandIn) -> None:
    slack_stand_in.fail("conversations.replies", "not_in_channel")
    thread = {"slack_thread": {"team": "T1", "channel": "C1", "thread_ts": "1.0", "ts": "2.0"}}
    content = await enriched(settings, queue, slack_stand_in, envelope(thread))
    assert content == "hello\n\n(The thread's earlier messages could not be read: not_in_channel.)"


async def test_a_retry_of_the_first_mention_still_brings_the_thread_and_a_later_one_does_not(
        settings: Settings, queue: Queue, slack_stand_in: SlackStandIn) -> None:
    slack_stand_in.replies[("C1", "1.0")] = [{"user": "U9", "text": "before", "ts": "1.0"}]
    thread = {"slack_thread": {"team": "T1", "channel": "C1", "thread_ts": "1.0", "ts": "2.0"}}
    first = envelope(thread, n=1)
    assert "@U9: before" in await enriched(settings, queue, slack_stand_in, first)  # an unknown name: the id
    assert "@U9: before" in await enriched(settings, queue, slack_stand_in, first)
    later = envelope({"slack_thread": {**thread["slack_thread"], "ts": "3.0"}}, n=2)
    assert await enriched(settings, queue, slack_stand_in, later) == "hello"


async def test_no_thread_history_when_turned_off(settings: Settings, queue: Queue,
                                                 slack_stand_in: SlackStandIn) -> None:
    slack_stand_in.replies[("C1", "1.0")] = [{"user": "U9", "text": "before", "ts": "1.0"}]
    thread = {"slack_thread": {"team": "T1", "channel": "C1", "thread_ts": "1.0", "ts": "2.0"}}
    off = replace(settings, thread_history_messages=0)
    assert await enriched(off, queue, slack_stand_in, envelope(thread)) == "hello"
    assert slack_stand_in.of("conversations.replies") == []


async def test_a_github_attachment_is_read_without_the_token_from_github_only(
        settings: Settings, queue: Queue, github_stand_in: GitHubStandIn) -> None:
    github = GitHubApi("ghp_secret", base_url=github_stand_in.base_url)
    assert github.may_download("https://github.com/user-attachments/files/1/a.log")
    assert github.may_download(f"{github_stand_in.base_url}/user-attachments/files/1/a.log")
    assert not github.may_download("https://github.com.evil.example/user-attachments/files/1/a.log")
    out = await Enricher(settings, queue, None, github).enrich(envelope({"files": [
        {"name": "a.log", "url": "https://github.com/user-attachments/files/1/a.log",
         "download": "https://evil.example/user-attachments/files/1/a.log", "mimetype": "text/plain"}]},
        source="github"))
    await github.aclose()
    assert "(relay may not read it)" in out.message["content"]
