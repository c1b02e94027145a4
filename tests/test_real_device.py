"""relay against the real Letta Code device (letta 0.34.12), offline, end to end.

relay's web, worker and watcher run as in production; Letta's hosted server is relay's own
stand-in (the same model `relay dev` and the other tests use); the device is the real one, with
a scripted model (tests/real_device.py). What is checked here is what the device itself decides:
it takes a user message over REST and answers it, asks for an approval, takes a card click as an
`approval_response` and goes on, and refuses the REST approval body relay used to send.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

from relay.messages import user_message
from relay.routing import Destination, Route, SlackRule, WatchRule
from relay.settings import Settings
from relay.sources import slack as slack_source
from tests.conftest import APPROVER, SLACK_CHANNEL, SLACK_TEAM
from tests.real_device import API_KEY, RealDevice, why_not
from tests.slack_standin import SlackStandIn
from tests.whole_relay import Relay

pytestmark = [pytest.mark.anyio, pytest.mark.slow, pytest.mark.xdist_group("real-device")]

NAME = "relay-real-device"
SKIP = why_not()


@pytest.fixture(scope="module")
def real_device(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealDevice]:
    if SKIP:
        pytest.skip(f"the real Letta Code device cannot run here: {SKIP}")
    with RealDevice(tmp_path_factory.mktemp("letta-home"), NAME, agents=6).running() as device:
        yield device


def settings_for(settings: Settings, slack_url: str, agent_id: str, **route: Any) -> Settings:
    real = Route("real", Destination(agent_id=agent_id, connection_name=NAME),
                 slack=SlackRule(teams=(SLACK_TEAM,), channels=(SLACK_CHANNEL,), approvers=(APPROVER,)),
                 watch=WatchRule(slack_channel=SLACK_CHANNEL), **route)
    return replace(settings, routes=(real,), slack_signing_secret=b"8f742231b10e8888abcd99yyyzzz85a5",
                   slack_bot_token="xoxb-test-token", slack_api_base_url=slack_url, letta_api_key=API_KEY,
                   letta_timeout=20.0)


def mention(text: str, ts: str, event_id: str) -> bytes:
    return json.dumps({"type": "event_callback", "team_id": SLACK_TEAM, "event_id": event_id,
                       "event": {"type": "app_mention", "user": "U0ALICE", "text": f"<@U0BOT> {text}",
                                 "ts": ts, "channel": SLACK_CHANNEL}}).encode()


def thread_posts(slack: SlackStandIn, ts: str) -> list[str]:
    """The thread's messages as they read now (a progress message becomes the answer)."""
    return [m.text for m in slack.thread(SLACK_CHANNEL, ts)]


def is_card(text: str) -> bool:
    return text.startswith(("Approval needed", "Approved:", "Denied:"))


def finished(slack: SlackStandIn, ts: str) -> bool:
    """An answer is in the thread and nothing there still shows progress."""
    texts = thread_posts(slack, ts)
    return any(not is_card(t) for t in texts) and not any("hourglass" in t for t in texts)


async def until(predicate: Any, timeout: float, why: Any) -> None:
    assert await asyncio.to_thread(predicate, timeout), why()


def pending_request(device: RealDevice, agent_id: str) -> str | None:
    """The control request the device last asked of this agent, if it still lists it as pending."""
    with device.standin._changed:
        frames = [f for f in device.standin.device_frames if f.get("runtime", {}).get("agent_id") == agent_id]
    asked = [f["request_id"] for f in frames if f.get("type") == "control_request"]
    statuses = [f["device_status"] for f in frames if f.get("type") == "update_device_status"
                and isinstance(f.get("device_status"), dict)]
    listed = {p.get("request_id") for p in statuses[-1].get("pending_control_requests", [])} if statuses else set()
    return asked[-1] if asked and asked[-1] in listed else None


def accepted_decisions(device: RealDevice) -> list[dict[str, Any]]:
    with device.standin._changed:
        return [f for f in device.standin.device_frames if f.get("type") == "input_accepted"
                and str(f.get("request_id", "")).partition(":")[2].startswith("relay-")]


