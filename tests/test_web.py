"""The web process: status codes, what gets queued, and what gets logged."""

from __future__ import annotations

import base64
import json
import logging
import time
from dataclasses import replace
from typing import Any, AsyncIterator

import httpx
import pytest

from relay.messages import client_message_id
from relay.queue import Keys, Queue
from relay.routing import Destination
from relay.settings import Settings
from relay.web import create_app
from tests.conftest import AGENT, DEVICE
from tests.support import SPEC_SECRET, free_port, signed

pytestmark = pytest.mark.anyio

SECRET = base64.b64decode(SPEC_SECRET.removeprefix("whsec_"))


@pytest.fixture
async def http(queue: Queue, settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(replace(settings, max_body_bytes=4096), queue)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://relay") as client:
        yield client


async def keys_written(redis_client: Any, prefix: str) -> list[str]:
    return sorted([k async for k in redis_client.scan_iter(match=f"{prefix}:*")
                   if not k.endswith(":ready")])  # the empty streams ensure_groups made


async def post(http: httpx.AsyncClient, body: dict[str, Any] | bytes, **sign: Any) -> httpx.Response:
    raw, headers = signed(body, SECRET, **sign)
    return await http.post("/hooks/generic", content=raw, headers=headers)


async def test_signed_text_is_queued_and_answered_202_with_its_id(http: httpx.AsyncClient, queue: Queue) -> None:
    response = await post(http, {"text": "deploy finished"}, webhook_id="msg_1")
    assert response.status_code == 202
    assert response.json() == {"client_message_id": client_message_id("generic", "msg_1")}
    assert (await queue.depth()).ready == 1


async def test_redelivery_is_answered_200_and_queues_nothing(http: httpx.AsyncClient, queue: Queue) -> None:
    first = await post(http, {"text": "hi"}, webhook_id="msg_2")
    again = await post(http, {"text": "hi"}, webhook_id="msg_2")
    assert first.status_code == 202
    assert again.status_code == 200
    assert again.json() == {"client_message_id": first.json()["client_message_id"], "duplicate": True}
    conversation = Destination(agent_id=AGENT, device_id=DEVICE).conversation_key
    mailbox = queue.keys.mailbox(Keys.partition_of(conversation), conversation)
    assert await queue.redis.llen(mailbox) == 1


async def test_a_resend_resolved_to_another_route_is_a_duplicate_and_queues_nothing(
        http: httpx.AsyncClient, queue: Queue, settings: Settings) -> None:
    # The routes file changed between a sender's retries: the same delivery now names route "ops".
    partitions = {Keys.partition_of(r.destination.conversation_key) for r in settings.routes}
    assert len(partitions) == 2  # the two routes' conversations live in different partitions
    first = await post(http, {"text": "hi"}, webhook_id="msg_moved")
    again = await post(http, {"text": "hi", "route": "ops"}, webhook_id="msg_moved")
    assert (first.status_code, again.status_code) == (202, 200)
    assert again.json() == {"client_message_id": first.json()["client_message_id"], "duplicate": True}
    assert (await queue.depth()).ready == 1


async def test_approval_is_queued_for_its_route(http: httpx.AsyncClient, queue: Queue) -> None:
    response = await post(http, {"approval": {"tool_call_id": "call_9", "approve": False, "reason": "no"},
                                 "route": "ops"})
    assert response.status_code == 202
    tokens = []
    for p in range(16):
        tokens += await queue.read(p, 10, 10)
    [head] = await queue.fetch(tokens)
    envelope = head.envelope
    assert envelope is not None
    assert envelope.route == "ops" and envelope.destination.connection_name == "ops-box"
    assert envelope.message == {"type": "approval", "approvals": [
        {"type": "approval", "tool_call_id": "call_9", "approve": False, "reason": "no"}]}


@pytest.mark.parametrize("case, status", [
    ("wrong secret", 401), ("stale", 401), ("future", 401), ("missing signature", 401),
    ("altered body", 401), ("malformed json", 400), ("unknown shape", 400), ("unknown route", 400),
    ("wrong content type", 415),
])
async def test_bad_requests_get_their_status_and_change_nothing(
        case: str, status: int, http: httpx.AsyncClient, redis_client: Any, prefix: str) -> None:
    before = await keys_written(redis_client, prefix)
    body: dict[str, Any] | bytes = {"text": "hello"}
    secret, timestamp = SECRET, int(time.time())
    if case == "wrong secret":
        secret = b"x" * 32
    elif case == "stale":
        timestamp -= 301
    elif case == "future":
        timestamp += 301
    elif case == "malformed json":
        body = b'{"text": '
    elif case == "unknown shape":
        body = {"message": "hello"}
    elif case == "unknown route":
        body = {"text": "hello", "route": "nowhere"}
    raw, headers = signed(body, secret, timestamp=timestamp)
    if case == "missing signature":
        del headers["webhook-signature"]
    elif case == "altered body":
        raw = raw.replace(b"hello", b"HELLO")
    elif case == "wrong content type":
        headers["content-type"] = "text/plain"
    response = await http.post("/hooks/generic", content=raw, headers=headers)
    assert response.status_code == status
    assert response.json()["error"]
    assert await keys_written(redis_client, prefix) == before


async def test_oversized_body_is_refused_by_its_declared_length(http: httpx.AsyncClient, queue: Queue) -> None:
    response = await post(http, {"text": "x" * 5000})
    assert response.status_code == 413
    assert (await queue.depth()).ready == 0


async def test_oversized_body_without_a_length_is_refused_unread(http: httpx.AsyncClient) -> None:
    raw, headers = signed({"text": "x" * 20000}, SECRET)  # 21 chunks; the limit is 4096 bytes
    sent = []

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(raw), 1000):
            sent.append(i)
            yield raw[i:i + 1000]

    response = await http.post("/hooks/generic", content=chunks(), headers=headers)
    assert response.status_code == 413
    assert len(sent) <= 6  # reading stopped just past the limit


