"""The Socket Mode door on real parts: slack-sdk's client against a loopback Socket Mode
stand-in (apps.connections.open on the Slack stand-in → a WebSocket speaking Slack's envelope
protocol), real Redis, and the worker delivering to the strict Letta stand-in."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Iterator

import pytest

from relay.cards import Cards
from relay.intake import Intake
from relay.messages import ApprovalRequest
from relay.metrics import Metrics
from relay.queue import Queue
from relay.routing import Router
from relay.settings import Settings
from relay.slack_api import SlackApi
from relay.socket_mode import SocketModeDoor, socket_door_for
from relay.sources import slack as source
from relay.standin import LettaStandIn
from relay.web import create_app
from tests.conftest import APPROVER, SLACK_CHANNEL, SLACK_TEAM
from tests.slack_standin import APP_TOKEN, SlackStandIn
from tests.socket_mode_standin import SocketModeStandIn
from tests.support import RedisServer, free_port, relay_env, running_worker
from tests.test_metrics import registry, value

pytestmark = pytest.mark.anyio


@pytest.fixture
def socket_settings(slack_settings: Settings, socket_stand_in: SocketModeStandIn) -> Settings:
    return replace(slack_settings, slack_app_token=APP_TOKEN)


@contextlib.asynccontextmanager
async def door(settings: Settings, queue: Queue, metrics: Metrics | None = None) -> AsyncIterator[SocketModeDoor]:
    slack = SlackApi(settings.slack_bot_token, base_url=settings.slack_api_base_url)
    socket_door = socket_door_for(settings, queue, slack, metrics or Metrics(), ping_interval=1.0)
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


def command(text: str = "summarize the incident", trigger: str = "111.222.aaa",
            response_url: str = "") -> dict[str, Any]:
    return {"token": "x", "team_id": SLACK_TEAM, "channel_id": SLACK_CHANNEL, "user_id": "U0ALICE",
            "user_name": "alice", "command": "/agent", "text": text, "response_url": response_url,
            "trigger_id": trigger}


def click(card_id: str, response_url: str, user: str = APPROVER, action: str = source.ACTION_APPROVE) -> dict[str, Any]:
    return {"type": "block_actions", "user": {"id": user, "username": "bob", "team_id": SLACK_TEAM},
            "team": {"id": SLACK_TEAM}, "trigger_id": "9.9.9", "response_url": response_url,
            "actions": [{"action_id": action, "type": "button", "value": card_id}]}


def reason_form(card_id: str, user: str, reason: str = "not on prod") -> dict[str, Any]:
    return {"type": "view_submission", "user": {"id": user, "username": "mallory", "team_id": SLACK_TEAM},
            "team": {"id": SLACK_TEAM}, "view": {"callback_id": source.REASON_VIEW, "private_metadata": card_id,
                                                 "state": {"values": {source.REASON_BLOCK: {
                                                     source.REASON_INPUT: {"value": reason}}}}}}


async def queued(queue: Queue) -> int:
    return (await queue.stats()).ready


# -- a mention, end to end --------------------------------------------------------------------------

async def test_a_mention_over_socket_mode_is_queued_once_and_reaches_the_agent(
        socket_settings: Settings, socket_stand_in: SocketModeStandIn, real_redis: Any, prefix: str,
        stand_in: tuple[LettaStandIn, str]) -> None:
    letta, letta_url = stand_in
    async with door(socket_settings, Queue(real_redis, prefix=prefix)), \
            running_worker(real_redis, prefix, socket_settings, letta_url):
        await until(socket_stand_in, lambda s: s.connected())
        envelope_id = socket_stand_in.send("events_api", mention("is the deploy ok?"))
        await until(socket_stand_in, lambda s: s.acked(envelope_id))
        await until(letta, lambda s: len(s.delivered()) == 1)
    [attempt] = letta.delivered()
    [message] = attempt.body["messages"]
    assert attempt.body["agentId"] == "agent-incidents"
    assert message["role"] == "user" and message["content"].endswith("is the deploy ok?")
    [ack] = socket_stand_in.envelope(envelope_id).acks
    assert ack.payload is None  # events take no response payload
    assert socket_stand_in.errors == []


async def test_an_envelope_whose_ack_was_lost_comes_again_and_is_still_one_message(
        socket_settings: Settings, socket_stand_in: SocketModeStandIn, real_redis: Any, prefix: str) -> None:
    queue = Queue(real_redis, prefix=prefix)
    metrics = Metrics()
    async with door(socket_settings, queue, metrics):
        await until(socket_stand_in, lambda s: s.connected())
        envelope_id = socket_stand_in.send("events_api", mention(), lose_acks=2)
        await until(socket_stand_in, lambda s: s.acked(envelope_id))
    envelope = socket_stand_in.envelope(envelope_id)
    assert len(envelope.deliveries) == 3 and len(socket_stand_in.lost) == 2
    assert [ack.attempt for ack in envelope.acks] == [3]
    assert await queued(queue) == 1
    scraped = registry(metrics)
    assert value(scraped, "relay_requests_total", source="slack", outcome="accepted", reason="") == 1
    assert value(scraped, "relay_requests_total", source="slack", outcome="duplicate", reason="") == 2
    assert value(scraped, "relay_socket_mode_envelopes_total", type="events_api", outcome="acked") == 3


async def test_a_dropped_connection_is_replaced_and_envelopes_go_on(
        socket_settings: Settings, socket_stand_in: SocketModeStandIn, slack_stand_in: SlackStandIn,
        real_redis: Any, prefix: str) -> None:
    queue = Queue(real_redis, prefix=prefix)
    async with door(socket_settings, queue):
        await until(socket_stand_in, lambda s: s.connected())
        socket_stand_in.drop()
        await until(socket_stand_in, lambda s: len(s.connections) >= 2 and s.connected())
        envelope_id = socket_stand_in.send("events_api", mention())
        await until(socket_stand_in, lambda s: s.acked(envelope_id))
    assert await queued(queue) == 1
    # a fresh URL for each connection (each ticket admits one)
    assert len(slack_stand_in.of("apps.connections.open")) == len(socket_stand_in.connections)
    assert socket_stand_in.refused_tickets == 0


async def test_a_disconnect_message_moves_relay_to_a_new_connection_before_the_old_one_closes(
        socket_settings: Settings, socket_stand_in: SocketModeStandIn, real_redis: Any, prefix: str) -> None:
    socket_stand_in.disconnect_grace = 30.0  # relay leaves long before Slack would close it
    queue = Queue(real_redis, prefix=prefix)
    async with door(socket_settings, queue):
        await until(socket_stand_in, lambda s: s.connected())
        socket_stand_in.disconnect("refresh_requested")
        await until(socket_stand_in, lambda s: len(s.connections) >= 2 and len(s.open_connections()) == 1)
        first = socket_stand_in.connections[0]
        assert not first.open  # relay closed it itself: Slack would have waited 30 s
        envelope_id = socket_stand_in.send("events_api", mention())
        await until(socket_stand_in, lambda s: s.acked(envelope_id))
    assert socket_stand_in.envelope(envelope_id).acks[0].connection != first.number
    assert await queued(queue) == 1


async def test_with_redis_away_nothing_is_acked_and_the_redelivery_after_it_returns_is_queued_once(
        socket_settings: Settings, socket_stand_in: SocketModeStandIn, redis_server: RedisServer,
        prefix: str) -> None:
    from relay.queue import connect

    socket_stand_in.retries = 40  # Slack keeps trying while Redis is down
    redis = connect(redis_server.url, socket_timeout=2.0)
    queue = Queue(redis, prefix=prefix)
    await queue.ensure_groups()
    metrics = Metrics()
    try:
        async with door(socket_settings, queue, metrics):
            await until(socket_stand_in, lambda s: s.connected())
            redis_server.stop()
            envelope_id = socket_stand_in.send("events_api", mention())
            await until(socket_stand_in, lambda s: len(s.envelope(envelope_id).deliveries) >= 2)
            assert not socket_stand_in.acked(envelope_id)
            assert value(registry(metrics), "relay_socket_mode_envelopes_total", type="events_api",
                         outcome="unacked") >= 1
            redis_server.restart()
            await until(socket_stand_in, lambda s: s.acked(envelope_id), timeout=30)
            assert await queued(queue) == 1
    finally:
        await redis.aclose()
    assert len(socket_stand_in.envelope(envelope_id).acks) == 1
    assert value(registry(metrics), "relay_requests_total", source="slack", outcome="unavailable", reason="") >= 1


# -- what people are told ---------------------------------------------------------------------------

async def test_a_slash_command_s_ephemeral_answer_rides_in_the_ack(
        socket_settings: Settings, socket_stand_in: SocketModeStandIn, slack_stand_in: SlackStandIn,
        real_redis: Any, prefix: str) -> None:
    queue = Queue(real_redis, prefix=prefix)
    async with door(socket_settings, queue):
        await until(socket_stand_in, lambda s: s.connected())
        sent = socket_stand_in.send("slash_commands", command(response_url=slack_stand_in.response_url("cmd")))
        empty = socket_stand_in.send("slash_commands", command(text="  ", trigger="333.444.bbb",
                                                               response_url=slack_stand_in.response_url("usage")))
        await until(socket_stand_in, lambda s: s.acked(sent) and s.acked(empty))
    [ack] = socket_stand_in.envelope(sent).acks
    assert ack.payload["response_type"] == "ephemeral"
    assert "Sent to agent `agent-incidents` (route `incidents`)" in ack.payload["text"]
    [usage] = socket_stand_in.envelope(empty).acks
    assert "/agent summarize the incident" in usage.payload["text"]
    assert await queued(queue) == 1
    assert socket_stand_in.errors == []


async def test_a_card_click_over_socket_mode_decides_the_card(
        socket_settings: Settings, socket_stand_in: SocketModeStandIn, slack_stand_in: SlackStandIn,
        real_redis: Any, prefix: str) -> None:
    queue = Queue(real_redis, prefix=prefix)
    slack = SlackApi(socket_settings.slack_bot_token, base_url=slack_stand_in.api_url)
    cards = Cards(queue, slack, Router(socket_settings.routes), Intake(queue))
    [incidents] = [r for r in socket_settings.routes if r.name == "incidents"]
    request = ApprovalRequest(request_id="req-1", tool_call_id="toolu_01", tool_name="bash",
                              input={"command": "rm -rf build/"}, agent_id="agent-incidents", turn_message_id="m-1")
    card, _ = await cards.ask(incidents, request, SLACK_CHANNEL, None)
    try:
        async with door(socket_settings, queue):
            await until(socket_stand_in, lambda s: s.connected())
            refused = socket_stand_in.send("interactive", reason_form(card.card_id, user="U0MALLORY"))
            clicked = socket_stand_in.send("interactive", click(card.card_id, slack_stand_in.response_url("click")))
            await until(socket_stand_in, lambda s: s.acked(refused) and s.acked(clicked))
            await until(slack_stand_in, lambda s: len(s.responses("click")) == 1)
    finally:
        await slack.aclose()
    [form] = socket_stand_in.envelope(refused).acks
    assert form.payload["response_action"] == "errors"
    assert form.payload["errors"][source.REASON_BLOCK].startswith("Not allowed")
    [ack] = socket_stand_in.envelope(clicked).acks
    assert ack.payload is None  # block_actions take no response payload: the card is replaced via response_url
    [replaced] = slack_stand_in.responses("click")
    assert replaced["replace_original"] is True and replaced["text"].startswith("Approved")
    stored = await cards.load(card.card_id)
    assert stored is not None and stored.decision is not None and stored.decision.user == APPROVER
    assert await queued(queue) == 1  # the decision
    assert socket_stand_in.errors == []


# -- refusals, and the HTTP doors without a signing secret ----------------------------------------

async def test_a_malformed_envelope_is_acked_dropped_and_counted(
        socket_settings: Settings, socket_stand_in: SocketModeStandIn, real_redis: Any, prefix: str) -> None:
    queue = Queue(real_redis, prefix=prefix)
    metrics = Metrics()
    async with door(socket_settings, queue, metrics):
        await until(socket_stand_in, lambda s: s.connected())
        no_team = socket_stand_in.send("slash_commands", {**command(), "team_id": ""})
        not_an_object = socket_stand_in.send("events_api", ["not", "an", "object"])  # type: ignore[arg-type]
        unknown = socket_stand_in.send("app_rate_limited", {"minute_rate_limited": 1})
        await until(socket_stand_in, lambda s: all(s.acked(e) for e in (no_team, not_an_object, unknown)))
    assert await queued(queue) == 0
    scraped = registry(metrics)
    assert value(scraped, "relay_socket_mode_envelopes_total", type="slash_commands", outcome="rejected") == 1
    assert value(scraped, "relay_socket_mode_envelopes_total", type="events_api", outcome="rejected") == 1
    assert value(scraped, "relay_socket_mode_envelopes_total", type="other", outcome="acked") == 1
    assert value(scraped, "relay_requests_total", source="slack", outcome="rejected", reason="bad_request") == 2


async def test_an_envelope_larger_than_the_body_limit_is_acked_and_dropped_as_too_large(
        socket_settings: Settings, socket_stand_in: SocketModeStandIn, real_redis: Any, prefix: str) -> None:
    queue = Queue(real_redis, prefix=prefix)
    metrics = Metrics()
    async with door(replace(socket_settings, max_body_bytes=4096), queue, metrics):
        await until(socket_stand_in, lambda s: s.connected())
        large = socket_stand_in.send("events_api", mention("x" * 5000))
        small = socket_stand_in.send("events_api", mention("small", ts="1700000002.000100"))
        await until(socket_stand_in, lambda s: s.acked(large) and s.acked(small))
    assert await queued(queue) == 1
    assert value(registry(metrics), "relay_requests_total", source="slack", outcome="rejected", reason="too_large") == 1


async def test_without_a_signing_secret_the_http_slack_doors_are_not_served(
        socket_settings: Settings, real_redis: Any, prefix: str) -> None:
    import httpx

    settings = replace(socket_settings, slack_signing_secret=None)
    app = create_app(settings, Queue(real_redis, prefix=prefix))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://relay") as http:
        for path in ("/slack/commands", "/slack/events", "/slack/interactions"):
            assert (await http.post(path, content=b"{}")).status_code == 404


async def test_the_app_token_never_reaches_the_log(socket_settings: Settings, socket_stand_in: SocketModeStandIn,
                                                   real_redis: Any, prefix: str,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("DEBUG"):
        async with door(socket_settings, Queue(real_redis, prefix=prefix)):
            await until(socket_stand_in, lambda s: s.connected())
            socket_stand_in.drop()
            await until(socket_stand_in, lambda s: len(s.connections) >= 2 and s.connected())
            envelope_id = socket_stand_in.send("events_api", mention("a secret plan"))
            await until(socket_stand_in, lambda s: s.acked(envelope_id))
    client_side = ("relay", "slack_sdk", "aiohttp")  # not the stand-ins' servers, which log their own URLs
    lines = "\n".join(r.getMessage() + str(getattr(r, "fields", "")) for r in caplog.records
                       if r.name.startswith(client_side))
    assert "socket mode connected" in lines
    assert APP_TOKEN not in lines and "a secret plan" not in lines
    assert "ticket=" not in lines.replace("ticket=…", "")


# -- the commands: two relay serve processes, relay dev ---------------------------------------------

ROOT = Path(__file__).resolve().parents[1]
ROUTES = f"""
[routes.incidents]
agent_id = "agent-incidents"
device_id = "device-test"