async def test_a_mention_runs_a_turn_on_the_real_device_and_its_answer_comes_back_to_the_thread(
        real_device: RealDevice, settings: Settings, real_redis_url: str,
        real_redis: Any, prefix: str, slack_stand_in: SlackStandIn) -> None:
    agent_id = real_device.new_agent()
    relay = Relay(settings_for(settings, slack_stand_in.api_url, agent_id), real_redis_url, real_redis, prefix,
                  real_device.base_url, slack_stand_in, None, api_key=API_KEY)
    ts = "1700000100.000100"
    async with relay.running():
        await until(lambda t: real_device.standin.wait_for_open(1, (agent_id, "default"), timeout=t), 20,
                    real_device.log_tail)
        assert (await relay.slack("/slack/events", mention("hello device", ts, "Ev-real-1"),
                                  "application/json")).status_code == 200
        await until(lambda t: slack_stand_in.wait_for(lambda s: "pong" in thread_posts(s, ts), t), 30,
                    lambda: thread_posts(slack_stand_in, ts))
    turns = [f for f in real_device.standin.device_frames if f.get("type") == "turn_finished"
             and f.get("runtime", {}).get("agent_id") == agent_id]
    assert [t["stop_reason"] for t in turns] == ["end_turn"]
    assert set(turns[0]) >= {"turn_id", "stop_reason", "run_id", "runtime", "event_seq", "idempotency_key"}
    assert slack_stand_in.of("reactions.add")  # delivered: the ✅ on the mention


async def test_a_turn_the_real_device_ends_with_an_error_says_so_in_the_thread(
        real_device: RealDevice, settings: Settings, real_redis_url: str, real_redis: Any, prefix: str,
        slack_stand_in: SlackStandIn) -> None:
    unknown = "agent-local-00000000-0000-4000-8000-000000000000"  # not an agent of this device
    relay = Relay(settings_for(settings, slack_stand_in.api_url, unknown), real_redis_url, real_redis, prefix,
                  real_device.base_url, slack_stand_in, None, api_key=API_KEY)
    ts = "1700000150.000100"
    async with relay.running():
        await until(lambda t: real_device.standin.wait_for_open(1, (unknown, "default"), timeout=t), 20,
                    real_device.log_tail)
        assert (await relay.slack("/slack/events", mention("anyone there?", ts, "Ev-real-err"),
                                  "application/json")).status_code == 200
        await until(lambda t: slack_stand_in.wait_for(lambda s: any("error" in p for p in thread_posts(s, ts)), t),
                    30, real_device.log_tail)
    [note] = thread_posts(slack_stand_in, ts)
    assert "ended with an error" in note and f"Agent {unknown} not found" in note


@pytest.mark.parametrize("action", ["approve", "deny"])
async def test_a_card_click_decides_the_real_device_s_approval_request_and_the_turn_finishes(
        action: str, real_device: RealDevice, settings: Settings, real_redis_url: str, real_redis: Any,
        prefix: str, slack_stand_in: SlackStandIn) -> None:
    agent_id = real_device.new_agent()
    await asyncio.to_thread(real_device.require_approvals, agent_id)
    relay = Relay(settings_for(settings, slack_stand_in.api_url, agent_id), real_redis_url, real_redis, prefix,
                  real_device.base_url, slack_stand_in, None, api_key=API_KEY)
    ts = f"1700000200.{len(action):06d}"
    before = len(accepted_decisions(real_device))
    async with relay.running():
        await until(lambda t: real_device.standin.wait_for_open(1, (agent_id, "default"), timeout=t), 20,
                    real_device.log_tail)
        text = "please read $TRANSCRIPT_PATH"
        assert (await relay.slack("/slack/events", mention(text, ts, f"Ev-real-{action}"),
                                  "application/json")).status_code == 200
        await until(lambda t: slack_stand_in.wait_for(
            lambda s: any("Approval needed" in p for p in thread_posts(s, ts)), t), 30, real_device.log_tail)
        await until(lambda t: real_device.standin.wait_for(lambda s: pending_request(real_device, agent_id), t), 15,
                    real_device.log_tail)
        request_id = pending_request(real_device, agent_id)
        assert request_id is not None and request_id.startswith("perm-")
        tool_call_id = request_id.removeprefix("perm-")
        if action == "approve":
            await relay.click(slack_stand_in, "real", tool_call_id, slack_source.ACTION_APPROVE, "click")
        else:
            await relay.deny_with_reason(slack_stand_in, "real", tool_call_id, "not on this machine")
        await until(lambda t: real_device.standin.wait_for(lambda s: any(
            f.get("type") == "turn_finished" and f.get("runtime", {}).get("agent_id") == agent_id
            for f in s.device_frames), t), 30, real_device.log_tail)
        await until(lambda t: slack_stand_in.wait_for(lambda s: finished(s, ts), t), 15,
                    lambda: thread_posts(slack_stand_in, ts))
    [decision] = accepted_decisions(real_device)[before:]
    assert decision["accepted"] is True  # the device's own answer: it took the decision
    assert pending_request(real_device, agent_id) is None  # answered: the device lists it no more
    answers = [t for t in thread_posts(slack_stand_in, ts) if not is_card(t)]
    assert len(answers) == 1, thread_posts(slack_stand_in, ts)
    [answer] = answers
    assert answer and "hourglass" not in answer


