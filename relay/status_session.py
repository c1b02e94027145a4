"""What `relay watch` learns from one agent conversation's status socket, without I/O.

One `Session` follows one agent conversation. The I/O shell (`watch.py`) feeds it every text
frame with the time, sends what it returns, and calls `tick` at `next_deadline()`. The session:

- acks every sequenced frame, drops duplicates (`idempotency_key`), and ignores frames of other
  agents or conversations (a device serves several over one connection);
- asks for a `sync` when the socket (re)opens, never after a hole in `event_seq`: the device
  numbers its events across all its conversations, so a hole is another conversation's event;
- tracks the approvals the device is waiting on: `ApprovalRequested` once per request id,
  `ApprovalClosed` when the tool call went ahead anyway ("answered elsewhere") or the request
  left the device's pending list and no tool event followed within `leave_grace` ("no longer
  pending": denied elsewhere, cancelled, gone; the real device drops a request from its list
  just before the approved tool starts, so a short wait tells the two apart);
- assembles each turn's assistant messages from `stream_delta` chunks (a subagent's output is
  skipped), matches the turn's runs to the `client_message_id`s they consumed (loop status
  `client_message_ids_by_run_id`), and reports `TurnEnded` on `turn_finished`, as Letta's own
  gateway does, with its stop reason and error;
- while a turn with known messages runs, reports `TurnProgress` (what the agent has said so far,
  and what it is doing: thinking, running a tool, waiting for an approval) at most once per
  `progress_every` seconds, the last change always reported (when `progress_every` is set).
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterable

from relay.messages import ApprovalRequest
from relay.status_frames import (
    ANSWERED_ELSEWHERE,
    NO_LONGER_PENDING,
    ack,
    decode,
    is_for,
    requests_in,
    runtime_of,
    sequence_number,
    sync,
)

#: An approval request seen before its turn's messages are known (a sync after a reconnect
#: replays pending requests before the loop status) waits this long for them, to find its thread.
HOLD_GRACE = 0.5
#: A request that left the pending list waits this long for a tool event (then it went ahead).
LEAVE_GRACE = 0.5
SEEN_KEYS = 1000
REMEMBERED_RUNS = 512

#: Stop reasons after which the turn goes on (an approval is a continuation, not an end).
CONTINUATION = frozenset({"requires_approval"})
#: Stream deltas that show a tool call went ahead.
TOOL_WENT_AHEAD = frozenset({"tool_return_message", "client_tool_start", "client_tool_end"})
#: What the agent is doing, by loop status (the tool's name is added when known).
ACTIVITIES = {"SENDING_API_REQUEST": "thinking", "WAITING_FOR_API_RESPONSE": "thinking",
              "RETRYING_API_REQUEST": "thinking", "PROCESSING_API_RESPONSE": "thinking",
              "EXECUTING_CLIENT_SIDE_TOOL": "running a tool", "EXECUTING_COMMAND": "running a command",
              "WAITING_ON_APPROVAL": "waiting for an approval"}


@dataclass(frozen=True)
class ApprovalRequested:
    request: ApprovalRequest


@dataclass(frozen=True)
class ApprovalClosed:
    tool_call_id: str
    request_id: str
    reason: str  # ANSWERED_ELSEWHERE or NO_LONGER_PENDING


@dataclass(frozen=True)
class TurnEnded:
    client_message_ids: tuple[str, ...]
    texts: tuple[str, ...]  # the assistant messages, in order; never a subagent's
    stop_reason: str | None
    run_ids: tuple[str, ...] = ()
    error: str | None = None  # turn_finished's error, else the last loop_error's message


@dataclass(frozen=True)
class TurnProgress:
    client_message_ids: tuple[str, ...]
    texts: tuple[str, ...]  # what the agent has said so far in this turn
    activity: str | None  # "thinking", "running Bash", "waiting for an approval to run Bash", …


Event = ApprovalRequested | ApprovalClosed | TurnEnded | TurnProgress


@dataclass
class Step:
    events: list[Event] = field(default_factory=list)
    send: list[str] = field(default_factory=list)
    kind: str | None = None  # the type of the frame this step read, if it was one


@dataclass
class _Turn:
    run_ids: list[str] = field(default_factory=list)
    client_message_ids: list[str] = field(default_factory=list)
    messages: OrderedDict[str, list[str]] = field(default_factory=OrderedDict)
    stop_reason: str | None = None
    error: str | None = None
    activity: str | None = None
    tool: str | None = None  # the tool being run or asked for
    changed: bool = False  # since the last TurnProgress
    reported_at: float = float("-inf")

    def add_ids(self, ids: Iterable[str]) -> None:
        for message_id in ids:
            if message_id not in self.client_message_ids:
                self.client_message_ids.append(message_id)

    def texts(self) -> tuple[str, ...]:
        return tuple(t for t in ("".join(chunks).strip() for chunks in self.messages.values()) if t)


class _Bounded(OrderedDict[str, Any]):
    """An insertion-ordered map that forgets its oldest entries past `size`."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def put(self, key: str, value: Any = True) -> None:
        self[key] = value
        self.move_to_end(key)
        while len(self) > self.size:
            self.popitem(last=False)


