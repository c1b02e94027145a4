"""The worker's deliverer, with approvals of `approvals = "socket"` routes sent over the status socket.

Current Letta Code devices appear to take decisions only as an `input` frame of kind
`approval_response` on the status socket (docs/letta-status-socket.md). For a route that asks
for it, an approval envelope goes that way: look up the control request's id that `relay watch`
stored for the tool call, open the `control` socket, send one `input` per decision, and wait for
each `input_accepted`:

- accepted → delivered;
- refused ("no longer pending") → settled, never retried: the card says so instead;
- no request id known yet, the device offline, the socket refused or silent → the usual
  outcomes, which the worker's policy retries (and in the end dead-letters).

Everything else (user messages, REST-route approvals, tool results) goes to `LettaClient.deliver`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any, Protocol

from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException

from relay.errors import ResolveFailed
from relay.letta import LettaClient
from relay.logs import fields
from relay.messages import Envelope
from relay.policy import Outcome
from relay.queue import Queue
from relay.routing import Destination
from relay.settings import Settings
from relay.status_socket import CONTROL, NO_LONGER_PENDING, InputAnswered, Session, approval_input, status_url
from relay.watch import REQUEST_KIND, open_status_socket, request_key

log = logging.getLogger("relay.socket_approvals")

ANSWER_TIMEOUT = 10.0


class CardCloser(Protocol):
    async def close(self, tool_call_id: str, note: str, *, decided_too: bool = False) -> bool: ...


class SocketApprovals:
    def __init__(self, letta: LettaClient, queue: Queue, settings: Settings, *, cards: CardCloser | None = None,
                 base_url: str | None = None, api_key: str | None = None,
                 answer_timeout: float = ANSWER_TIMEOUT) -> None:
        self.letta, self.queue, self.cards = letta, queue, cards
        self.by_socket = {route.name for route in settings.routes if route.approvals_by_socket}
        self.base_url = base_url or settings.letta_base_url
        self.api_key = api_key if api_key is not None else settings.letta_api_key or ""
        self.answer_timeout = answer_timeout

    def forget(self, destination: Destination) -> None:
        self.letta.forget(destination)

    async def aclose(self) -> None:
        await self.letta.aclose()

    async def deliver(self, envelope: Envelope) -> Outcome:
        decisions = envelope.message.get("approvals") if envelope.kind == "approval" else None
        if (envelope.route not in self.by_socket or not isinstance(decisions, list) or not decisions
                or not all(isinstance(d, dict) and d.get("type") == "approval" for d in decisions)):
            return await self.letta.deliver(envelope)  # tool results have no socket form
        return await self._by_socket(envelope, decisions)

    async def _by_socket(self, envelope: Envelope, decisions: list[dict[str, Any]]) -> Outcome:
        destination = envelope.destination
        requests = []
        for decision in decisions:
            tool_call_id = str(decision.get("tool_call_id", ""))
            raw = await self.queue.record(REQUEST_KIND, request_key(destination.agent_id, tool_call_id))
            if raw is None:
                return Outcome(error="unresolved", detail=f"no pending control request is known for tool call "
                               f"{tool_call_id} (is `relay watch` running for route {envelope.route}?)")
            requests.append((decision, json.loads(raw)))
        try:
            connection_id = await self.letta.connection_for(destination)
        except ResolveFailed as failed:
            return failed.outcome
        if connection_id is None:
            kind, value = destination.selector
            return Outcome(error="unresolved", detail=f"no online connection for {kind}={value}")
        url = status_url(self.base_url, connection_id, destination.agent_id, destination.conversation_id, CONTROL)
        try:
            answers = await self._send(url, envelope, requests)
        except InvalidStatus as exc:
            return Outcome(status=exc.response.status_code, body="the status socket refused the connection")
        except asyncio.TimeoutError:
            return Outcome(error="timeout", detail=f"no input_accepted within {self.answer_timeout:g} s")
        except (OSError, ConnectionClosed, WebSocketException) as exc:
            return Outcome(error="connect" if isinstance(exc, OSError) else "transport",
                           detail=f"status socket: {type(exc).__name__}: {exc}")
        refused = [(d, a) for d, a in zip(decisions, answers) if not a.accepted]
        for decision, answer in refused:
            tool_call_id = str(decision.get("tool_call_id"))
            log.warning("approval no longer pending; closing its card",
                        extra=fields(**envelope.log_fields(), tool_call_id=tool_call_id, error=answer.error))
            if self.cards is not None:
                await self.cards.close(tool_call_id, NO_LONGER_PENDING, decided_too=True)
        message = "accepted over the status socket" if not refused else \
            f"{len(refused)} of {len(decisions)} no longer pending; settled without retry"
        return Outcome(status=200, body=json.dumps({"success": True, "message": message}))

    async def _send(self, url: str, envelope: Envelope,
                    requests: list[tuple[dict[str, Any], dict[str, Any]]]) -> list[InputAnswered]:
        destination = envelope.destination
        session = Session(destination.agent_id, destination.conversation_id)
        commands = []
        async with open_status_socket(url, self.api_key) as socket:
            for index, (decision, request) in enumerate(requests):
                # The command id is derived from the message, so a retry asks the same question.
                command_id = f"relay-{envelope.client_message_id}-{index}"
                commands.append(command_id)
                await socket.send(approval_input(session.runtime, command_id, request["request_id"],
                                                 bool(decision.get("approve")), decision.get("reason")))
            answers: dict[str, InputAnswered] = {}
            deadline = time.monotonic() + self.answer_timeout
            while len(answers) < len(commands):
                text = await asyncio.wait_for(socket.recv(), timeout=max(0.0, deadline - time.monotonic()))
                step = session.receive(CONTROL, text, time.time())
                for _, frame in step.send:  # acks
                    await socket.send(frame)
                answers.update({e.command_id: e for e in step.events
                                if isinstance(e, InputAnswered) and e.command_id in commands})
        return [answers[c] for c in commands]


def deliverer_for(settings: Settings, letta: LettaClient, queue: Queue, slack: Any, *,
                  base_url: str | None = None, api_key: str | None = None) -> LettaClient | SocketApprovals:
    """The worker's deliverer: the Letta client, wrapped when some route sends approvals by socket."""
    if not any(route.approvals_by_socket for route in settings.routes):
        return letta
    from relay.cards import cards_for

    return SocketApprovals(letta, queue, settings, cards=cards_for(settings, queue, slack), base_url=base_url,
                           api_key=api_key)
