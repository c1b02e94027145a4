"""relay.http1, the lean keep-alive client, against real servers on loopback (asyncio's own
streams, and for TLS a certificate the test makes)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import socket
import ssl
import struct
from pathlib import Path
from typing import AsyncIterator, Awaitable, Callable

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from relay.errors import ConfigError, HttpFailed
from relay.http1 import HEAD_LIMIT, Http1Pool

pytestmark = pytest.mark.anyio

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def ok(body: bytes = b'{"ok":true}', extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), extra, body)


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """(head, body) of one request."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return head, await reader.readexactly(length)


class Server:
    """A loopback server that counts its connections and runs `answer` for each request."""

    def __init__(self, answer: Callable[[bytes, bytes, asyncio.StreamWriter], Awaitable[bool]]) -> None:
        self.answer = answer
        self.connections = 0
        self.open = 0
        self.most_open = 0
        self.heads: list[bytes] = []
        self.reader: asyncio.StreamReader | None = None  # the newest connection's

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.connections += 1
        self.open += 1
        self.most_open = max(self.most_open, self.open)
        try:
            with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
                while True:
                    head, body = await read_request(reader)
                    self.heads.append(head)
                    if not await self.answer(head, body, writer):
                        break
        finally:
            self.open -= 1
            writer.close()


@contextlib.asynccontextmanager
async def serving(answer: Callable[[bytes, bytes, asyncio.StreamWriter], Awaitable[bool]],
                  tls: ssl.SSLContext | None = None) -> AsyncIterator[tuple[Server, str]]:
    server = Server(answer)
    listener = await asyncio.start_server(server.handle, "127.0.0.1", 0, ssl=tls)
    port = listener.sockets[0].getsockname()[1]
    try:
        yield server, f"{'https' if tls else 'http'}://{'localhost' if tls else '127.0.0.1'}:{port}"
    finally:
        listener.close()


