"""The web server's connection limits: what uvicorn's httptools protocol leaves unbounded.

uvicorn (read for 0.30 … 0.55) bounds only how long a kept-alive connection may sit idle. Its
httptools protocol accumulates an unfinished header in memory without limit, lets a
connection take forever to send its headers (or send nothing at all) or its body, reads the
rest of a body relay has already refused, and accepts any number of connections.
`protocol_for(limits)` is that protocol with each of these bounded:

- the request line and headers of one request over `max_header_bytes` → 431, closed;
- more than `max_headers` header fields → 431, closed;
- headers not complete within `header_timeout` of the connection opening or of the request's
  first byte → 408, closed (slowloris; a connection that never sends a byte too);
- a body not complete within `body_timeout` of its headers → closed;
- a response sent before its request's body was read (relay refused it early) → closed, so
  the rest of the body is never read;
- at most `max_connections` open: one more takes the place of the connection that has waited
  longest for its next headers (the slowest sender, or an idle keep-alive); when every
  connection is busy with a request, the newcomer is answered 503 and closed.

Each close is reported to `closed(reason)` (a metric) and logged at most once per
`LOG_EVERY` seconds with counts, so that a flood does not become a flood of log lines.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger("relay.connections")

LOG_EVERY = 10.0
_PHRASES = {408: "Request Timeout", 431: "Request Header Fields Too Large", 503: "Service Unavailable"}


@dataclass(frozen=True)
class ConnectionLimits:
    max_header_bytes: int = 16 * 1024
    max_headers: int = 100
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    keepalive_timeout: float = 5.0
    max_connections: int = 100

    @classmethod
    def from_settings(cls, settings: Any) -> ConnectionLimits:
        return cls(settings.max_header_bytes, settings.max_headers, settings.header_timeout, settings.body_timeout,
                   settings.keepalive_timeout, settings.max_connections)


class _Refused(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason


class _Tally:
    """Closes by reason, logged as one warning per LOG_EVERY seconds at most."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.logged_at = float("-inf")

    def add(self, reason: str, now: float) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + 1
        if now - self.logged_at >= LOG_EVERY:
            summary = ", ".join(f"{r} ×{n}" for r, n in sorted(self.counts.items()))
            log.warning("connections closed by relay's limits: %s", summary)
            self.counts.clear()
            self.logged_at = now


def protocol_for(limits: ConnectionLimits,
                 closed: Callable[[str], None] | None = None) -> type[BoundedHttpToolsProtocol]:
    """uvicorn's `http=` protocol class for these limits; `closed(reason)` hears of each close."""
    return type("BoundedHttpToolsProtocol", (BoundedHttpToolsProtocol,),
                {"limits": limits, "closed_hook": staticmethod(closed or (lambda reason: None)), "tally": _Tally()})


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    limits: ClassVar[ConnectionLimits] = ConnectionLimits()
    closed_hook: ClassVar[Callable[[str], None]] = staticmethod(lambda reason: None)
    tally: ClassVar[_Tally] = _Tally()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.awaiting_headers = True  # between requests, or inside a request line and headers
        self.waiting_since = 0.0
        self._header_bytes = 0
        self._header_count = 0
        self._timer: asyncio.TimerHandle | None = None

    # -- the connection ---------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.waiting_since = self.loop.time()
        self._arm(self.limits.header_timeout, self._headers_too_slow)
        if len(self.connections) > self.limits.max_connections:
            self._make_room()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _make_room(self) -> None:
        idle = [c for c in self.connections if c is not self and isinstance(c, BoundedHttpToolsProtocol)
                and c.evictable]
        if idle:
            min(idle, key=lambda c: c.waiting_since).refuse(408, "evicted")
        else:
            self.refuse(503, "over_capacity")

    @property
    def evictable(self) -> bool:
        """Waiting for a request's headers, with no request of its own in progress."""
        return (self.awaiting_headers and not self.transport.is_closing()
                and (self.cycle is None or self.cycle.response_complete))

    # -- bytes in --------------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        self._unset_keepalive_if_required()
        if self.awaiting_headers and self._timer is None:  # a kept-alive connection's next request
            self._arm(self.limits.header_timeout, self._headers_too_slow)
        try:
            self._feed(data)
        except _Refused as refused:
            self.refuse(refused.status, refused.reason)
        except httptools.HttpParserCallbackError as exc:
            if isinstance(exc.__context__, _Refused):
                self.refuse(exc.__context__.status, exc.__context__.reason)
            else:
                self._invalid()
        except httptools.HttpParserError:
            self._invalid()
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()

    def _feed(self, data: bytes) -> None:
        """Feed the parser at most max_header_bytes at a time, counting what arrives while a
        request's headers are awaited: an unfinished header never grows past the limit."""
        step = self.limits.max_header_bytes
        while data and not self.transport.is_closing():
            if self.awaiting_headers:
                room = self.limits.max_header_bytes - self._header_bytes
                if room <= 0:
                    raise _Refused(431, "header_too_large")
                piece, data = data[:room], data[room:]
                self._header_bytes += len(piece)
            else:
                piece, data = data[:step], data[step:]
            self.parser.feed_data(piece)

    def _invalid(self) -> None:
        message = "Invalid HTTP request received."
        self.logger.warning(message)
        self.send_400_response(message)

    # -- parser callbacks ------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._header_count = 0
        if self._timer is None:
            self._arm(self.limits.header_timeout, self._headers_too_slow)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        if self._header_count > self.limits.max_headers:
            raise _Refused(431, "too_many_headers")
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self.awaiting_headers = False
        self._header_bytes = 0
        if self.parser.should_upgrade() and self._should_upgrade():
            self._disarm()  # a WebSocket: its own protocol takes the connection over
        else:
            self._arm(self.limits.body_timeout, self._body_too_slow)
        super().on_headers_complete()

    def handle_websocket_upgrade(self) -> None:
        self._disarm()
        super().handle_websocket_upgrade()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self.awaiting_headers = True
        self._disarm()

    def on_response_complete(self) -> None:
        self.waiting_since = self.loop.time()
        cycle = self.cycle
        if cycle is not None and cycle.response_complete and cycle.more_body and not self.pipeline:
            # Answered before its body was read (a refusal): do not stay to receive the rest.
            self._count("unread_body")
            self.transport.close()
        super().on_response_complete()

    # -- timers and refusals ---------------------------------------------------------------------

    def _arm(self, seconds: float, then: Callable[[], None]) -> None:
        self._disarm()
        self._timer = self.loop.call_later(seconds, then)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _headers_too_slow(self) -> None:
        self._timer = None
        if self.awaiting_headers and (self.cycle is None or self.cycle.response_complete):
            self.refuse(408, "header_timeout")

    def _body_too_slow(self) -> None:
        self._timer = None
        if not self.transport.is_closing():
            self._count("body_timeout")
            self.transport.close()  # the app reading the body hears a disconnect

    def refuse(self, status: int, reason: str) -> None:
        """Answer `status` (unless a response is under way on this connection) and close."""
        if self.transport.is_closing():
            return
        self._count(reason)
        if self.cycle is None or self.cycle.response_complete:
            body = b'{"error":"%s"}' % reason.replace("_", " ").encode()
            self.transport.write(b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
                                 b"connection: close\r\n\r\n%s" % (status, _PHRASES[status].encode(), len(body), body))
        self.transport.close()

    def _count(self, reason: str) -> None:
        self.closed_hook(reason)
        self.tally.add(reason, self.loop.time())
