"""Letta message shapes, the envelope relay queues, and deterministic message ids.

Pure: no I/O. The request body built here is the exact body of
`POST /v1/environments/{connectionId}/messages` (camelCase at the top, snake_case inside).
"""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass, replace
from typing import Any, Literal

import orjson

from relay.routing import DESTINATION_KEYS, Destination, Route

#: uuid5 namespace for client_message_id; changing it would re-id every message ever sent.
ID_NAMESPACE = uuid.UUID("5b0a3f3e-6f1c-4c8e-9d0e-2f6a1e4c7b21")
_NAMESPACE_BYTES = ID_NAMESPACE.bytes

Kind = Literal["user", "approval"]

ENVELOPE_VERSION = 1


def client_message_id(source: str, *identity: str) -> str:
    """The id Letta sees for one logical message, derived from the source's delivery identity.

    Same source and identity → same id, on every redelivery, retry and replay.
    """
    # uuid.uuid5's own steps, without building a UUID object (this runs on every webhook).
    digest = bytearray(hashlib.sha1(_NAMESPACE_BYTES + "\x1f".join((source, *identity)).encode()).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = digest.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def user_message(content: str | list[dict[str, str]], message_id: str) -> dict[str, Any]:
    # otid is set to the same value so the device's de-duplication sees one identity.
    return {"role": "user", "client_message_id": message_id, "content": content, "otid": message_id}


def approval_decision(
    tool_call_id: str, approve: bool, reason: str | None = None
) -> dict[str, Any]:
    decision: dict[str, Any] = {"type": "approval", "tool_call_id": tool_call_id, "approve": approve}
    if reason:
        decision["reason"] = reason
    return decision


def approval_message(decisions: list[dict[str, Any]]) -> dict[str, Any]:
    return {"type": "approval", "approvals": decisions}


def kind_of(message: dict[str, Any]) -> Kind:
    return "approval" if message.get("type") == "approval" else "user"


def tool_call_key(agent_id: str, conversation_id: str | None, tool_call_id: str) -> str:
    """One key per tool call of one agent conversation (another agent's call may share its id)."""
    return client_message_id("tool-call", agent_id, conversation_id or "default", tool_call_id)


@dataclass(frozen=True)
class ApprovalRequest:
    """An agent asking to run a tool (a `can_use_tool` control request on the status socket)."""

    request_id: str
    tool_call_id: str
    tool_name: str
    input: dict[str, Any]
    agent_id: str
    conversation_id: str | None = None
    turn_message_id: str | None = None  # the client_message_id that started the turn, when known


@dataclass(frozen=True)
class Inbound:
    """What a source hands on after verifying and parsing a request: one message, not yet routed."""

    source: str
    delivery_id: str
    client_message_id: str
    message: dict[str, Any]
    route: str | None = None
    reply: dict[str, Any] | None = None  # where to report the outcome (see replies.py)
    context: dict[str, Any] | None = None  # what to fetch for the agent before delivery (see context.py)


@dataclass(frozen=True)
class Envelope:
    """One message as relay queues it: the Letta message plus where and how to deliver it."""

    client_message_id: str
    kind: Kind
    source: str
    delivery_id: str
    route: str
    destination: Destination
    message: dict[str, Any]
    received_at: float  # epoch seconds when relay first accepted it
    queued_at: float  # epoch seconds when it last entered the queue (a replay resets it)
    attempts: int = 0
    last_error: str | None = None
    reply: dict[str, Any] | None = None
    context: dict[str, Any] | None = None  # still to fetch; None once the message carries it

    def request_body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"messages": [self.message], "agentId": self.destination.agent_id}
        if self.destination.conversation_id:
            body["conversationId"] = self.destination.conversation_id
        return body

    def after_failure(self, reason: str) -> Envelope:
        return replace(self, attempts=self.attempts + 1, last_error=reason)

    def replayed(self, now: float) -> Envelope:
        """The same message (same id), back in the queue with a fresh retry budget."""
        return replace(self, queued_at=now, attempts=0)

    def log_fields(self) -> dict[str, Any]:
        return {
            "client_message_id": self.client_message_id,
            "source": self.source,
            "delivery_id": self.delivery_id,
            "route": self.route,
        }


