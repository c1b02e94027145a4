"""A lean HTTP/1.1 client for relay's hot call: requests to one origin (Letta) over pooled
keep-alive connections, each answer parsed by httptools (llhttp, the C parser uvicorn uses).

Why not a general client here: at hundreds of calls in flight a worker is one Python thread at
a full core, and aiohttp's `ClientSession` spent ~110 µs of CPU per call where this spends ~32
(bench/README.md, "A lean HTTP/1.1 client"). What it does, and all it does:

- one request at a time per connection (no pipelining), idle connections reused newest first
  and closed after `keepalive` seconds idle (under the usual 5 s of servers, so a reused
  connection is not the one the server is closing); at most `max_connections` open, callers
  beyond that served first come, first served (a released connection goes straight to the
  first in line);
- `http` and `https` (the system's trust store, `SSL_CERT_FILE` honoured, hostname checked);
- answers framed by Content-Length, chunked, or a clean close; 1xx skipped; a server that
  says `Connection: close` is obeyed; trailers never replace headers;
- bounds: each answer head (`HEAD_LIMIT` bytes, counted before the parser sees them), the body
  kept (`keep` bytes: past it the answer ends there and the connection is closed), getting a
  connection (`answer_timeout` for the wait in line and the connect together; the connect alone,
  DNS included, `connect_timeout`), the answer (`answer_timeout` from the request's sending: a
  request never goes out with its time nearly spent).

Failures raise `relay.errors.HttpFailed` with the kind `policy` needs: "connect" (nothing was
sent), "transport" (the connection broke or the answer was unreadable; resending the same body
is safe for relay's idempotent calls), "timeout" (no whole answer in time, or no connection
free in time). Proxies are not handled here: `LettaClient` keeps aiohttp for a proxied Letta.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
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
_PARSE_ERRORS = (httptools.HttpParserError, httptools.HttpParserUpgrade)


@dataclass(frozen=True)
class Answer:
    """An HTTP answer, read whole (or up to `keep` bytes of body). Header names are lower-case."""

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
        self._head_fed = 0  # bytes given to the parser while this answer's head was incomplete
        self._rest_fed = 0  # and after it
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
        if exc is None and self._headers_done and not self._framed:  # an answer ended by a clean close
            self._complete()
        else:
            self._fail("transport", "ServerDisconnected: the connection closed before a whole answer")

    def data_received(self, data: bytes) -> None:
        if self._answer is None:  # bytes nobody asked for: this connection cannot be trusted again
            self.close()
            return
        try:
            while data and not self._headers_done:  # the head is bounded before the parser holds it
                room = HEAD_LIMIT - self._head_fed
                if room <= 0:
                    self._fail("transport", f"answer head over {HEAD_LIMIT} bytes")
                    self.close()
                    return
                part, data = data[:room], data[room:]
                self._head_fed += len(part)
                self._parser.feed_data(part)
            if data and self.reusable:
                self._parser.feed_data(data)
                self._rest_fed += len(data)
                if self._rest_fed > self._keep + HEAD_LIMIT and self._answer is not None and not self._answer.done():
                    self._fail("transport", "answer framing over its bounds (trailers, chunk headers)")
                    self.close()
        except _PARSE_ERRORS as exc:
            self._fail("transport", f"unreadable answer: {type(exc).__name__}")
            self.close()

    # -- httptools callbacks -------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self._answer is None or self._answer.done():
            self.close()  # a second answer to one request

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._headers_done:
            return  # a chunked answer's trailer: never replaces a header
        key = name.decode("latin-1").lower()
        if key == "content-length" or (key == "transfer-encoding" and b"chunked" in value.lower()):
            self._framed = True
        self._headers[key] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self._headers_done = True

    def on_body(self, body: bytes) -> None:
        room = self._keep - self._kept
        if len(body) > room:  # past what the caller keeps: the answer ends here, the connection too
            self._body.append(body[:room])
            self._kept = self._keep
            self._complete()
            self.close()
            return
        self._body.append(body)
        self._kept += len(body)

    def on_message_complete(self) -> None:
        if self._parser.get_status_code() in _INFORMATIONAL:  # 100 Continue and kin: the real answer follows
            self._reset(self._keep)
            return
        if not self._parser.should_keep_alive():
            self.reusable = False
        self._complete()

    # -- the exchange ---------------------------------------------------------------------------

    def _complete(self) -> None:
        if self._answer is not None and not self._answer.done():
            self._answer.set_result(Answer(self._parser.get_status_code(), b"".join(self._body), self._headers))

    def _fail(self, kind: str, detail: str) -> None:
        self.reusable = False
        if self._answer is not None and not self._answer.done():
            self._answer.set_exception(HttpFailed(kind, detail))

    async def exchange(self, request: list[bytes], keep: int, timeout: float) -> Answer:
        transport = self.transport
        if transport is None or transport.is_closing() or not self.reusable:
            self.reusable = False
            raise HttpFailed("transport", "ServerDisconnected: the connection closed before the request was sent")
        loop = asyncio.get_running_loop()
        self._reset(keep)
        self._answer = answer = loop.create_future()
        timer = loop.call_later(timeout, self._fail, "timeout", "no whole answer in time")
        try:
            try:
                transport.writelines(request)
            except (RuntimeError, OSError) as exc:  # closed under us (uvloop raises, asyncio drops)
                raise HttpFailed("transport", f"could not send: {exc}") from None
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
                 connect_timeout: float, answer_timeout: float, keepalive: float = 4.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        url = URL(base_url)
        if url.scheme not in ("http", "https") or not url.raw_host:
            raise ConfigError(f"LETTA_BASE_URL must be an http(s) URL with a host, not {base_url!r}")
        if url.raw_user or url.raw_query_string or url.raw_fragment:
            raise ConfigError("LETTA_BASE_URL may not carry a user, password, query or fragment "
                              "(the API key goes in LETTA_API_KEY)")
        self._host, self._port = url.raw_host, url.port or (443 if url.scheme == "https" else 80)
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
        self._waiters: collections.deque[asyncio.Future[_Connection | None]] = collections.deque()
        self._closed = False

    async def request(self, method: str, target: str, body: bytes | None = None,
                      content_type: str = "application/json", keep: int = 1 << 20) -> Answer:
        """One call; `target` is the path and query under base_url's path. Keeps at most `keep`
        bytes of the answer's body. Not for HEAD (its answer has no body to wait for)."""
        if method == "HEAD":
            raise ValueError("relay.http1 does not make HEAD requests")
        head = f"{method} {self._prefix}{target} HTTP/1.1\r\n".encode("latin-1") + self._head_tail
        if body is not None:
            head += b"Content-Type: %s\r\nContent-Length: %d\r\n" % (content_type.encode("latin-1"), len(body))
        request = [head, b"\r\n", body] if body else [head, b"\r\n"]
        connection = await self._acquire(self._clock() + self._answer_timeout)
        try:
            return await connection.exchange(request, keep, self._answer_timeout)
        finally:
            self._release(connection)

    async def aclose(self) -> None:
        self._closed = True
        while self._waiters:  # first, so the room the idle ones free goes to nobody
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(HttpFailed("connect", "the client is closed"))
        while self._idle:
            self._discard(self._idle.pop())

    # -- the pool -------------------------------------------------------------------------------

    async def _acquire(self, deadline: float) -> _Connection:
        if self._closed:
            raise HttpFailed("connect", "the client is closed")
        if self._next_waiter() is None:  # nobody is in line: take what is free
            while self._idle:
                connection = self._idle.pop()
                if connection.reusable and self._clock() - connection.idle_since < self._keepalive:
                    return connection
                self._discard(connection)
            if self._open < self._max:
                self._open += 1
                return await self._connect(deadline)
        granted = await self._wait_in_line(deadline)
        return granted if granted is not None else await self._connect(deadline)

    async def _wait_in_line(self, deadline: float) -> _Connection | None:
        waiter: asyncio.Future[_Connection | None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(max(0.0, deadline - self._clock())):
                return await waiter
        except BaseException as exc:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self._pass_on(waiter.result())  # granted, then cancelled or timed out: to the next
            if isinstance(exc, TimeoutError):
                raise HttpFailed("timeout", "no free connection in time") from None
            raise
        finally:
            if not waiter.done():
                waiter.cancel()
            with contextlib.suppress(ValueError):
                self._waiters.remove(waiter)

    async def _connect(self, deadline: float) -> _Connection:
        """Open a connection for room already counted in `_open`."""
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(max(0.0, min(self._connect_timeout, deadline - self._clock()))):
                _, connection = await loop.create_connection(_Connection, self._host, self._port, ssl=self._ssl)
        except TimeoutError:
            self._room_freed()
            raise HttpFailed("connect", "could not connect in time") from None
        except OSError as exc:  # refused, unreachable, unresolvable, TLS refused (ssl.SSLError)
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
        if self._hand_over(connection):
            return
        self._idle.append(connection)
        if now - self._idle[0].idle_since >= self._keepalive:
            self._discard(self._idle.pop(0))  # the oldest idle one: close it while we are here

    def _discard(self, connection: _Connection) -> None:
        connection.close()
        self._room_freed()

    def _room_freed(self) -> None:
        """Room for one connection: to the first in line (still counted), or back to the pool."""
        if not self._hand_over(None):
            self._open -= 1

    def _pass_on(self, grant: _Connection | None) -> None:
        """What a waiter that left was given goes to the next in line."""
        if grant is None:
            self._room_freed()
        else:
            self._release(grant)

    def _next_waiter(self) -> asyncio.Future[_Connection | None] | None:
        while self._waiters and self._waiters[0].done():
            self._waiters.popleft()
        return self._waiters[0] if self._waiters else None

    def _hand_over(self, grant: _Connection | None) -> bool:
        """Give a connection, or counted room to open one, to the first in line."""
        waiter = self._next_waiter()
        if waiter is None:
            return False
        self._waiters.popleft()
        waiter.set_result(grant)
        return True