@pytest.mark.parametrize("length", ["9" * 19, "9" * 300, "9" * 5000, "1" + "0" * 4400])
async def test_an_absurd_content_length_is_413_not_a_crash(length: str, http: httpx.AsyncClient) -> None:
    raw, headers = signed({"text": "hello"}, SECRET)
    response = await http.post("/hooks/generic", content=raw, headers={**headers, "content-length": length})
    assert response.status_code == 413


async def test_a_request_without_signature_headers_is_refused_before_its_body_is_read(
        http: httpx.AsyncClient) -> None:
    sent = []

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(3):
            sent.append(i)
            yield b"x" * 1000

    response = await http.post("/hooks/generic", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 401
    assert sent == []  # not one byte of the body was asked for


@pytest.mark.parametrize("method, path, status", [
    ("GET", "/nowhere", 404), ("POST", "/hooks/unknown", 404), ("GET", "/hooks/generic", 405)])
async def test_unknown_routes_and_methods_answer_json(method: str, path: str, status: int,
                                                      http: httpx.AsyncClient) -> None:
    response = await http.request(method, path)
    assert response.status_code == status
    assert "error" in response.json()


async def test_generic_source_is_absent_without_its_secret(queue: Queue, settings: Settings) -> None:
    app = create_app(replace(settings, hook_secret=None), queue)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://relay") as client:
        raw, headers = signed({"text": "hi"}, SECRET)
        assert (await client.post("/hooks/generic", content=raw, headers=headers)).status_code == 404


async def test_health_and_readiness(http: httpx.AsyncClient) -> None:
    assert (await http.get("/healthz")).json() == {"status": "ok"}
    ready = await http.get("/readyz")
    assert (ready.status_code, ready.json()) == (200, {"status": "ready"})


@pytest.fixture
async def unreachable_queue() -> AsyncIterator[Queue]:
    from relay.queue import connect

    client = connect(f"redis://127.0.0.1:{free_port()}/0", socket_timeout=1.0)
    yield Queue(client, prefix="relaytest-unreachable")
    await client.aclose()


async def test_redis_down_answers_503_and_not_ready(unreachable_queue: Queue, settings: Settings) -> None:
    app = create_app(settings, unreachable_queue)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://relay") as client:
        raw, headers = signed({"text": "hi"}, SECRET)
        response = await client.post("/hooks/generic", content=raw, headers=headers)
        assert response.status_code == 503
        assert response.headers["retry-after"] == "5"
        assert "unavailable" in response.json()["error"]
        assert (await client.get("/readyz")).status_code == 503
        assert (await client.get("/healthz")).status_code == 200


async def test_logs_carry_ids_and_reasons_but_no_secret_or_body(
        http: httpx.AsyncClient, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    body_marker = "BODY-MARKER-7f3a"
    await post(http, {"text": body_marker}, webhook_id="msg_logged")
    await post(http, {"text": body_marker}, webhook_id="msg_logged")
    raw, headers = signed({"text": body_marker}, b"wrong-secret-wrong-secret-wrong")
    await http.post("/hooks/generic", content=raw, headers=headers)
    await post(http, {"text": body_marker, "route": "nowhere"})
    rendered = "\n".join(json.dumps(getattr(r, "fields", {})) + " " + r.getMessage() for r in caplog.records)
    assert "msg_logged" in rendered and "no valid v1 signature" in rendered
    assert body_marker not in rendered
    assert SPEC_SECRET.removeprefix("whsec_") not in rendered
    assert headers["webhook-signature"].split(",")[1] not in rendered
