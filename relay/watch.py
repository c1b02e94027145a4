"""`relay watch`: keep each opted-in route's status socket open and carry the agent back to chat.

For every route with `[routes.NAME.watch]` (enabled), one task:

- resolves the live connectionId with the worker's own `LettaClient.connection_for` (forgetting
  the cache before each reconnect, and checking again every `RELAY_RESOLVE_TTL` for a rotation);
- opens the conversation's status socket (one, as Letta's own clients do), feeds every frame to
  a `status_session.Session`, sends what it returns (acks, a sync on connect); if the socket
  drops it is reopened after capped, jittered exponential backoff;
- hands the session's events, in order, to `watch_events.EventActions` (approval prompts,
  progress, answers), off the socket loop, so acks never wait on Slack or GitHub.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from typing import Any, Callable, Protocol

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException

from relay.errors import QueueUnavailable, ResolveFailed, UpstreamError
from relay.comment_prompts import CommentPrompts, prompts_for
from relay.logs import fields
from relay.metrics import Metrics
from relay.policy import Backoff
from relay.progress import PROGRESS_EVERY, ProgressBoard
from relay.queue import Queue
from relay.routing import Destination, Route
from relay.settings import Settings
from relay.serving import wait
from relay.status_session import Event, Session, Step
from relay.watch_events import Answerer, CardDesk, EventActions, Recaller

log = logging.getLogger("relay.watch")


class Letta(Protocol):
    async def connection_for(self, destination: Destination) -> str | None: ...

    def forget(self, destination: Destination) -> None: ...

    def status_socket(self, connection_id: str, agent_id: str, conversation_id: str | None
                      ) -> contextlib.AbstractAsyncContextManager[ClientConnection]: ...


class Watcher:
    def __init__(self, settings: Settings, queue: Queue, letta: Letta, cards: CardDesk | None,
                 origins: Recaller, replier: Answerer, *, prompts: CommentPrompts | None = None,
                 progress: ProgressBoard | None = None, metrics: Metrics | None = None,
                 clock: Callable[[], float] = time.time, rng: random.Random | None = None,
                 backoff: Backoff = Backoff(0.5, 30.0), recall_wait: float = 2.0,
                 check_every: float | None = None, discord_cards: Any = None) -> None:
        self.settings, self.queue, self.letta, self.cards = settings, queue, letta, cards
        self.discord_cards = discord_cards  # discord_cards.DiscordCards: cards for Discord-started turns
        self.origins, self.replier, self.prompts, self.progress = origins, replier, prompts, progress
        self.metrics = metrics or Metrics()
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
        self.actions = EventActions(route, watcher.queue, watcher.origins, watcher.replier, cards=watcher.cards,
                                    prompts=watcher.prompts, progress=watcher.progress, metrics=watcher.metrics,
                                    recall_wait=watcher.recall_wait,
                                    pending=lambda: self.session.pending if self.session else {},
                                    connection=lambda: self.connection_id, discord_cards=watcher.discord_cards)

    def _log(self, **extra: Any) -> dict[str, Any]:
        return {"extra": fields(route=self.route.name, connection=self.connection_id, **extra)}

    async def run(self, stop: asyncio.Event) -> None:
        self.session = Session(self.destination.agent_id, self.destination.conversation_id,
                               known_pending=await self.actions.remembered(),
                               progress_every=PROGRESS_EVERY if self.w.progress is not None else None)
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
            await self.actions.drain()

    # -- sockets -------------------------------------------------------------------------

    async def _connect_once(self, stop: asyncio.Event, actions: asyncio.Queue[Event | None]) -> bool:
        """Resolve, open the socket and pump frames until it drops. True if it opened."""
        try:
            connection_id = await self.w.letta.connection_for(self.destination)
        except ResolveFailed as failed:
            log.warning("could not resolve the connection", **self._log(error=failed.outcome.describe()))
            self.w.metrics.watch_error("resolve")
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
                self.w.metrics.watch_sockets.inc()
                try:
                    await self._pump(socket, stop, actions)
                finally:
                    self.w.metrics.watch_sockets.dec()
        except InvalidStatus as exc:
            log.warning("status socket refused", **self._log(status=exc.response.status_code))
            self.w.metrics.watch_error("socket")
        except ConnectionClosed:
            log.info("status socket closed; reconnecting", **self._log())
        except (OSError, TimeoutError, WebSocketException) as exc:
            log.warning("status socket failed", **self._log(error=f"{type(exc).__name__}: {exc}"))
            self.w.metrics.watch_error("socket")
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
                step = session.receive(text, self.w.clock())
                self.w.metrics.frame(step.kind or "other")
                await self._apply(step, socket, actions)
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
                await self.actions.act(event)
            except (QueueUnavailable, UpstreamError) as exc:
                self.w.metrics.watch_error("act")
                log.warning("could not act on a status event", **self._log(event=type(event).__name__, error=str(exc)))
            except Exception:
                self.w.metrics.watch_error("act")
                log.exception("acting on a status event failed", **self._log(event=type(event).__name__))


async def _read(socket: ClientConnection, inbox: asyncio.Queue[str | bytes | None]) -> None:
    try:
        async for message in socket:
            inbox.put_nowait(message)
    except ConnectionClosed:
        pass
    finally:
        inbox.put_nowait(None)


def watcher_for(settings: Settings, redis: Any, queue: Queue, letta: Letta, slack: Any, github: Any, *,
                metrics: Metrics | None = None, platforms: Any = None) -> Watcher:
    """A Watcher with relay's own cards, prompts, progress, origins and replier (what `relay watch`
    and `relay dev` run); `platforms` (platforms.Platforms): the Linear, GitLab and Discord clients,
    for their answers, progress and cards."""
    from relay.cards import cards_for
    from relay.origins import Origins
    from relay.replies import Replier

    metrics = metrics or Metrics()
    others = platforms.repliers(settings, queue) if platforms is not None else {}
    return Watcher(settings, queue, letta, cards_for(settings, queue, slack),
                   Origins(redis, settings.key_prefix, settings.origin_ttl), Replier(slack, github, others=others),
                   prompts=prompts_for(queue, github, platforms.gitlab if platforms is not None else None),
                   progress=ProgressBoard(queue, slack, github, metrics, linear=others.get("linear")),  # type: ignore[arg-type]
                   metrics=metrics,
                   discord_cards=platforms.discord_cards(settings, queue) if platforms is not None else None)
