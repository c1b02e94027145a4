"""Slack's Socket Mode door: relay holds the app's WebSocket to Slack (SLACK_APP_TOKEN) and
receives slash commands, events and interactions over it. No public URL; works behind NAT.

slack-sdk's Socket Mode client (aiohttp) speaks the protocol: apps.connections.open with the
app token (at SLACK_API_BASE_URL), hello, pings, `disconnect` (refresh_requested, …) and
reconnecting after a dropped connection. This door reads each envelope with the Slack source,
lets slack_actions.py act on it exactly as for its HTTP twin, and acknowledges it only when
that stored what it carries:

- stored (or a duplicate, or nothing to store): acknowledged; a slash command's or a form's
  immediate answer rides in the acknowledgement where Slack accepts a payload there;
- nothing stored (Redis away, for an event): not acknowledged, so Slack sends it again, and
  de-duplication makes the resend harmless (several replicas may each hold a connection);
- malformed: acknowledged and dropped (a resend would be refused the same way), counted and
  logged like the HTTP door's 400; a bug: not acknowledged, counted and logged like its 500.

What only informs people (an ephemeral note, replacing a card) runs after the acknowledgement.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from typing import Any, Callable

from slack_sdk.socket_mode.aiohttp import SocketModeClient
from slack_sdk.socket_mode.response import SocketModeResponse
from slack_sdk.web.async_client import AsyncWebClient

from relay.cards import Cards
from relay.errors import BadRequest, Rejected, TooLarge
from relay.intake import Intake
from relay.logs import fields
from relay.metrics import Metrics
from relay.queue import Queue
from relay.routing import Router
from relay.settings import Settings
from relay.slack_actions import Answer, SlackActions
from relay.slack_api import SlackApi
from relay.sources import slack as source
from relay.sources.slack import SocketEnvelope

log = logging.getLogger("relay.socket_mode")
#: slack-sdk's own lines, through `_SdkLines`: INFO and above only (at DEBUG it writes bodies).
sdk_log = logging.getLogger("relay.socket_mode.sdk")

PING_INTERVAL = 5.0  # slack-sdk's default: a silent connection is replaced after 4 of these
FINISH_GRACE = 5.0  # on stop, how long envelopes being handled get to be acknowledged
_TICKET = re.compile(r"ticket=[^&\s'\"]+")


class _SdkLines(logging.Filter):
    """slack-sdk formats exceptions into its lines; a failed connect names the connection URL,
    whose ticket admits one connection. Keep the line, drop the ticket and the traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = _TICKET.sub("ticket=…", record.getMessage())
        if record.exc_info and record.exc_info[1] is not None:
            text += f" ({type(record.exc_info[1]).__name__})"
        record.msg, record.args, record.exc_info, record.exc_text = text, (), None, None
        return True


