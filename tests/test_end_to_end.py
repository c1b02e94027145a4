"""A signed webhook over real HTTP → real Redis → worker → the body the Letta stand-in receives."""

from __future__ import annotations

import asyncio
import base64
import time
from dataclasses import replace
from typing import Any, Callable, Iterator

import httpx
import pytest
from relay.queue import Queue, connect
from relay.settings import Settings
from relay.standin import LettaStandIn
from relay.web import create_app
from tests.support import SPEC_SECRET, ServerThread, running_worker, signed

pytestmark = pytest.mark.anyio

SECRET = base64.b64decode(SPEC_SECRET.removeprefix("whsec_"))


@pytest.fixture
def relay_web(real_redis_url: str, prefix: str, settings: Settings) -> Iterator[str]:
    web_redis = connect(real_redis_url)  # used only inside the server's own thread and loop
    with ServerThread(create_app(settings, Queue(web_redis, prefix=prefix))) as server:
        yield server.url


async def wait_delivered(standin: LettaStandIn, count: int) -> None:
    assert await asyncio.to_thread(standin.wait_for, lambda s: len(s.delivered()) >= count, 15.0)


async def settled(queue: Queue, timeout: float = 15.0) -> None:
    """Until nothing waits, is in flight or is parked for a retry."""
    deadline = time.monotonic() + timeout
    while True:
        stats = await queue.stats()
        if stats.ready + stats.in_flight + stats.delayed == 0:
            return
        assert time.monotonic() < deadline, stats
        await asyncio.sleep(0.05)


