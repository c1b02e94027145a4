"""`relay watch`: keep each opted-in route's status socket open and carry the agent back to chat.

For every route with `[routes.NAME.watch]` (enabled), one task:

- resolves the live connectionId with the worker's own `LettaClient.connection_for` (forgetting
  the cache before each reconnect, and checking again every `RELAY_RESOLVE_TTL` for a rotation);
- opens the conversation's status socket (one, as Letta's own clients do), feeds every frame to
  a `status_session.Session`, sends what it returns (acks, a sync on connect); if the socket
  drops it is reopened after capped, jittered exponential backoff;
- acts on the session's events in order, off the socket loop (so acks never wait on Slack):
  an approval request → remember its request id in Redis (the worker's approval delivery answers
  by it, without a sync) → an approval card in the thread of the message that started the
  turn, else in the route's `slack_channel`; a request closed elsewhere → the card says so; a
  turn that ended → its reply (with the stop reason and error of a failed turn) where each of
  relay's messages in it came from (once per reply target, across watcher replicas).

Redis records (all through `Queue`, under the key prefix; 7 days):
    rec:socket-request:{tool call key}  the pending request to answer, and where
    rec:watch-pending:{route}           the requests the route's watcher saw pending
    rec:answered:{reply target}         claimed by the one watcher that posts a reply
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
from typing import Any, Callable, Protocol

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException

from relay.approval_delivery import REQUEST_KIND
from relay.errors import QueueUnavailable, ResolveFailed, UpstreamError
from relay.logs import fields
from relay.messages import ApprovalRequest, tool_call_key
from relay.origins import Origin
from relay.policy import Backoff
from relay.queue import Queue
from relay.routing import Destination, Route
from relay.settings import Settings
from relay.serving import wait
from relay.status_session import ApprovalClosed, ApprovalRequested, Event, Session, Step, TurnEnded

log = logging.getLogger("relay.watch")

PENDING_KIND = "watch-pending"
ANSWERED_KIND = "answered"
RECORD_TTL = 7 * 24 * 3600.0
#: Stop reasons that are a normal end; after any other, an empty turn still gets a note.
QUIET_STOPS = frozenset({None, "end_turn", "tool_rule", "requires_approval", "cancelled"})
CARD_ATTEMPTS = 3
#: How long a stopping watcher waits for the answers it is posting (each is claimed before it is
#: posted, so one cut short is posted by no other watcher).
REPLY_DRAIN = 10.0


class Letta(Protocol):
    async def connection_for(self, destination: Destination) -> str | None: ...

    def forget(self, destination: Destination) -> None: ...

    def status_socket(self, connection_id: str, agent_id: str, conversation_id: str | None
                      ) -> contextlib.AbstractAsyncContextManager[ClientConnection]: ...


class CardDesk(Protocol):
    async def ask(self, route: Route, request: ApprovalRequest, channel: str,
                  thread_ts: str | None) -> tuple[Any, bool]: ...

    async def close(self, destination: Destination, tool_call_id: str, note: str) -> bool: ...


class Recaller(Protocol):
    async def recall(self, client_message_id: str) -> Origin | None: ...


class Answerer(Protocol):
    async def answer(self, origin: Origin, texts: list[str]) -> None: ...


def reply_texts(turn: TurnEnded) -> list[str]:
    """What to post for a turn: its assistant messages, then what went wrong if it failed."""
    texts = list(turn.texts)
    if turn.error:
        texts.append(f"The agent's turn ended with an error (stop reason: {turn.stop_reason or 'error'}): "
                     f"{turn.error}")
    elif turn.stop_reason not in QUIET_STOPS and not texts:
        texts.append(f"The agent stopped without answering (stop reason: {turn.stop_reason}).")
    return texts


def reply_target(origin: Origin) -> str:
    """One key per place a reply goes, so a turn answering two messages of one thread posts once."""
    where = json.dumps(origin.reply, sort_keys=True, separators=(",", ":"))
    return hashlib.blake2b(where.encode(), digest_size=12).hexdigest()


class Watcher:
    def __init__(self, settings: Settings, queue: Queue, letta: Letta, cards: CardDesk | None,
                 origins: Recaller, replier: Answerer, *, clock: Callable[[], float] = time.time,
                 rng: random.Random | None = None, backoff: Backoff = Backoff(0.5, 30.0),
                 recall_wait: float = 2.0, check_every: float | None = None) -> None:
        self.settings, self.queue, self.letta, self.cards = settings, queue, letta, cards
        self.origins, self.replier = origins, replier
        self.clock, self.rng, self.backoff = clock, rng or random.Random(), backoff
        self.recall_wait = recall_wait
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
                               known_pending=await self._remembered())
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
        """Resolve, open the socket and pump frames until it drops. True if it opened."""
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
        opened = False
        try:
            async with self.w.letta.status_socket(connection_id, self.destination.agent_id,
                                                  self.destination.conversation_id) as socket:
                opened = True
                log.info("status socket open", **self._log())
                await self._pump(socket, stop, actions)
        except InvalidStatus as exc:
            log.warning("status socket refused", **self._log(status=exc.response.status_code))
        except ConnectionClosed:
            log.info("status socket closed; reconnecting", **self._log())
        except (OSError, TimeoutError, WebSocketException) as exc:
            log.warning("status socket failed", **self._log(error=f"{type(exc).__name__}: {exc}"))
        return opened

    async def _pump(self, socket: ClientConnection, stop: asyncio.Event,
                    actions: asyncio.Queue[Event | None]) -> None:
        assert self.session is not None
        session = self.session
        inbox: asyncio.Queue[str | bytes | None] = asyncio.Queue()
        reader = asyncio.create_task(_read(socket, inbox))
        next_check = self.w.clock() + self.w.check_every
        try:
            await self._apply(session.connected(), socket, actions)
            while not stop.is_set():
                now = self.w.clock()
                if now >= session.next_deadline():
                    await self._apply(session.tick(now), socket, actions)
                if now >= next_check:
                    next_check = now + self.w.check_every
                    if await self._rotated():
                        return
                wait = min(session.next_deadline(), next_check) - self.w.clock()
                try:
                    text = await asyncio.wait_for(inbox.get(), timeout=min(max(wait, 0.0), 0.5))
                except asyncio.TimeoutError:
                    continue
                if text is None:
                    log.info("status socket closed; reconnecting", **self._log())
                    return
                await self._apply(session.receive(text, self.w.clock()), socket, actions)
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)

    async def _apply(self, step: Step, socket: ClientConnection, actions: asyncio.Queue[Event | None]) -> None:
        for frame in step.send:
            await socket.send(frame)
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
                await self.w.cards.close(self.destination, event.tool_call_id, event.reason)
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
        key = tool_call_key(request.agent_id, request.conversation_id, request.tool_call_id)
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
            # The device starts the turn before the worker hears its REST answer and records the
            # message's origin: wait for it as a reply does.
            origin = await self._recall(request.turn_message_id)
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


async def _read(socket: ClientConnection, inbox: asyncio.Queue[str | bytes | None]) -> None:
    try:
        async for message in socket:
            inbox.put_nowait(message)
    except ConnectionClosed:
        pass
    finally:
        inbox.put_nowait(None)


def watcher_for(settings: Settings, redis: Any, queue: Queue, letta: Letta, slack: Any, github: Any) -> Watcher:
    """A Watcher with relay's own cards, origins and replier (what `relay watch` and `relay dev` run)."""
    from relay.cards import cards_for
    from relay.origins import Origins
    from relay.replies import Replier

    return Watcher(settings, queue, letta, cards_for(settings, queue, slack),
                   Origins(redis, settings.key_prefix, settings.origin_ttl), Replier(slack, github))
