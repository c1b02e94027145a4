"""A signed webhook over real HTTP → real Redis → worker → the body the Letta stand-in receives."""

from __future__ import annotations

import asyncio
import base64
import time
from typing import Any, Iterator

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


async def test_signed_approval_arrives_on_its_routes_connection(relay_web: str, real_redis: Any, prefix: str,
                                                                settings: Settings, stand_in) -> None:  # type: ignore[no-untyped-def]
    standin, letta_url = stand_in
    async with running_worker(real_redis, prefix, settings, letta_url):
        raw, headers = signed({"route": "ops", "approval": {"tool_call_id": "toolu_01", "approve": True}}, SECRET)
        async with httpx.AsyncClient() as http:
            assert (await http.post(f"{relay_web}/hooks/generic", content=raw, headers=headers)).status_code == 202
        await wait_delivered(standin, 1)
    [attempt] = standin.delivered()
    assert attempt.connection_id == "conn-ops"  # resolved from connection_name "ops-box"
    assert attempt.body == {
        "messages": [{"type": "approval", "approvals": [
            {"type": "approval", "tool_call_id": "toolu_01", "approve": True}]}],
        "agentId": "agent-ops",
        "conversationId": "conv-ops",
    }


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