async def until(check: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(check):
        assert time.monotonic() < deadline


async def test_signed_text_arrives_as_the_contract_says(relay_web: str, real_redis: Any, prefix: str,
                                                        settings: Settings, stand_in) -> None:  # type: ignore[no-untyped-def]
    standin, letta_url = stand_in
    async with running_worker(real_redis, prefix, settings, letta_url):
        raw, headers = signed({"text": "deploy finished, please summarize"}, SECRET)
        async with httpx.AsyncClient() as http:
            response = await http.post(f"{relay_web}/hooks/generic", content=raw, headers=headers)
        assert response.status_code == 202
        message_id = response.json()["client_message_id"]
        await wait_delivered(standin, 1)
    [attempt] = standin.delivered()
    assert attempt.connection_id == "conn-test"
    assert attempt.body == {
        "messages": [{"role": "user", "client_message_id": message_id,
                      "content": "deploy finished, please summarize", "otid": message_id}],
        "agentId": "agent-test",
    }


async def post_approval(relay_web: str, route: str, tool_call_id: str, approve: bool = True,
                        reason: str | None = None) -> int:
    approval: dict[str, Any] = {"tool_call_id": tool_call_id, "approve": approve}
    if reason:
        approval["reason"] = reason
    raw, headers = signed({"route": route, "approval": approval}, SECRET)
    async with httpx.AsyncClient() as http:
        return (await http.post(f"{relay_web}/hooks/generic", content=raw, headers=headers)).status_code


OPS = ("agent-ops", "conv-ops")  # the ops route's conversation, on device-ops (connection "ops-box")


async def test_a_signed_approval_reaches_the_device_as_one_accepted_approval_response(
        relay_web: str, real_redis: Any, prefix: str, settings: Settings, stand_in) -> None:  # type: ignore[no-untyped-def]
    standin, letta_url = stand_in
    device = standin.simulated("device-ops")
    request_id = device.request_approval(OPS, "toolu_01")
    async with running_worker(real_redis, prefix, settings, letta_url):
        assert await post_approval(relay_web, "ops", "toolu_01", approve=False, reason="not on prod") == 202
        assert await asyncio.to_thread(standin.wait_for, lambda s: len(device.decisions) == 1, 15.0)
        await asyncio.sleep(0.3)  # nothing more arrives
    [decision] = device.decisions
    assert (decision.scope, decision.request_id, decision.behavior, decision.message) == \
        (OPS, request_id, "deny", "not on prod")
    assert standin.attempts == []  # nothing went through REST
    [sock] = {c.socket for c in standin.commands}  # one status socket, opened by the worker
    opened = next(s for s in standin.sockets if s.id == sock)
    assert opened.connection_id == "conn-ops" and opened.scope == OPS
    assert device.violations == [] and device.stale_denials == []


async def test_a_decision_waits_out_a_device_replacing_its_listener_and_lands(
        relay_web: str, real_redis: Any, prefix: str, settings: Settings, stand_in) -> None:  # type: ignore[no-untyped-def]
    standin, letta_url = stand_in
    device = standin.simulated("device-ops")
    device.request_approval(OPS, "toolu_02")
    device.inactive = 2  # "Runtime is no longer active", twice
    async with running_worker(real_redis, prefix, settings, letta_url):
        assert await post_approval(relay_web, "ops", "toolu_02") == 202
        assert await asyncio.to_thread(standin.wait_for, lambda s: len(device.decisions) == 1, 15.0)
    assert device.inactive == 0 and [d.behavior for d in device.decisions] == ["allow"]
    assert len({c.socket for c in standin.commands}) >= 2  # retried on a fresh socket


async def test_a_decision_on_a_request_answered_elsewhere_is_settled_and_sends_no_decision(
        relay_web: str, real_redis: Any, prefix: str, settings: Settings, stand_in) -> None:  # type: ignore[no-untyped-def]
    standin, letta_url = stand_in
    device = standin.simulated("device-ops")
    device.answer_elsewhere(OPS, device.request_approval(OPS, "toolu_03"))  # approved in the terminal
    queue = Queue(real_redis, prefix=prefix)
    async with running_worker(real_redis, prefix, settings, letta_url):
        assert await post_approval(relay_web, "ops", "toolu_03") == 202
        await until(lambda: standin.wait_for(lambda s: any(c.frame.get("type") == "sync" for c in s.commands), 0.1))
        await settled(queue)
    inputs = [c.frame for c in standin.commands if c.frame.get("type") == "input"]
    assert inputs == [] and device.decisions == []
    assert await queue.dead_letters() == []


async def test_a_rest_route_approval_is_refused_by_the_device_as_a_protocol_violation(
        relay_web: str, real_redis: Any, prefix: str, settings: Settings, stand_in) -> None:  # type: ignore[no-untyped-def]
    """The old default, kept as a route's explicit choice: the REST call says 2xx, the device refuses."""
    standin, letta_url = stand_in
    rest = replace(settings, routes=tuple(replace(r, approvals="rest") for r in settings.routes))
    device = standin.simulated("device-ops")
    device.request_approval(OPS, "toolu_04")
    async with running_worker(real_redis, prefix, rest, letta_url):
        assert await post_approval(relay_web, "ops", "toolu_04") == 202
        await wait_delivered(standin, 1)
    assert [a.status for a in standin.attempts] == [200]
    assert device.violations and "approval_response" in device.violations[0]
    assert device.decisions == [] and device.pending(OPS) == ["perm-toolu_04"]  # still waiting, forever


async def test_redelivered_webhook_reaches_the_agent_once(relay_web: str, real_redis: Any, prefix: str,
                                                          settings: Settings, stand_in) -> None:  # type: ignore[no-untyped-def]
    standin, letta_url = stand_in
    async with running_worker(real_redis, prefix, settings, letta_url):
        async with httpx.AsyncClient() as http:
            statuses = []
            for attempt in range(3):  # the sender retries, re-signing each attempt
                raw, headers = signed({"text": "once"}, SECRET, webhook_id="msg_redelivered",
                                      timestamp=int(time.time()) + attempt)
                statuses.append((await http.post(f"{relay_web}/hooks/generic", content=raw, headers=headers)).status_code)
                await wait_delivered(standin, 1)
        await asyncio.sleep(0.3)
    assert statuses == [202, 200, 200]
    assert len(standin.delivered()) == 1
