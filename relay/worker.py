"""The worker: read → deliver → done / retry later / dead-letter.

Concurrent loops, one process:

- a reader per partition takes new conversation tokens while the worker has room;
- `_reclaim_loop` takes over tokens whose worker went silent for `reclaim_after`;
- `_renew_loop` keeps this worker's claims fresh so a slow live call is never taken over;
- `_promote_loop` returns conversations whose retry time has come to the stream.

`concurrency` bounds the Letta calls in flight exactly (a semaphore held for the call alone).
A worker claims up to `concurrency + concurrency // 2` conversations, so the acks and reads
between one conversation's calls leave no call slot idle. Readers claim a fair share of the
free room each (at least one token); tokens being fetched count as claimed, so only reads that
are blocked at the same moment can overshoot, by at most one share each.

A delivery that waited for a call slot must not go out during a pause (Letta's 429) that
another worker published meanwhile: while deliveries wait, `_pause_loop` reads the shared pause
every `PAUSE_READ_EVERY`, so taking a slot costs no Redis round trip (one per call, made while
holding the slot, was what kept a busy worker from filling its slots).

Stopping (SIGTERM): readers stop, in-flight deliveries get `shutdown_grace` seconds to finish,
the rest are cancelled and handed back for another worker at once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import socket
import time
import uuid
from typing import Awaitable, Callable, Protocol, TypeVar

from relay.errors import QueueUnavailable
from relay.logs import fields
from relay.messages import Envelope
from relay.metrics import Metrics
from relay.policy import Backoff, DeadLetter, Delivered, Outcome, Retry, Settled, decide
from relay.queue import PARTITIONS, Head, Queue, Token
from relay.origins import Origins
from relay.replies import Replier
from relay.settings import Settings
from relay.serving import wait

log = logging.getLogger("relay.worker")
T = TypeVar("T")

READ_BLOCK_MS = 1000
READ_BATCH = 32
#: A message whose claim was taken from a silent worker this often is what stops them (a
#: crash, an out-of-memory kill): it is dead-lettered instead of taking down the next one.
MAX_TAKEOVERS = 10
#: A conversation's messages delivered in a row under one claim (each ack fetching the next)
#: before its token goes to the back of the stream, so a long backlog does not keep a slot
#: from the conversations waiting behind it. Each claim draws its chain's length between half
#: this and this: claims taken together would otherwise all end together, every few seconds,
#: and leave call slots idle while their readers take new ones.
CHAIN_LIMIT = 16
#: While deliveries wait for a call slot, the shared pause is read this often (seconds): another
#: worker may have heard a 429 meanwhile.
PAUSE_READ_EVERY = 0.02


class Deliverer(Protocol):
    async def deliver(self, envelope: Envelope) -> Outcome: ...

    def forget(self, destination: object) -> None: ...


class Enricher(Protocol):
    async def enrich(self, envelope: Envelope) -> Envelope: ...


def chain_length(rng: random.Random) -> int:
    """How many of a conversation's messages one claim delivers in a row (see CHAIN_LIMIT)."""
    return rng.randint(CHAIN_LIMIT // 2, CHAIN_LIMIT)


def consumer_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class Worker:
    def __init__(
        self,
        queue: Queue,
        letta: Deliverer,
        settings: Settings,
        *,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        poll_interval: float = 0.05,
        replier: Replier | None = None,
        origins: Origins | None = None,
        metrics: Metrics | None = None,
        enricher: Enricher | None = None,
    ) -> None:
        self.queue = queue
        self.metrics = metrics or Metrics()
        self.letta = letta
        self.replier = replier or Replier()
        self.origins = origins
        self.enricher = enricher
        self.settings = settings
        self.clock = clock
        self.rng = rng or random.Random()
        self.backoff = Backoff(settings.retry_base, settings.retry_cap)
        self.poll_interval = poll_interval
        self.calls = asyncio.Semaphore(settings.concurrency)
        self.claims = settings.concurrency + settings.concurrency // 2
        self.in_flight: dict[Token, asyncio.Task[None]] = {}
        self._starting = 0  # tokens read and being fetched: claimed, not yet in flight
        self._room = asyncio.Condition()
        self.paused_until = 0.0
        self._stopping = asyncio.Event()  # stop taking new work
        self._closed = asyncio.Event()  # in-flight work settled: helper loops end
        self._watched = {r.destination.conversation_key for r in settings.routes if r.watched}

    # -- lifecycle -----------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        await self._until_ready()
        log.info("worker started", extra=fields(consumer=self.queue.consumer,
                                                 concurrency=self.settings.concurrency))
        readers = [asyncio.create_task(self._resilient(f"read p{p:02d}", lambda p=p: self._read_loop(p),
                                                       self._stopping)) for p in range(PARTITIONS)]
        helpers = [asyncio.create_task(self._resilient(loop.__name__, loop, self._closed)) for loop in
                   (self._reclaim_loop, self._renew_loop, self._promote_loop, self._pause_loop)]
        await stop.wait()
        self._stopping.set()
        async with self._room:
            self._room.notify_all()
        log.info("worker stopping", extra=fields(in_flight=len(self.in_flight)))
        await asyncio.gather(*readers, return_exceptions=True)  # each exits after its current read
        await self._drain()
        # Loops end on an event, not by cancellation: redis-py can swallow a CancelledError
        # that arrives mid-command (redis/redis-py#2028), which would leave a loop running.
        self._closed.set()
        await asyncio.gather(*helpers, return_exceptions=True)
        await self._forgiving(self.queue.leave(), "leave")
        log.info("worker stopped", extra=fields(consumer=self.queue.consumer))

    async def _resilient(self, name: str, loop: Callable[[], Awaitable[None]], until: asyncio.Event) -> None:
        """Run a loop; if a bug makes it raise, log it and start it again (never die silently)."""
        while not until.is_set():
            try:
                await loop()
                return
            except Exception:
                log.exception("worker loop failed; restarting it", extra=fields(loop=name))
                await wait(until, 1.0)

    async def _until_ready(self) -> None:
        delay = 0.5
        while True:
            try:
                await self.queue.ensure_groups()
                return
            except QueueUnavailable as exc:
                log.warning("redis unavailable, retrying", extra=fields(error=str(exc), retry_in=delay))
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    async def _drain(self) -> None:
        """Give in-flight deliveries the grace period, then hand the rest back."""
        pending = list(self.in_flight.values())
        if pending:
            await asyncio.wait(pending, timeout=self.settings.shutdown_grace)
        leftovers = dict(self.in_flight)
        for task in leftovers.values():
            task.cancel()
        await asyncio.gather(*leftovers.values(), return_exceptions=True)
        for token in leftovers:
            handed = await self._forgiving(self.queue.retry(token, None, self.clock()), "hand back")
            log.info("handed back", extra=fields(conversation=token.conversation, ok=bool(handed)))

    async def _forgiving(self, call: Awaitable[object], what: str) -> object:
        try:
            return await call
        except QueueUnavailable as exc:
            log.warning(f"could not {what}", extra=fields(error=str(exc)))
            return None

    # -- loops ---------------------------------------------------------------------------------

    def _claimed(self) -> int:
        return len(self.in_flight) + self._starting

    def _share(self, spread: int) -> int:
        """How many new claims to take in one read: a fair share of the free room, at least one."""
        room = self.claims - self._claimed()
        return max(1, min(READ_BATCH, room // spread)) if room > 0 else 0

    async def _wait_for_room(self) -> bool:
        async with self._room:
            await self._room.wait_for(
                lambda: self._claimed() < self.claims or self._stopping.is_set())
        return not self._stopping.is_set()

    async def _read_loop(self, partition: int) -> None:
        while await self._wait_for_room():
            wait = self.paused_until - self.clock()
            if wait > 0:
                await self._sleep(min(wait, 1.0))
                continue
            started = time.monotonic()
            try:
                tokens = await self.queue.read(partition, self._share(PARTITIONS), READ_BLOCK_MS)
            except QueueUnavailable as exc:
                await self._redis_trouble("read", exc)
                continue
            if tokens:
                await self._start(tokens)
            elif time.monotonic() - started < READ_BLOCK_MS / 2000:
                # The server answered at once without blocking (fakeredis does): poll gently.
                await self._sleep(self.poll_interval)

    async def _reclaim_loop(self) -> None:
        interval = max(self.settings.reclaim_after / 2, 0.05)
        while await self._rest(interval):
            for partition in range(PARTITIONS):
                share = self._share(1)
                if not share or self._stopping.is_set():
                    break
                try:
                    tokens = await self.queue.reclaim(partition, self.settings.reclaim_after, share)
                except QueueUnavailable as exc:
                    await self._redis_trouble("reclaim", exc)
                    break
                # After a Redis outage longer than reclaim_after, this worker's own live claims look
                # idle too; they are still being delivered here and must not start a second time.
                held = {t.entry_id for t in self.in_flight}
                tokens = [t for t in tokens if t.entry_id not in held]
                if tokens:
                    log.warning("reclaimed from a silent worker", extra=fields(partition=partition, count=len(tokens)))
                    await self._start(tokens)

    async def _renew_loop(self) -> None:
        interval = max(self.settings.reclaim_after / 4, 0.02)
        while await self._rest(interval):
            if not self.in_flight:
                continue
            try:
                lost = await self.queue.renew(list(self.in_flight))
            except QueueUnavailable as exc:
                await self._redis_trouble("renew", exc)
                continue
            for token in lost:
                log.warning("claim taken over by another worker", extra=fields(conversation=token.conversation))

    async def _promote_loop(self) -> None:
        while not self._closed.is_set():
            now = self.clock()
            try:  # every partition's call in one round trip
                dues = await asyncio.gather(*(self.queue.promote(p, now) for p in range(PARTITIONS)))
                soonest = min([now + 1.0, *(following for _moved, following in dues if following is not None)])
            except QueueUnavailable as exc:
                await self._redis_trouble("promote", exc)
                continue
            await self._rest(min(max(soonest - self.clock(), 0.02), 1.0))

    async def _pause_loop(self) -> None:
        """Keep the shared pause fresh for deliveries waiting for a call slot (all slots busy)."""
        while await self._rest(PAUSE_READ_EVERY):
            if self.calls.locked():
                await self._refresh_pause()

    async def _sleep(self, seconds: float) -> None:
        """Sleep, waking early when the worker starts stopping (readers)."""
        await wait(self._stopping, seconds)

    async def _rest(self, seconds: float) -> bool:
        """Sleep, waking early when the worker closes (helper loops). True: keep going."""
        return not await wait(self._closed, seconds)

    async def _redis_trouble(self, what: str, exc: QueueUnavailable) -> None:
        log.warning("redis unavailable", extra=fields(during=what, error=str(exc)))
        await self._rest(1.0)

    # -- one message ---------------------------------------------------------------------------

    async def _start(self, tokens: list[Token]) -> None:
        self._starting += len(tokens)
        try:
            heads = await self.queue.fetch(tokens)
        except QueueUnavailable as exc:
            # The tokens stay pending under this consumer; the reclaim loop picks them up later.
            await self._redis_trouble("fetch", exc)
            return
        finally:
            self._starting -= len(tokens)
        for head in heads:
            self.paused_until = max(self.paused_until, head.paused_until)  # another worker's 429
            self.in_flight[head.token] = asyncio.create_task(self._handle(head))

    async def _handle(self, head: Head) -> None:
        token = head.token
        try:
            current: Head | None = head
            chain = chain_length(self.rng)
            for delivered in range(chain):
                if current is None:
                    break
                if self._stopping.is_set() and delivered:  # a next message claimed as the worker stops
                    await self._forgiving(self.queue.retry(token, None, self.clock()), "hand back")
                    break
                current = await self._settle(current, chain=delivered < chain - 1)
        except asyncio.CancelledError:
            raise
        except Exception:
            # A bug, not a delivery failure: the token stays pending and is reclaimed later.
            log.exception("unexpected error while delivering", extra=fields(conversation=token.conversation))
        finally:
            self.in_flight.pop(token, None)
            async with self._room:
                self._room.notify_all()

    async def _call(self, envelope: Envelope) -> tuple[Outcome, float] | None:
        """The Letta call, in a call slot; None if a pause began while waiting for the slot."""
        async with self.calls:
            if self.clock() < self.paused_until:  # heard here, or read by _pause_loop while waiting
                return None
            started = time.perf_counter()
            outcome = await self.letta.deliver(envelope)
            return outcome, time.perf_counter() - started

    async def _refresh_pause(self) -> None:
        """Read the shared pause. `pause_all` writes every partition's copy, so one is read."""
        try:
            self.paused_until = max(self.paused_until, await self.queue.pause_of(0))
        except QueueUnavailable:
            pass  # the deliveries' own queue writes will wait for Redis anyway

    async def _settle(self, head: Head, chain: bool = False) -> Head | None:
        """Deliver one head message and settle it. With `chain`, a delivered message's ack takes
        the conversation's next message under the same claim, returned to deliver next."""
        token, envelope = head.token, head.envelope
        following: Head | None = None
        if envelope is None:
            # Nothing deliverable: release a stray token, or drop a head whose stored message is
            # gone (a copy re-accepted after its dedup window) so the conversation moves on.
            if head.message_id:
                log.error("stored message missing or unreadable; dropped",
                          extra=fields(client_message_id=head.message_id, conversation=token.conversation))
            await self._queue_op(lambda: self.queue.done(token, head.message_id))
            return None
        if token.takeovers >= MAX_TAKEOVERS:
            reason = (f"workers stopped {token.takeovers} times while handling this message "
                      "(crashed or killed); parked so it stops taking others down")
            ok = await self._queue_op(lambda: self.queue.dead_letter(token, envelope, reason, "takeovers"))
            log.error("dead-lettered", extra=fields(**envelope.log_fields(), outcome="takeovers"))
            self.metrics.dead_lettered("takeovers")
            if ok:
                await self.replier.failed(envelope, reason)
            return None
        paused_until = max(self.paused_until, head.paused_until)
        if self.clock() < paused_until:  # Letta's Retry-After, seen by this or another worker
            await self._queue_op(lambda: self.queue.retry(token, None, paused_until))
            return None
        if envelope.attempts == 0:
            self.metrics.queue_wait.observe(max(0.0, self.clock() - envelope.queued_at))
        if envelope.context is not None and self.enricher is not None:
            envelope = await self.enricher.enrich(envelope)  # kept with the retry, if one follows
        called = await self._call(envelope)
        if called is None:  # paused by another worker while this one waited for a call slot
            await self._queue_op(lambda: self.queue.retry(token, None, self.paused_until))
            return None
        outcome, took = called
        now = self.clock()
        attempt = envelope.attempts + 1
        decision = decide(outcome, attempt=attempt, age=now - envelope.queued_at,
                          max_age=self.settings.max_age_for(envelope.kind), now=now,
                          backoff=self.backoff, rng=self.rng)
        context = envelope.log_fields() | {"attempt": attempt}
        if isinstance(decision, Delivered):
            self.metrics.attempt("delivered", outcome.status, took, outcome.answered)
            self.metrics.end_to_end.observe(max(0.0, now - envelope.received_at))
            ok, following = await self._done(token, envelope.client_message_id, chain)
            log.info("delivered", extra=fields(**context, status=outcome.status))
            if ok:
                await self._remember(envelope)
                await self.replier.delivered(envelope)
        elif isinstance(decision, Settled):
            # The device has no such pending request: nothing to send, ever. Done, and said so.
            self.metrics.attempt("settled", outcome.status, took, outcome.answered)
            ok = await self._queue_op(lambda: self.queue.done(token, envelope.client_message_id))
            log.info("settled without delivery", extra=fields(**context, reason=decision.reason))
            if ok:
                await self.replier.settled(envelope, decision.reason)
        elif isinstance(decision, Retry):
            self.metrics.attempt("retry", outcome.status, took, outcome.answered)
            if decision.reresolve:
                self.letta.forget(envelope.destination)
            if decision.pause_until:
                self.paused_until = max(self.paused_until, decision.pause_until)  # this worker at once
                await self._forgiving(self.queue.pause_all(decision.pause_until), "share the pause")
            failed = envelope.after_failure(decision.reason)
            ok = await self._queue_op(lambda: self.queue.retry(token, failed, decision.at))
            log.warning("retry scheduled", extra=fields(**context, outcome=decision.code,
                                                        retry_in=round(decision.at - now, 3)))
        else:
            assert isinstance(decision, DeadLetter)
            self.metrics.attempt("dead_letter", outcome.status, took, outcome.answered)
            self.metrics.dead_lettered(decision.code)
            failed = envelope.after_failure(decision.reason)
            ok = await self._queue_op(lambda: self.queue.dead_letter(token, failed, decision.reason, decision.code))
            log.error("dead-lettered", extra=fields(**context, outcome=decision.code))
            if ok:
                await self.replier.failed(failed, decision.reason)
        if ok is False:
            log.warning("claim was taken over; the other worker finishes it", extra=fields(**context))
        return following

    async def _done(self, token: Token, message_id: str, chain: bool) -> tuple[bool | None, Head | None]:
        """Ack a delivered head; with `chain`, also take the conversation's next message."""
        if not chain:
            return await self._queue_op(lambda: self.queue.done(token, message_id)), None
        result = await self._queue_op(lambda: self.queue.advance(token, message_id))
        if isinstance(result, Head):
            return True, result
        return result, None

    async def _remember(self, envelope: Envelope) -> None:
        """Note where a delivered user message came from, for its answer. Best-effort."""
        if self.origins is None or envelope.kind != "user":
            return
        if envelope.destination.conversation_key not in self._watched:
            return  # no watcher follows this conversation: nobody would read it
        try:
            await self.origins.remember(envelope)
        except QueueUnavailable as exc:
            log.warning("could not remember the message's origin; its answer will not be posted",
                        extra=fields(**envelope.log_fields(), error=str(exc)))

    async def _queue_op(self, op: Callable[[], Awaitable[T]]) -> T | None:
        """Run a queue write, retrying while Redis is away; give up only when stopping."""
        delay = 0.1
        while True:
            try:
                return await op()
            except QueueUnavailable as exc:
                if self._stopping.is_set():
                    log.warning("redis unavailable while stopping; the claim will be reclaimed",
                                extra=fields(error=str(exc)))
                    return None
                log.warning("redis unavailable; will retry", extra=fields(error=str(exc)))
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