class SocketModeDoor:
    def __init__(self, settings: Settings, actions: SlackActions, metrics: Metrics, *,
                 ping_interval: float = PING_INTERVAL) -> None:
        assert settings.slack_app_token is not None
        self.settings, self.actions, self.metrics, self.ping_interval = settings, actions, metrics, ping_interval
        self.client: SocketModeClient | None = None
        self._handling: set[asyncio.Task[Any]] = set()
        if not any(isinstance(f, _SdkLines) for f in sdk_log.filters):
            sdk_log.addFilter(_SdkLines())
        sdk_log.setLevel(max(logging.INFO, logging.getLogger().getEffectiveLevel()))

    @property
    def connected(self) -> bool:
        session = self.client.current_session if self.client else None
        return session is not None and not session.closed

    async def run(self, stop: asyncio.Event) -> None:
        """Hold a connection (reconnecting as needed) until `stop` is set."""
        web = AsyncWebClient(base_url=self.settings.slack_api_base_url.rstrip("/") + "/", logger=sdk_log,
                             timeout=10)
        self.client = client = SocketModeClient(self.settings.slack_app_token or "", logger=sdk_log,
                                                web_client=web, ping_interval=self.ping_interval)
        client.message_listeners.append(self._on_message)
        self.metrics.socket_mode(lambda: self.connected)
        connecting = asyncio.create_task(client.connect())  # retries until Slack answers
        try:
            await stop.wait()
        finally:
            if self._handling:
                await asyncio.wait(set(self._handling), timeout=FINISH_GRACE)
            connecting.cancel()
            await client.close()
            await asyncio.gather(connecting, return_exceptions=True)
            log.info("socket mode closed")

    async def _on_message(self, client: Any, message: dict[str, Any], raw: str | None) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._handling.add(task)
        try:
            await self._handle(client, message, raw)
        finally:
            self._handling.discard(task)  # type: ignore[arg-type]

    async def _handle(self, client: Any, message: dict[str, Any], raw: str | None) -> None:
        try:
            envelope = source.socket_envelope(message)
        except BadRequest as exc:
            self._refused("other", None, exc)
            return
        if envelope is None:
            if message.get("type") == "hello":
                self.metrics.socket_connected()
                log.info("socket mode connected", extra=fields(source=source.SOURCE,
                                                               connections=message.get("num_connections")))
            return
        started = time.perf_counter()
        try:
            if raw is not None and len(raw) > self.settings.max_body_bytes:
                raise TooLarge(f"envelope is larger than {self.settings.max_body_bytes} bytes")
            answer = await self.actions.answer(source.from_socket(envelope))
        except Rejected as exc:
            self._refused(envelope.type, envelope, exc)
            await self._acknowledge(client, envelope, Answer())
            return
        except Exception as exc:  # a bug: like the HTTP door's 500, and Slack sends it again
            self.metrics.request(source.SOURCE, "error", "internal")
            self.metrics.envelope(envelope.type, "error")
            log.error("internal error", exc_info=exc, extra=fields(source=source.SOURCE, envelope=envelope.envelope_id,
                                                                   error=type(exc).__name__))
            return
        finally:
            self.metrics.answered(source.SOURCE, time.perf_counter() - started)
        if not answer.acknowledge:
            self.metrics.envelope(envelope.type, "unacked")
            log.warning("not acknowledged: nothing was stored; Slack sends it again",
                        extra=fields(source=source.SOURCE, envelope=envelope.envelope_id,
                                     retry_attempt=envelope.retry_attempt))
            return
        if await self._acknowledge(client, envelope, answer):
            self.metrics.envelope(envelope.type, "acked")
        if answer.then is not None:
            await answer.then()

    async def _acknowledge(self, client: Any, envelope: SocketEnvelope, answer: Answer) -> bool:
        payload = answer.body if envelope.accepts_response_payload else None
        try:
            await client.send_socket_mode_response(SocketModeResponse(envelope.envelope_id, payload))
        except Exception as exc:  # the connection went away: Slack sends the envelope again
            self.metrics.envelope(envelope.type, "unacked")
            log.warning("could not acknowledge; Slack sends it again",
                        extra=fields(source=source.SOURCE, envelope=envelope.envelope_id, error=type(exc).__name__))
            return False
        return True

    def _refused(self, kind: str, envelope: SocketEnvelope | None, exc: Rejected) -> None:
        self.metrics.rejected(source.SOURCE, exc)
        self.metrics.envelope(kind, "rejected")
        log.warning("rejected", extra=fields(source=source.SOURCE, reason=exc.reason,
                                             envelope=envelope.envelope_id if envelope else None))


def socket_door_for(settings: Settings, queue: Queue, slack: SlackApi, metrics: Metrics,
                    clock: Callable[[], float] = time.time, *, ping_interval: float = PING_INTERVAL
                    ) -> SocketModeDoor | None:
    """The Socket Mode door when SLACK_APP_TOKEN is set, acting through the same intake,
    routes and cards as the HTTP doors (`queue`: the web's)."""
    if settings.slack_app_token is None:
        return None
    router = Router(settings.routes, settings.slack_fallback, settings.github_fallback)
    intake = Intake(queue)
    cards = Cards(queue, slack, router, intake, clock) if slack.can_post else None
    actions = SlackActions(settings, intake, router, slack, cards, clock, metrics)
    return SocketModeDoor(settings, actions, metrics, ping_interval=ping_interval)
