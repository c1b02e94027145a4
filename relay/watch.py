"""`relay watch`: keep each opted-in route's status sockets open and carry the agent back to chat.

For every route with `[routes.NAME.watch]` (enabled), one task:

- resolves the live connectionId with the worker's own `LettaClient.connection_for` (forgetting
  the cache before each reconnect, and checking again every `RELAY_RESOLVE_TTL` for a rotation);
- opens the `control` and `stream` sockets (bearer auth), feeds every frame to a
  `status_socket.Session`, sends what it returns (acks, pings, sync); if either socket drops,
  both are closed and reopened after capped, jittered exponential backoff;
- acts on the session's events in order, off the socket loop (so acks never wait on Slack):
  an approval request → remember its request id in Redis (the socket approval path answers
  by it) → an approval card in the thread of the message that started the turn, else in the
  route's `slack_channel`; a request closed elsewhere → the card says so; a turn that ended →
  its reply where each of relay's messages in it came from (once per reply target, across
  watcher replicas).

Redis records (all through `Queue`, under the key prefix; 7 days):
    rec:socket-request:{agent_id}:{tool_call_id}  the pending request to answer, and where
    rec:watch-pending:{route}                     the requests the route's watcher saw pending
    rec:answered:{reply target}                   claimed by the one watcher that posts a reply
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import random
import time
from dataclasses import asdict
from typing import Any, AsyncIterator, Callable, Protocol

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException

from relay import __version__
from relay.errors import QueueUnavailable, ResolveFailed, UpstreamError
from relay.logs import fields
from relay.messages import ApprovalRequest
from relay.origins import Origin
from relay.policy import Backoff
from relay.queue import Queue
from relay.routing import Destination, Route
from relay.settings import Settings
from relay.serving import wait
from relay.status_socket import (
    CHANNELS,
    PING_INTERVAL,
    ApprovalClosed,
    ApprovalRequested,
    Event,
    Session,
    Step,
    TurnEnded,
    status_url,
)

log = logging.getLogger("relay.watch")
# websockets logs handshake headers (the bearer token) and frames at DEBUG: keep it quiet.
_socket_log = logging.getLogger("relay.watch.socket")
_socket_log.setLevel(logging.WARNING)

REQUEST_KIND = "socket-request"
PENDING_KIND = "watch-pending"
ANSWERED_KIND = "answered"
RECORD_TTL = 7 * 24 * 3600.0
MAX_FRAME_BYTES = 16 * 1024 * 1024
OPEN_TIMEOUT = 10.0
#: Stop reasons that are a normal end; after any other, an empty turn still gets a note.
QUIET_STOPS = frozenset({None, "end_turn", "tool_rule", "requires_approval", "cancelled"})
CARD_ATTEMPTS = 3
#: How long a stopping watcher waits for the answers it is posting (each is claimed before it is
#: posted, so one cut short is posted by no other watcher).
REPLY_DRAIN = 10.0


class Resolver(Protocol):
    async def connection_for(self, destination: Destination) -> str | None: ...

    def forget(self, destination: Destination) -> None: ...


class CardDesk(Protocol):
    async def ask(self, route: Route, request: ApprovalRequest, channel: str,
                  thread_ts: str | None) -> tuple[Any, bool]: ...

    async def close(self, tool_call_id: str, note: str) -> bool: ...


class Recaller(Protocol):
    async def recall(self, client_message_id: str) -> Origin | None: ...


class Answerer(Protocol):
    async def answer(self, origin: Origin, texts: list[str]) -> None: ...


def request_key(agent_id: str, tool_call_id: str) -> str:
    return f"{agent_id}:{tool_call_id}"


@contextlib.asynccontextmanager
async def open_status_socket(url: str, api_key: str, *, open_timeout: float = OPEN_TIMEOUT
                             ) -> AsyncIterator[ClientConnection]:
    """One status socket, bearer-authenticated (the key never goes into the URL)."""
    async with connect(url, additional_headers={"Authorization": f"Bearer {api_key}"},
                       user_agent_header=f"relay/{__version__}", open_timeout=open_timeout,
                       max_size=MAX_FRAME_BYTES, logger=_socket_log) as socket:
        yield socket


def reply_texts(turn: TurnEnded) -> list[str]:
    """What to post for a turn: its assistant messages, or a short note when it failed silently."""
    if turn.texts:
        return list(turn.texts)
    if turn.stop_reason in QUIET_STOPS:
        return []
    return [f"The agent stopped without answering (stop reason: {turn.stop_reason})."]


def reply_target(origin: Origin) -> str:
    """One key per place a reply goes, so a turn answering two messages of one thread posts once."""
    where = json.dumps(origin.reply, sort_keys=True, separators=(",", ":"))
    return hashlib.blake2b(where.encode(), digest_size=12).hexdigest()


class Watcher:
    def __init__(self, settings: Settings, queue: Queue, letta: Resolver, cards: CardDesk | None,
                 origins: Recaller, replier: Answerer, *, base_url: str | None = None, api_key: str | None = None,
                 clock: Callable[[], float] = time.time, rng: random.Random | None = None,
                 backoff: Backoff = Backoff(0.5, 30.0), ping_interval: float = PING_INTERVAL,
                 recall_wait: float = 2.0, check_every: float | None = None) -> None:
        self.settings, self.queue, self.letta, self.cards = settings, queue, letta, cards
        self.origins, self.replier = origins, replier
        self.base_url = base_url or settings.letta_base_url
        self.api_key = api_key if api_key is not None else settings.letta_api_key or ""
        self.clock, self.rng, self.backoff = clock, rng or random.Random(), backoff
        self.ping_interval, self.recall_wait = ping_interval, recall_wait
        self.check_every = check_every if check_every is not None else settings.resolve_ttl
        self.routes = [route for route in settings.routes if route.watched]

    async def run(self, stop: asyncio.Event) -> None:
        if not self.routes:
            log.warning("no route opts in to relay watch ([routes.NAME.watch] in RELAY_ROUTES); nothing to do")
            await stop.wait()
            return
        log.info("watching", extra=fields(routes=",".join(r.name for r in self.routes)))
        await asyncio.gather(*(RouteWatch(self, route).run(stop) for route in self.routes))
        log.info("watch stopped")


class RouteWatch:
    """One route's conversation: its sockets, its session, and the actions its events call for."""

    def __init__(self, watcher: Watcher, route: Route) -> None:
        self.w = watcher
        self.route = route
        self.destination = route.destination
        self.connection_id: str | None = None
        self.session: Session | None = None
        self._replies: set[asyncio.Task[None]] = set()

    def _log(self, **extra: Any) -> dict[str, Any]:
        return {"extra": fields(route=self.route.name, connection=self.connection_id, **extra)}

    async def run(self, stop: asyncio.Event) -> None:
        self.session = Session(self.destination.agent_id, self.destination.conversation_id,
                               known_pending=await self._remembered(), ping_interval=self.w.ping_interval)
        actions: asyncio.Queue[Event | None] = asyncio.Queue()
        actor = asyncio.create_task(self._act_loop(actions))
        attempt = 0
        try:
            while not stop.is_set():
                if attempt:
                    self.w.letta.forget(self.destination)
                    if await wait(stop, self.w.backoff.delay(attempt, self.w.rng)):
                        break
                opened = await self._connect_once(stop, actions)
                attempt = 1 if opened else attempt + 1
        finally:
            actions.put_nowait(None)
            await actor
            if self._replies:
                await asyncio.wait(self._replies, timeout=REPLY_DRAIN)

    # -- sockets -------------------------------------------------------------------------

    async def _connect_once(self, stop: asyncio.Event, actions: asyncio.Queue[Event | None]) -> bool:
        """Resolve, open both sockets and pump frames until one drops. True if they opened."""
        try:
            connection_id = await self.w.letta.connection_for(self.destination)
        except ResolveFailed as failed:
            log.warning("could not resolve the connection", **self._log(error=failed.outcome.describe()))
            return False
        if connection_id is None:
            kind, value = self.destination.selector
            log.warning("environment is offline; will look again", **self._log(**{kind: value}))
            return False
        self.connection_id = connection_id
        assert self.session is not None
        opened = False
        try:
            async with contextlib.AsyncExitStack() as stack:
                sockets = {}
                for channel in CHANNELS:
                    url = status_url(self.w.base_url, connection_id, self.destination.agent_id,
                                     self.destination.conversation_id, channel)
                    sockets[channel] = await stack.enter_async_context(open_status_socket(url, self.w.api_key))
                opened = True
                log.info("status sockets open", **self._log())
                try:
                    await self._pump(sockets, stop, actions)
                finally:
                    self.session.disconnected()
        except InvalidStatus as exc:
            log.warning("status socket refused", **self._log(status=exc.response.status_code))
        except (OSError, TimeoutError, WebSocketException) as exc:
            log.warning("status socket failed", **self._log(error=f"{type(exc).__name__}: {exc}"))
        return opened

    async def _pump(self, sockets: dict[str, ClientConnection], stop: asyncio.Event,
                    actions: asyncio.Queue[Event | None]) -> None:
        assert self.session is not None
        session = self.session
        inbox: asyncio.Queue[tuple[str, str | bytes | None]] = asyncio.Queue()
        readers = [asyncio.create_task(_read(channel, socket, inbox)) for channel, socket in sockets.items()]
        next_check = self.w.clock() + self.w.check_every
        try:
            await self._apply(session.connected(self.w.clock()), sockets, actions)
            while not stop.is_set():
                now = self.w.clock()
                if now >= session.next_deadline():
                    await self._apply(session.tick(now), sockets, actions)
                if now >= next_check:
                    next_check = now + self.w.check_every
                    if await self._rotated():
                        return
                wait = min(session.next_deadline(), next_check) - self.w.clock()
                try:
                    channel, text = await asyncio.wait_for(inbox.get(), timeout=min(max(wait, 0.0), 0.5))
                except asyncio.TimeoutError:
                    continue
                if text is None:
                    log.info("status socket closed; reconnecting", **self._log(channel=channel))
                    return
                await self._apply(session.receive(channel, text, self.w.clock()), sockets, actions)
        finally:
            for reader in readers:
                reader.cancel()
            await asyncio.gather(*readers, return_exceptions=True)

    async def _apply(self, step: Step, sockets: dict[str, ClientConnection],
                     actions: asyncio.Queue[Event | None]) -> None:
        for channel, frame in step.send:
            await sockets[channel].send(frame)
        for event in step.events:
            actions.put_nowait(event)

    async def _rotated(self) -> bool:
        """Has the device moved to another connectionId (it re-registered)?"""
        try:
            current = await self.w.letta.connection_for(self.destination)
        except ResolveFailed:  # a failed check is not a rotation; the socket decides
            return False
        if current is not None and current != self.connection_id:
            log.info("connection rotated; reconnecting", **self._log(to=current))
            return True
        return False

    # -- actions -------------------------------------------------------------------------

    async def _act_loop(self, actions: asyncio.Queue[Event | None]) -> None:
        while (event := await actions.get()) is not None:
            try:
                await self._act(event)
            except (QueueUnavailable, UpstreamError) as exc:
                log.warning("could not act on a status event", **self._log(event=type(event).__name__, error=str(exc)))
            except Exception:
                log.exception("acting on a status event failed", **self._log(event=type(event).__name__))

    async def _act(self, event: Event) -> None:
        if isinstance(event, ApprovalRequested):
            await self._requested(event.request)
        elif isinstance(event, ApprovalClosed):
            log.info("approval closed", **self._log(tool_call_id=event.tool_call_id, reason=event.reason))
            await self._save_pending()
            if self.w.cards is not None:
                await self.w.cards.close(event.tool_call_id, event.reason)
        elif isinstance(event, TurnEnded):
            task = asyncio.create_task(self._reply(event))
            self._replies.add(task)
            task.add_done_callback(self._replies.discard)

    async def _requested(self, request: ApprovalRequest) -> None:
        log.info("approval requested", **self._log(tool_call_id=request.tool_call_id, tool=request.tool_name))
        record = json.dumps({"request_id": request.request_id, "tool_call_id": request.tool_call_id,
                             "route": self.route.name, "agent_id": request.agent_id,
                             "conversation_id": request.conversation_id, "connection_id": self.connection_id},
                            separators=(",", ":"))
        key = request_key(request.agent_id, request.tool_call_id)
        await self.w.queue.put_record(REQUEST_KIND, key, record, RECORD_TTL)
        await self._save_pending()
        where = await self._card_place(request)
        if where is None:
            log.warning("no Slack channel for the approval card: set slack_channel in [routes.NAME.watch]",
                        **self._log(tool_call_id=request.tool_call_id))
            return
        if self.w.cards is None:
            log.warning("Slack is not configured (SLACK_BOT_TOKEN); no card for the approval request",
                        **self._log(tool_call_id=request.tool_call_id))
            return
        for attempt in range(CARD_ATTEMPTS):
            try:
                _card, posted = await self.w.cards.ask(self.route, request, *where)
                log.info("card posted" if posted else "card already posted",
                         **self._log(tool_call_id=request.tool_call_id, channel=where[0]))
                return
            except UpstreamError as exc:
                log.warning("could not post the card", **self._log(tool_call_id=request.tool_call_id,
                                                                   error=exc.code, attempt=attempt + 1))
                await asyncio.sleep(2.0 ** attempt)

    async def _card_place(self, request: ApprovalRequest) -> tuple[str, str | None] | None:
        """The thread of the message that started the turn, else the route's channel."""
        if request.turn_message_id:
            origin = await self.w.origins.recall(request.turn_message_id)
            thread = origin.slack_thread() if origin is not None else None
            if thread is not None:
                return thread
        channel = self.route.watch.slack_channel if self.route.watch else None
        return (channel, None) if channel else None

    async def _reply(self, turn: TurnEnded) -> None:
        texts = reply_texts(turn)
        if not turn.client_message_ids or not texts:
            return
        try:
            answered: set[str] = set()
            for message_id in turn.client_message_ids:
                origin = await self._recall(message_id)
                if origin is None:
                    continue  # not a message relay delivered
                target = reply_target(origin)
                if target in answered:
                    continue
                answered.add(target)
                if await self.w.queue.create_record(ANSWERED_KIND, target + ":" + message_id, "1",
                                                    RECORD_TTL) is not None:
                    continue  # another watcher has it
                await self.w.replier.answer(origin, texts)
        except QueueUnavailable as exc:
            log.warning("could not reply: redis unavailable", **self._log(error=str(exc)))
        except Exception:
            log.exception("replying failed", **self._log())

    async def _recall(self, message_id: str) -> Origin | None:
        """A message's origin; the worker records it just after delivery, so wait a moment."""
        deadline = time.monotonic() + self.w.recall_wait
        while True:
            origin = await self.w.origins.recall(message_id)
            if origin is not None or time.monotonic() >= deadline:
                return origin
            await asyncio.sleep(0.1)

    # -- what survives a restart ---------------------------------------------------------

    async def _remembered(self) -> list[ApprovalRequest]:
        try:
            raw = await self.w.queue.record(PENDING_KIND, self.route.name)
            return [ApprovalRequest(**item) for item in json.loads(raw)] if raw else []
        except (QueueUnavailable, ValueError, TypeError) as exc:
            log.warning("could not read the pending approvals of the last run", **self._log(error=str(exc)))
            return []

    async def _save_pending(self) -> None:
        assert self.session is not None
        value = json.dumps([asdict(r) for r in self.session.pending.values()], separators=(",", ":"))
        await self.w.queue.put_record(PENDING_KIND, self.route.name, value, RECORD_TTL)


async def _read(channel: str, socket: ClientConnection,
                inbox: asyncio.Queue[tuple[str, str | bytes | None]]) -> None:
    try:
        async for message in socket:
            inbox.put_nowait((channel, message))
    except ConnectionClosed:
        pass
    finally:
        inbox.put_nowait((channel, None))


def watcher_for(settings: Settings, redis: Any, queue: Queue, letta: Resolver, slack: Any, github: Any, *,
                base_url: str | None = None, api_key: str | None = None) -> Watcher:
    """A Watcher with relay's own cards, origins and replier (what `relay watch` and `relay dev` run)."""
    from relay.cards import cards_for
    from relay.origins import Origins
    from relay.replies import Replier

    return Watcher(settings, queue, letta, cards_for(settings, queue, slack),
                   Origins(redis, settings.key_prefix, settings.origin_ttl), Replier(slack, github),
                   base_url=base_url, api_key=api_key)