[routes.incidents.slack]
teams = ["{SLACK_TEAM}"]
"""


def socket_env(tmp_path: Path, slack_stand_in: SlackStandIn, **extra: str) -> dict[str, str]:
    routes = tmp_path / "routes.toml"
    routes.write_text(ROUTES)
    return relay_env(RELAY_ROUTES=str(routes), SLACK_APP_TOKEN=APP_TOKEN, SLACK_BOT_TOKEN="xoxb-test-token",
                     SLACK_API_BASE_URL=slack_stand_in.api_url, SLACK_HOOKS_URL=slack_stand_in.hooks_url, **extra)


@contextlib.contextmanager
def process(command: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A relay command for the duration of the block; stopped like a deploy stops it (SIGTERM)."""
    with open(log, "wb") as out:
        started = subprocess.Popen([sys.executable, "-m", "relay", *command, "--port", str(free_port())], env=env,
                                   stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        yield started
    finally:
        if started.poll() is None:
            started.send_signal(signal.SIGTERM)
        code = started.wait(timeout=30)
        assert code == 0, log.read_text()


async def test_two_relay_serve_processes_connected_at_once_queue_each_envelope_once(
        socket_stand_in: SocketModeStandIn, slack_stand_in: SlackStandIn, real_redis_url: str, real_redis: Any,
        prefix: str, tmp_path: Path) -> None:
    env = socket_env(tmp_path, slack_stand_in, REDIS_URL=real_redis_url, RELAY_KEY_PREFIX=prefix)
    with process(["serve"], env, tmp_path / "one.log"), process(["serve"], env, tmp_path / "two.log"):
        await until(socket_stand_in, lambda s: s.connected(2), timeout=30)
        # Each envelope's first ack is lost: it comes again, to the other process.
        sent = [socket_stand_in.send("events_api", mention(f"message {i}", ts=f"1700000001.{i:06d}"), lose_acks=1)
                for i in range(10)]
        await until(socket_stand_in, lambda s: all(s.acked(e) for e in sent), timeout=30)
        await asyncio.sleep(0.5)  # room for a third delivery, were there one
    envelopes = [socket_stand_in.envelope(e) for e in sent]
    assert all(len(set(e.deliveries)) == 2 and len(e.acks) == 1 for e in envelopes)
    assert await queued(Queue(real_redis, prefix=prefix)) == 10
    assert socket_stand_in.errors == []


async def test_relay_dev_with_an_app_token_takes_a_mention_over_socket_mode(
        socket_stand_in: SocketModeStandIn, slack_stand_in: SlackStandIn, tmp_path: Path) -> None:
    log = tmp_path / "dev.log"
    with process(["dev"], socket_env(tmp_path, slack_stand_in), log):
        await until(socket_stand_in, lambda s: s.connected(), timeout=30)
        envelope_id = socket_stand_in.send("events_api", mention("hello from a laptop behind NAT"))
        await until(socket_stand_in, lambda s: s.acked(envelope_id))
        deadline = time.monotonic() + 15
        while "hello from a laptop behind NAT" not in log.read_text():  # the stand-in device prints it
            assert time.monotonic() < deadline, log.read_text()
            await asyncio.sleep(0.1)
    text = log.read_text()
    assert "slack: Socket Mode (SLACK_APP_TOKEN)" in text and "/slack/*" not in text
    assert APP_TOKEN not in text


def test_slack_sdk_lines_lose_the_connection_ticket_and_the_traceback() -> None:
    import logging

    from relay.socket_mode import _SdkLines

    try:
        raise ConnectionError("cannot connect to wss://wss-primary.slack.com/link/?ticket=5e1f-secret&app_id=A1")
    except ConnectionError as exc:
        record = logging.LogRecord("relay.socket_mode.sdk", logging.ERROR, __file__, 1,
                                   "Failed to connect (error: %s); Retrying...", (exc,), (type(exc), exc, None))
    assert _SdkLines().filter(record)
    assert "5e1f-secret" not in record.getMessage() and "ticket=…" in record.getMessage()
    assert record.getMessage().endswith("(ConnectionError)") and record.exc_info is None
