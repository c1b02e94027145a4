"""A lean HTTP/1.1 client for relay's hot call: requests to one origin (Letta) over pooled
keep-alive connections, each answer parsed by httptools (llhttp, the C parser uvicorn uses).

Why not a general client here: at hundreds of calls in flight a worker is one Python thread at
a full core, and aiohttp's `ClientSession` spent ~110 µs of CPU per call where this spends ~32
(bench/README.md, "A lean HTTP/1.1 client"). What it does, and all it does:

- one request at a time per connection (no pipelining), idle connections reused newest first
  and closed after `keepalive` seconds idle; at most `max_connections` open, callers beyond
  that wait in turn;
- `http` and `https` (the system's trust store, `SSL_CERT_FILE` honoured, hostname checked);
- answers framed by Content-Length, chunked, or the connection closing; 1xx skipped; a server
  that says `Connection: close` is obeyed;
- bounds: the answer's head (`HEAD_LIMIT` bytes), the body kept (`keep` bytes; the rest is
  read and dropped, so the connection stays usable), the whole call (`answer_timeout`: the wait
  for a free connection, the connect and the answer), the connect alone (`connect_timeout`, DNS
  included).

Failures raise `relay.errors.HttpFailed` with the kind `policy` needs: "connect" (nothing was
sent), "transport" (the connection broke or the answer was unreadable; resending the same body
is safe for relay's idempotent calls), "timeout" (the far side may still be working on it).
Proxies are not handled here: `LettaClient` keeps aiohttp for a proxied Letta.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
import time
from dataclasses import dataclass
from typing import Callable, Mapping

import httptools
from yarl import URL

from relay.errors import ConfigError, HttpFailed

#: The most bytes of status line and headers an answer may have.
HEAD_LIMIT = 64 * 1024
_INFORMATIONAL = range(100, 200)


@dataclass(frozen=True)
class Answer:
    """An HTTP answer, read whole. Header names are lower-case."""

    status: int
    body: bytes
    headers: Mapping[str, str]

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")


class _Connection(asyncio.Protocol):
    """One keep-alive connection; `exchange` sends a request and waits for its answer."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.reusable = True
        self.idle_since = 0.0
        self._parser = httptools.HttpResponseParser(self)
        self._answer: asyncio.Future[Answer] | None = None
        self._reset(0)

    def _reset(self, keep: int) -> None:
        self._keep = keep
        self._headers: dict[str, str] = {}
        self._head_bytes = 0
        self._body: list[bytes] = []
        self._kept = 0
        self._headers_done = False
        self._framed = False  # Content-Length or chunked: the end is known without a close

    # -- asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a stream transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.reusable = False
        if self._answer is None or self._answer.done():
            return
        if self._headers_done and not self._framed:  # an answer delimited by the close
            self._complete(self._parser.get_status_code())
        else:
            self._fail("transport", "ServerDisconnected: the connection closed before a whole answer")

    def data_received(self, data: bytes) -> None:
        if self._answer is None:  # bytes nobody asked for: this connection cannot be trusted again
            self.close()
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail("transport", f"unreadable answer: {type(exc).__name__}")
            self.close()

    # -- httptools callbacks -------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self._answer is None or self._answer.done():
            self.close()  # a second answer to one request

    def on_status(self, status: bytes) -> None:
        self._count_head(len(status))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_head(len(name) + len(value))
        key = name.decode("latin-1").lower()
        if key in ("content-length", "transfer-encoding"):
            self._framed = True
        self._headers[key] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self._headers_done = True

    def on_body(self, body: bytes) -> None:
        room = self._keep - self._kept
        if room > 0:
            self._body.append(body[:room])
            self._kept += min(room, len(body))

    def on_message_complete(self) -> None:
        status = self._parser.get_status_code()
        if status in _INFORMATIONAL:  # 100 Continue and kin: the real answer follows
            self._reset(self._keep)
            return
        if not self._parser.should_keep_alive():
            self.reusable = False
        self._complete(status)

    # -- the exchange ---------------------------------------------------------------------------

    def _count_head(self, size: int) -> None:
        self._head_bytes += size
        if self._head_bytes > HEAD_LIMIT:
            self._fail("transport", f"answer head over {HEAD_LIMIT} bytes")
            self.close()

    def _complete(self, status: int) -> None:
        if self._answer is not None and not self._answer.done():
            self._answer.set_result(Answer(status, b"".join(self._body), self._headers))

    def _fail(self, kind: str, detail: str) -> None:
        self.reusable = False
        if self._answer is not None and not self._answer.done():
            self._answer.set_exception(HttpFailed(kind, detail))

    async def exchange(self, request: list[bytes], keep: int, timeout: float) -> Answer:
        assert self.transport is not None
        loop = asyncio.get_running_loop()
        self._reset(keep)
        self._answer = answer = loop.create_future()
        timer = loop.call_later(timeout, self._fail, "timeout", "no whole answer in time")
        try:
            self.transport.writelines(request)
            return await answer
        except BaseException:
            self.reusable = False  # cancelled or failed mid-exchange: its state is unknown
            raise
        finally:
            timer.cancel()
            self._answer = None

    def close(self) -> None:
        self.reusable = False
        if self.transport is not None:
            self.transport.close()


