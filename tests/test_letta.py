"""The Letta client against the loopback stand-in (a real HTTP server)."""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest
from tenacity import wait_none

from relay.errors import ResolveFailed
from relay.http1 import Http1Pool
from relay.letta import LettaClient
from relay.messages import Inbound, client_message_id, envelope_for, user_message
from relay.routing import Destination, Route
from relay.standin import Device, LettaStandIn
from tests.support import ServerThread, free_port

pytestmark = pytest.mark.anyio


def client(url: str, **options: object) -> LettaClient:
    return LettaClient(url, "test-key", retry_wait=wait_none(), **options)  # type: ignore[arg-type]


def envelope(destination: Destination, n: int = 1):  # type: ignore[no-untyped-def]
    message_id = client_message_id("test", str(n))
    return envelope_for(Inbound("test", str(n), message_id, user_message(f"hello {n}", message_id)),
                        Route("r", destination), time.time())


async def test_message_body_and_auth_match_the_contract(stand_in) -> None:  # type: ignore[no-untyped-def]
    standin, url = stand_in
    letta = client(url)
    sent = envelope(Destination(agent_id="agent-test", conversation_id="conv-1", connection_id="conn-test"))
    outcome = await letta.deliver(sent)
    await letta.aclose()
    assert outcome.status == 200
    [attempt] = standin.delivered()
    assert attempt.connection_id == "conn-test"
    assert attempt.authorization == "Bearer test-key"
    assert attempt.body == {
        "messages": [{"role": "user", "client_message_id": sent.client_message_id,
                      "content": "hello 1", "otid": sent.client_message_id}],
        "agentId": "agent-test",
        "conversationId": "conv-1",
    }


async def test_device_id_is_resolved_to_its_live_connection_and_cached(stand_in) -> None:  # type: ignore[no-untyped-def]
    standin, url = stand_in
    letta = client(url)
    destination = Destination(agent_id="a", device_id="device-test")
    assert await letta.connection_for(destination) == "conn-test"
    assert await letta.connection_for(destination) == "conn-test"
    assert standin.list_requests == 1
    await letta.aclose()


async def test_cache_expires_after_the_resolve_ttl(stand_in) -> None:  # type: ignore[no-untyped-def]
    standin, url = stand_in
    now = [1000.0]
    letta = LettaClient(url, "k", resolve_ttl=30, clock=lambda: now[0], retry_wait=wait_none())
    destination = Destination(agent_id="a", device_id="device-test")
    await letta.connection_for(destination)
    now[0] += 31
    await letta.connection_for(destination)
    assert standin.list_requests == 2
    await letta.aclose()


async def test_connection_name_is_found_across_pages() -> None:
    devices = [Device(f"device-{i}", f"box-{i}", f"conn-{i}") for i in range(150)]
    standin = LettaStandIn(devices)
    with ServerThread(standin.app) as server:
        letta = client(server.url)
        assert await letta.connection_for(Destination(agent_id="a", connection_name="box-142")) == "conn-142"
        await letta.aclose()
    assert standin.list_requests == 2


async def test_offline_device_is_reported_unresolved(stand_in) -> None:  # type: ignore[no-untyped-def]
    standin, url = stand_in
    standin.devices[0].online = False
    letta = client(url)
    outcome = await letta.deliver(envelope(Destination(agent_id="a", device_id="device-test")))
    await letta.aclose()
    assert (outcome.status, outcome.error) == (None, "unresolved")
    assert "device_id=device-test" in outcome.detail
    assert standin.attempts == []


async def test_unknown_device_is_unresolved_not_an_error(stand_in) -> None:  # type: ignore[no-untyped-def]
    _standin, url = stand_in
    letta = client(url)
    outcome = await letta.deliver(envelope(Destination(agent_id="a", device_id="no-such-device")))
    await letta.aclose()
    assert outcome.error == "unresolved"


async def test_rotated_connection_answers_404_and_forget_finds_the_new_one(stand_in) -> None:  # type: ignore[no-untyped-def]
    standin, url = stand_in
    letta = client(url)
    destination = Destination(agent_id="a", device_id="device-test")
    assert (await letta.deliver(envelope(destination, 1))).status == 200
    new_connection = standin.rotate("device-test")
    assert (await letta.deliver(envelope(destination, 2))).status == 404  # cached old connection
    letta.forget(destination)
    assert (await letta.deliver(envelope(destination, 3))).status == 200
    assert standin.delivered()[-1].connection_id == new_connection
    await letta.aclose()


async def test_retry_after_and_error_body_are_reported(stand_in) -> None:  # type: ignore[no-untyped-def]
    standin, url = stand_in
    standin.add_fault(429, retry_after="7", body={"message": "slow down"})
    letta = client(url)
    outcome = await letta.send("conn-test", {"messages": [{"role": "user"}]})
    await letta.aclose()
    assert (outcome.status, outcome.retry_after) == (429, "7")
    assert "slow down" in outcome.body


async def test_read_timeout_is_reported_without_resending(stand_in) -> None:  # type: ignore[no-untyped-def]
    standin, url = stand_in
    standin.add_fault(200, delay=3.0)
    letta = client(url, timeout=0.5)
    outcome = await letta.send("conn-test", {"messages": [{"role": "user"}]})
    await letta.aclose()
    assert outcome.error == "timeout"
    assert len(standin.attempts) == 1