class Session:
    def __init__(self, agent_id: str, conversation_id: str | None = None, *,
                 known_pending: Iterable[ApprovalRequest] = (), hold_grace: float = HOLD_GRACE,
                 leave_grace: float = LEAVE_GRACE, progress_every: float | None = None) -> None:
        self.runtime = runtime_of(agent_id, conversation_id)
        self.hold_grace, self.leave_grace = hold_grace, leave_grace
        self.progress_every = progress_every
        self._pending: dict[str, ApprovalRequest] = {r.request_id: r for r in known_pending}
        self._held: dict[str, float] = {}  # request_id → when first seen, not yet announced
        self._leaving: dict[str, float] = {}  # request_id → when it left the pending list
        self._closed = _Bounded(SEEN_KEYS)
        self._seen = _Bounded(SEEN_KEYS)
        self._run_messages = _Bounded(REMEMBERED_RUNS)  # run_id → [client_message_id]
        self._settled = _Bounded(REMEMBERED_RUNS)
        self._turn: _Turn | None = None
        self._ids = itertools.count(1)

    # -- what the shell asks -------------------------------------------------------------

    @property
    def pending(self) -> dict[str, ApprovalRequest]:
        return dict(self._pending)

    def connected(self) -> Step:
        """The socket is (again) open: ask for the current state."""
        return Step(send=[sync(self.runtime, f"relay-sync-{next(self._ids)}")])

    def next_deadline(self) -> float:
        deadlines = [since + self.hold_grace for since in self._held.values()]
        deadlines += [since + self.leave_grace for since in self._leaving.values()]
        turn = self._turn
        if turn is not None and turn.changed and self.progress_every is not None:
            deadlines.append(turn.reported_at + self.progress_every)
        return min(deadlines, default=float("inf"))

    def tick(self, now: float) -> Step:
        step = Step()
        self._close_left(now, step)  # before releasing: a held request that left is never announced
        self._release(step, lambda since: now >= since + self.hold_grace)
        self._report(now, step)
        return step

    def receive(self, text: str | bytes, now: float) -> Step:
        step = Step()
        frame = decode(text)
        if frame is None:
            return step
        step.kind = frame["type"]
        seq = sequence_number(frame)
        if seq is not None:
            step.send.append(ack(seq))
        key = frame.get("idempotency_key")
        if isinstance(key, str) and key:
            if key in self._seen:
                return step
            self._seen.put(key)
        if not is_for(frame, self.runtime):
            return step
        handler = _HANDLERS.get(frame["type"])
        if handler is not None:
            handler(self, frame, now, step)
        if self._held:
            self._release(step)
        self._report(now, step)
        return step

    # -- frames --------------------------------------------------------------------------

    def _on_requests(self, frame: dict[str, Any], now: float, step: Step) -> None:
        shown = requests_in(frame, self.runtime)
        if shown is None:
            return
        for request in shown:
            self._ask(request, now, step)
        if frame["type"] == "control_request" and shown and self._turn is not None:
            self._doing(self._turn, f"waiting for an approval to run {shown[0].tool_name}", shown[0].tool_name)
        if frame["type"] == "update_device_status":  # the whole pending list: the rest are leaving
            listed = {r.request_id for r in shown}
            for request_id in self._pending:
                if request_id in listed:
                    self._leaving.pop(request_id, None)
                else:
                    self._leaving.setdefault(request_id, now)
            self._close_left(now, step)

    def _on_loop_status(self, frame: dict[str, Any], now: float, step: Step) -> None:
        loop = frame.get("loop_status")
        if not isinstance(loop, dict):
            return
        by_run = loop.get("client_message_ids_by_run_id")
        if isinstance(by_run, dict):
            for run_id, ids in by_run.items():
                if isinstance(run_id, str) and isinstance(ids, list):
                    self._run_messages.put(run_id, _strings(ids))
        for run_id in _strings(loop.get("active_run_ids")):
            self._touch(run_id)
        turn = self._turn
        if turn is not None:
            for run_id in turn.run_ids:
                turn.add_ids(self._run_messages.get(run_id, ()))
            activity = ACTIVITIES.get(loop.get("status"))  # type: ignore[arg-type]
            if activity == "running a tool" and turn.tool:
                activity = f"running {turn.tool}"
            elif activity == "waiting for an approval" and turn.tool:
                activity = f"waiting for an approval to run {turn.tool}"
            if activity is not None:
                self._doing(turn, activity, turn.tool if activity != "thinking" else None)

    def _on_turn_finished(self, frame: dict[str, Any], now: float, step: Step) -> None:
        run_id = frame.get("run_id") if isinstance(frame.get("run_id"), str) else None
        turn = self._touch(run_id) if run_id else (self._turn or self._start())
        if turn is None:
            return  # a turn already reported (a replay after a sync)
        reason, error = frame.get("stop_reason"), frame.get("error")
        turn.stop_reason = reason if isinstance(reason, str) else turn.stop_reason
        turn.error = error if isinstance(error, str) and error else turn.error
        step.events.append(self._finish())

    def _on_stream_delta(self, frame: dict[str, Any], now: float, step: Step) -> None:
        delta = frame.get("delta")
        if not isinstance(delta, dict):
            return
        kind = delta.get("message_type")
        if kind in TOOL_WENT_AHEAD:
            self._went_ahead(_tool_call_id(delta), step)
        if frame.get("subagent_id"):
            return  # a subagent's output is not the agent's reply
        run_id = delta.get("run_id") if isinstance(delta.get("run_id"), str) else None
        if kind == "loop_error" and not delta.get("is_terminal"):
            return  # a notice about one input (a refused command), not about the turn
        turn = self._touch(run_id) if run_id else (self._turn or self._start())
        if turn is None:
            return  # a late frame of a run already reported
        if kind == "assistant_message":
            text = _text(delta.get("content"))
            if text:
                turn.messages.setdefault(str(delta.get("id") or delta.get("otid") or "-"), []).append(text)
                turn.changed = True
        elif kind in ("client_tool_start", "tool_call_message", "approval_request_message"):
            name = _tool_name(delta)
            if name:
                verb = "asking to run" if kind == "approval_request_message" else "running"
                self._doing(turn, f"{verb} {name}", name)
        elif kind == "stop_reason" and isinstance(delta.get("stop_reason"), str):
            if delta["stop_reason"] not in CONTINUATION:
                turn.stop_reason = delta["stop_reason"]
        elif kind == "loop_error":
            turn.add_ids(_strings(delta.get("client_message_ids")))
            message = delta.get("message")
            turn.error = message if isinstance(message, str) and message else turn.error

    # -- approvals -----------------------------------------------------------------------

    def _ask(self, request: ApprovalRequest, now: float, step: Step) -> None:
        if request.request_id in self._pending or request.request_id in self._closed:
            return
        turn = self._turn
        if turn is not None and turn.client_message_ids:
            request = replace(request, turn_message_id=turn.client_message_ids[0])
        self._pending[request.request_id] = request
        if request.turn_message_id is None and self.hold_grace > 0:
            self._held[request.request_id] = now
        else:
            step.events.append(ApprovalRequested(request))

    def _release(self, step: Step, due: Callable[[float], bool] = lambda since: False) -> None:
        """Announce held requests: those whose turn is now known, and those `due`."""
        turn = self._turn
        known = turn.client_message_ids[0] if turn is not None and turn.client_message_ids else None
        for request_id, since in list(self._held.items()):
            if known is None and not due(since):
                continue
            del self._held[request_id]
            if known is not None:
                self._pending[request_id] = replace(self._pending[request_id], turn_message_id=known)
            step.events.append(ApprovalRequested(self._pending[request_id]))

    def _close(self, request_id: str, reason: str, step: Step) -> None:
        request = self._pending.pop(request_id)
        self._leaving.pop(request_id, None)
        self._closed.put(request_id)
        if self._held.pop(request_id, None) is None:  # never announced: nothing to close
            step.events.append(ApprovalClosed(request.tool_call_id, request_id, reason))

    def _close_left(self, now: float, step: Step) -> None:
        """Requests gone from the pending list with no tool event for `leave_grace`: no longer pending."""
        for request_id, since in list(self._leaving.items()):
            if now >= since + self.leave_grace:
                self._close(request_id, NO_LONGER_PENDING, step)

    def _went_ahead(self, tool_call_id: str | None, step: Step) -> None:
        for request_id, request in list(self._pending.items()):
            if tool_call_id and request.tool_call_id == tool_call_id:
                self._close(request_id, ANSWERED_ELSEWHERE, step)

    # -- turns ---------------------------------------------------------------------------

    @staticmethod
    def _doing(turn: _Turn, activity: str, tool: str | None) -> None:
        turn.tool = tool if tool is not None else turn.tool
        if activity != turn.activity:
            turn.activity, turn.changed = activity, True

    def _report(self, now: float, step: Step) -> None:
        """A TurnProgress for the running turn, when it changed and the last one is old enough."""
        turn = self._turn
        if (self.progress_every is None or turn is None or not turn.changed or not turn.client_message_ids
                or now < turn.reported_at + self.progress_every):
            return
        turn.changed, turn.reported_at = False, now
        step.events.append(TurnProgress(tuple(turn.client_message_ids), turn.texts(), turn.activity))

    def _start(self) -> _Turn:
        self._turn = _Turn()
        return self._turn

    def _touch(self, run_id: str) -> _Turn | None:
        """The turn a run belongs to (starting one); None for a run already reported."""
        if run_id in self._settled:
            return None
        turn = self._turn or self._start()
        if run_id not in turn.run_ids:
            turn.run_ids.append(run_id)
        turn.add_ids(self._run_messages.get(run_id, ()))
        return turn

    def _finish(self) -> TurnEnded:
        turn = self._turn
        assert turn is not None
        self._turn = None
        for run_id in turn.run_ids:
            turn.add_ids(self._run_messages.get(run_id, ()))
            self._settled.put(run_id)
        return TurnEnded(tuple(turn.client_message_ids), turn.texts(), turn.stop_reason, tuple(turn.run_ids),
                         turn.error)


