"""Remembering where a message came from, on fakeredis and real Redis, and the worker doing it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from dataclasses import replace
from typing import Any, AsyncIterator, Awaitable, Callable

import pytest
import redis.asyncio as aioredis
from tenacity import wait_none

from relay.errors import QueueUnavailable
from relay.letta import LettaClient
from relay.messages import Envelope, Inbound, approval_decision, approval_message, client_message_id
from relay.messages import envelope_for, user_message
from relay.origins import DEFAULT_TTL, Origin, Origins
from relay.queue import Keys, Queue
from relay.routing import Destination, Route, WatchRule
from relay.settings import Settings, load
from relay.worker import Worker
from tests.support import free_port

pytestmark = pytest.mark.anyio

HOME = Route("default", Destination(agent_id="agent-test", device_id="device-test"))
MENTION = {"via": "reaction", "channel": "C0001", "ts": "1700000001.000100"}


def message(n: int, reply: dict[str, Any] | None = MENTION, source: str = "slack") -> Envelope:
    message_id = client_message_id("test-origins", str(n))
    inbound = Inbound(source, str(n), message_id, user_message(f"m{n}", message_id), reply=reply)
    return envelope_for(inbound, HOME, time.time())


def approval(tool_call_id: str) -> Envelope:
    message_id = client_message_id("test-origins", tool_call_id)
    body = approval_message([approval_decision(tool_call_id, True)])
    return envelope_for(Inbound("slack", tool_call_id, message_id, body, reply={"via": "card", "channel": "C1",
                                                                                  "ts": "1.1"}), HOME, time.time())


async def test_a_remembered_message_is_recalled_with_its_route_source_and_reply(redis_client: Any,
                                                                                prefix: str) -> None:
    origins = Origins(redis_client, prefix)
    sent = message(1)
    await origins.remember(sent)
    assert await origins.recall(sent.client_message_id) == Origin("default", "slack", MENTION, sent.client_message_id)


async def test_an_unknown_message_has_no_origin(redis_client: Any, prefix: str) -> None:
    assert await Origins(redis_client, prefix).recall(client_message_id("test-origins", "never sent")) is None


async def test_each_origin_expires_after_the_ttl(redis_client: Any, prefix: str) -> None:
    origins = Origins(redis_client, prefix, ttl=3600.0)
    sent = message(2)
    await origins.remember(sent)
    key = Keys(prefix).record("origin", sent.client_message_id)
    assert 3590_000 < await redis_client.pttl(key) <= 3600_000
    assert json.loads(await redis_client.get(key)) == {"route": "default", "source": "slack", "reply": MENTION}


async def test_an_origin_is_gone_once_its_ttl_has_passed(redis_client: Any, prefix: str) -> None:
    origins = Origins(redis_client, prefix, ttl=0.05)
    sent = message(3)
    await origins.remember(sent)
    await asyncio.sleep(0.2)
    assert await origins.recall(sent.client_message_id) is None


async def test_a_message_without_a_reply_target_is_remembered_with_an_empty_one(redis_client: Any,
                                                                                prefix: str) -> None:
    origins = Origins(redis_client, prefix)
    sent = message(4, reply=None, source="generic")
    await origins.remember(sent)
    origin = await origins.recall(sent.client_message_id)
    assert origin is not None and (origin.source, origin.reply, origin.slack_thread()) == ("generic", {}, None)


async def test_a_record_relay_did_not_write_is_no_origin(redis_client: Any, prefix: str) -> None:
    origins = Origins(redis_client, prefix)
    for n, junk in enumerate(["not json", "[]", '{"route": 1, "source": "x"}', '{"route": "r", "source": "s",'
                              ' "reply": "nope"}']):
        message_id = client_message_id("test-origins", "junk", str(n))
        await redis_client.set(Keys(prefix).record("origin", message_id), junk)
        assert await origins.recall(message_id) is None


async def test_redis_failures_are_queue_unavailable() -> None:
    gone = aioredis.Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=1, decode_responses=True)
    origins = Origins(gone, "relaytest-gone")
    with pytest.raises(QueueUnavailable):
        await origins.remember(message(5))
    with pytest.raises(QueueUnavailable):
        await origins.recall("x")
    await gone.aclose()


def test_the_default_ttl_is_the_settings_default_and_the_setting_parses() -> None:
    assert Settings().origin_ttl == DEFAULT_TTL == 7 * 24 * 3600
    assert load({"RELAY_ORIGIN_TTL": "2d"}).origin_ttl == 2 * 24 * 3600


# -- where answers go in Slack --------------------------------------------------------------------


@pytest.mark.parametrize(("reply", "thread"), [
    (MENTION, ("C0001", "1700000001.000100")),
    ({**MENTION, "thread_ts": "1700000000.000001"}, ("C0001", "1700000000.000001")),
    ({"via": "reaction", "channel": "D0001", "ts": "1700000002.000200"}, ("D0001", "1700000002.000200")),
    ({"via": "response_url", "url": "https://hooks.slack.com/commands/T/1/x"}, None),
    ({"via": "github", "repository": "o/r", "comment_id": 1, "api": "issues", "number": 3}, None),
    ({"via": "card", "channel": "C1", "ts": "1.1"}, None),
    ({}, None),
    ({"via": "reaction", "channel": "C0001"}, None),
], ids=["mention", "mention-in-a-thread", "dm", "slash-command", "github", "card", "none", "no-ts"])
def test_slack_thread_is_the_messages_thread_or_none(reply: dict[str, Any], thread: tuple[str, str] | None) -> None:
    assert Origin("r", "slack", reply).slack_thread() == thread


# -- the worker remembers --------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def worker(redis_client: Any, prefix: str, settings: Settings, url: str,
                 origins: Origins, watched: bool = True) -> AsyncIterator[None]:
    if watched:  # origins are kept only for conversations a watcher follows
        settings = replace(settings, routes=tuple(replace(r, watch=WatchRule()) for r in settings.routes))
    queue = Queue(redis_client, prefix=prefix, consumer="worker-origins")
    letta = LettaClient(url, "test-key", timeout=settings.letta_timeout, retry_wait=wait_none())
    stop = asyncio.Event()
    task = asyncio.create_task(Worker(queue, letta, settings, poll_interval=0.01, origins=origins).run(stop))
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=30)
        await letta.aclose()


async def until(condition: Callable[[], Awaitable[bool]], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


async def test_the_worker_remembers_a_delivered_user_message_but_not_a_decision(
        queue: Queue, redis_client: Any, prefix: str, settings: Settings, stand_in) -> None:  # type: ignore[no-untyped-def]
    standin, url = stand_in
    origins = Origins(redis_client, prefix)
    said, decided = message(10), approval("toolu_origins")
    await queue.enqueue(decided)
    await queue.enqueue(said)
    async with worker(redis_client, prefix, settings, url, origins):
        await until(lambda: _known(origins, said))
        await until(lambda: _delivered(standin, 2))
    assert await origins.recall(decided.client_message_id) is None


async def test_a_conversation_no_watcher_follows_keeps_no_origins(
        queue: Queue, redis_client: Any, prefix: str, settings: Settings, stand_in) -> None:  # type: ignore[no-untyped-def]
    standin, url = stand_in
    origins = Origins(redis_client, prefix)
    said = message(13)
    await queue.enqueue(said)
    async with worker(redis_client, prefix, settings, url, origins, watched=False):
        await until(lambda: _delivered(standin, 1))
        await until(lambda: _acked(queue))
    assert await origins.recall(said.client_message_id) is None


async def _acked(queue: Queue) -> bool:
    depth = await queue.depth()
    return (depth.ready, depth.in_flight) == (0, 0)


async def test_a_message_that_fails_is_not_remembered(queue: Queue, redis_client: Any, prefix: str,
                                                      settings: Settings, stand_in) -> None:  # type: ignore[no-untyped-def]
    standin, url = stand_in
    origins = Origins(redis_client, prefix)
    failing = message(11)
    standin.add_fault(400, times=1, message_id=failing.client_message_id)
    await queue.enqueue(failing)
    async with worker(redis_client, prefix, settings, url, origins):
        await until(lambda: _dead(queue, 1))
    assert await origins.recall(failing.client_message_id) is None


async def test_an_origin_redis_cannot_store_changes_nothing_for_the_message(
        queue: Queue, redis_client: Any, prefix: str, settings: Settings, stand_in,  # type: ignore[no-untyped-def]
        caplog: pytest.LogCaptureFixture) -> None:
    standin, url = stand_in
    gone = aioredis.Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=1, decode_responses=True)
    sent = message(12)
    await queue.enqueue(sent)
    with caplog.at_level(logging.WARNING, logger="relay.worker"):
        async with worker(redis_client, prefix, settings, url, Origins(gone, prefix)):
            await until(lambda: _delivered(standin, 1))
            await until(lambda: _logged(caplog, "could not remember the message's origin"))
    await gone.aclose()
    depth = await queue.depth()
    assert (depth.ready, depth.in_flight, depth.delayed, depth.dead) == (0, 0, 0, 0)
    assert len(standin.delivered()) == 1  # delivered once, not retried


async def _known(origins: Origins, envelope: Envelope) -> bool:
    return await origins.recall(envelope.client_message_id) is not None


async def _delivered(standin: Any, count: int) -> bool:
    return len(standin.delivered()) >= count


async def _dead(queue: Queue, count: int) -> bool:
    return (await queue.depth()).dead >= count


async def _logged(caplog: pytest.LogCaptureFixture, text: str) -> bool:
    return text in caplog.text