async def test_refused_connection_is_resent_in_call_then_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    attempts = []
    connect = Http1Pool._connect

    async def counted(pool: Http1Pool, deadline: float) -> object:
        attempts.append(1)
        return await connect(pool, deadline)

    monkeypatch.setattr(Http1Pool, "_connect", counted)
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    letta = LettaClient(url, "k", retry_wait=wait_none(), retry_attempts=3)
    outcome = await letta.send("conn", {"messages": []})
    await letta.aclose()
    assert outcome.error == "connect"
    assert len(attempts) == 3


async def test_dropped_keepalive_connection_is_resent_with_the_same_body() -> None:
    """A pooled connection the peer drops on its second request (an idle keep-alive closed
    under us): that call is resent on a fresh connection with the same body and answered."""
    bodies: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError):  # the client closed its pool
            bodies.append(await _read_request(reader))
            writer.write(_OK)
            await writer.drain()
            bodies.append(await _read_request(reader))  # the second on this connection: no answer
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    letta = LettaClient(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}", "k", retry_wait=wait_none())
    first = await letta.send("conn", {"messages": [{"client_message_id": "one"}]})
    second = await letta.send("conn", {"messages": [{"client_message_id": "two"}]})
    await letta.aclose()
    server.close()
    assert (first.status, second.status) == (200, 200)
    assert len(bodies) == 3 and bodies[1] == bodies[2] and b'"two"' in bodies[2]


async def test_failed_environment_listing_is_a_retryable_outcome_not_a_404(stand_in) -> None:  # type: ignore[no-untyped-def]
    _standin, url = stand_in
    letta = client(url + "/nowhere")  # every GET answers 404
    outcome = await letta.deliver(envelope(Destination(agent_id="a", connection_name="box")))
    await letta.aclose()
    assert outcome.status == 502
    assert "resolving the connection" in outcome.body


async def test_a_resolution_letta_cannot_answer_raises_resolve_failed_with_its_outcome(stand_in) -> None:  # type: ignore[no-untyped-def]
    _standin, url = stand_in
    letta = client(url + "/nowhere")
    unreachable = client(f"http://127.0.0.1:{free_port()}")
    try:
        with pytest.raises(ResolveFailed) as refused:
            await letta.connection_for(Destination(agent_id="a", connection_name="box"))
        with pytest.raises(ResolveFailed) as away:
            await unreachable.connection_for(Destination(agent_id="a", device_id="box"))
    finally:
        await letta.aclose()
        await unreachable.aclose()
    assert refused.value.outcome.status == 502 and str(refused.value) == refused.value.outcome.describe()
    assert (away.value.outcome.status, away.value.outcome.error) == (None, "connect")


async def _read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
    return await reader.readexactly(length)


_ANSWER = b'{"message":"ok","success":true}'
_OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(_ANSWER), _ANSWER)


async def test_peer_closing_without_an_answer_is_resent_on_the_real_transport() -> None:
    """A connection closed before any answer is a transport failure, resent in-call with the
    same body, never called a timeout."""
    bodies: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        bodies.append(await _read_request(reader))
        if len(bodies) > 1:
            writer.write(_OK)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    letta = LettaClient(f"http://127.0.0.1:{port}", "k", retry_wait=wait_none())
    outcome = await letta.send("conn", {"messages": [{"client_message_id": "same"}]})
    await letta.aclose()
    server.close()
    assert outcome.status == 200
    assert len(bodies) == 2 and bodies[0] == bodies[1]


async def test_peer_that_keeps_closing_is_a_transport_failure_not_a_timeout() -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.close()

    server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    letta = LettaClient(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}", "k", retry_wait=wait_none())
    outcome = await letta.send("conn", {"messages": []})
    await letta.aclose()
    server.close()
    assert outcome.error == "transport"
    assert "ServerDisconnected" in (outcome.detail or "")


async def test_calls_go_through_the_proxy_named_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[bytes] = []

    async def proxy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError):
            head = await reader.readuntil(b"\r\n\r\n")
            seen.append(head.split(b"\r\n")[0])
            writer.write(_OK)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(proxy, "127.0.0.1", 0)
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}")
    letta = LettaClient("http://letta.invalid", "k", retry_wait=wait_none())
    outcome = await letta.send("conn-1", {"messages": []})
    await letta.aclose()
    server.close()
    assert outcome.status == 200
    assert seen == [b"POST http://letta.invalid/v1/environments/conn-1/messages HTTP/1.1"]


async def test_failures_through_a_proxy_keep_their_kinds(monkeypatch: pytest.MonkeyPatch) -> None:
    """The proxied path (aiohttp's client) sorts failures as the direct path does."""
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.close()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        await asyncio.sleep(5)

    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    kinds = []
    for handler in (None, hang_up, silent):
        server = await asyncio.start_server(handler, "127.0.0.1", 0) if handler else None
        port = server.sockets[0].getsockname()[1] if server else free_port()
        monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{port}")
        letta = LettaClient("http://letta.invalid", "k", timeout=0.5, retry_wait=wait_none())
        assert letta._pool is None  # the proxied path
        kinds.append((await letta.send("conn", {"messages": []})).error)
        await letta.aclose()
        if server:
            server.close()
    assert kinds == ["connect", "transport", "timeout"]
