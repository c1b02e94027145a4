"""A local stand-in for the Letta environments API, for `relay dev` and for tests.

It speaks the parts of the contract relay uses:

    GET  /v1/environments                          paged list of connections
    GET  /v1/environments/{deviceId}               one device's connection
    POST /v1/environments/{connectionId}/messages  accept a message → {"message", "success"}
    WS   /v1/environments/{connectionId}/status/ws  a minimal status socket for `relay watch`:
         a device with no pending approvals that answers each user message with a short turn

and records every attempt. Tests script failures with `add_fault` (status, Retry-After,
a hang, a predicate for poison messages) and move a device with `rotate`.
Thread-safe: it usually runs in a server thread while a test thread inspects it.
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

DEV_AGENT_ID = "agent-relay-dev"
DEV_DEVICE_ID = "relay-dev-device"
DEV_CONNECTION_NAME = "relay-dev"
STAND_IN_ANSWER = "The Letta stand-in got your message. A real agent would answer here."


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
    device_id: str
    connection_name: str
    connection_id: str | None
    online: bool = True
    extra: dict[str, Any] = field(default_factory=dict)


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
    def __init__(
        self,
        devices: list[Device] | None = None,
        *,
        echo: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.time,
        seed: int | None = None,
    ) -> None:
        super().__init__()
        self._rng = random.Random(seed)
        self.devices = devices if devices is not None else [
            Device(DEV_DEVICE_ID, DEV_CONNECTION_NAME, "conn-" + uuid.uuid4().hex[:12])
        ]
        self.attempts: list[Attempt] = []
        self.list_requests = 0
        self._faults: list[Fault] = []
        self._echo = echo
        self._clock = clock
        self.app = Starlette(routes=[
            Route("/v1/environments", self._list, methods=["GET"]),
            Route("/v1/environments/{device_id}", self._get, methods=["GET"]),
            Route("/v1/environments/{connection_id}/messages", self._post, methods=["POST"]),
            WebSocketRoute("/v1/environments/{connection_id}/status/ws", self._status),
        ])
        self._streams: dict[tuple[str, str], list[WebSocket]] = {}  # touched on the server's loop only

    # -- scripting (test thread) -------------------------------------------------------------

    def add_fault(self, status: int = 500, **options: Any) -> Fault:
        fault = Fault(status=status, **options)
        with self._changed:
            self._faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        with self._changed:
            self._faults.clear()

    def rotate(self, device_id: str) -> str:
        """The device re-registers: it gets a new connectionId and the old one answers 404."""
        with self._changed:
            device = next(d for d in self.devices if d.device_id == device_id)
            device.connection_id = "conn-" + uuid.uuid4().hex[:12]
            return device.connection_id

    # -- inspection (test thread) ------------------------------------------------------------

    def delivered(self) -> list[Attempt]:
        """Attempts answered 2xx: what the device received."""
        with self._changed:
            return [a for a in self.attempts if 200 <= a.status < 300]

    def delivered_ids(self) -> list[str]:
        return [i for a in self.delivered() for i in a.message_ids]

    def wait_for_delivered(self, count: int, timeout: float = 10.0) -> list[Attempt]:
        self.wait_for(lambda s: len([a for a in s.attempts if 200 <= a.status < 300]) >= count, timeout)
        return self.delivered()

    # -- the API -----------------------------------------------------------------------------

    def _connection(self, device: Device) -> dict[str, Any]:
        now_ms = int(self._clock() * 1000)
        online = device.online and device.connection_id is not None
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
            devices = [d for d in devices if d.online and d.connection_id]
        after = request.query_params.get("after")
        if after:
            ids = [f"env-{d.device_id}" for d in devices]
            devices = devices[ids.index(after) + 1:] if after in ids else []
        limit = int(request.query_params.get("limit", "100"))
        page = devices[:limit]
        return JSONResponse({"connections": [self._connection(d) for d in page],
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
            known = any(d.connection_id == connection_id and d.online for d in self.devices)
            self._changed.notify_all()
        if fault is not None and fault.delay:
            await asyncio.sleep(fault.delay)
        status, payload, headers = self._answer(fault, known, attempt.body)
        with self._changed:
            attempt.status, attempt.answered_at = status, self._clock()
            self._changed.notify_all()
        if 200 <= status < 300 and self._echo:
            self._echo(describe(connection_id, attempt.body))
        if 200 <= status < 300:
            await self._answer_on_sockets(attempt.body)
        return JSONResponse(payload, status_code=status, headers=headers)

    async def _status(self, ws: WebSocket) -> None:
        connection_id = ws.path_params["connection_id"]
        with self._changed:
            live = any(d.connection_id == connection_id and d.online for d in self.devices)
        if not live:
            await ws.close(code=1008)
            return
        await ws.accept()
        scope = (ws.query_params.get("agentId", ""), ws.query_params.get("conversationId") or "default")
        runtime = {"agent_id": scope[0], "conversation_id": scope[1]}
        if ws.query_params.get("channel") == "stream":
            self._streams.setdefault(scope, []).append(ws)
        try:
            while True:
                try:
                    frame = json.loads(await ws.receive_text())
                except ValueError:
                    continue
                kind = frame.get("type") if isinstance(frame, dict) else None
                if kind == "sync":
                    await ws.send_json({"type": "sync_response", "request_id": frame.get("request_id"), "success": True})
                    await ws.send_json({"type": "update_device_status", "runtime": runtime, "device_status": {
                        "is_online": True, "is_processing": False, "pending_control_requests": []}})
                elif kind == "input":
                    await ws.send_json({"type": "input_accepted", "request_id": frame.get("request_id"),
                                        "runtime": runtime, "accepted": False,
                                        "error": "the stand-in device has no pending approvals"})
        except WebSocketDisconnect:
            pass
        finally:
            if ws in self._streams.get(scope, []):
                self._streams[scope].remove(ws)

    async def _answer_on_sockets(self, body: dict[str, Any]) -> None:
        """Each user message gets a short turn on the stream sockets watching its conversation."""
        scope = (str(body.get("agentId", "")), str(body.get("conversationId") or "default"))
        ids = [m.get("client_message_id") for m in body.get("messages", [])
               if isinstance(m, dict) and m.get("role") == "user"]
        if not ids or not self._streams.get(scope):
            return
        runtime = {"agent_id": scope[0], "conversation_id": scope[1]}
        run_id = "run-" + uuid.uuid4().hex[:8]
        frames = [
            {"type": "update_loop_status", "loop_status": {"status": "PROCESSING_API_RESPONSE",
                                                           "active_run_ids": [run_id],
                                                           "client_message_ids_by_run_id": {run_id: ids}}},
            {"type": "stream_delta", "delta": {"message_type": "assistant_message", "id": f"msg-{run_id}",
                                               "run_id": run_id, "content": STAND_IN_ANSWER}},
            {"type": "stream_delta", "delta": {"message_type": "stop_reason", "stop_reason": "end_turn",
                                               "run_id": run_id}},
        ]
        for ws in list(self._streams[scope]):
            try:
                for frame in frames:
                    await ws.send_json({**frame, "runtime": runtime})
            except (RuntimeError, OSError, WebSocketDisconnect):
                pass

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

    @staticmethod
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
        if message.get("type") == "approval":
            for decision in message.get("approvals", []):
                verdict = "APPROVE" if decision.get("approve") else "DENY"
                reason = f" reason={decision['reason']!r}" if decision.get("reason") else ""
                lines.append(f"    {verdict} tool_call_id={decision.get('tool_call_id')}{reason}")
        else:
            lines.append(f"    user: {message.get('content')!r}")
            lines.append(f"    client_message_id={message.get('client_message_id')}")
    return "\n".join(lines)
