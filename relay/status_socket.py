"""The Letta status WebSocket without I/O: frames in; events and frames to send out.

One `Session` follows one agent conversation on one environment, over two sockets
(`channel=control` and `channel=stream`, see docs/letta-status-socket.md). The I/O shell
(`watch.py`) feeds it every text frame with the time, sends what it returns, and calls `tick`
at `next_deadline()`. The session:

- acks every sequenced frame on the socket it came from, and pings each socket on an interval;
- drops duplicates (`idempotency_key`), and asks for a `sync` when a hole in `event_seq` stays
  open for `gap_grace` (never `recover_approvals`: relay only looks at pending approvals);
- tracks the approvals the device is waiting on: `ApprovalRequested` once per request id,
  `ApprovalClosed` when a tool call went ahead anyway ("answered elsewhere") or the request left
  the device's pending list ("no longer pending");
- assembles each turn's assistant messages from `stream_delta` chunks (a subagent's output is
  skipped), matches the turn to the `client_message_id`s it consumed (loop status
  `client_message_ids_by_run_id`, `turn_finished`, `loop_error`), and reports `TurnEnded`.
"""

from __future__ import annotations

import itertools
import json
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterable
from urllib.parse import quote, urlencode, urlsplit, urlunsplit

from relay.messages import ApprovalRequest

CONTROL = "control"
STREAM = "stream"
CHANNELS = (CONTROL, STREAM)

PING_INTERVAL = 25.0  # a guess: no source names the interval (docs/letta-status-socket.md)
#: A status that omits a request seen less than this long ago may predate it (another socket).
PENDING_GRACE = 2.0
#: A turn that ended before any client_message_id was known waits this long for one.
END_GRACE = 0.5
#: An approval request seen before its turn's messages are known (it travels on the control
#: socket, loop status on the stream socket) waits this long for them, to find its thread.
HOLD_GRACE = 0.5
#: A hole in event_seq must stay open this long before it counts as missed events.
GAP_GRACE = 1.0
#: Never ask for a sync more often than this.
SYNC_SPACING = 10.0
SEEN_KEYS = 1000
REMEMBERED_RUNS = 512

ANSWERED_ELSEWHERE = "answered elsewhere"
NO_LONGER_PENDING = "no longer pending"
DEFAULT_DENY_MESSAGE = "Denied in chat, without a reason."

#: Stop reasons after which the turn goes on (an approval is a continuation, not an end).
CONTINUATION = frozenset({"requires_approval"})
#: Stream deltas that show a tool call went ahead.
TOOL_WENT_AHEAD = frozenset({"tool_return_message", "client_tool_start", "client_tool_end"})


# -- outgoing frames ----------------------------------------------------------------------


def status_url(base_url: str, connection_id: str, agent_id: str, conversation_id: str | None,
               channel: str) -> str:
    """wss://…/v1/environments/{connectionId}/status/ws?agentId=…&conversationId=…&channel=…"""
    parts = urlsplit(base_url)
    scheme = {"https": "wss", "http": "ws"}.get(parts.scheme, parts.scheme)
    path = f"{parts.path.rstrip('/')}/v1/environments/{quote(connection_id, safe='')}/status/ws"
    query = urlencode({"agentId": agent_id, "conversationId": conversation_id or "default", "channel": channel})
    return urlunsplit((scheme, parts.netloc, path, query, ""))


def runtime_of(agent_id: str, conversation_id: str | None) -> dict[str, str]:
    return {"agent_id": agent_id, "conversation_id": conversation_id or "default"}


def _encode(frame: dict[str, Any]) -> str:
    return json.dumps(frame, separators=(",", ":"), ensure_ascii=False)


def ack(seq: int) -> str:
    return _encode({"type": "ack", "seq": seq})


def ping() -> str:
    return _encode({"type": "ping"})


def sync(runtime: dict[str, str], request_id: str) -> str:
    # recover_approvals stays false: relay wants to see the pending list, never to have the
    # device resolve (deny) approvals it considers stale.
    return _encode({"type": "sync", "request_id": request_id, "runtime": runtime,
                    "recover_approvals": False, "force_device_status": True})


def approval_input(runtime: dict[str, str], command_id: str, request_id: str, approve: bool,
                   reason: str | None = None, updated_input: dict[str, Any] | None = None) -> str:
    """An `input` frame answering one `can_use_tool` control request."""
    decision: dict[str, Any]
    if approve:
        decision = {"behavior": "allow"}
        if reason:
            decision["message"] = reason
        if updated_input is not None:
            decision["updated_input"] = updated_input
    else:
        decision = {"behavior": "deny", "message": reason or DEFAULT_DENY_MESSAGE}  # the device needs one
    return _encode({"type": "input", "request_id": command_id, "runtime": runtime,
                    "payload": {"kind": "approval_response", "request_id": request_id, "decision": decision}})


