"""One approval decision, told to the device over the status socket, without I/O.

The worker opens the agent conversation's status socket and runs one `Exchange` per approval
message: frames in; frames to send and, at the end, a `Result`. The device takes a decision
only as an `input` of kind `approval_response` naming the control request's id, and answers
it with `input_accepted` (docs/letta-status-socket.md). So:

1. The request id: the one `relay watch` stored for the tool call when there is one; else the
   exchange sends a `sync` (never recovering approvals) and reads the pending requests the
   device replays before its `sync_response`.
2. The decision goes out as `approval_response`; the exchange waits for its `input_accepted`.

Results: `accepted` (delivered); `settled` (the device has no such pending request: answered
elsewhere, or gone; final, never retried); `retry` (the device is replacing its listener, or
its sync failed); `refused` (any other refusal: the device said no, and saying it again will
not change that). A socket that drops or stays silent is the shell's to report.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from relay.status_frames import (
    NO_LONGER_PENDING_ERROR,
    RUNTIME_INACTIVE_ERROR,
    ack,
    answer_in,
    approval_input,
    decode,
    is_for,
    requests_in,
    runtime_of,
    sequence_number,
    sync,
)


@dataclass(frozen=True)
class Result:
    kind: Literal["accepted", "settled", "retry", "refused"]
    detail: str = ""
    request_id: str | None = None


class Exchange:
    def __init__(self, agent_id: str, conversation_id: str | None, tool_call_id: str, approve: bool,
                 reason: str | None, command_id: str, known_request_id: str | None = None) -> None:
        self.runtime = runtime_of(agent_id, conversation_id)
        self.tool_call_id, self.approve, self.reason = tool_call_id, approve, reason
        self.command_id = command_id
        self.sync_id = f"{command_id}-sync"
        self.request_id = known_request_id
        self._synced_once = False
        self.result: Result | None = None

    def start(self) -> list[str]:
        if self.request_id is not None:
            return [self._decision()]
        return [sync(self.runtime, self.sync_id)]

    def receive(self, text: str | bytes) -> list[str]:
        """Frames to send after this one (acks, then the decision once its request is known)."""
        frame = decode(text)
        if frame is None or self.result is not None:
            return []
        seq = sequence_number(frame)
        out = [ack(seq)] if seq is not None else []
        if not is_for(frame, self.runtime):
            return out
        shown = requests_in(frame, self.runtime)
        if shown and self.request_id is None:
            match = next((r for r in shown if r.tool_call_id == self.tool_call_id), None)
            self.request_id = match.request_id if match is not None else None
        answer = answer_in(frame)
        if answer is not None and answer.command_id == self.sync_id:
            out += self._synced(answer.accepted, answer.error)
        elif answer is not None and answer.command_id == self.command_id:
            if answer.no_longer_pending and not self._synced_once:
                # A stored id may be out of date (the device asked again under another id):
                # look at what is pending before calling the decision settled.
                self.request_id = None
                return out + [sync(self.runtime, self.sync_id)]
            self.result = self._judge(answer.accepted, answer.error)
        return out

    def _synced(self, success: bool, error: str | None) -> list[str]:
        self._synced_once = True
        if not success:
            kind = "retry" if error in (None, RUNTIME_INACTIVE_ERROR) else "refused"
            self.result = Result(kind, f"the device's sync failed: {error or 'no reason given'}")
            return []
        if self.request_id is None:
            self.result = Result("settled", f"the device has no pending request for tool call {self.tool_call_id}")
            return []
        return [self._decision()]

    def _decision(self) -> str:
        assert self.request_id is not None
        return approval_input(self.runtime, self.command_id, self.request_id, self.approve, self.reason)

    def _judge(self, accepted: bool, error: str | None) -> Result:
        if accepted:
            return Result("accepted", "the device accepted the decision", self.request_id)
        if error == RUNTIME_INACTIVE_ERROR:
            return Result("retry", f"the device refused for now: {error}", self.request_id)
        if error == NO_LONGER_PENDING_ERROR:
            return Result("settled", f"the device says: {error}", self.request_id)
        return Result("refused", f"the device refused the decision: {error or 'no reason given'}", self.request_id)