class Http1Pool:
    """Keep-alive connections to the origin of `base_url`; `request` makes one call."""

    def __init__(self, base_url: str, headers: Mapping[str, str], *, max_connections: int,
                 connect_timeout: float, answer_timeout: float, keepalive: float = 5.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        url = URL(base_url)
        if url.scheme not in ("http", "https") or not url.host:
            raise ConfigError(f"LETTA_BASE_URL must be an http(s) URL with a host, not {base_url!r}")
        self._host, self._port = url.host, url.port or (443 if url.scheme == "https" else 80)
        self._ssl = ssl.create_default_context() if url.scheme == "https" else None
        authority = f"[{self._host}]" if ":" in self._host else self._host
        if url.explicit_port is not None:
            authority += f":{url.explicit_port}"
        self._prefix = url.raw_path.rstrip("/")
        fixed = {"Host": authority, **headers}
        for name, value in fixed.items():
            if any(c in f"{name}{value}" for c in "\r\n\0"):
                raise ConfigError(f"the {name} header of Letta calls may not contain line breaks")
        self._head_tail = "".join(f"{name}: {value}\r\n" for name, value in fixed.items()).encode("latin-1")
        self._max = max_connections
        self._connect_timeout, self._answer_timeout = connect_timeout, answer_timeout
        self._keepalive, self._clock = keepalive, clock
        self._idle: list[_Connection] = []  # oldest first; reused from the end
        self._open = 0  # connections open or being opened, idle or busy
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._closed = False

    async def request(self, method: str, target: str, body: bytes | None = None,
                      content_type: str = "application/json", keep: int = 1 << 20) -> Answer:
        """One call; `target` is the path and query under base_url's path. Keeps at most `keep`
        bytes of the answer's body."""
        head = f"{method} {self._prefix}{target} HTTP/1.1\r\n".encode("latin-1") + self._head_tail
        if body is not None:
            head += b"Content-Type: %s\r\nContent-Length: %d\r\n" % (content_type.encode("latin-1"), len(body))
        request = [head, b"\r\n", body] if body else [head, b"\r\n"]
        deadline = self._clock() + self._answer_timeout
        connection = await self._acquire(deadline)
        try:
            return await connection.exchange(request, keep, max(0.0, deadline - self._clock()))
        finally:
            self._release(connection)

    async def aclose(self) -> None:
        self._closed = True
        for connection in self._idle:
            connection.close()
        self._idle.clear()

    # -- the pool -------------------------------------------------------------------------------

    async def _acquire(self, deadline: float) -> _Connection:
        while True:
            if self._closed:
                raise HttpFailed("connect", "the client is closed")
            while self._idle:
                connection = self._idle.pop()
                if connection.reusable and self._clock() - connection.idle_since < self._keepalive:
                    return connection
                self._discard(connection)
            if self._open < self._max:
                return await self._connect()
            await self._wait_for_room(deadline)

    async def _wait_for_room(self, deadline: float) -> None:
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await asyncio.wait_for(waiter, max(0.0, deadline - self._clock()))
        except asyncio.TimeoutError:
            raise HttpFailed("timeout", "no free connection in time") from None
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self._wake()  # woken, then cancelled: the room goes to the next in line
            raise
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)

    async def _connect(self) -> _Connection:
        self._open += 1
        loop = asyncio.get_running_loop()
        try:
            _, connection = await asyncio.wait_for(
                loop.create_connection(_Connection, self._host, self._port, ssl=self._ssl),
                self._connect_timeout)
        except asyncio.TimeoutError:
            self._room_freed()
            raise HttpFailed("connect", f"could not connect within {self._connect_timeout:g} s") from None
        except (OSError, ssl.SSLError) as exc:  # refused, unreachable, unresolvable, TLS refused
            self._room_freed()
            raise HttpFailed("connect", f"{type(exc).__name__}: {exc}") from None
        except BaseException:
            self._room_freed()
            raise
        return connection

    def _release(self, connection: _Connection) -> None:
        if not connection.reusable or self._closed:
            self._discard(connection)
            return
        connection.idle_since = now = self._clock()
        self._idle.append(connection)
        if now - self._idle[0].idle_since >= self._keepalive:
            self._discard(self._idle.pop(0))  # the oldest idle one: close it while we are here
        self._wake()

    def _discard(self, connection: _Connection) -> None:
        connection.close()
        self._room_freed()

    def _room_freed(self) -> None:
        self._open -= 1
        self._wake()

    def _wake(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