def decode(text: str | bytes) -> dict[str, Any] | None:
    """A frame as a JSON object with a string `type`; None for anything else."""
    try:
        frame = json.loads(text)
    except (ValueError, RecursionError):
        return None
    return frame if isinstance(frame, dict) and isinstance(frame.get("type"), str) else None


# -- events -------------------------------------------------------------------------------


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


@dataclass(frozen=True)
class InputAnswered:
    command_id: str  # the request_id of the `input` frame it answers
    accepted: bool
    error: str | None = None


Event = ApprovalRequested | ApprovalClosed | TurnEnded | InputAnswered


@dataclass
class Step:
    events: list[Event] = field(default_factory=list)
    send: list[tuple[str, str]] = field(default_factory=list)  # (channel, frame)


# -- state --------------------------------------------------------------------------------


@dataclass
class _Pending:
    request: ApprovalRequest
    first_seen: float


@dataclass
class _Turn:
    run_ids: list[str] = field(default_factory=list)
    client_message_ids: list[str] = field(default_factory=list)
    messages: OrderedDict[str, list[str]] = field(default_factory=OrderedDict)
    stop_reason: str | None = None
    ending_since: float | None = None  # ended, waiting for a client_message_id

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


class _Holes:
    """Which event_seq values are missing, and since when (frames may arrive out of order
    across the two sockets, so a hole is only a loss once it stays open)."""

    def __init__(self) -> None:
        self.floor: int | None = None  # every seq up to here was seen
        self.ahead: set[int] = set()
        self.since: float | None = None

    def reset(self) -> None:
        self.floor, self.ahead, self.since = None, set(), None

    def see(self, seq: int, now: float) -> None:
        if self.floor is None:
            self.floor = seq
        elif seq > self.floor + 1:
            self.ahead.add(seq)
            self.since = self.since if self.since is not None else now
        elif seq == self.floor + 1:
            self.floor = seq
            while self.floor + 1 in self.ahead:
                self.floor += 1
                self.ahead.discard(self.floor)
            if not self.ahead:
                self.since = None

    def lost(self, now: float, grace: float) -> bool:
        """True once a hole has stayed open `grace` seconds; then start again from the top."""
        if self.since is None or now - self.since < grace:
            return False
        self.floor, self.ahead, self.since = max(self.ahead), set(), None
        return True