def answering(reply: bytes, keep_open: bool = True) -> Callable[[bytes, bytes, asyncio.StreamWriter], Awaitable[bool]]:
    async def answer(head: bytes, body: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(reply)
        await writer.drain()
        return keep_open
    return answer


def pool(url: str, **options: object) -> Http1Pool:
    settings: dict[str, object] = dict(max_connections=4, connect_timeout=2.0, answer_timeout=2.0)
    settings.update(options)
    return Http1Pool(url, {"Authorization": "Bearer k"}, **settings)  # type: ignore[arg-type]


async def failure(reply: bytes, keep_open: bool = True, method: str = "POST") -> HttpFailed:
    """What one call raises against a server that answers `reply` to it."""
    async with serving(answering(reply, keep_open)) as (_server, url):
        client = pool(url)
        try:
            with pytest.raises(HttpFailed) as failed:
                await client.request(method, "/m", b"{}" if method == "POST" else None)
        finally:
            await client.aclose()
    return failed.value


async def test_a_pooled_connection_carries_the_next_call() -> None:
    async with serving(answering(ok())) as (server, url):
        client = pool(url)
        first = await client.request("POST", "/v1/x", b'{"a":1}')
        second = await client.request("POST", "/v1/x", b'{"a":2}')
        await client.aclose()
    assert (first.status, first.body, second.status) == (200, b'{"ok":true}', 200)
    assert server.connections == 1
    assert server.heads[0].startswith(b"POST /v1/x HTTP/1.1\r\n")
    assert b"\r\nContent-Type: application/json\r\nContent-Length: 7\r\n" in server.heads[0]
    assert b"\r\nAuthorization: Bearer k\r\n" in server.heads[0]


async def test_host_header_names_the_port_and_the_base_path_prefixes_every_target() -> None:
    async with serving(answering(ok())) as (server, url):
        client = pool(url + "/api/")
        await client.request("GET", "/v1/environments?limit=1")
        await client.aclose()
    port = url.rsplit(":", 1)[1]
    assert server.heads[0].startswith(b"GET /api/v1/environments?limit=1 HTTP/1.1\r\nHost: 127.0.0.1:%s\r\n"
                                      % port.encode())
    assert b"Content-Length" not in server.heads[0]


async def test_a_chunked_answer_is_read_whole_and_the_connection_reused() -> None:
    chunked = b"HTTP/1.1 429 Too Many\r\nRetry-After: 7\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nslow\r\n5\r\n down\r\n0\r\n\r\n"
    async with serving(answering(chunked)) as (server, url):
        client = pool(url)
        answers = [await client.request("POST", "/m", b"{}") for _ in range(2)]
        await client.aclose()
    assert [(a.status, a.body, a.headers["retry-after"]) for a in answers] == [(429, b"slow down", "7")] * 2
    assert server.connections == 1


async def test_an_answer_ended_by_the_close_is_read_whole_and_its_connection_not_reused() -> None:
    async with serving(answering(b"HTTP/1.1 200 OK\r\n\r\nuntil the end", keep_open=False)) as (server, url):
        client = pool(url)
        answers = [await client.request("POST", "/m", b"{}") for _ in range(2)]
        await client.aclose()
    assert [(a.status, a.body) for a in answers] == [(200, b"until the end")] * 2
    assert server.connections == 2


async def test_connection_close_is_obeyed() -> None:
    async with serving(answering(ok(extra=b"Connection: close\r\n"))) as (server, url):
        client = pool(url)
        for _ in range(3):
            assert (await client.request("POST", "/m", b"{}")).status == 200
        await client.aclose()
    assert server.connections == 3


async def test_an_informational_answer_is_skipped_for_the_real_one() -> None:
    async with serving(answering(b"HTTP/1.1 100 Continue\r\n\r\n" + ok(b"real"))) as (_server, url):
        client = pool(url)
        answer = await client.request("POST", "/m", b"{}")
        await client.aclose()
    assert (answer.status, answer.body) == (200, b"real")


async def test_a_body_past_keep_ends_the_answer_there_and_the_connection_with_it() -> None:
    big = b"x" * 300_000
    async with serving(answering(ok(big))) as (server, url):
        client = pool(url)
        first = await client.request("POST", "/m", b"{}", keep=10)
        second = await client.request("POST", "/m", b"{}", keep=1 << 20)
        await client.aclose()
    assert (first.status, first.body) == (200, b"x" * 10) and second.body == big
    assert server.connections == 2


async def test_a_head_over_the_limit_is_a_transport_failure() -> None:
    huge = b"HTTP/1.1 200 OK\r\n" + b"X-Pad: %s\r\n" % (b"p" * 1000) * (HEAD_LIMIT // 1000 + 2) + b"\r\n"
    failed = await failure(huge)
    assert failed.kind == "transport" and "head over" in str(failed)


async def test_unreadable_answer_is_a_transport_failure() -> None:
    assert (await failure(b"NOT HTTP AT ALL\r\n\r\n")).kind == "transport"


async def test_bytes_after_the_answer_make_the_connection_unusable() -> None:
    async with serving(answering(ok() + ok(b"stray"))) as (server, url):
        client = pool(url)
        first = await client.request("POST", "/m", b"{}")
        await asyncio.sleep(0.05)  # the stray answer arrives while the connection is idle or finishing
        second = await client.request("POST", "/m", b"{}")
        await client.aclose()
    assert first.body == second.body == b'{"ok":true}'
    assert server.connections == 2


async def test_no_answer_in_time_is_a_timeout_and_the_connection_is_dropped() -> None:
    dropped = asyncio.Event()
    servers: list[Server] = []

    async def silent(head: bytes, body: bytes, writer: asyncio.StreamWriter) -> bool:
        reader = servers[0].reader
        assert reader is not None
        if await reader.read() == b"":  # the client closed its side
            dropped.set()
        return False

    async with serving(silent) as (server, url):
        servers.append(server)
        client = pool(url, answer_timeout=0.3)
        with pytest.raises(HttpFailed) as failed:
            await client.request("POST", "/m", b"{}")
        await asyncio.wait_for(dropped.wait(), 5)
        await client.aclose()
    assert failed.value.kind == "timeout"


async def test_a_peer_closing_before_answering_is_a_transport_failure() -> None:
    assert (await failure(b"", keep_open=False)).kind == "transport"


async def test_nothing_listening_is_a_connect_failure() -> None:
    listener = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    listener.close()
    await listener.wait_closed()
    client = pool(f"http://127.0.0.1:{port}")
    with pytest.raises(HttpFailed) as failed:
        await client.request("POST", "/m", b"{}")
    await client.aclose()
    assert failed.value.kind == "connect"


async def test_calls_beyond_max_connections_wait_their_turn() -> None:
    async def slowly(head: bytes, body: bytes, writer: asyncio.StreamWriter) -> bool:
        await asyncio.sleep(0.05)
        writer.write(ok())
        await writer.drain()
        return True

    async with serving(slowly) as (server, url):
        client = pool(url, max_connections=2)
        answers = await asyncio.gather(*(client.request("POST", "/m", b"{}") for _ in range(8)))
        await client.aclose()
    assert [a.status for a in answers] == [200] * 8
    assert server.most_open == 2 and server.connections == 2


async def test_a_call_waiting_for_a_free_connection_ends_within_its_answer_timeout() -> None:
    async def never(head: bytes, body: bytes, writer: asyncio.StreamWriter) -> bool:
        await asyncio.sleep(5)
        return False

    async with serving(never) as (_server, url):
        client = pool(url, max_connections=1, answer_timeout=0.3)
        held = asyncio.create_task(client.request("POST", "/m", b"{}"))
        await asyncio.sleep(0.05)
        with pytest.raises(HttpFailed) as failed:
            await client.request("POST", "/m", b"{}")
        with pytest.raises(HttpFailed):
            await held
        await client.aclose()
    assert failed.value.kind == "timeout"


async def test_a_cancelled_call_frees_its_room_and_its_connection_is_not_reused() -> None:
    release = asyncio.Event()

    async def first_hangs(head: bytes, body: bytes, writer: asyncio.StreamWriter) -> bool:
        if b"/hang" in head:
            await release.wait()
            return False
        writer.write(ok())
        await writer.drain()
        return True

    async with serving(first_hangs) as (server, url):
        client = pool(url, max_connections=1)
        hanging = asyncio.create_task(client.request("POST", "/hang", b"{}"))
        await asyncio.sleep(0.05)
        hanging.cancel()
        with pytest.raises(asyncio.CancelledError):
            await hanging
        answer = await client.request("POST", "/m", b"{}")
        release.set()
        await client.aclose()
    assert answer.status == 200
    assert server.connections == 2


async def test_an_idle_connection_past_keepalive_is_not_reused() -> None:
    now = [100.0]
    async with serving(answering(ok())) as (server, url):
        client = pool(url, keepalive=5.0, clock=lambda: now[0])
        await client.request("POST", "/m", b"{}")
        now[0] += 4.0
        await client.request("POST", "/m", b"{}")
        now[0] += 6.0
        await client.request("POST", "/m", b"{}")
        await client.aclose()
    assert server.connections == 2


async def test_an_idle_connection_the_server_closed_is_not_reused() -> None:
    async with serving(answering(ok(), keep_open=False)) as (server, url):
        client = pool(url)
        await client.request("POST", "/m", b"{}")
        await asyncio.sleep(0.05)  # the server's close arrives while the connection is idle
        answer = await client.request("POST", "/m", b"{}")
        await client.aclose()
    assert answer.status == 200
    assert server.connections == 2 and len(server.heads) == 2  # not sent on the dead one first


def test_header_values_with_line_breaks_are_refused() -> None:
    with pytest.raises(ConfigError):
        Http1Pool("http://127.0.0.1:1", {"Authorization": "Bearer k\r\nX-Evil: 1"}, max_connections=1,
                  connect_timeout=1, answer_timeout=1)
    with pytest.raises(ConfigError):
        Http1Pool("ftp://example.com", {}, max_connections=1, connect_timeout=1, answer_timeout=1)


def _certificate(folder: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


async def test_https_checks_the_certificate_against_the_trust_store(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    cert, key = _certificate(tmp_path)
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    async with serving(answering(ok(b"secret")), tls) as (server, url):
        untrusted = pool(url)
        with pytest.raises(HttpFailed) as refused:
            await untrusted.request("POST", "/m", b"{}")
        await untrusted.aclose()
        monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # the operator's own CA, as Python reads it
        trusted = pool(url)
        answers = [await trusted.request("POST", "/m", b"{}") for _ in range(2)]
        await trusted.aclose()
    assert refused.value.kind == "connect" and "CERTIFICATE_VERIFY_FAILED" in str(refused.value)
    assert [a.body for a in answers] == [b"secret"] * 2
    assert len(server.heads) == 2 and server.heads[0].split(b"\r\n")[1].startswith(b"Host: localhost:")


# -- from the audit of the first version (each failed then) ---------------------------------------

async def raw_server(handle: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
                     ) -> tuple[asyncio.Server, str]:
    listener = await asyncio.start_server(handle, "127.0.0.1", 0)
    return listener, f"http://127.0.0.1:{listener.sockets[0].getsockname()[1]}"


async def test_a_connection_closed_before_the_request_went_out_is_a_transport_failure() -> None:
    async def speak_and_hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"x")
        await writer.drain()
        writer.close()

    listener, url = await raw_server(speak_and_hang_up)
    client = pool(url, answer_timeout=30.0)
    outcomes = []
    for _ in range(4):
        with pytest.raises(HttpFailed) as failed:
            await asyncio.wait_for(client.request("POST", "/m", b"{}"), 10)
        outcomes.append(failed.value.kind)
    await client.aclose()
    listener.close()
    assert outcomes == ["transport"] * 4


async def test_an_endless_header_line_fails_at_the_head_limit() -> None:
    async def endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nX-Endless: ")
        with contextlib.suppress(ConnectionError):
            for _ in range(200):  # 12.8 MB if nobody stops reading
                writer.write(b"a" * 64_000)
                await writer.drain()
        writer.close()

    listener, url = await raw_server(endless)
    client = pool(url, answer_timeout=30.0)
    with pytest.raises(HttpFailed) as failed:
        await asyncio.wait_for(client.request("GET", "/m"), 10)
    await client.aclose()
    listener.close()
    assert failed.value.kind == "transport" and "head over" in str(failed.value)


async def test_a_caller_in_line_is_served_before_a_busy_caller_takes_the_connection_back() -> None:
    async with serving(answering(ok())) as (_server, url):
        client = pool(url, max_connections=1)
        greedy_calls = 0
        waited: list[int] = []

        async def greedy() -> None:
            nonlocal greedy_calls
            while not waited:
                await client.request("POST", "/greedy", b"{}")
                greedy_calls += 1

        async def in_line() -> None:
            await asyncio.sleep(0.01)
            queued_at = greedy_calls
            await client.request("POST", "/waiter", b"{}")
            waited.append(greedy_calls - queued_at)

        await asyncio.wait_for(asyncio.gather(greedy(), in_line()), 10)
        await client.aclose()
    assert waited[0] <= 1  # the call in flight when it queued, and no more


async def test_closing_the_pool_fails_its_waiters_at_once() -> None:
    release = asyncio.Event()

    async def held(head: bytes, body: bytes, writer: asyncio.StreamWriter) -> bool:
        await release.wait()
        writer.write(ok())
        await writer.drain()
        return True

    async with serving(held) as (_server, url):
        client = pool(url, max_connections=1, answer_timeout=30.0)
        busy = asyncio.create_task(client.request("POST", "/busy", b"{}"))
        await asyncio.sleep(0.05)
        waiters = [asyncio.create_task(client.request("POST", "/w", b"{}")) for _ in range(3)]
        await asyncio.sleep(0.05)
        await client.aclose()
        results = await asyncio.wait_for(asyncio.gather(*waiters, return_exceptions=True), 5)
        release.set()
        assert (await busy).status == 200
    assert [(type(r).__name__, getattr(r, "kind", None)) for r in results] == [("HttpFailed", "connect")] * 3


async def test_an_answer_ended_by_a_reset_is_a_transport_failure_not_a_short_body() -> None:
    async def reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\n\r\n{\"partial\":")
        await writer.drain()
        await asyncio.sleep(0.05)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close with RST
        writer.transport.abort()

    listener, url = await raw_server(reset)
    client = pool(url)
    with pytest.raises(HttpFailed) as failed:
        await client.request("POST", "/m", b"{}")
    await client.aclose()
    listener.close()
    assert failed.value.kind == "transport"


async def test_a_trailer_never_replaces_a_header() -> None:
    chunked = (b"HTTP/1.1 429 Too Many\r\nRetry-After: 7\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"2\r\nno\r\n0\r\nRetry-After: 99999\r\n\r\n")
    async with serving(answering(chunked)) as (_server, url):
        client = pool(url)
        answer = await client.request("POST", "/m", b"{}")
        await client.aclose()
    assert (answer.status, answer.body, answer.headers["retry-after"]) == (429, b"no", "7")


async def test_a_compressed_answer_ended_by_the_close_is_whole_and_an_upgrade_is_refused() -> None:
    async with serving(answering(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nzzz", keep_open=False)) as (_s, url):
        client = pool(url)
        answer = await client.request("GET", "/m")
        await client.aclose()
    assert (answer.status, answer.body) == (200, b"zzz")
    upgrade = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
    assert (await failure(upgrade, method="GET")).kind == "transport"


def test_a_base_url_with_credentials_or_a_query_is_refused_and_a_unicode_host_is_sent_as_idna() -> None:
    for url in ("http://user:pw@letta.example", "http://letta.example/?x=1"):
        with pytest.raises(ConfigError):
            Http1Pool(url, {}, max_connections=1, connect_timeout=1, answer_timeout=1)
    client = Http1Pool("https://bücher.example", {}, max_connections=1, connect_timeout=1, answer_timeout=1)
    assert client._head_tail.startswith(b"Host: xn--bcher-kva.example\r\n")