def decision_id(destination: Destination, tool_call_id: str) -> str:
    """The id of the one decision a tool call gets, whichever source sends it (a card click,
    a GitHub `/approve`, a generic webhook): the queue's de-duplication lets the first win."""
    return client_message_id("decision", tool_call_key(destination.agent_id, destination.conversation_id,
                                                       tool_call_id))


def _routed_id(inbound: Inbound, destination: Destination) -> str:
    approvals = inbound.message.get("approvals") if kind_of(inbound.message) == "approval" else None
    if isinstance(approvals, list) and len(approvals) == 1 and isinstance(approvals[0], dict) \
            and approvals[0].get("type") == "approval" and isinstance(approvals[0].get("tool_call_id"), str):
        return decision_id(destination, approvals[0]["tool_call_id"])
    return inbound.client_message_id


def envelope_for(inbound: Inbound, route: Route, now: float) -> Envelope:
    return Envelope(
        client_message_id=_routed_id(inbound, route.destination),
        kind=kind_of(inbound.message),
        source=inbound.source,
        delivery_id=inbound.delivery_id,
        route=route.name,
        destination=route.destination,
        message=inbound.message,
        received_at=now,
        queued_at=now,
        reply=inbound.reply,
        context=inbound.context,
    )


def encode(envelope: Envelope) -> str:
    data = {
        "v": ENVELOPE_VERSION,
        "id": envelope.client_message_id,
        "kind": envelope.kind,
        "source": envelope.source,
        "delivery": envelope.delivery_id,
        "route": envelope.route,
        "dest": envelope.destination.to_dict(),
        "msg": envelope.message,
        "received": envelope.received_at,
        "queued": envelope.queued_at,
        "attempts": envelope.attempts,
        "error": envelope.last_error,
        "reply": envelope.reply,
    }
    if envelope.context is not None:
        data["ctx"] = envelope.context
    try:
        return orjson.dumps(data).decode()  # on every accepted webhook: ~5x faster than json
    except TypeError:  # what orjson refuses and json writes: integers past 64 bits
        return json.dumps(data, separators=(",", ":"), ensure_ascii=False)


def _loads(text: str | bytes) -> Any:
    """orjson on the worker's hot path (each delivered message's next one is decoded); json for
    what orjson refuses and `encode` may have written (integers past 64 bits)."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)


#: Destinations decoded recently, shared: a busy worker decodes thousands of messages a second
#: for a few conversations, and a shared Destination keeps its conversation key computed.
_DESTINATIONS: dict[tuple[Any, ...], Destination] = {}
_DESTINATIONS_MAX = 4096


def _destination(data: dict[str, Any]) -> Destination:
    key = tuple(data.get(name) for name in DESTINATION_KEYS)
    found = _DESTINATIONS.get(key)
    if found is None:
        if len(_DESTINATIONS) >= _DESTINATIONS_MAX:
            _DESTINATIONS.clear()
        found = _DESTINATIONS[key] = Destination.from_dict(data)
    return found


def decode(text: str | bytes) -> Envelope:
    """Inverse of `encode`; raises ValueError on anything relay did not write."""
    try:
        data = _loads(text)
        if data["v"] != ENVELOPE_VERSION:
            raise ValueError(f"unknown envelope version {data['v']!r}")
        if not isinstance(data["dest"], dict):
            raise ValueError("destination is not an object")
        return Envelope(
            client_message_id=data["id"],
            kind=data["kind"],
            source=data["source"],
            delivery_id=data["delivery"],
            route=data["route"],
            destination=_destination(data["dest"]),
            message=data["msg"],
            received_at=float(data["received"]),
            queued_at=float(data["queued"]),
            attempts=int(data["attempts"]),
            last_error=data["error"],
            reply=data.get("reply"),
            context=data.get("ctx"),
        )
    except (KeyError, TypeError, AttributeError, json.JSONDecodeError) as exc:
        raise ValueError(f"not a relay envelope: {exc}") from exc
