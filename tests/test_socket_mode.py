"""The Socket Mode door on real parts: slack-sdk's client against a loopback Socket Mode
stand-in (apps.connections.open on the Slack stand-in → a WebSocket speaking Slack's envelope
protocol), real Redis, and the worker delivering to the strict Letta stand-in."""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import replace
from typing import Any, AsyncIterator, Callable

import pytest

from relay.metrics import Metrics
from relay.queue import Queue
from relay.settings import Settings
from relay.slack_api import SlackApi
from relay.socket_mode import SocketModeDoor, socket_door_for
from tests.conftest import SLACK_CHANNEL, SLACK_TEAM
from tests.slack_standin import APP_TOKEN, SlackStandIn
from tests.socket_mode_standin import SocketModeStandIn

pytestmark = pytest.mark.anyio


@pytest.fixture
def socket_settings(slack_settings: Settings, socket_stand_in: SocketModeStandIn) -> Settings:
    return replace(slack_settings, slack_app_token=APP_TOKEN)


@contextlib.asynccontextmanager
async def door(settings: Settings, queue: Queue, metrics: Metrics | None = None) -> AsyncIterator[SocketModeDoor]:
    slack = SlackApi(settings.slack_bot_token, base_url=settings.slack_api_base_url)
    socket_door = socket_door_for(settings, queue, slack, metrics or Metrics(), ping_interval=0.2)
    assert socket_door is not None
    stop = asyncio.Event()
    task = asyncio.create_task(socket_door.run(stop))
    try:
        yield socket_door
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=15)
        await slack.aclose()


async def until(watched: Any, predicate: Callable[[Any], bool], timeout: float = 15.0) -> None:
    assert await asyncio.to_thread(watched.wait_for, predicate, timeout)


def mention(text: str = "summarize the incident", ts: str = "1700000001.000100") -> dict[str, Any]:
    return {"type": "event_callback", "team_id": SLACK_TEAM, "api_app_id": "A0RELAYTEST", "event_id": f"Ev{ts}",
            "event": {"type": "app_mention", "user": "U0ALICE", "text": f"<@U0BOT> {text}", "ts": ts,
                      "channel": SLACK_CHANNEL, "event_ts": ts},
            "authorizations": [{"team_id": SLACK_TEAM, "user_id": "U0BOT", "is_bot": True}]}


async def test_smoke(socket_settings: Settings, socket_stand_in: SocketModeStandIn, real_redis: Any,
                     prefix: str) -> None:
    queue = Queue(real_redis, prefix=prefix)
    async with door(socket_settings, queue):
        await until(socket_stand_in, lambda s: s.connected())
        envelope_id = socket_stand_in.send("events_api", mention())
        await until(socket_stand_in, lambda s: s.acked(envelope_id))
    assert (await queue.stats()).ready == 1
    assert socket_stand_in.errors == []
