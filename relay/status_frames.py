"""Frames of Letta's environment status WebSocket: the ones relay sends, and reading the ones it gets.

Pure: no I/O. The facts behind each shape, with where in Letta Code 0.34.12's `letta.js` they
were read, are in docs/letta-status-socket.md. relay opens one socket per agent conversation,
the way Letta's own clients do:

    wss://…/v1/environments/{connectionId}/status/ws?agentId=…&conversationId=…

and sends only `ack`, `sync` (never recovering approvals) and `input` of kind
`approval_response`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode, urlsplit, urlunsplit

from relay.messages import ApprovalRequest

#: `input_accepted.error` when the device has no such pending request (final: never retried).
NO_LONGER_PENDING_ERROR = "Approval request is no longer pending"
#: `input_accepted.error` / `sync_response.error` while the device replaces its listener (try again).
RUNTIME_INACTIVE_ERROR = "Runtime is no longer active"
#: What relay says on a card or comment whose request ended without this decision.
NO_LONGER_PENDING = "no longer pending"
ANSWERED_ELSEWHERE = "answered elsewhere"
#: A deny must carry a message (the device's validator refuses one without).
DEFAULT_DENY_MESSAGE = "Denied in chat, without a reason."


def status_url(base_url: str, connection_id: str, agent_id: str, conversation_id: str | None) -> str:
    """wss://…/v1/environments/{connectionId}/status/ws?agentId=…&conversationId=… (no channel)."""
    parts = urlsplit(base_url)
    scheme = {"https": "wss", "http": "ws"}.get(parts.scheme, parts.scheme)
    path = f"{parts.path.rstrip('/')}/v1/environments/{quote(connection_id, safe='')}/status/ws"
    query = urlencode({"agentId": agent_id, "conversationId": conversation_id or "default"})
    return urlunsplit((scheme, parts.netloc, path, query, ""))


def runtime_of(agent_id: str, conversation_id: str | None) -> dict[str, str]:
    return {"agent_id": agent_id, "conversation_id": conversation_id or "default"}


def encode(frame: dict[str, Any]) -> str:
    return json.dumps(frame, separators=(",", ":"), ensure_ascii=False)


def ack(seq: int) -> str:
    return encode({"type": "ack", "seq": seq})


def sync(runtime: dict[str, str], request_id: str) -> str:
    # recover_approvals must be false: the device reads an absent value as true, which turns
    # approvals it considers stale into denials. relay only wants to see what is pending.
    return encode({"type": "sync", "request_id": request_id, "runtime": runtime,
                   "recover_approvals": False, "force_device_status": True})


def approval_input(runtime: dict[str, str], command_id: str, request_id: str, approve: bool,
                   reason: str | None = None) -> str:
    """An `input` frame answering one `can_use_tool` control request."""
    decision: dict[str, Any] = {"behavior": "allow"} if approve else {"behavior": "deny"}
    if reason or not approve:
        decision["message"] = reason or DEFAULT_DENY_MESSAGE
    return encode({"type": "input", "request_id": command_id, "runtime": runtime,
                   "payload": {"kind": "approval_response", "request_id": request_id, "decision": decision}})


def decode(text: str | bytes) -> dict[str, Any] | None:
    """A frame as a JSON object with a string `type`; None for anything else."""
    try:
        frame = json.loads(text)
    except (ValueError, RecursionError):
        return None
    return frame if isinstance(frame, dict) and isinstance(frame.get("type"), str) else None


def sequence_number(frame: dict[str, Any]) -> int | None:
    """The transport `seq` the server wants acked, if the frame has one."""
    seq = frame.get("seq")
    return seq if isinstance(seq, int) and not isinstance(seq, bool) and seq >= 0 else None


def is_for(frame: dict[str, Any], runtime: dict[str, str]) -> bool:
    """False for a frame that names another agent or conversation (a device serves several)."""
    scope = frame.get("runtime")
    agent = scope.get("agent_id") if isinstance(scope, dict) else frame.get("agent_id")
    conversation = scope.get("conversation_id") if isinstance(scope, dict) else frame.get("conversation_id")
    if isinstance(agent, str) and agent != runtime["agent_id"]:
        return False
    return not (isinstance(conversation, str) and conversation != runtime["conversation_id"])


def approval_request(request_id: Any, body: Any, runtime: dict[str, str],
                     turn_message_id: str | None = None) -> ApprovalRequest | None:
    """A `can_use_tool` control request as an ApprovalRequest; None for anything else."""
    if not isinstance(request_id, str) or not request_id or not isinstance(body, dict):
        return None
    if body.get("subtype") != "can_use_tool":
        return None
    tool_call_id, tool_name, tool_input = body.get("tool_call_id"), body.get("tool_name"), body.get("input")
    if not (isinstance(tool_call_id, str) and tool_call_id and isinstance(tool_name, str)):
        return None
    return ApprovalRequest(request_id=request_id, tool_call_id=tool_call_id, tool_name=tool_name,
                           input=tool_input if isinstance(tool_input, dict) else {},
                           agent_id=runtime["agent_id"], conversation_id=runtime["conversation_id"],
                           turn_message_id=turn_message_id)


def requests_in(frame: dict[str, Any], runtime: dict[str, str]) -> list[ApprovalRequest] | None:
    """The approval requests a frame shows: a `control_request` shows one; an
    `update_device_status` lists every pending one (possibly none). None: the frame says nothing."""
    if frame["type"] == "control_request":
        request = approval_request(frame.get("request_id"), frame.get("request"), runtime)
        return [request] if request is not None else []
    if frame["type"] != "update_device_status":
        return None
    status = frame.get("device_status")
    listed = status.get("pending_control_requests") if isinstance(status, dict) else None
    if not isinstance(listed, list):
        return None
    found = (approval_request(i.get("request_id"), i.get("request"), runtime) for i in listed if isinstance(i, dict))
    return [r for r in found if r is not None]


@dataclass(frozen=True)
class Answer:
    """The device's answer to one command relay sent (`input_accepted` or `sync_response`)."""

    command_id: str
    accepted: bool
    error: str | None = None

    @property
    def no_longer_pending(self) -> bool:
        return not self.accepted and self.error == NO_LONGER_PENDING_ERROR

    @property
    def runtime_inactive(self) -> bool:
        return not self.accepted and self.error == RUNTIME_INACTIVE_ERROR


def answer_in(frame: dict[str, Any]) -> Answer | None:
    """`input_accepted` (accepted) or `sync_response` (success) as an Answer; None otherwise."""
    flag = {"input_accepted": "accepted", "sync_response": "success"}.get(frame["type"])
    command_id = frame.get("request_id")
    if flag is None or not isinstance(command_id, str):
        return None
    error = frame.get("error")
    return Answer(command_id, frame.get(flag) is True, error if isinstance(error, str) else None)
