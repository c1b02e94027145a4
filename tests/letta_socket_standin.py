"""A loopback stand-in for Letta's environment status WebSocket, scriptable from tests.

    WS /v1/environments/{connectionId}/status/ws?agentId=…&conversationId=…&channel=control|stream

It is served on one app with the REST stand-in (`relay.standin.LettaStandIn`): a connection id
is live exactly when the REST stand-in lists it, and `Authorization: Bearer <api_key>` is
required. It speaks the frames of docs/letta-status-socket.md:

- every frame it sends carries a per-socket `seq` and is expected to be acked; device events
  carry `runtime`, `event_seq` and `idempotency_key` (the same on both channels);
- approval requests go out as a `control_request` on `control` plus an `update_device_status`
  listing the pending requests; a `sync` is answered with `sync_response` and a fresh status;
- an `input` of kind `approval_response` is answered `input_accepted` (true when the request
  was pending, then the pending list shrinks; false "no longer pending" otherwise);
- frames emitted while no socket of a channel is open wait for the next one (the hosted
  relay's redelivery is a guess; `redeliver=False` turns it off).

It records what relay sent (acks, pings, commands) for tests to inspect. Thread-safe: the
server runs in its own thread and loop; tests script and inspect it from theirs.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from relay.standin import LettaStandIn, Watched

CONTROL, STREAM = "control", "stream"
BOTH = (CONTROL, STREAM)
PATH = "/v1/environments/{connection_id}/status/ws"
_CLOSE = object()

Scope = tuple[str, str]  # (agent_id, conversation_id)


@dataclass
class Sock:
    id: int
    connection_id: str
    scope: Scope
    channel: str
    authorization: str
    outbox: asyncio.Queue[Any] = field(default_factory=asyncio.Queue)
    sent: list[dict[str, Any]] = field(default_factory=list)
    acked: set[int] = field(default_factory=set)
    pings: int = 0
    open: bool = True
    _seq: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def unacked(self) -> set[int]:
        return {f["seq"] for f in self.sent if "seq" in f} - self.acked


@dataclass
class Command:
    socket: int
    channel: str
    frame: dict[str, Any]


class StatusSocketStandIn(Watched):
    def __init__(self, letta: LettaStandIn, api_key: str = "test-key", *, redeliver: bool = True) -> None:
        super().__init__()
        self.letta = letta
        self.api_key = api_key
        self.redeliver = redeliver
        self.sockets: list[Sock] = []
        self.commands: list[Command] = []
        self.refused: list[str] = []
        self.pending: dict[Scope, dict[str, dict[str, Any]]] = {}
        #: Called on the server's loop after an approval was accepted: (scope, request_id, decision).
        self.after_decision: Callable[[Scope, str, dict[str, Any]], None] | None = None
        self.answer_inputs = True  # False: a device that takes inputs and never answers
        self._buffer: dict[tuple[Scope, str], list[dict[str, Any]]] = {}
        self._event_seq: dict[Scope, int] = {}
        self._ids = itertools.count(1)
        self._loop: asyncio.AbstractEventLoop | None = None
        self.app = Starlette(routes=[WebSocketRoute(PATH, self._socket), *letta.app.routes])  # ahead of the minimal one

    # -- the socket (server loop) ----------------------------------------------------------

    async def _socket(self, ws: WebSocket) -> None:
        connection_id = ws.path_params["connection_id"]
        scope = (ws.query_params.get("agentId", ""), ws.query_params.get("conversationId") or "default")
        channel = ws.query_params.get("channel", STREAM)
        authorization = ws.headers.get("authorization", "")
        refusal = self._refusal(connection_id, channel, authorization)
        if refusal is not None:
            with self._changed:
                self.refused.append(refusal)
                self._changed.notify_all()
            await ws.close(code=1008)
            return
        await ws.accept()
        self._loop = asyncio.get_running_loop()
        sock = Sock(next(self._ids), connection_id, scope, channel, authorization)
        with self._changed:
            self.sockets.append(sock)
            for frame in self._buffer.pop((scope, channel), []):
                sock.outbox.put_nowait(frame)
            self._changed.notify_all()
        writer = asyncio.create_task(self._write(ws, sock))
        try:
            while True:
                text = await ws.receive_text()
                self._command(sock, text)
        except (WebSocketDisconnect, RuntimeError):
            pass
        finally:
            writer.cancel()
            with self._changed:
                sock.open = False
                self._keep_for_next(sock)
                self._changed.notify_all()

    def _keep_for_next(self, sock: Sock) -> None:
        """A socket closed: device frames it did not get acked go to the next one (the redelivery guess)."""
        if not self.redeliver:
            return
        left = [f for f in sock.sent if f.get("seq") not in sock.acked]
        while not sock.outbox.empty():
            left.append(sock.outbox.get_nowait())
        older = [{k: v for k, v in f.items() if k != "seq"} for f in left
                 if f is not _CLOSE and (f.get("idempotency_key") or f.get("type") == "control_request")]
        kept = self._buffer.setdefault((sock.scope, sock.channel), [])
        kept[:0] = older  # before what was emitted since the drop

    def _refusal(self, connection_id: str, channel: str, authorization: str) -> str | None:
        if authorization != f"Bearer {self.api_key}":
            return "bad credentials"
        if channel not in BOTH:
            return f"unknown channel {channel}"
        with self.letta._changed:
            live = any(d.connection_id == connection_id and d.online for d in self.letta.devices)
        return None if live else f"unknown connection {connection_id}"

    async def _write(self, ws: WebSocket, sock: Sock) -> None:
        try:
            while True:
                frame = await sock.outbox.get()
                if frame is _CLOSE:
                    await ws.close(code=1012)
                    return
                if frame.pop("_unsequenced", False):
                    wire = frame
                else:
                    wire = {**frame, "seq": next(sock._seq)}
                with self._changed:
                    sock.sent.append(wire)
                    self._changed.notify_all()
                await ws.send_text(json.dumps(wire))
        except (RuntimeError, OSError):
            pass

    def _command(self, sock: Sock, text: str) -> None:
        frame = json.loads(text)
        kind = frame.get("type")
        with self._changed:
            if kind == "ack":
                sock.acked.add(frame["seq"])
            elif kind == "ping":
                sock.pings += 1
            else:
                self.commands.append(Command(sock.id, sock.channel, frame))
            self._changed.notify_all()
        if kind == "ping":
            sock.outbox.put_nowait({"type": "pong", "_unsequenced": True})
        elif kind == "sync":
            sock.outbox.put_nowait({"type": "sync_response", "request_id": frame.get("request_id"), "success": True})
            self.status(sock.scope)
        elif kind == "input" and frame.get("payload", {}).get("kind") == "approval_response" and self.answer_inputs:
            self._approval(sock, frame)

    def _approval(self, sock: Sock, frame: dict[str, Any]) -> None:
        payload = frame["payload"]
        request_id = payload.get("request_id")
        with self._changed:
            pending = self.pending.setdefault(sock.scope, {})
            accepted = pending.pop(request_id, None) is not None
        answer = {"type": "input_accepted", "request_id": frame.get("request_id"),
                  "runtime": {"agent_id": sock.scope[0], "conversation_id": sock.scope[1]}, "accepted": accepted}
        if not accepted:
            answer["error"] = f"Approval request {request_id} is no longer pending"
        sock.outbox.put_nowait(answer)
        if accepted:
            self.status(sock.scope)
            if self.after_decision is not None:
                self.after_decision(sock.scope, request_id, payload.get("decision", {}))

    # -- sending (any thread) --------------------------------------------------------------

    def send(self, scope: Scope, frame: dict[str, Any], channels: Iterable[str] = BOTH) -> None:
        """Send a frame to every open socket of the scope on `channels` (or keep it for the next)."""
        for channel in channels:
            with self._changed:
                targets = [s for s in self.sockets if s.open and s.scope == scope and s.channel == channel]
                if not targets and self.redeliver:
                    self._buffer.setdefault((scope, channel), []).append(dict(frame))
                loop = self._loop
            for sock in targets:
                assert loop is not None
                loop.call_soon_threadsafe(sock.outbox.put_nowait, dict(frame))

    def event(self, scope: Scope, frame: dict[str, Any], channels: Iterable[str] = BOTH) -> None:
        """A device event: runtime, the scope's next event_seq and an idempotency key."""
        with self._changed:
            self._event_seq[scope] = seq = self._event_seq.get(scope, 0) + 1
        self.send(scope, {**frame, "runtime": {"agent_id": scope[0], "conversation_id": scope[1]}, "event_seq": seq,
                          "emitted_at": "2026-01-01T00:00:00.000Z", "idempotency_key": f"{scope[1]}:{seq}"}, channels)

    def skip_event(self, scope: Scope) -> None:
        """Lose one device event on the way (the next one arrives after a hole in event_seq)."""
        with self._changed:
            self._event_seq[scope] = self._event_seq.get(scope, 0) + 1

    # -- the device (any thread) -----------------------------------------------------------

    def request_approval(self, scope: Scope, tool_call_id: str, tool_name: str = "Bash",
                         tool_input: dict[str, Any] | None = None, *, announce: bool = True) -> str:
        """The agent asks to run a tool: a control_request, and a status listing it."""
        request_id = f"perm-{tool_call_id}"
        body = {"subtype": "can_use_tool", "tool_name": tool_name, "input": tool_input or {"command": "ls"},
                "tool_call_id": tool_call_id, "permission_suggestions": [], "blocked_path": None}
        with self._changed:
            self.pending.setdefault(scope, {})[request_id] = body
        if announce:
            self.send(scope, {"type": "control_request", "request_id": request_id, "request": body,
                              "agent_id": scope[0], "conversation_id": scope[1]}, [CONTROL])
        self.status(scope)
        return request_id

    def status(self, scope: Scope) -> None:
        with self._changed:
            pending = [{"request_id": rid, "request": body} for rid, body in self.pending.get(scope, {}).items()]
        self.event(scope, {"type": "update_device_status", "device_status": {
            "is_online": True, "is_processing": bool(pending), "current_permission_mode": "default",
            "current_working_directory": "/workspace", "pending_control_requests": pending}}, [CONTROL])

    def answer_elsewhere(self, scope: Scope, request_id: str, run_id: str = "run-elsewhere") -> None:
        """Someone else approved: the tool runs (a tool return), and the pending list shrinks."""
        with self._changed:
            body = self.pending.get(scope, {}).pop(request_id)
        self.delta(scope, {"message_type": "tool_return_message", "tool_call_id": body["tool_call_id"],
                           "status": "success", "tool_return": "done", "run_id": run_id})
        self.status(scope)

    def forget_request(self, scope: Scope, request_id: str) -> None:
        """The request disappears from the pending list with no trace (a restart, a cancel)."""
        with self._changed:
            self.pending.get(scope, {}).pop(request_id, None)
        self.status(scope)

    def loop_status(self, scope: Scope, status: str, runs: list[str] | None = None,
                    by_run: dict[str, list[str]] | None = None) -> None:
        loop: dict[str, Any] = {"status": status, "active_run_ids": runs or [], "executing_tool_call_ids": []}
        if by_run is not None:
            loop["client_message_ids_by_run_id"] = by_run
        self.event(scope, {"type": "update_loop_status", "loop_status": loop}, [STREAM])

    def delta(self, scope: Scope, delta: dict[str, Any], subagent_id: str | None = None) -> None:
        frame: dict[str, Any] = {"type": "stream_delta", "delta": {"type": "message", **delta}}
        if subagent_id:
            frame["subagent_id"] = subagent_id
        self.event(scope, frame)  # both channels: relay must read it once

    def chunks(self, scope: Scope, run_id: str, message_id: str, text: str, pieces: int = 3) -> None:
        size = max(1, -(-len(text) // pieces))
        for start in range(0, len(text), size):
            self.delta(scope, {"message_type": "assistant_message", "id": message_id, "run_id": run_id,
                               "content": text[start:start + size]})

    def stop(self, scope: Scope, run_id: str, reason: str = "end_turn") -> None:
        self.delta(scope, {"message_type": "stop_reason", "stop_reason": reason, "run_id": run_id})

    def reply(self, scope: Scope, run_id: str, text: str, client_message_ids: list[str]) -> None:
        """A whole turn: the run starts with the messages it consumed, speaks, and ends."""
        self.loop_status(scope, "PROCESSING_API_RESPONSE", [run_id], {run_id: client_message_ids})
        self.chunks(scope, run_id, f"msg-{run_id}", text)
        self.stop(scope, run_id)
        self.loop_status(scope, "WAITING_ON_INPUT", [], {run_id: client_message_ids})

    def drop(self) -> None:
        """Close every open socket from the server side (the relay restarts, the network blips)."""
        with self._changed:
            targets = [s for s in self.sockets if s.open]
            for sock in targets:
                sock.open = False  # from now on, frames wait for the next socket
            loop = self._loop
        for sock in targets:
            assert loop is not None
            loop.call_soon_threadsafe(sock.outbox.put_nowait, _CLOSE)

    # -- inspection (any thread) -----------------------------------------------------------

    def open_sockets(self, scope: Scope | None = None) -> list[Sock]:
        with self._changed:
            return [s for s in self.sockets if s.open and (scope is None or s.scope == scope)]

    def wait_for_open(self, count: int, scope: Scope | None = None, *, after: int = 0, timeout: float = 10.0) -> bool:
        """Wait until `count` sockets (of the scope, with id > `after`) are open."""
        return self.wait_for(lambda s: len([x for x in s.sockets if x.open and x.id > after and
                                            (scope is None or x.scope == scope)]) >= count, timeout)

    def of(self, kind: str) -> list[Command]:
        with self._changed:
            return [c for c in self.commands if c.frame.get("type") == kind]

    def inputs(self) -> list[dict[str, Any]]:
        return [c.frame for c in self.of("input")]