_HANDLERS = {
    "control_request": Session._on_requests,
    "update_device_status": Session._on_requests,
    "update_loop_status": Session._on_loop_status,
    "turn_finished": Session._on_turn_finished,
    "stream_delta": Session._on_stream_delta,
}


def _strings(value: Any) -> list[str]:
    return [v for v in value if isinstance(v, str) and v] if isinstance(value, list) else []


def _text(content: Any) -> str:
    """A message's text: a string, or a list of parts with `text`."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return ""
    parts = []
    for part in content:
        if isinstance(part, str):
            parts.append(part)
        elif isinstance(part, dict) and isinstance(part.get("text"), str):
            parts.append(part["text"])
    return "".join(parts)


def _tool_name(delta: dict[str, Any]) -> str | None:
    """The tool a delta runs or asks for: `tool_name`, or `tool_call.name`."""
    call = delta.get("tool_call")
    name = delta.get("tool_name") or (call.get("name") if isinstance(call, dict) else None)
    return name if isinstance(name, str) and name else None


def _tool_call_id(delta: dict[str, Any]) -> str | None:
    found = delta.get("tool_call_id")
    if isinstance(found, str):
        return found
    returns = delta.get("tool_returns")
    if isinstance(returns, list) and returns and isinstance(returns[0], dict):
        inner = returns[0].get("tool_call_id")
        return inner if isinstance(inner, str) else None
    return None