async def test_the_rest_approval_body_is_refused_by_the_real_device(
        real_device: RealDevice) -> None:
    """Why approvals go over the status socket: the REST body is a protocol violation to the device,
    while the REST call itself says 2xx."""
    agent_id = real_device.new_agent()
    connection_id = real_device.device().connection_id
    before = len(real_device.standin.device_frames)
    body = {"agentId": agent_id, "messages": [{"type": "approval", "approvals": [
        {"type": "approval", "tool_call_id": "toolu_rest", "approve": True}]}]}
    async with httpx.AsyncClient() as http:
        answer = await http.post(f"{real_device.base_url}/v1/environments/{connection_id}/messages", json=body,
                                 headers={"authorization": f"Bearer {API_KEY}"})
    assert answer.status_code == 200 and answer.json()["success"] is True

    def refused(s: Any) -> bool:
        return any(f.get("type") == "stream_delta" and f["delta"].get("message_type") == "loop_error"
                   and "approval_response" in f["delta"].get("message", "") for f in s.device_frames[before:])

    await until(lambda t: real_device.standin.wait_for(refused, t), 15, real_device.log_tail)


async def test_the_real_device_runs_a_re_sent_message_id_once(real_device: RealDevice) -> None:
    """The device's own de-duplication, which relay's ids rely on inside its one-hour window."""
    agent_id = real_device.new_agent()
    connection_id = real_device.device().connection_id
    body = {"agentId": agent_id, "messages": [user_message("once, please", "relay-real-device-dedup-1")]}
    async with httpx.AsyncClient() as http:
        for _ in range(2):
            answer = await http.post(f"{real_device.base_url}/v1/environments/{connection_id}/messages", json=body,
                                     headers={"authorization": f"Bearer {API_KEY}"})
            assert answer.status_code == 200
            await asyncio.sleep(1.0)

    def turns(s: Any) -> int:
        return sum(1 for f in s.device_frames if f.get("type") == "turn_finished"
                   and f.get("runtime", {}).get("agent_id") == agent_id)

    await until(lambda t: real_device.standin.wait_for(lambda s: turns(s) >= 1, t), 20, real_device.log_tail)
    await asyncio.sleep(1.0)
    assert turns(real_device.standin) == 1


def test_the_device_package_is_the_one_the_protocol_was_read_from() -> None:
    if SKIP:
        pytest.skip(f"the real Letta Code device cannot run here: {SKIP}")
    payload = Path(__import__("letta_code").__file__).parent / "_payload" / "app" / "letta.js"
    source = payload.read_text(errors="replace")
    # The facts docs/letta-status-socket.md cites, still where it says they are.
    for fact in ("Approval request is no longer pending", "Runtime is no longer active",
                 "ACCEPTED_INPUT_DISPOSITION_TTL_MS = 60 * 60 * 1000",
                 "Protocol violation: approval payloads are not allowed in input.kind=create_message"):
        assert fact in source, fact
