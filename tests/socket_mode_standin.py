"""A loopback stand-in for Slack's Socket Mode: the WebSocket that `apps.connections.open` on
the Slack stand-in (tests/slack_standin.py) hands out, speaking Slack's envelope protocol
(https://api.slack.com/apis/socket-mode).

    URL           ws://127.0.0.1:PORT/link/?ticket=T&app_id=A: each ticket admits one connection
                  (as Slack's do); any other ticket is refused at the handshake
    on connect    {"type": "hello", "num_connections": n, "connection_info": {"app_id"}, "debug_info"}
    envelopes     {"envelope_id", "type", "payload", "accepts_response_payload", "retry_attempt",
                  "retry_reason"}, each to one open connection (round robin)
    acks          {"envelope_id"[, "payload"]}: recorded with the connection they came on. An ack
                  naming no envelope, a payload where the envelope accepts none, or a frame that
                  is not such an object is a protocol error (`errors`)
    redelivery    an envelope not acked within `ack_timeout` is sent again, to the next open
                  connection, with retry_attempt + 1 and retry_reason "timeout", up to `retries` times
    lost acks     `send(…, lose_acks=n)`: that envelope's first n acks are dropped on the way (recorded
                  in `lost`), as when a connection fails under an ack: the envelope comes again, to
                  another connection where there is one
    disconnect    `disconnect(reason)` sends {"type": "disconnect", "reason"} and closes that connection
                  `disconnect_grace` later; `drop()` closes one at once, without a word

Tests call `send`, `disconnect` and `drop` from their own thread; a pump task in the server's
loop does the sending. State is read under `_changed` (Watched): `wait_for(predicate)`.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from relay.standin import Watched

APP_ID = "A0RELAYTEST"
PUMP_EVERY = 0.02


@dataclass
class Connection:
    number: int
    ws: WebSocket = field(repr=False)
    open: bool = True
    closing_at: float | None = None  # when a disconnect message was asked for
    disconnect_reason: str = ""
    told: bool = False  # the disconnect message was sent
    drop_now: bool = False


@dataclass
class Ack:
    connection: int
    payload: Any
    attempt: int  # the delivery it answered: the latest one sent before it came


@dataclass
class Envelope:
    envelope_id: str
    type: str
    payload: dict[str, Any]
    accepts_response_payload: bool
    deliveries: list[int] = field(default_factory=list)  # connection numbers, one per send
    acks: list[Ack] = field(default_factory=list)
    due: float = 0.0  # when to send (again); 0: as soon as a connection is open
    given_up: bool = False
    lose_acks: int = 0

    def frame(self) -> str:
        attempt = len(self.deliveries)
        return json.dumps({"envelope_id": self.envelope_id, "type": self.type, "payload": self.payload,
                           "accepts_response_payload": self.accepts_response_payload,
                           "retry_attempt": attempt, "retry_reason": "timeout" if attempt else ""})


def accepts_payload(kind: str, payload: dict[str, Any]) -> bool:
    """Where Slack takes a response payload in the ack: slash commands, view submissions."""
    return kind == "slash_commands" or (kind == "interactive" and payload.get("type") == "view_submission")


class SocketModeStandIn(Watched):
    def __init__(self, *, ack_timeout: float = 1.0, retries: int = 3, disconnect_grace: float = 1.0) -> None:
        super().__init__()
        self.ack_timeout, self.retries, self.disconnect_grace = ack_timeout, retries, disconnect_grace
        self.base_url = ""  # ws://127.0.0.1:PORT, set once the server listens
        self.connections: list[Connection] = []
        self.envelopes: dict[str, Envelope] = {}
        self.errors: list[str] = []
        self.refused_tickets = 0
        self.lost: list[Ack] = []
        self._tickets: set[str] = set()
        self._numbers = itertools.count(1)
        self._turn = 0
        self._pump: asyncio.Task[None] | None = None
        self.app = Starlette(routes=[WebSocketRoute("/link/", self._link)])

    # -- what tests (and the Slack stand-in) call, from any thread -------------------------------

    def issue_url(self) -> str:
        """A new connection URL, as apps.connections.open answers."""
        ticket = uuid.uuid4().hex
        with self._changed:
            self._tickets.add(ticket)
        return f"{self.base_url}/link/?ticket={ticket}&app_id={APP_ID}"

    def send(self, kind: str, payload: dict[str, Any], *, accepts_response_payload: bool | None = None,
             lose_acks: int = 0) -> str:
        envelope_id = str(uuid.uuid4())
        accepts = accepts_payload(kind, payload) if accepts_response_payload is None else accepts_response_payload
        with self._changed:
            self.envelopes[envelope_id] = Envelope(envelope_id, kind, payload, accepts, lose_acks=lose_acks)
        return envelope_id

    def disconnect(self, reason: str = "refresh_requested") -> None:
        """Ask every open connection to reconnect, as Slack does before it rotates a host."""
        with self._changed:
            for connection in self.open_connections():
                connection.closing_at, connection.disconnect_reason = time.monotonic(), reason

    def drop(self) -> None:
        """Close every open connection without a word."""
        with self._changed:
            for connection in self.open_connections():
                connection.drop_now = True

    def open_connections(self) -> list[Connection]:
        with self._changed:
            return [c for c in self.connections if c.open]

    def envelope(self, envelope_id: str) -> Envelope:
        with self._changed:
            return self.envelopes[envelope_id]

    def acked(self, envelope_id: str) -> bool:
        with self._changed:
            return bool(self.envelopes[envelope_id].acks)

    def connected(self, count: int = 1) -> bool:
        """At least `count` connections are open (for `wait_for`)."""
        return len(self.open_connections()) >= count

    # -- the server side ---------------------------------------------------------------------------

    async def _link(self, ws: WebSocket) -> None:
        ticket = ws.query_params.get("ticket", "")
        with self._changed:
            admitted = ticket in self._tickets
            self._tickets.discard(ticket)
            if not admitted:
                self.refused_tickets += 1
        if not admitted:
            await ws.close(code=1008)  # before accept: the handshake is refused
            return
        await ws.accept()
        with self._changed:
            connection = Connection(next(self._numbers), ws)
            self.connections.append(connection)
            count = len([c for c in self.connections if c.open])
        await ws.send_text(json.dumps({"type": "hello", "num_connections": count,
                                       "debug_info": {"host": "applink-standin", "approximate_connection_time": 3600},
                                       "connection_info": {"app_id": APP_ID}}))
        if self._pump is None:
            self._pump = asyncio.create_task(self._run_pump())
        with self._changed:
            self._changed.notify_all()
        try:
            while True:
                self._acknowledged(connection, await ws.receive_text())
        except (WebSocketDisconnect, RuntimeError):
            pass
        finally:
            with self._changed:
                connection.open = False
                self._changed.notify_all()

    def _acknowledged(self, connection: Connection, text: str) -> None:
        with self._changed:
            try:
                data = json.loads(text)
            except ValueError:
                self.errors.append("a frame that is not JSON")
                return
            envelope = self.envelopes.get(data.get("envelope_id")) if isinstance(data, dict) else None
            if envelope is None:
                self.errors.append(f"an ack naming no envelope: {text[:120]}")
                return
            if set(data) - {"envelope_id", "payload"}:
                self.errors.append(f"an ack with unknown keys: {sorted(set(data) - {'envelope_id', 'payload'})}")
            payload = data.get("payload")
            if payload is not None and not envelope.accepts_response_payload:
                self.errors.append(f"a payload on a {envelope.type} envelope, which accepts none")
            ack = Ack(connection.number, payload, len(envelope.deliveries))
            if envelope.lose_acks > 0:
                envelope.lose_acks -= 1
                self.lost.append(ack)
            else:
                envelope.acks.append(ack)
            self._changed.notify_all()

    async def _run_pump(self) -> None:
        while True:
            await asyncio.sleep(PUMP_EVERY)
            for connection, frame in self._due():
                try:
                    if frame is None:
                        await connection.ws.close()
                    else:
                        await connection.ws.send_text(frame)
                except Exception:  # the connection went away meanwhile; redelivery covers envelopes
                    with self._changed:
                        connection.open = False
                        self._changed.notify_all()

    def _due(self) -> list[tuple[Connection, str | None]]:
        """What to send now: (connection, frame), a None frame closes the connection."""
        now = time.monotonic()
        out: list[tuple[Connection, str | None]] = []
        with self._changed:
            for connection in [c for c in self.connections if c.open]:
                if connection.drop_now or (connection.closing_at is not None
                                           and now >= connection.closing_at + self.disconnect_grace):
                    connection.open = False
                    out.append((connection, None))
                elif connection.closing_at is not None and not connection.told:
                    connection.told = True
                    out.append((connection, json.dumps({"type": "disconnect", "reason": connection.disconnect_reason,
                                                        "debug_info": {"host": "applink-standin"}})))
            ready = [c for c in self.connections if c.open and c.closing_at is None]
            for envelope in self.envelopes.values():
                if envelope.acks or envelope.given_up or envelope.due > now or not ready:
                    continue
                if len(envelope.deliveries) > self.retries:
                    envelope.given_up = True
                    continue
                others = [c for c in ready if not envelope.deliveries or c.number != envelope.deliveries[-1]]
                connection = (others or ready)[self._turn % len(others or ready)]
                self._turn += 1
                out.append((connection, envelope.frame()))
                envelope.deliveries.append(connection.number)
                envelope.due = now + self.ack_timeout
            if out:
                self._changed.notify_all()
        return out
