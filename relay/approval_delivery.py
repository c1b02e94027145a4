"""The worker's deliverer: user messages over REST, approval decisions over the status socket.

A Letta Code device refuses approval payloads that arrive as a message (REST `POST …/messages`
becomes an `input` of kind `create_message`, and the device answers a protocol violation while
the REST call still says 2xx). It takes a decision only as an `approval_response` input on the
status socket, and says whether it took it (`input_accepted`). So, unless a route chooses
`approvals = "rest"` (for a server known to translate the REST body), an approval message is
delivered here: resolve the connection, open the conversation's status socket, run one
`approval_exchange.Exchange` per decision, and report the device's answer as the `Outcome`:

- accepted → delivered;
- no such pending request → settled (never retried; the card or comment says so);
- the device replacing its listener, the socket refused, dropped or silent, the device offline
  → the usual retryable outcomes (same backoff and maximum age as any delivery);
- any other refusal → refused (dead-lettered with the device's reason).

The request id comes from the record `relay watch` keeps for the tool call when it has one;
otherwise the exchange asks the device with a `sync`. `relay watch` need not be running.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any, Protocol

from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException

from relay.approval_exchange import Exchange, Result
from relay.errors import QueueUnavailable, ResolveFailed
from relay.letta import LettaClient
from relay.logs import fields
from relay.messages import Envelope, tool_call_key
from relay.policy import Outcome
from relay.routing import Destination
from relay.settings import Settings

log = logging.getLogger("relay.approval_delivery")

#: How long the device has to answer (sync, then input_accepted) before the attempt counts as a timeout.
ANSWER_TIMEOUT = 10.0
#: Records `relay watch` keeps: the control request waiting on a tool call (see watch.py).
REQUEST_KIND = "socket-request"

_RANK = {"retry": 0, "refused": 1, "accepted": 2, "settled": 3}


class RecordReader(Protocol):
    async def record(self, kind: str, record_id: str) -> str | None: ...


def decisions_of(envelope: Envelope) -> list[dict[str, Any]] | None:
    """The tool-call decisions of an approval message; None when it is anything else
    (a user message, or a tool result, which has no socket form)."""
    approvals = envelope.message.get("approvals") if envelope.kind == "approval" else None
    if not isinstance(approvals, list) or not approvals:
        return None
    if not all(isinstance(a, dict) and a.get("type") == "approval" and isinstance(a.get("tool_call_id"), str)
               for a in approvals):
        return None
    return approvals


class Deliverer:
    def __init__(self, letta: LettaClient, settings: Settings, *, records: RecordReader | None = None,
                 answer_timeout: float = ANSWER_TIMEOUT) -> None:
        self.letta, self.records, self.answer_timeout = letta, records, answer_timeout
        self.by_rest = {route.name for route in settings.routes if route.approvals == "rest"}

    def forget(self, destination: Destination) -> None:
        self.letta.forget(destination)

    async def aclose(self) -> None:
        await self.letta.aclose()

    async def deliver(self, envelope: Envelope) -> Outcome:
        decisions = decisions_of(envelope)
        if decisions is None or envelope.route in self.by_rest:
            return await self.letta.deliver(envelope)
        destination = envelope.destination
        try:
            connection_id = await self.letta.connection_for(destination)
        except ResolveFailed as failed:
            return failed.outcome
        if connection_id is None:
            kind, value = destination.selector
            return Outcome(error="unresolved", detail=f"no online connection for {kind}={value}")
        try:
            results = await asyncio.wait_for(self._exchange(connection_id, envelope, decisions),
                                             timeout=self.answer_timeout)
        except asyncio.TimeoutError:
            return Outcome(error="timeout", detail=f"the device did not answer within {self.answer_timeout:g} s")
        except InvalidStatus as exc:
            self.letta.forget(destination)  # a stale connection id is refused too: resolve again
            return Outcome(error="connect", detail=f"the status socket refused the connection: "
                                                   f"HTTP {exc.response.status_code}")
        except (OSError, ConnectionClosed, WebSocketException) as exc:
            return Outcome(error="connect" if isinstance(exc, OSError) else "transport",
                           detail=f"status socket: {type(exc).__name__}: {exc}")
        for decision, result in zip(decisions, results):
            log.info("approval answered by the device", extra=fields(
                **envelope.log_fields(), tool_call_id=decision["tool_call_id"], result=result.kind,
                request_id=result.request_id))
        return _outcome(min(results, key=lambda r: _RANK[r.kind]))

    async def _exchange(self, connection_id: str, envelope: Envelope,
                        decisions: list[dict[str, Any]]) -> list[Result]:
        destination = envelope.destination
        results = []
        async with self.letta.status_socket(connection_id, destination.agent_id,
                                            destination.conversation_id) as socket:
            for index, decision in enumerate(decisions):
                tool_call_id = decision["tool_call_id"]
                # Derived from the message, so a retry asks the same question under the same id.
                exchange = Exchange(destination.agent_id, destination.conversation_id, tool_call_id,
                                    decision.get("approve") is True, _reason(decision),
                                    command_id=f"relay-{envelope.client_message_id}-{index}",
                                    known_request_id=await self._stored_request(destination, tool_call_id))
                for frame in exchange.start():
                    await socket.send(frame)
                while exchange.result is None:
                    for frame in exchange.receive(await socket.recv()):
                        await socket.send(frame)
                results.append(exchange.result)
        return results

    async def _stored_request(self, destination: Destination, tool_call_id: str) -> str | None:
        """The request id `relay watch` saw for this tool call, if it is running and saw it."""
        if self.records is None:
            return None
        try:
            raw = await self.records.record(REQUEST_KIND, tool_call_key(
                destination.agent_id, destination.conversation_id, tool_call_id))
            request_id = json.loads(raw).get("request_id") if raw else None
        except (QueueUnavailable, ValueError, AttributeError):
            return None  # the exchange asks the device instead
        return request_id if isinstance(request_id, str) and request_id else None


def _reason(decision: dict[str, Any]) -> str | None:
    reason = decision.get("reason")
    return reason if isinstance(reason, str) and reason else None


def _outcome(result: Result) -> Outcome:
    if result.kind == "accepted":
        return Outcome(accepted=True, detail=result.detail)
    if result.kind == "retry":
        return Outcome(error="inactive", detail=result.detail)
    return Outcome(error=result.kind, detail=result.detail)
