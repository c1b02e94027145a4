"""A simulated Letta Code device, as strict as the real one (letta 0.34.12) where relay meets it.

It takes the frames Letta's server sends a device and emits the frames a device sends back,
through `emit` (set by the server it is attached to). No I/O of its own: the server moves the
frames. The rules it enforces are the real device's (docs/letta-status-socket.md says where in
`letta.js` each was read):

- `input` of kind `create_message` runs a turn. Approval payloads inside it are a protocol
  violation: a non-terminal `loop_error`, `input_accepted: false`, recorded in `violations`.
- A `client_message_id` accepted in the last hour (by the device's clock) is a duplicate:
  `input_accepted: true` with the first disposition, and no turn.
- `approval_response` is accepted only for a pending request id, and answered `input_accepted`
  ("Approval request is no longer pending" otherwise); a deny must carry a message.
- `sync` replays the scope's pending control requests, loop and device status, then answers
  `sync_response`. A sync that does not say `recover_approvals: false` denies pending
  approvals as stale (recorded in `stale_denials`: relay must never cause one).
- While `inactive` (the device replacing its listener), inputs and syncs are refused with
  "Runtime is no longer active".
- Events carry `runtime`, `emitted_at`, an `idempotency_key` and an `event_seq` counted per
  device across every conversation; turns end with `turn_finished` (`turn_id`, `stop_reason`,
  `run_id`, `error`?), as in 0.34.12.

Turns are scripted: each user message gets a short answer; a message containing one of
`APPROVAL_TRIGGERS` first asks to run a tool (a `can_use_tool` control request) and goes on
once it is decided. Tests script frames directly too (`request_approval`, `reply`, …).
Thread-safe: the server calls `handle` on its loop while a test thread scripts.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Iterable

Scope = tuple[str, str]  # (agent_id, conversation_id)
Frame = dict[str, Any]

#: How long the device remembers an accepted client_message_id (ACCEPTED_INPUT_DISPOSITION_TTL_MS).
DEDUP_SECONDS = 3600.0
DEDUP_PER_SCOPE = 4096
DEDUP_TOTAL = 65536
#: Words in a message that make the scripted agent ask to run a tool first ("$TRANSCRIPT_PATH"
#: is what the real device's deterministic-reflection executor reacts to).
APPROVAL_TRIGGERS = ("$TRANSCRIPT_PATH", "!tool")
#: How many received frames and finished turns the device keeps for inspection.
RECORDED = 10_000
ANSWER = "The Letta stand-in got your message. A real agent would answer here."
NO_LONGER_PENDING = "Approval request is no longer pending"
RUNTIME_INACTIVE = "Runtime is no longer active"
VIOLATION = ("Protocol violation: approval payloads are not allowed in input.kind=create_message. "
             "Use input.kind=approval_response.")


@dataclass
class Decision:
    scope: Scope
    request_id: str
    tool_call_id: str
    behavior: str  # "allow" | "deny"
    message: str | None


@dataclass
class _Waiting:
    """A turn stopped on an approval request."""

    request_id: str
    tool_call_id: str
    body: dict[str, Any]
    client_message_ids: list[str]
    run_id: str | None  # None: a request a test raised by hand (no scripted turn behind it)


@dataclass
class _Runtime:
    """One agent conversation on the device."""

    pending: dict[str, _Waiting] = field(default_factory=dict)
    accepted: OrderedDict[str, float] = field(default_factory=OrderedDict)  # client_message_id → when
    queued: list[list[dict[str, Any]]] = field(default_factory=list)
    runs: OrderedDict[str, list[str]] = field(default_factory=OrderedDict)  # run_id → client_message_ids


class SimulatedDevice:
    def __init__(self, *, clock: Callable[[], float] = time.time, auto_turns: bool = True,
                 answer: str = ANSWER, mode: str = "standard") -> None:
        self.clock = clock
        self.auto_turns = auto_turns
        self.answer = answer
        self.mode = mode
        self.emit: Callable[[Frame], None] = lambda frame: None
        self.connection_id: str | None = None
        self.connection_name = "stand-in"
        self.inactive = 0  # inputs and syncs still to refuse as "no longer active"
        self.answer_inputs = True  # False: takes inputs and never answers (a hung device)
        self.received: list[Frame] = []
        self.violations: list[str] = []
        self.decisions: list[Decision] = []
        self.stale_denials: list[str] = []
        self.turns: list[list[str]] = []  # the client_message_ids each finished turn consumed
        self._lock = threading.RLock()
        self._runtimes: dict[Scope, _Runtime] = {}
        self._event_seq = 0
        self._runs = itertools.count(1)
        self._tool_calls = itertools.count(1)

    # -- frames from the server -------------------------------------------------------------

    def handle(self, frame: Frame) -> None:
        with self._lock:
            self.received.append(frame)
            del self.received[:-RECORDED]  # relay dev runs for days: keep the recent ones
            kind = frame.get("type")
            if kind == "message":  # the legacy REST form: {type: message, agentId, messages}
                frame = _legacy_input(frame)
                if frame is None:
                    return
                kind = "input"
            scope = _scope(frame.get("runtime"))
            if scope is None:
                return  # not a scoped command: the real device drops it
            if kind == "input":
                self._input(scope, frame)
            elif kind == "sync":
                self._sync(scope, frame)
            elif kind == "change_device_state" and isinstance(frame.get("payload"), dict):
                mode = frame["payload"].get("mode")
                self.mode = mode if isinstance(mode, str) else self.mode
                self._loop_status(scope, "WAITING_ON_INPUT", [])

    def _input(self, scope: Scope, frame: Frame) -> None:
        command_id = frame.get("request_id")
        payload = frame.get("payload") if isinstance(frame.get("payload"), dict) else {}

        def answer(accepted: bool, error: str | None = None, disposition: str | None = None) -> None:
            if isinstance(command_id, str) and self.answer_inputs:
                self._respond("input_accepted", command_id, scope, accepted=accepted, error=error,
                              disposition=disposition)

        if self.inactive:
            self.inactive -= 1
            return answer(False, RUNTIME_INACTIVE)
        kind = payload.get("kind")
        if kind == "approval_response":
            return self._approval_response(scope, payload, answer)
        if kind != "create_message" or not isinstance(payload.get("messages"), list):
            self._loop_error(scope, f"Unsupported input payload kind: {kind}")
            return answer(False, "Unsupported input payload kind")
        messages = [m for m in payload["messages"] if isinstance(m, dict)]
        if any(m.get("type") == "approval" for m in messages):
            self.violations.append(VIOLATION)
            self._loop_error(scope, VIOLATION)
            return answer(False, "Approval payloads require approval_response")
        runtime = self._runtime(scope)
        identity = next((m.get("client_message_id") for m in messages if m.get("content")), None)
        if isinstance(identity, str) and self._seen(runtime, identity):
            return answer(True, disposition="started")  # a duplicate: nothing runs again
        busy = bool(runtime.pending) or bool(runtime.queued)
        answer(True, disposition="queued" if busy else "started")
        if isinstance(identity, str):
            self._remember(runtime, identity)
        if not self.auto_turns:
            return
        runtime.queued.append(messages)
        if not busy:
            self._next_turn(scope)

    def _approval_response(self, scope: Scope, payload: dict[str, Any], answer: Callable[..., None]) -> None:
        decision = payload.get("decision")
        request_id = payload.get("request_id")
        if not _valid_decision(request_id, decision):
            self._loop_error(scope, "Protocol violation: input.kind=approval_response requires payload.request_id "
                                    "and either payload.decision or payload.error")
            return
        runtime = self._runtime(scope)
        waiting = runtime.pending.pop(request_id, None)
        if waiting is None:
            return answer(False, NO_LONGER_PENDING)
        self.decisions.append(Decision(scope, request_id, waiting.tool_call_id, decision["behavior"],
                                       decision.get("message")))
        answer(True)
        self._device_status(scope)
        self._resume(scope, waiting, decision["behavior"] == "allow", decision.get("message"))

    def _sync(self, scope: Scope, frame: Frame) -> None:
        command_id = frame.get("request_id")
        if self.inactive:
            self.inactive -= 1
            if isinstance(command_id, str):
                self._respond("sync_response", command_id, scope, success=False, error=RUNTIME_INACTIVE)
            return
        runtime = self._runtime(scope)
        if frame.get("recover_approvals") is not False and runtime.pending:
            for waiting in list(runtime.pending.values()):  # "stale approval" recovery: denied
                self.stale_denials.append(waiting.request_id)
                del runtime.pending[waiting.request_id]
                self._resume(scope, waiting, False, "stale approval recovered by sync")
        for waiting in runtime.pending.values():
            self._event(scope, _control_request(scope, waiting))
        self._device_status(scope)
        self._loop_status(scope, "WAITING_ON_APPROVAL" if runtime.pending else "WAITING_ON_INPUT",
                          [w.run_id for w in runtime.pending.values() if w.run_id])
        if isinstance(command_id, str):
            self._respond("sync_response", command_id, scope, success=True)

    # -- scripted turns ---------------------------------------------------------------------

    def _next_turn(self, scope: Scope) -> None:
        runtime = self._runtime(scope)
        while runtime.queued and not runtime.pending:
            messages = runtime.queued.pop(0)
            ids = [m["client_message_id"] for m in messages if isinstance(m.get("client_message_id"), str)]
            run_id = self._run(scope, ids)
            text = json.dumps([m.get("content") for m in messages])
            if any(trigger in text for trigger in APPROVAL_TRIGGERS) and self.mode != "unrestricted":
                tool_call_id = f"tool-call-stand-in-{next(self._tool_calls)}"
                self._assistant(scope, run_id, "I need to run a command first.")
                self._delta(scope, {"message_type": "stop_reason", "stop_reason": "requires_approval",
                                    "run_id": run_id})
                self._ask(scope, tool_call_id, "Bash", {"command": "ls -la", "description": "List the files"},
                          ids, run_id)
                return
            self._assistant(scope, run_id, self.answer)
            self._finish(scope, run_id, ids, "end_turn")

    def _resume(self, scope: Scope, waiting: _Waiting, allowed: bool, message: str | None) -> None:
        if waiting.run_id is None:
            return  # a request raised by hand: the test scripts what follows
        tool = {"run_id": waiting.run_id, "tool_call_id": waiting.tool_call_id}
        if allowed:
            self._delta(scope, {"message_type": "client_tool_start", "tool_name": waiting.body["tool_name"], **tool})
            self._delta(scope, {"message_type": "client_tool_end", "status": "success", **tool})
        self._delta(scope, {"message_type": "tool_return_message", "status": "success" if allowed else "error",
                            "tool_return": "ok" if allowed else f"Denied: {message or ''}", **tool})
        run_id = self._run(scope, waiting.client_message_ids)
        self._assistant(scope, run_id, "The tool ran; done." if allowed else f"Understood, I did not run it: {message}")
        self._finish(scope, run_id, waiting.client_message_ids, "end_turn")
        self._next_turn(scope)

    def _run(self, scope: Scope, ids: list[str]) -> str:
        run_id = f"local-run-{next(self._runs)}"
        runtime = self._runtime(scope)
        runtime.runs[run_id] = ids
        while len(runtime.runs) > 64:
            runtime.runs.popitem(last=False)
        self._loop_status(scope, "PROCESSING_API_RESPONSE", [run_id])
        return run_id

    def _finish(self, scope: Scope, run_id: str, ids: list[str], stop_reason: str,
                error: str | None = None) -> None:
        self._delta(scope, {"message_type": "stop_reason", "stop_reason": stop_reason, "run_id": run_id})
        self._loop_status(scope, "WAITING_ON_INPUT", [])
        self.turn_finished(scope, run_id, stop_reason, error)
        self.turns.append(ids)
        del self.turns[:-RECORDED]

    # -- scripting (any thread) -------------------------------------------------------------

    def request_approval(self, scope: Scope, tool_call_id: str | None = None, tool_name: str = "Bash",
                         tool_input: dict[str, Any] | None = None, *, announce: bool = True) -> str:
        """The agent asks to run a tool: a control request (unless not `announce`d) and a status listing it."""
        with self._lock:
            tool_call_id = tool_call_id or f"tool-call-stand-in-{next(self._tool_calls)}"
            return self._ask(scope, tool_call_id, tool_name, tool_input or {"command": "ls"}, [], None, announce)

    def answer_elsewhere(self, scope: Scope, request_id: str, run_id: str = "run-elsewhere") -> None:
        """Someone else approved (the terminal): the tool runs, and the pending list shrinks."""
        with self._lock:  # in the real device's order: the request leaves the list, then the tool runs
            waiting = self._runtime(scope).pending.pop(request_id)
            self._device_status(scope)
            self._delta(scope, {"message_type": "tool_return_message", "tool_call_id": waiting.tool_call_id,
                                "status": "success", "tool_return": "done", "run_id": run_id})

    def forget_request(self, scope: Scope, request_id: str) -> None:
        """The request leaves the pending list with no trace (a restart, a cancel)."""
        with self._lock:
            self._runtime(scope).pending.pop(request_id, None)
            self._device_status(scope)

    def pending(self, scope: Scope) -> list[str]:
        with self._lock:
            return list(self._runtime(scope).pending)

    def reply(self, scope: Scope, run_id: str, text: str, client_message_ids: list[str],
              stop_reason: str = "end_turn", error: str | None = None) -> None:
        """A whole turn: the run starts with the messages it consumed, speaks in chunks, and ends."""
        with self._lock:
            self._runtime(scope).runs[run_id] = list(client_message_ids)
            self._loop_status(scope, "PROCESSING_API_RESPONSE", [run_id])
            self.chunks(scope, run_id, f"msg-{run_id}", text)
            self._delta(scope, {"message_type": "stop_reason", "stop_reason": stop_reason, "run_id": run_id})
            self._loop_status(scope, "WAITING_ON_INPUT", [])
            self.turn_finished(scope, run_id, stop_reason, error)

    def chunks(self, scope: Scope, run_id: str, message_id: str, text: str, pieces: int = 3) -> None:
        size = max(1, -(-len(text) // pieces))
        with self._lock:
            for start in range(0, len(text), size):
                self._delta(scope, {"message_type": "assistant_message", "id": message_id, "run_id": run_id,
                                    "content": [{"type": "text", "text": text[start:start + size]}]})

    def delta(self, scope: Scope, delta: dict[str, Any], subagent_id: str | None = None) -> None:
        with self._lock:
            self._delta(scope, delta, subagent_id)

    def loop_status(self, scope: Scope, status: str, runs: list[str] | None = None,
                    by_run: dict[str, list[str]] | None = None) -> None:
        with self._lock:
            if by_run:
                self._runtime(scope).runs.update(by_run)
            self._loop_status(scope, status, runs or [])

    def turn_finished(self, scope: Scope, run_id: str | None, stop_reason: str = "end_turn",
                      error: str | None = None) -> None:
        frame: Frame = {"type": "turn_finished", "turn_id": f"turn-{uuid.uuid4()}", "stop_reason": stop_reason}
        if run_id:
            frame["run_id"] = run_id
        if error:
            frame["error"] = error
        with self._lock:
            self._event(scope, frame)

    def status(self, scope: Scope) -> None:
        with self._lock:
            self._device_status(scope)

    def skip_event(self) -> None:
        """An event of a conversation nobody watches: the next event_seq anyone sees jumps."""
        with self._lock:
            self._event_seq += 1

    # -- emitting ---------------------------------------------------------------------------

    def _ask(self, scope: Scope, tool_call_id: str, tool_name: str, tool_input: dict[str, Any],
             ids: list[str], run_id: str | None, announce: bool = True) -> str:
        request_id = f"perm-{tool_call_id}"
        body = {"subtype": "can_use_tool", "tool_name": tool_name, "input": tool_input,
                "tool_call_id": tool_call_id, "permission_suggestions": [], "blocked_path": None}
        waiting = _Waiting(request_id, tool_call_id, body, ids, run_id)
        self._runtime(scope).pending[request_id] = waiting
        self._loop_status(scope, "WAITING_ON_APPROVAL", [run_id] if run_id else [])
        if announce:
            self._event(scope, _control_request(scope, waiting))
        self._device_status(scope)
        return request_id

    def _assistant(self, scope: Scope, run_id: str, text: str) -> None:
        self._delta(scope, {"message_type": "assistant_message", "id": f"msg-{run_id}", "run_id": run_id,
                            "content": [{"type": "text", "text": text}]})

    def _delta(self, scope: Scope, delta: dict[str, Any], subagent_id: str | None = None) -> None:
        frame: Frame = {"type": "stream_delta", "delta": {"type": "message", **delta}}
        if subagent_id:
            frame["subagent_id"] = subagent_id
        self._event(scope, frame)

    def _loop_error(self, scope: Scope, message: str) -> None:
        self._delta(scope, {"id": f"lifecycle-{uuid.uuid4()}", "message_type": "loop_error", "message": message,
                            "stop_reason": "error", "is_terminal": False})

    def _loop_status(self, scope: Scope, status: str, active: Iterable[str]) -> None:
        runtime = self._runtime(scope)
        self._event(scope, {"type": "update_loop_status", "loop_status": {
            "status": status, "active_run_ids": list(active),
            "client_message_ids_by_run_id": {run: list(ids) for run, ids in runtime.runs.items()},
            "executing_tool_call_ids": []}})

    def _device_status(self, scope: Scope) -> None:
        runtime = self._runtime(scope)
        self._event(scope, {"type": "update_device_status", "device_status": {
            "current_connection_id": self.connection_id, "connection_name": self.connection_name,
            "is_online": True, "is_processing": bool(runtime.pending), "current_permission_mode": self.mode,
            "current_working_directory": "/workspace",
            "pending_control_requests": [{"request_id": w.request_id, "request": w.body}
                                         for w in runtime.pending.values()]}})

    def _event(self, scope: Scope, frame: Frame) -> None:
        with self._lock:
            self._event_seq += 1
            seq = self._event_seq
        kind = frame["type"]
        self.emit({**frame, "runtime": {"agent_id": scope[0], "conversation_id": scope[1]}, "event_seq": seq,
                   "emitted_at": datetime.fromtimestamp(self.clock(), timezone.utc).isoformat(),
                   "idempotency_key": f"{kind}:{seq}:{uuid.uuid4()}"})

    def _respond(self, kind: str, command_id: str, scope: Scope, **fields: Any) -> None:
        self.emit({"type": kind, "request_id": command_id,
                   "runtime": {"agent_id": scope[0], "conversation_id": scope[1]},
                   **{k: v for k, v in fields.items() if v is not None}})

    # -- state ------------------------------------------------------------------------------

    def _runtime(self, scope: Scope) -> _Runtime:
        return self._runtimes.setdefault(scope, _Runtime())

    def _seen(self, runtime: _Runtime, identity: str) -> bool:
        now = self.clock()
        for key, at in list(runtime.accepted.items()):  # oldest first
            if now - at < DEDUP_SECONDS:
                break
            del runtime.accepted[key]
        return identity in runtime.accepted

    def _remember(self, runtime: _Runtime, identity: str) -> None:
        runtime.accepted[identity] = self.clock()
        while len(runtime.accepted) > DEDUP_PER_SCOPE:
            runtime.accepted.popitem(last=False)
        total = sum(len(r.accepted) for r in self._runtimes.values())
        if total > DEDUP_TOTAL:
            oldest = min((r for r in self._runtimes.values() if r.accepted),
                         key=lambda r: next(iter(r.accepted.values())))
            oldest.accepted.popitem(last=False)


def _scope(runtime: Any) -> Scope | None:
    if not isinstance(runtime, dict):
        return None
    agent, conversation = runtime.get("agent_id"), runtime.get("conversation_id")
    if not (isinstance(agent, str) and agent and isinstance(conversation, str) and conversation):
        return None
    return agent, conversation


def _legacy_input(frame: Frame) -> Frame | None:
    agent = frame.get("agentId")
    if not isinstance(agent, str) or not agent or not isinstance(frame.get("messages"), list):
        return None
    conversation = frame.get("conversationId") if isinstance(frame.get("conversationId"), str) else "default"
    return {"type": "input", "runtime": {"agent_id": agent, "conversation_id": conversation},
            "payload": {"kind": "create_message", "messages": frame["messages"]}}


def _valid_decision(request_id: Any, decision: Any) -> bool:
    if not isinstance(request_id, str) or not isinstance(decision, dict):
        return False
    if decision.get("behavior") == "allow":
        return decision.get("message") is None or isinstance(decision.get("message"), str)
    return decision.get("behavior") == "deny" and isinstance(decision.get("message"), str)


def _control_request(scope: Scope, waiting: _Waiting) -> Frame:
    return {"type": "control_request", "request_id": waiting.request_id, "request": waiting.body,
            "agent_id": scope[0], "conversation_id": scope[1]}