class Session:
    def __init__(self, agent_id: str, conversation_id: str | None = None, *,
                 known_pending: Iterable[ApprovalRequest] = (), ping_interval: float = PING_INTERVAL,
                 pending_grace: float = PENDING_GRACE, end_grace: float = END_GRACE,
                 hold_grace: float = HOLD_GRACE, gap_grace: float = GAP_GRACE,
                 sync_spacing: float = SYNC_SPACING) -> None:
        self.runtime = runtime_of(agent_id, conversation_id)
        self.ping_interval = ping_interval
        self.pending_grace, self.end_grace, self.hold_grace = pending_grace, end_grace, hold_grace
        self.gap_grace, self.sync_spacing = gap_grace, sync_spacing
        # Requests remembered from before a restart count as seen long ago: a status that
        # omits one closes its card at once.
        self._pending: dict[str, _Pending] = {r.request_id: _Pending(r, float("-inf")) for r in known_pending}
        self._held: dict[str, float] = {}  # request_id → when it was first seen, not yet announced
        self._closed = _Bounded(SEEN_KEYS)
        self._seen = _Bounded(SEEN_KEYS)
        self._holes = _Holes()
        self._run_messages = _Bounded(REMEMBERED_RUNS)  # run_id → [client_message_id]
        self._settled = _Bounded(REMEMBERED_RUNS)
        self._turn: _Turn | None = None
        self._next_ping: dict[str, float] = {}
        self._last_sync = float("-inf")
        self._ids = itertools.count(1)

    # -- what the shell asks -------------------------------------------------------------

    @property
    def pending(self) -> dict[str, ApprovalRequest]:
        return {rid: p.request for rid, p in self._pending.items()}

    def connected(self, now: float) -> Step:
        """Both sockets are (again) open: start pinging, and ask for the current state."""
        self._next_ping = {channel: now + self.ping_interval for channel in CHANNELS}
        self._holes.reset()
        return Step(send=[self._sync(now)])

    def disconnected(self) -> None:
        self._next_ping = {}

    def next_deadline(self) -> float:
        deadlines = list(self._next_ping.values())
        if self._turn is not None and self._turn.ending_since is not None:
            deadlines.append(self._turn.ending_since + self.end_grace)
        if self._holes.since is not None:
            deadlines.append(self._holes.since + self.gap_grace)
        deadlines += [since + self.hold_grace for since in self._held.values()]
        return min(deadlines, default=float("inf"))

    def tick(self, now: float) -> Step:
        step = Step()
        for channel, due in list(self._next_ping.items()):
            if now >= due:
                step.send.append((channel, ping()))
                self._next_ping[channel] = now + self.ping_interval
        turn = self._turn
        if turn is not None and turn.ending_since is not None and now >= turn.ending_since + self.end_grace:
            step.events.append(self._finish())
        if self._holes.lost(now, self.gap_grace) and now - self._last_sync >= self.sync_spacing:
            step.send.append(self._sync(now))
        self._release(step, lambda since: now >= since + self.hold_grace)
        return step

    def receive(self, channel: str, text: str | bytes, now: float) -> Step:
        step = Step()
        frame = decode(text)
        if frame is None:
            return step
        seq = frame.get("seq")
        if _is_int(seq):
            step.send.append((channel, ack(seq)))
        kind = frame["type"]
        if channel == CONTROL and kind == "stream_delta":
            return step  # the stream socket carries these too
        key = frame.get("idempotency_key")
        if isinstance(key, str) and key:
            if key in self._seen:
                return step
            self._seen.put(key)
        if not self._ours(frame):
            return step
        event_seq = frame.get("event_seq")
        if _is_int(event_seq):
            self._holes.see(event_seq, now)
        handler = _HANDLERS.get(kind)
        if handler is not None:
            handler(self, frame, now, step)
        if self._held:
            self._release(step)
        return step

    # -- frames --------------------------------------------------------------------------

    def _on_control_request(self, frame: dict[str, Any], now: float, step: Step) -> None:
        request = self._approval(frame.get("request_id"), frame.get("request"))
        if request is not None:
            self._ask(request, now, step)

    def _on_device_status(self, frame: dict[str, Any], now: float, step: Step) -> None:
        status = frame.get("device_status")
        listed = status.get("pending_control_requests") if isinstance(status, dict) else None
        if not isinstance(listed, list):
            return
        present = set()
        for item in listed:
            if isinstance(item, dict):
                request = self._approval(item.get("request_id"), item.get("request"))
                if request is not None:
                    present.add(request.request_id)
                    self._ask(request, now, step)
        for request_id, pending in list(self._pending.items()):
            if request_id not in present and now - pending.first_seen >= self.pending_grace:
                self._close(request_id, NO_LONGER_PENDING, step)

    def _on_loop_status(self, frame: dict[str, Any], now: float, step: Step) -> None:
        loop = frame.get("loop_status")
        if not isinstance(loop, dict):
            return
        by_run = loop.get("client_message_ids_by_run_id")
        if isinstance(by_run, dict):
            for run_id, ids in by_run.items():
                if isinstance(run_id, str) and isinstance(ids, list):
                    self._run_messages.put(run_id, [i for i in ids if isinstance(i, str) and i])
        for run_id in _strings(loop.get("active_run_ids")):
            self._touch(run_id)
        turn = self._turn
        if turn is None:
            return
        for run_id in turn.run_ids:
            turn.add_ids(self._run_messages.get(run_id, ()))
        if turn.ending_since is not None and turn.client_message_ids:
            step.events.append(self._finish())
        elif loop.get("status") == "WAITING_ON_INPUT" and (turn.run_ids or turn.messages):
            step.events.append(self._finish())

    def _on_turn_finished(self, frame: dict[str, Any], now: float, step: Step) -> None:
        reason = frame.get("stop_reason") if isinstance(frame.get("stop_reason"), str) else None
        run_id = frame.get("run_id") if isinstance(frame.get("run_id"), str) else None
        if reason in CONTINUATION:
            return
        if run_id is not None and self._touch(run_id) is None:
            return  # a run already reported
        turn = self._turn or self._start()
        turn.add_ids(_strings(frame.get("client_message_ids")))
        turn.stop_reason = reason or turn.stop_reason
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
        turn = self._touch(run_id) if run_id else (self._turn or self._start())
        if turn is None:
            return  # a late frame of a run already reported
        if kind == "assistant_message":
            text = _text(delta.get("content"))
            if text:
                key = delta.get("id") or delta.get("otid") or "-"
                turn.messages.setdefault(str(key), []).append(text)
        elif kind == "stop_reason":
            reason = delta.get("stop_reason")
            if isinstance(reason, str) and reason not in CONTINUATION:
                self._ending(turn, reason, now, step)
        elif kind == "loop_error" and delta.get("is_terminal"):
            turn.add_ids(_strings(delta.get("client_message_ids")))
            reason = delta.get("stop_reason")
            self._ending(turn, reason if isinstance(reason, str) else "error", now, step)

    def _on_input_accepted(self, frame: dict[str, Any], now: float, step: Step) -> None:
        command_id = frame.get("request_id")
        if isinstance(command_id, str):
            error = frame.get("error")
            step.events.append(InputAnswered(command_id, frame.get("accepted") is True,
                                             error if isinstance(error, str) else None))

    # -- approvals -----------------------------------------------------------------------

    def _approval(self, request_id: Any, body: Any) -> ApprovalRequest | None:
        if not isinstance(request_id, str) or not request_id or not isinstance(body, dict):
            return None
        if body.get("subtype") != "can_use_tool":
            return None
        tool_call_id, tool_name, tool_input = body.get("tool_call_id"), body.get("tool_name"), body.get("input")
        if not (isinstance(tool_call_id, str) and tool_call_id and isinstance(tool_name, str)):
            return None
        turn = self._turn
        return ApprovalRequest(
            request_id=request_id, tool_call_id=tool_call_id, tool_name=tool_name,
            input=tool_input if isinstance(tool_input, dict) else {},
            agent_id=self.runtime["agent_id"], conversation_id=self.runtime["conversation_id"],
            turn_message_id=turn.client_message_ids[0] if turn and turn.client_message_ids else None,
        )

    def _ask(self, request: ApprovalRequest, now: float, step: Step) -> None:
        if request.request_id in self._pending or request.request_id in self._closed:
            return
        self._pending[request.request_id] = _Pending(request, now)
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
            pending = self._pending[request_id]
            if known is not None:
                pending.request = replace(pending.request, turn_message_id=known)
            step.events.append(ApprovalRequested(pending.request))

    def _close(self, request_id: str, reason: str, step: Step) -> None:
        pending = self._pending.pop(request_id)
        self._closed.put(request_id)
        if self._held.pop(request_id, None) is None:  # never announced: nothing to close
            step.events.append(ApprovalClosed(pending.request.tool_call_id, request_id, reason))

    def _went_ahead(self, tool_call_id: str | None, step: Step) -> None:
        for request_id, pending in list(self._pending.items()):
            if tool_call_id and pending.request.tool_call_id == tool_call_id:
                self._close(request_id, ANSWERED_ELSEWHERE, step)

    # -- turns ---------------------------------------------------------------------------

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

    def _ending(self, turn: _Turn, reason: str, now: float, step: Step) -> None:
        turn.stop_reason = reason
        if turn.client_message_ids:
            step.events.append(self._finish())
        elif turn.ending_since is None:
            turn.ending_since = now  # a loop status naming its messages may still be on its way

    def _finish(self) -> TurnEnded:
        turn = self._turn
        assert turn is not None
        self._turn = None
        for run_id in turn.run_ids:
            self._settled.put(run_id)
        return TurnEnded(tuple(turn.client_message_ids), turn.texts(), turn.stop_reason, tuple(turn.run_ids))

    # -- helpers -------------------------------------------------------------------------

    def _ours(self, frame: dict[str, Any]) -> bool:
        runtime = frame.get("runtime")
        agent = runtime.get("agent_id") if isinstance(runtime, dict) else frame.get("agent_id")
        conversation = runtime.get("conversation_id") if isinstance(runtime, dict) else frame.get("conversation_id")
        if isinstance(agent, str) and agent != self.runtime["agent_id"]:
            return False
        return not (isinstance(conversation, str) and conversation != self.runtime["conversation_id"])

    def _sync(self, now: float) -> tuple[str, str]:
        self._last_sync = now
        return CONTROL, sync(self.runtime, f"relay-sync-{next(self._ids)}")


_HANDLERS = {
    "control_request": Session._on_control_request,
    "update_device_status": Session._on_device_status,
    "update_loop_status": Session._on_loop_status,
    "turn_finished": Session._on_turn_finished,
    "stream_delta": Session._on_stream_delta,
    "input_accepted": Session._on_input_accepted,
}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


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


def _tool_call_id(delta: dict[str, Any]) -> str | None:
    found = delta.get("tool_call_id")
    if isinstance(found, str):
        return found
    returns = delta.get("tool_returns")
    if isinstance(returns, list) and returns and isinstance(returns[0], dict):
        inner = returns[0].get("tool_call_id")
        return inner if isinstance(inner, str) else None
    return None
