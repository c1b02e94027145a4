"""A local stand-in for Letta's hosted environments server, for `relay dev`, the tests, and
as the bridge in front of a real Letta Code device.

    GET  /v1/health
    POST /v1/environments/register                  a device registers → {connectionId, wsUrl}
    WS   /v1/devices/ws?deviceId=…&connectionName=…  the device's own socket
    GET  /v1/environments                           paged list of connections
    GET  /v1/environments/{deviceId}                one device's connection
    POST /v1/environments/{connectionId}/messages   → an `input` of kind create_message to the device
    WS   /v1/environments/{connectionId}/status/ws?agentId=…&conversationId=…
                                                    a client's status socket (relay's)

Devices are either simulated in-process (`SimulatedDevice`, as strict as Letta Code 0.34.12)
or real: a `letta server` pointed at this stand-in registers and connects its socket, and from
then on the stand-in moves frames between it and the status sockets exactly as for a simulated
one. So one model of Letta's server serves `relay dev`, the tests and the real-device tests.

What the hosted server itself does is not in the device package; here it is the plainest
reading of docs/letta-status-socket.md: a REST message is forwarded as `create_message`
without a request id (so no `input_accepted` comes back for it), and the REST call answers
2xx whatever the device then does with it; every frame to a status socket carries a `seq` to
ack; device events go to the status sockets of their conversation; a client's command goes to
the device with its request id made unique, and the device's answer comes back to that client
alone; events emitted while a conversation's socket is away wait (bounded) for its next one.

Tests script REST failures with `add_fault`, move a device with `rotate`, and inspect what
arrived (`attempts`, `commands`, `sockets`, each device's `decisions`, `violations`, …).
Thread-safe: it usually runs in a server thread while a test thread scripts and inspects it.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from relay.standin.device import Frame, Scope, SimulatedDevice

DEV_AGENT_ID = "agent-relay-dev"
DEV_DEVICE_ID = "relay-dev-device"
DEV_CONNECTION_NAME = "relay-dev"
#: Events kept for a conversation whose status socket is away, waiting for its next one.
BUFFERED_EVENTS = 1000
_CLOSE: Frame = {"type": "__close__"}


@dataclass
class Fault:
    status: int = 500
    times: int | None = 1  # None: forever
    match: Callable[[dict[str, Any]], bool] | None = None
    message_id: str | None = None  # only requests carrying this client_message_id
    retry_after: str | None = None
    delay: float = 0.0  # seconds to wait before answering (longer than the client timeout = a hang)
    body: Any = None
    probability: float = 1.0  # applies to this share of matching requests (the stand-in's seeded rng)


@dataclass
class Attempt:
    at: float
    connection_id: str
    body: dict[str, Any]
    status: int = 0  # 0 until answered
    answered_at: float = 0.0
    authorization: str = ""

    @property
    def message_ids(self) -> list[str]:
        return [m.get("client_message_id", "") for m in self.body.get("messages", []) if isinstance(m, dict)]


@dataclass
class Device:
    """A device as the server knows it. `simulated` is None for a real device (it registers)."""

    device_id: str
    connection_name: str
    connection_id: str | None
    online: bool = True
    extra: dict[str, Any] = field(default_factory=dict)
    simulated: SimulatedDevice | None = field(default_factory=SimulatedDevice)
    socket: WebSocket | None = None  # a real device's socket, while connected

    @property
    def live(self) -> bool:
        return self.online and self.connection_id is not None and (self.simulated is not None or
                                                                   self.socket is not None)


@dataclass
class Sock:
    """A client's status socket."""

    id: int
    connection_id: str
    scope: Scope
    authorization: str
    outbox: asyncio.Queue[Frame] = field(default_factory=asyncio.Queue)
    sent: list[Frame] = field(default_factory=list)
    acked: set[int] = field(default_factory=set)
    open: bool = True
    _seq: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def unacked(self) -> set[int]:
        return {f["seq"] for f in self.sent if "seq" in f} - self.acked


