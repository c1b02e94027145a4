"""Slack over Socket Mode, end to end on real parts: a mention arrives as an envelope on the
loopback Socket Mode stand-in → relay serve's socket door → real Redis → worker → the strict
Letta stand-in (a scripted device) → relay watch → progress and the answer in the mention's
thread on the Slack stand-in."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from typing import Any, Iterator

import pytest

from relay.settings import Settings
from relay.standin import Device, LettaStandIn, SimulatedDevice
from tests.conftest import DEVICE, SLACK_CHANNEL, SLACK_TEAM
from tests.slack_standin import APP_TOKEN, SlackStandIn
from tests.socket_mode_standin import SocketModeStandIn
from tests.support import ServerThread
from tests.test_end_to_end_watch import API_KEY, SLACK_SCOPE, delivered_user_message, mention, until, watching
from tests.whole_relay import Relay

pytestmark = pytest.mark.anyio


@pytest.fixture
def scripted() -> Iterator[tuple[LettaStandIn, str]]:
    """The strict Letta stand-in with a device whose every frame the test scripts."""
    standin = LettaStandIn([Device(DEVICE, "test-box", "conn-test", simulated=SimulatedDevice(auto_turns=False))],
                           api_key=API_KEY)
    with ServerThread(standin.app) as server:
        yield standin, server.url


def over_socket_mode(settings: Settings) -> Settings:
    """The incidents route watched; Slack reaches relay only over Socket Mode."""
    return replace(watching(settings, "incidents"), slack_app_token=APP_TOKEN, slack_signing_secret=None)


async def mention_over_the_socket(relay: Relay, socket: SocketModeStandIn, letta: LettaStandIn, text: str,
                                  ts: str) -> str:
    """Send a mention as Slack would over the app's connection; its client_message_id once delivered."""
    await until(lambda t: socket.wait_for(lambda s: s.connected(), t))
    envelope_id = socket.send("events_api", json.loads(mention(text, ts, f"Ev-{ts}")))
    await until(lambda t: socket.wait_for(lambda s: s.acked(envelope_id), t))
    await until(lambda t: letta.wait_for(lambda s: len(s.delivered()) == 1, t))
    return str(delivered_user_message(letta)["client_message_id"])


async def test_a_mention_over_socket_mode_shows_progress_and_its_answer_in_the_thread(
        scripted: tuple[LettaStandIn, str], slack_settings: Settings, socket_stand_in: SocketModeStandIn,
        real_redis_url: str, real_redis: Any, prefix: str, slack_stand_in: SlackStandIn) -> None:
    standin, letta_url = scripted
    device = standin.simulated()
    relay = Relay(over_socket_mode(slack_settings), real_redis_url, real_redis, prefix, letta_url,
                  slack_stand_in, None)
    ts = "1700000400.000100"
    async with relay.running():
        await until(lambda t: standin.wait_for_open(1, SLACK_SCOPE, timeout=t))
        message_id = await mention_over_the_socket(relay, socket_stand_in, standin, "why is the deploy slow?", ts)
        device.loop_status(SLACK_SCOPE, "PROCESSING_API_RESPONSE", ["run-sm"], {"run-sm": [message_id]})
        device.chunks(SLACK_SCOPE, "run-sm", "msg-sm", "Looking at the deploy.")
        await until(lambda t: slack_stand_in.wait_for(lambda s: len(s.thread(SLACK_CHANNEL, ts)) == 1, t))
        device.chunks(SLACK_SCOPE, "run-sm", "msg-sm2", "The cache expired at 09:12.")
        device.turn_finished(SLACK_SCOPE, "run-sm")
        await until(lambda t: slack_stand_in.wait_for(
            lambda s: s.thread(SLACK_CHANNEL, ts)[0].text.endswith("expired at 09:12."), t))
        await asyncio.sleep(0.5)  # room for a duplicate delivery or a late edit, were there one
    [message] = slack_stand_in.thread(SLACK_CHANNEL, ts)  # one message: the progress, then the answer
    assert message.text == "Looking at the deploy.\n\nThe cache expired at 09:12."
    first = next(c for c in slack_stand_in.of("chat.postMessage") if c.body.get("thread_ts") == ts)
    assert "hourglass" in first.body["text"]  # at once: the agent is working
    assert len(standin.delivered()) == 1
    assert socket_stand_in.errors == []


async def test_where_slack_streams_a_mention_over_socket_mode_gets_its_answer_streamed(
        scripted: tuple[LettaStandIn, str], slack_settings: Settings, socket_stand_in: SocketModeStandIn,
        real_redis_url: str, real_redis: Any, prefix: str, slack_stand_in: SlackStandIn) -> None:
    standin, letta_url = scripted
    device = standin.simulated()
    slack_stand_in.streaming = True
    relay = Relay(over_socket_mode(slack_settings), real_redis_url, real_redis, prefix, letta_url,
                  slack_stand_in, None)
    ts = "1700000401.000100"

    def streamed(s: SlackStandIn, text: str) -> bool:
        thread = s.thread(SLACK_CHANNEL, ts)
        return bool(thread) and text in thread[0].text

    async with relay.running():
        await until(lambda t: standin.wait_for_open(1, SLACK_SCOPE, timeout=t))
        message_id = await mention_over_the_socket(relay, socket_stand_in, standin, "explain the outage", ts)
        device.loop_status(SLACK_SCOPE, "PROCESSING_API_RESPONSE", ["run-st"], {"run-st": [message_id]})
        device.chunks(SLACK_SCOPE, "run-st", "msg-st", "First, *the cache* ")
        await until(lambda t: slack_stand_in.wait_for(lambda s: streamed(s, "the cache"), t))
        assert slack_stand_in.thread(SLACK_CHANNEL, ts)[0].streaming  # shown while the agent writes
        device.chunks(SLACK_SCOPE, "run-st", "msg-st", "expired; then the db failed over.")
        device.turn_finished(SLACK_SCOPE, "run-st")
        await until(lambda t: slack_stand_in.wait_for(lambda s: not s.thread(SLACK_CHANNEL, ts)[0].streaming, t))
    [message] = slack_stand_in.thread(SLACK_CHANNEL, ts)
    assert message.text == "First, *the cache* expired; then the db failed over."
    [start] = slack_stand_in.of("chat.startStream")
    assert (start.body["recipient_team_id"], start.body["recipient_user_id"]) == (SLACK_TEAM, "U0ALICE")
    assert len(standin.delivered()) == 1