@dataclass
class Command:
    socket: int
    frame: dict[str, Any]


class Watched:
    """State a server thread writes and a test thread reads: change it under `_changed` (and
    notify); wait for a condition on it with `wait_for`."""

    def __init__(self) -> None:
        self._changed = threading.Condition()

    def wait_for(self, predicate: Callable[[Any], bool], timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        with self._changed:
            while not predicate(self):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._changed.wait(remaining)
            return True


class LettaStandIn(Watched):
    def __init__(self, devices: list[Device] | None = None, *, echo: Callable[[str], None] | None = None,
                 clock: Callable[[], float] = time.time, seed: int | None = None, api_key: str | None = None,
                 redeliver: bool = True) -> None:
        super().__init__()
        self._rng = random.Random(seed)
        self.devices = devices if devices is not None else [
            Device(DEV_DEVICE_ID, DEV_CONNECTION_NAME, "conn-" + uuid.uuid4().hex[:12])]
        self.api_key = api_key  # None: any bearer token
        self.redeliver = redeliver
        self.attempts: list[Attempt] = []
        self.list_requests = 0
        self.sockets: list[Sock] = []
        self.commands: list[Command] = []
        self.refused: list[str] = []
        self.device_frames: list[Frame] = []  # every frame a real (registered) device sent
        self._faults: list[Fault] = []
        self._echo = echo
        self._clock = clock
        self._buffer: dict[tuple[str, Scope], list[Frame]] = {}
        self._echoed: set[str] = set()  # request ids already shown on relay dev's terminal
        self._ids = itertools.count(1)
        self._loop: asyncio.AbstractEventLoop | None = None
        for device in self.devices:
            self._attach(device)
        self.app = Starlette(routes=[
            Route("/v1/health", self._health, methods=["GET"]),
            Route("/v1/environments/register", self._register, methods=["POST"]),
            WebSocketRoute("/v1/devices/ws", self._device_socket),
            Route("/v1/environments", self._list, methods=["GET"]),
            Route("/v1/environments/{device_id}", self._get, methods=["GET"]),
            Route("/v1/environments/{connection_id}/messages", self._post, methods=["POST"]),
            WebSocketRoute("/v1/environments/{connection_id}/status/ws", self._status),
        ])

    # -- scripting (test thread) -------------------------------------------------------------

    def add_fault(self, status: int = 500, **options: Any) -> Fault:
        fault = Fault(status=status, **options)
        with self._changed:
            self._faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        with self._changed:
            self._faults.clear()

    def command_device(self, device_id: str, frame: Frame, timeout: float = 10.0) -> None:
        """Send a device a command of the server's own (what a person at the device would do,
        e.g. change_device_state); from a test thread, while the server runs."""
        with self._changed:
            device = next(d for d in self.devices if d.device_id == device_id)
            loop = self._loop
        assert loop is not None, "the server has not started yet"
        asyncio.run_coroutine_threadsafe(self._to_device(device, frame), loop).result(timeout)

    def simulated(self, device_id: str | None = None) -> SimulatedDevice:
        """A simulated device, to script (the first one when no id is given)."""
        with self._changed:
            device = next(d for d in self.devices if device_id in (None, d.device_id))
        assert device.simulated is not None, f"{device.device_id} is a real device"
        return device.simulated

    def rotate(self, device_id: str) -> str:
        """The device re-registers: it gets a new connectionId; the old one answers 404 and its
        status sockets close."""
        with self._changed:
            device = next(d for d in self.devices if d.device_id == device_id)
            old, device.connection_id = device.connection_id, "conn-" + uuid.uuid4().hex[:12]
            if device.simulated is not None:
                device.simulated.connection_id = device.connection_id
            closing = [s for s in self.sockets if s.open and s.connection_id == old]
        self._close(closing)
        return device.connection_id

    def drop(self) -> None:
        """Close every open status socket from the server side (a restart, a network blip)."""
        with self._changed:
            closing = [s for s in self.sockets if s.open]
        self._close(closing)

    # -- inspection (test thread) ------------------------------------------------------------

    def delivered(self) -> list[Attempt]:
        """REST attempts answered 2xx: what the server took."""
        with self._changed:
            return [a for a in self.attempts if 200 <= a.status < 300]

    def delivered_ids(self) -> list[str]:
        return [i for a in self.delivered() for i in a.message_ids]

    def wait_for_delivered(self, count: int, timeout: float = 10.0) -> list[Attempt]:
        self.wait_for(lambda s: len([a for a in s.attempts if 200 <= a.status < 300]) >= count, timeout)
        return self.delivered()

    def open_sockets(self) -> list[Sock]:
        with self._changed:
            return [s for s in self.sockets if s.open]

    def wait_for_open(self, count: int, scope: Scope, timeout: float = 10.0) -> bool:
        """Wait until `count` status sockets of the conversation are open."""
        return self.wait_for(lambda s: sum(1 for x in s.sockets if x.open and x.scope == scope) >= count, timeout)

    # -- the REST API ------------------------------------------------------------------------

    async def _health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    def _connection(self, device: Device) -> dict[str, Any]:
        now_ms = int(self._clock() * 1000)
        online = device.live
        return {
            "id": f"env-{device.device_id}",
            "deviceId": device.device_id,
            "connectionId": device.connection_id if online else None,
            "connectionName": device.connection_name,
            "lastHeartbeat": now_ms if online else None,
            "lastSeenAt": now_ms,
            "currentMode": "default",
            "metadata": {"os": "stand-in", **device.extra},
        }

    async def _list(self, request: Request) -> Response:
        with self._changed:
            self.list_requests += 1
            devices = list(self.devices)
        if request.query_params.get("onlineOnly") == "true":
            devices = [d for d in devices if d.live]
        after = request.query_params.get("after")
        if after:
            ids = [f"env-{d.device_id}" for d in devices]
            devices = devices[ids.index(after) + 1:] if after in ids else []
        limit = int(request.query_params.get("limit", "100"))
        return JSONResponse({"connections": [self._connection(d) for d in devices[:limit]],
                             "hasNextPage": len(devices) > limit})

    async def _get(self, request: Request) -> Response:
        with self._changed:
            self.list_requests += 1
            device = next((d for d in self.devices if d.device_id == request.path_params["device_id"]), None)
        if device is None:
            return JSONResponse({"message": "environment not found"}, status_code=404)
        return JSONResponse(self._connection(device))

    async def _post(self, request: Request) -> Response:
        connection_id = request.path_params["connection_id"]
        try:
            body = await request.json()
        except ValueError:
            return JSONResponse({"message": "invalid JSON", "success": False}, status_code=400)
        attempt = Attempt(self._clock(), connection_id, body if isinstance(body, dict) else {},
                          authorization=request.headers.get("authorization", ""))
        with self._changed:
            self.attempts.append(attempt)
            fault = self._take_fault(attempt.body)
            device = next((d for d in self.devices if d.connection_id == connection_id and d.live), None)
            self._changed.notify_all()
        if fault is not None and fault.delay:
            await asyncio.sleep(fault.delay)
        status, payload, headers = _answer(fault, device is not None, attempt.body)
        with self._changed:
            attempt.status, attempt.answered_at = status, self._clock()
            self._changed.notify_all()
        scripted = fault is not None and bool(fault.status)  # a scripted answer: nothing reached the device
        if 200 <= status < 300 and device is not None and not scripted:
            if self._echo:
                self._echo(describe(connection_id, attempt.body))
            # As the hosted server does: the device gets create_message, with no request id.
            await self._to_device(device, {"type": "input", "runtime": {
                "agent_id": str(attempt.body.get("agentId", "")),
                "conversation_id": str(attempt.body.get("conversationId") or "default")},
                "payload": {"kind": "create_message", "messages": attempt.body["messages"]}})
        return JSONResponse(payload, status_code=status, headers=headers)

    def _take_fault(self, body: dict[str, Any]) -> Fault | None:
        ids = [m.get("client_message_id") for m in body.get("messages", []) if isinstance(m, dict)]
        for fault in self._faults:
            if fault.message_id is not None and fault.message_id not in ids:
                continue
            if fault.probability < 1.0 and self._rng.random() >= fault.probability:
                continue
            if fault.match is None or fault.match(body):
                if fault.times is not None:
                    fault.times -= 1
                    if fault.times <= 0:
                        self._faults.remove(fault)
                return fault
        return None

    # -- devices -----------------------------------------------------------------------------

    def _attach(self, device: Device) -> None:
        if device.simulated is not None:
            device.simulated.connection_id = device.connection_id
            device.simulated.connection_name = device.connection_name
            device.simulated.emit = lambda frame, d=device: self._from_device(d, frame)

    async def _register(self, request: Request) -> Response:
        self._loop = asyncio.get_running_loop()
        if not self._authorized(request.headers.get("authorization", "")):
            return JSONResponse({"message": "unauthorized"}, status_code=401)
        try:
            body = await request.json()
            device_id, name = str(body["deviceId"]), str(body.get("connectionName") or body["deviceId"])
        except (ValueError, KeyError, TypeError):
            return JSONResponse({"message": "deviceId is required"}, status_code=400)
        with self._changed:
            device = next((d for d in self.devices if d.device_id == device_id), None)
            if device is None:
                device = Device(device_id, name, None, simulated=None)
                self.devices.append(device)
            device.connection_name, device.connection_id = name, "conn-" + uuid.uuid4().hex[:12]
            device.extra = body.get("metadata") if isinstance(body.get("metadata"), dict) else {}
            self._changed.notify_all()
        ws_url = str(request.url_for("_device_socket")).replace("http", "ws", 1)
        return JSONResponse({"connectionId": device.connection_id, "wsUrl": ws_url})

    async def _device_socket(self, ws: WebSocket) -> None:
        with self._changed:
            device = next((d for d in self.devices if d.device_id == ws.query_params.get("deviceId")
                           and d.simulated is None), None)
        if device is None or not self._authorized(ws.headers.get("authorization", "")):
            await ws.close(code=1008)
            return
        await ws.accept()
        self._loop = asyncio.get_running_loop()
        with self._changed:
            device.socket, device.online = ws, True
            self._changed.notify_all()
        try:
            while True:
                frame = json.loads(await ws.receive_text())
                if not isinstance(frame, dict):
                    continue
                if frame.get("type") == "ping":
                    await ws.send_text(json.dumps({"type": "pong"}))
                else:
                    with self._changed:
                        self.device_frames.append(frame)
                        self._changed.notify_all()
                    self._from_device(device, frame)
        except (WebSocketDisconnect, RuntimeError, ValueError):
            pass
        finally:
            with self._changed:
                if device.socket is ws:
                    device.socket, device.online = None, False
                self._changed.notify_all()

    async def _to_device(self, device: Device, frame: Frame) -> None:
        if device.simulated is not None:
            device.simulated.handle(frame)
        elif device.socket is not None:
            try:
                await device.socket.send_text(json.dumps(frame))
            except (RuntimeError, OSError):
                pass  # it went away; the caller's client sees no answer and retries

    def _from_device(self, device: Device, frame: Frame) -> None:
        """Route a device frame: an answer to its client's socket, an event to its conversation's."""
        if self._echo and frame.get("request_id") not in self._echoed:
            note = describe_event(frame)
            if note:
                self._echo(note)
            if frame.get("type") == "control_request":
                self._echoed.add(str(frame.get("request_id")))
        with self._changed:
            command_id = frame.get("request_id") if frame.get("type") in ("input_accepted", "sync_response") else None
            if command_id is not None:
                sock_id, _, original = str(command_id).partition(":")
                targets = [s for s in self.sockets if s.open and str(s.id) == sock_id]
                frame = {**frame, "request_id": original}
            else:
                scope = _scope_of(frame)
                targets = [s for s in self.sockets if s.open and s.connection_id == device.connection_id
                           and s.scope == scope] if scope else []
                if not targets and scope is not None and self.redeliver and device.connection_id:
                    kept = self._buffer.get((device.connection_id, scope))
                    if kept is not None:  # a conversation watched before: its next socket gets it
                        kept.append(frame)
                        del kept[:-BUFFERED_EVENTS]
            loop = self._loop
        for sock in targets:
            assert loop is not None
            loop.call_soon_threadsafe(sock.outbox.put_nowait, dict(frame))

    # -- status sockets ----------------------------------------------------------------------

    async def _status(self, ws: WebSocket) -> None:
        connection_id = ws.path_params["connection_id"]
        scope = (ws.query_params.get("agentId", ""), ws.query_params.get("conversationId") or "default")
        authorization = ws.headers.get("authorization", "")
        refusal = self._refusal(connection_id, ws, authorization)
        if refusal is not None:
            with self._changed:
                self.refused.append(refusal)
                self._changed.notify_all()
            await ws.close(code=1008)
            return
        await ws.accept()
        self._loop = asyncio.get_running_loop()
        sock = Sock(next(self._ids), connection_id, scope, authorization)
        with self._changed:
            self.sockets.append(sock)
            for frame in self._buffer.pop((connection_id, scope), []):
                sock.outbox.put_nowait(frame)
            self._changed.notify_all()
        writer = asyncio.create_task(self._write(ws, sock))
        try:
            while True:
                await self._command(sock, await ws.receive_text())
        except (WebSocketDisconnect, RuntimeError):
            pass
        finally:
            writer.cancel()
            with self._changed:
                sock.open = False
                self._keep_for_next(sock)
                self._changed.notify_all()

    def _refusal(self, connection_id: str, ws: WebSocket, authorization: str) -> str | None:
        if not self._authorized(authorization):
            return "bad credentials"
        if "channel" in ws.query_params:  # Letta's own clients open one socket, with no channel
            return f"unexpected channel parameter {ws.query_params['channel']!r}"
        if not ws.query_params.get("agentId"):
            return "agentId is required"
        with self._changed:
            live = any(d.connection_id == connection_id and d.live for d in self.devices)
        return None if live else f"unknown connection {connection_id}"

    def _authorized(self, authorization: str) -> bool:
        if self.api_key is not None:
            return authorization == f"Bearer {self.api_key}"
        return authorization.startswith("Bearer ") and len(authorization) > len("Bearer ")

    def _keep_for_next(self, sock: Sock) -> None:
        """A socket closed: the events it did not ack wait for the next socket of its conversation
        (the hosted server's redelivery is a guess; `redeliver=False` turns it off)."""
        if not self.redeliver:
            return
        left = [f for f in sock.sent if f.get("seq") not in sock.acked]
        while not sock.outbox.empty():
            left.append(sock.outbox.get_nowait())
        older = [{k: v for k, v in f.items() if k != "seq"} for f in left
                 if f is not _CLOSE and f.get("idempotency_key")]
        kept = self._buffer.setdefault((sock.connection_id, sock.scope), [])
        kept[:0] = older
        del kept[:-BUFFERED_EVENTS]

    async def _write(self, ws: WebSocket, sock: Sock) -> None:
        try:
            while True:
                frame = await sock.outbox.get()
                if frame is _CLOSE:
                    await ws.close(code=1012)
                    return
                wire = {**frame, "seq": next(sock._seq)}
                with self._changed:
                    sock.sent.append(wire)
                    self._changed.notify_all()
                await ws.send_text(json.dumps(wire))
        except (RuntimeError, OSError):
            pass

    async def _command(self, sock: Sock, text: str) -> None:
        try:
            frame = json.loads(text)
        except ValueError:
            return
        if not isinstance(frame, dict):
            return
        with self._changed:
            if frame.get("type") == "ack" and isinstance(frame.get("seq"), int):
                sock.acked.add(frame["seq"])
                self._changed.notify_all()
                return
            self.commands.append(Command(sock.id, frame))
            device = next((d for d in self.devices if d.connection_id == sock.connection_id and d.live), None)
            self._changed.notify_all()
        if device is None:
            return
        forwarded = dict(frame)
        if isinstance(frame.get("request_id"), str):
            forwarded["request_id"] = f"{sock.id}:{frame['request_id']}"  # the answer finds this socket
        await self._to_device(device, forwarded)

    def _close(self, closing: list[Sock]) -> None:
        with self._changed:
            for sock in closing:
                sock.open = False  # from now on, events wait for the next socket
                if self.redeliver:
                    self._buffer.setdefault((sock.connection_id, sock.scope), [])
            loop = self._loop
        for sock in closing:
            assert loop is not None
            loop.call_soon_threadsafe(sock.outbox.put_nowait, _CLOSE)


def _scope_of(frame: Frame) -> Scope | None:
    runtime = frame.get("runtime")
    if not isinstance(runtime, dict):
        return None
    agent, conversation = runtime.get("agent_id"), runtime.get("conversation_id")
    return (agent, conversation) if isinstance(agent, str) and isinstance(conversation, str) else None


def _answer(fault: Fault | None, known: bool, body: dict[str, Any]) -> tuple[int, Any, dict[str, str]]:
    if fault is not None and fault.status:
        headers = {"retry-after": fault.retry_after} if fault.retry_after else {}
        payload = fault.body if fault.body is not None else {"message": f"stand-in fault {fault.status}",
                                                              "success": 200 <= fault.status < 300}
        return fault.status, payload, headers
    if not known:
        return 404, {"message": "connection not found", "success": False}, {}
    if not isinstance(body.get("messages"), list) or not body["messages"]:
        return 400, {"message": "messages must be a non-empty list", "success": False}, {}
    return 200, {"message": "Message sent", "success": True}, {}


_counter = itertools.count(1)


def describe(connection_id: str, body: dict[str, Any]) -> str:
    """One readable block per received message, for `relay dev`'s terminal."""
    lines = [f"[letta stand-in] #{next(_counter)} → connection {connection_id} agent "
             f"{body.get('agentId', '?')} conversation {body.get('conversationId', 'default')}"]
    for message in body.get("messages", []):
        if not isinstance(message, dict):
            continue
        if message.get("type") == "approval":
            lines.append("    an approval sent as a message: the device refuses it (protocol violation)")
        else:
            lines.append(f"    user: {message.get('content')!r}")
            lines.append(f"    client_message_id={message.get('client_message_id')}")
    return "\n".join(lines)


def describe_event(frame: Frame) -> str | None:
    """What `relay dev`'s terminal shows of the device's own frames: approvals and refusals."""
    if frame.get("type") == "control_request" and isinstance(frame.get("request"), dict):
        request = frame["request"]
        return (f"[letta stand-in] the agent asks to run {request.get('tool_name')} {json.dumps(request.get('input'))}\n"
                f"    decide with: relay send --approve {request.get('tool_call_id')}   "
                f"(or --deny {request.get('tool_call_id')} --reason \"…\")")
    if frame.get("type") == "input_accepted" and str(frame.get("request_id", "")).partition(":")[2]:
        verdict = "accepted" if frame.get("accepted") else f"refused: {frame.get('error')}"
        return f"[letta stand-in] the device {verdict} a decision"
    delta = frame.get("delta") if frame.get("type") == "stream_delta" else None
    if isinstance(delta, dict) and delta.get("message_type") == "loop_error":
        return f"[letta stand-in] the device refused an input: {delta.get('message')}"
    if isinstance(delta, dict) and delta.get("message_type") == "assistant_message" and not frame.get("subagent_id"):
        content = delta.get("content")
        text = "".join(p.get("text", "") for p in content if isinstance(p, dict)) if isinstance(content, list) \
            else str(content)
        return f"[letta stand-in] the agent says: {text}"
    return None
