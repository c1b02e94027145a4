"""The queue: the only module that talks to Redis.

Layout (all key names are built here, in `Keys`):

    {prefix}:{pNN}:ready            stream of conversation tokens, consumer group "workers"
    {prefix}:{pNN}:mbox:{conv}      list: a conversation's message ids, in arrival order
    {prefix}:{pNN}:body             hash: message id → envelope
    {prefix}:{pNN}:delayed          sorted set: conversation → when to retry (ms)
    {prefix}:{pNN}:dead             stream of dead letters (id, reason, code, at, envelope)
    {prefix}:{pNN}:deadcodes        hash: dead-letter code → how many (for stats)
    {prefix}:{pNN}:failures:{hour}  hash: destination → failed attempts that hour (expires)
    {prefix}:{pNN}:seen:{id}        dedup marker, expires after the dedup window
    {prefix}:{pNN}:pause            no delivery before this time (ms): Letta's 429 Retry-After
    {prefix}:rec:{kind}:{id}        small records with a TTL (approval cards), one key each

A conversation lives in one of `PARTITIONS` partitions; the `{pNN}` hash tag keeps a
partition in one Redis Cluster slot, and each Lua script touches one partition only.
Per-conversation order comes from the mailbox: the stream carries at most one token per
conversation, so its messages are delivered one at a time, head first.
"""

from __future__ import annotations

import asyncio
import logging
import time
import zlib
from dataclasses import dataclass
from importlib import resources
from itertools import islice
from typing import Any, Awaitable, Callable, Generic, TypeVar

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError, RedisError, ResponseError

from relay.errors import QueueUnavailable
from relay.messages import Envelope, decode, encode

log = logging.getLogger("relay.queue")

PARTITIONS = 16
GROUP = "workers"
#: Failed attempts per destination are counted in hourly buckets; stats() sums this many.
FAILURE_WINDOW_HOURS = 24
_HEADS_PER_CALL = 500  # mailboxes per oldest.lua call
_DEAD_SCAN = 1000  # dead letters per XRANGE when stats.lua recounts them
T = TypeVar("T")
I = TypeVar("I")


class _GroupCommit(Generic[I, T]):
    """Items submitted while a round trip is out go together in the next one.

    `send` takes the batch and returns one result per item: a value, or an exception for
    that item's caller alone; if it raises, every caller in the batch sees it.
    """

    def __init__(self, send: Callable[[list[I]], Awaitable[list[T | Exception]]]) -> None:
        self._send = send
        self._pending: list[tuple[I, asyncio.Future[T]]] = []
        self._task: asyncio.Task[None] | None = None

    async def submit(self, item: I) -> T:
        waiter: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._pending.append((item, waiter))
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._loop())
        return await waiter

    async def _loop(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                results = await self._send([item for item, _ in batch])
            except Exception as exc:  # Redis away (QueueUnavailable) or a bug: every caller sees it
                results = [exc] * len(batch)
            for (_, waiter), result in zip(batch, results):
                if waiter.done():
                    continue
                if isinstance(result, QueueUnavailable):  # one instance per caller: each raises its own
                    waiter.set_exception(QueueUnavailable(str(result)))
                elif isinstance(result, Exception):
                    waiter.set_exception(result)
                else:
                    waiter.set_result(result)


async def guard(call: Awaitable[T]) -> T:
    """Await a redis-py call; a Redis failure becomes QueueUnavailable."""
    try:
        return await call
    except RedisError as exc:
        raise QueueUnavailable(f"redis: {type(exc).__name__}: {exc}") from exc


class Keys:
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    @staticmethod
    def partition_of(conversation: str) -> int:
        return zlib.crc32(conversation.encode()) % PARTITIONS

    def _tag(self, partition: int) -> str:
        return f"{self.prefix}:{{p{partition:02d}}}"

    def ready(self, partition: int) -> str:
        return f"{self._tag(partition)}:ready"

    def body(self, partition: int) -> str:
        return f"{self._tag(partition)}:body"

    def delayed(self, partition: int) -> str:
        return f"{self._tag(partition)}:delayed"

    def dead(self, partition: int) -> str:
        return f"{self._tag(partition)}:dead"

    def pause(self, partition: int) -> str:
        return f"{self._tag(partition)}:pause"

    def dead_codes(self, partition: int) -> str:
        return f"{self._tag(partition)}:deadcodes"

    def failures(self, partition: int, hour: int) -> str:
        return f"{self._tag(partition)}:failures:{hour}"

    def mailbox(self, partition: int, conversation: str) -> str:
        return f"{self._tag(partition)}:mbox:{conversation}"

    def seen(self, partition: int, message_id: str) -> str:
        return f"{self._tag(partition)}:seen:{message_id}"

    def record(self, kind: str, key: str) -> str:
        return f"{self.prefix}:rec:{kind}:{key}"

    def pattern(self) -> str:
        """Matches every key relay writes under this prefix (for tests and tooling)."""
        return f"{self.prefix}:*"


@dataclass(frozen=True)
class Token:
    """A claim on one conversation: its head message is this worker's to deliver."""

    partition: int
    entry_id: str
    conversation: str
    takeovers: int = 0  # how often this claim was taken from a silent worker


@dataclass(frozen=True)
class Head:
    """What a token points at: its conversation's first message id and envelope.

    message_id "" means the mailbox is empty (a stray token); envelope None with an id means
    the stored message is missing or unreadable and can only be dropped.
    """

    token: Token
    message_id: str
    envelope: Envelope | None
    paused_until: float = 0.0  # epoch seconds; Letta asked every worker to wait until then


@dataclass(frozen=True)
class DeadEntry:
    partition: int
    entry_id: str
    client_message_id: str
    reason: str
    code: str
    at: float
    envelope: Envelope


@dataclass(frozen=True)
class Depth:
    ready: int  # conversations waiting to be read
    in_flight: int  # conversations claimed by a worker
    delayed: int  # conversations waiting for a retry time
    dead: int  # dead letters


@dataclass(frozen=True)
class QueueStats:
    """A snapshot for operators (`relay status`, metrics). Counts are messages."""

    ready: int  # waiting for their turn: neither being delivered nor parked for a retry
    delayed: int  # parked until a retry time (the head of each parked conversation)
    in_flight: int  # being delivered by a worker (the head of each claimed conversation)
    dead: int  # dead letters
    oldest_waiting_age: float | None  # seconds since the oldest undelivered message entered the queue
    dead_by_reason: dict[str, int]  # dead letters by code: "http_400", "expired", "unresolved", …
    failures_by_destination: dict[str, int]  # failed attempts in the last FAILURE_WINDOW_HOURS,
    #                                          by Destination.describe()

    @classmethod
    def from_dict(cls, data: Any) -> QueueStats:
        """The inverse of dataclasses.asdict (the admin API's JSON); ValueError if malformed."""
        try:
            age = data["oldest_waiting_age"]
            return cls(ready=int(data["ready"]), delayed=int(data["delayed"]),
                       in_flight=int(data["in_flight"]), dead=int(data["dead"]),
                       oldest_waiting_age=None if age is None else float(age),
                       dead_by_reason={str(k): int(v) for k, v in data["dead_by_reason"].items()},
                       failures_by_destination={str(k): int(v) for k, v in data["failures_by_destination"].items()})
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"not queue stats: {exc!r}") from None


def connect(url: str, *, socket_timeout: float = 10.0) -> aioredis.Redis:
    """A client for REDIS_URL. The timeout bounds every call (blocking reads use 1 s)."""
    return aioredis.Redis.from_url(url, decode_responses=True, socket_timeout=socket_timeout,
                                   socket_connect_timeout=3.0, health_check_interval=30)


def _load_scripts() -> dict[str, str]:
    folder = resources.files("relay") / "lua"
    lib = (folder / "_lib.lua").read_text(encoding="utf-8")
    names = ("enqueue", "fetch", "finish", "advance", "retry", "promote", "renew", "replay", "leave", "pause",
             "reclaim", "stats", "oldest")
    return {name: lib + (folder / f"{name}.lua").read_text(encoding="utf-8") for name in names}


_SCRIPTS = _load_scripts()


class Queue:
    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        prefix: str = "relay",
        consumer: str = "",
        dedup_window: float = 96 * 3600.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.redis = redis
        self.keys = Keys(prefix)
        self.consumer = consumer
        self.dedup_ms = int(dedup_window * 1000)
        self.clock = clock
        self._scripts = {name: redis.register_script(src) for name, src in _SCRIPTS.items()}
        self._writes: _GroupCommit[list[Envelope], list[bool]] = _GroupCommit(self._write)
        self._calls: _GroupCommit[tuple[str, list[str], list[Any]], Any] = _GroupCommit(self._evalsha_many)

    async def _run(self, script: str, keys: list[str], args: list[Any]) -> Any:
        """One script call. Calls made while a round trip is out go together in the next one
        (one pipeline), so a busy worker's acks, fetches and retries share round trips."""
        return await self._calls.submit((script, keys, args))

    # -- setup and health ------------------------------------------------------------------

    async def ping(self) -> None:
        await guard(self.redis.ping())

    async def durability_warnings(self) -> list[str]:
        """What in the server's configuration could lose queued work (empty when none; also when
        CONFIG is not allowed, as on some managed services, which then answer for it)."""
        try:
            config = await self.redis.config_get("maxmemory*")
            config.update(await self.redis.config_get("appendonly"))
            config.update(await self.redis.config_get("save"))
        except RedisError:
            return []
        warnings = []
        policy = config.get("maxmemory-policy", "noeviction")
        if policy != "noeviction":
            warnings.append(f"maxmemory-policy is {policy}: when Redis fills up it may evict queued messages "
                            "or de-duplication markers; set maxmemory-policy noeviction")
        if config.get("appendonly") != "yes":
            snapshots = "snapshots only" if config.get("save") else "no persistence at all"
            warnings.append(f"appendonly is off ({snapshots}): a Redis restart loses recently accepted "
                            "messages; set appendonly yes (appendfsync everysec or always)")
        return warnings

    async def ensure_groups(self) -> None:
        """Create each partition's stream and consumer group (from the start: id 0)."""
        for partition in range(PARTITIONS):
            try:
                await self.redis.xgroup_create(self.keys.ready(partition), GROUP, id="0", mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise QueueUnavailable(f"redis: {exc}") from exc
            except RedisError as exc:
                raise QueueUnavailable(f"redis: {type(exc).__name__}: {exc}") from exc

    # -- ingest ----------------------------------------------------------------------------

    async def enqueue(self, envelope: Envelope) -> bool:
        """Store one message durably. False when its id was already accepted (a redelivery)."""
        [queued] = await self.enqueue_all([envelope])
        return queued

    async def enqueue_all(self, envelopes: list[Envelope]) -> list[bool]:
        """Store messages for one conversation atomically, in order; False for each duplicate.

        Concurrent callers are written together (a group commit): one pipelined round trip per
        flush, one script call per partition. Each caller returns once its own write is done.
        """
        conversation = envelopes[0].destination.conversation_key
        if any(e.destination.conversation_key != conversation for e in envelopes):
            raise ValueError("enqueue_all takes messages for one conversation")
        return await self._writes.submit(envelopes)

    async def _write(self, batches: list[list[Envelope]]) -> list[list[bool] | Exception]:
        """One round trip: per partition, one enqueue call with its messages in arrival order."""
        envelopes = [e for batch in batches for e in batch]
        by_partition: dict[int, list[int]] = {}
        for index, envelope in enumerate(envelopes):
            by_partition.setdefault(self.keys.partition_of(envelope.destination.conversation_key), []).append(index)
        calls = []
        for p, indexes in by_partition.items():
            keys, args = [self.keys.body(p), self.keys.ready(p)], [self.dedup_ms]
            for i in indexes:
                e = envelopes[i]
                conversation = e.destination.conversation_key
                keys += [self.keys.seen(p, e.client_message_id), self.keys.mailbox(p, conversation)]
                args += [e.client_message_id, encode(e), conversation]
            calls.append((keys, args))
        results = await self._evalsha_batch("enqueue", calls)
        flags = [False] * len(envelopes)
        for (p, indexes), result in zip(by_partition.items(), results):
            for i, flag in zip(indexes, result):
                flags[i] = flag == 1
        answers = iter(flags)
        return [list(islice(answers, len(batch))) for batch in batches]

    async def _evalsha_batch(self, name: str, calls: list[tuple[list[str], list[Any]]]) -> list[Any]:
        """Run one script several times in one round trip; raise if any call failed."""
        results = await self._evalsha_many([(name, keys, args) for keys, args in calls])
        for result in results:
            if isinstance(result, Exception):
                raise result
        return results

    async def _evalsha_many(self, calls: list[tuple[str, list[str], list[Any]]]) -> list[Any]:
        """Script calls in one pipelined round trip; each result, or a QueueUnavailable for a
        call that failed. (redis-py's pipelines ask SCRIPT EXISTS first, an extra round trip;
        this loads a script only when Redis answers NOSCRIPT, e.g. after a restart.)"""
        results = await self._pipelined(calls)
        unknown = [i for i, result in enumerate(results) if isinstance(result, NoScriptError)]
        if unknown:
            for name in {calls[i][0] for i in unknown}:
                await guard(self.redis.script_load(self._scripts[name].script))
            for i, result in zip(unknown, await self._pipelined([calls[i] for i in unknown])):
                results[i] = result
        return [QueueUnavailable(f"redis: {type(r).__name__}: {r}") if isinstance(r, Exception) else r
                for r in results]

    async def _pipelined(self, calls: list[tuple[str, list[str], list[Any]]]) -> list[Any]:
        pipe = self.redis.pipeline(transaction=False)
        for name, keys, args in calls:
            pipe.execute_command("EVALSHA", self._scripts[name].sha, len(keys), *keys, *args)
        return list(await guard(pipe.execute(raise_on_error=False)))

    # -- worker ----------------------------------------------------------------------------

    async def read(self, partition: int, count: int, block_ms: int) -> list[Token]:
        """New tokens for this consumer; blocks up to block_ms when there are none."""
        stream = self.keys.ready(partition)
        try:
            reply = await self.redis.xreadgroup(GROUP, self.consumer, {stream: ">"}, count=count, block=block_ms)
        except ResponseError as exc:
            if "NOGROUP" in str(exc):  # Redis lost its data (restart without persistence)
                await self.ensure_groups()
                return []
            raise QueueUnavailable(f"redis: {exc}") from exc
        except RedisError as exc:
            raise QueueUnavailable(f"redis: {type(exc).__name__}: {exc}") from exc
        tokens = []
        for _stream, entries in reply or []:
            tokens.extend(Token(partition, entry_id, fields["c"]) for entry_id, fields in entries)
        return tokens

    async def reclaim(self, partition: int, min_idle: float, limit: int = 100) -> list[Token]:
        """Take over tokens whose worker has been silent for min_idle seconds (XAUTOCLAIM)."""
        flat = await self._run("reclaim", [self.keys.ready(partition)],
                               [GROUP, self.consumer, int(min_idle * 1000), limit])
        return [Token(partition, flat[i], flat[i + 1], takeovers=max(0, int(flat[i + 2]) - 1))
                for i in range(0, len(flat), 3)]

    @staticmethod
    def _by_partition(tokens: list[Token]) -> dict[int, list[Token]]:
        groups: dict[int, list[Token]] = {}
        for token in tokens:
            groups.setdefault(token.partition, []).append(token)
        return groups

    async def fetch(self, tokens: list[Token]) -> list[Head]:
        """Each token's head message: one script call per partition, all in one round trip."""
        out: list[Head] = []
        groups = self._by_partition(tokens)
        replies = await asyncio.gather(*(
            self._run("fetch", [self.keys.body(p), self.keys.pause(p),
                                *(self.keys.mailbox(p, t.conversation) for t in group)], [])
            for p, group in groups.items()))
        for group, (pause, *flat) in zip(groups.values(), replies):
            paused_until = int(pause) / 1000 if pause else 0.0
            for i, token in enumerate(group):
                message_id, raw = flat[2 * i], flat[2 * i + 1]
                out.append(Head(token, message_id, self._decode(token, raw) if raw else None, paused_until))
        return out

    async def pause_all(self, until: float) -> None:
        """Hold every worker's deliveries until `until` (epoch seconds): every partition, one round trip."""
        until_ms = int(until * 1000)
        ttl_ms = max(1, until_ms - int(self.clock() * 1000))
        await self._evalsha_batch("pause", [([self.keys.pause(p)], [until_ms, ttl_ms]) for p in range(PARTITIONS)])

    def _decode(self, token: Token, raw: str) -> Envelope | None:
        try:
            return decode(raw)
        except ValueError as exc:
            log.error("unreadable envelope partition=%s conversation=%s error=%s",
                      token.partition, token.conversation, exc)
            return None

    async def pause_of(self, partition: int) -> float:
        """The partition's shared pause (epoch seconds; 0 when none). A fetch of no mailboxes, so
        the workers' checks before each delivery share round trips with their acks."""
        [pause] = await self._run("fetch", [self.keys.body(partition), self.keys.pause(partition)], [])
        return int(pause) / 1000 if pause else 0.0

    async def done(self, token: Token, message_id: str) -> bool:
        """The head message was delivered. False if another worker took the token over."""
        return await self._finish(token, message_id, [])

    async def advance(self, token: Token, message_id: str) -> Head | bool:
        """The head message was delivered; keep the claim for the conversation's next message.

        Returns that next message's Head (same stream entry, takeovers 0), True when the
        conversation is empty (the token is retired, as done() does), or False if another
        worker took the token over. One script call, so a busy conversation costs no read or
        fetch per message."""
        p = token.partition
        keys = [self.keys.ready(p), self.keys.mailbox(p, token.conversation), self.keys.body(p), self.keys.pause(p)]
        reply = await self._run("advance", keys, [GROUP, self.consumer, token.entry_id, message_id])
        if len(reply) == 1:
            return reply[0] == 1
        _, following, raw, pause = reply
        token = Token(p, token.entry_id, token.conversation)
        return Head(token, following, self._decode(token, raw) if raw else None,
                    int(pause) / 1000 if pause else 0.0)

    async def dead_letter(self, token: Token, envelope: Envelope, reason: str, code: str) -> bool:
        at_ms = int(self.clock() * 1000)
        return await self._finish(token, envelope.client_message_id,
                                  [reason, code, at_ms, encode(envelope), *self._failure_args(envelope)])

    async def _finish(self, token: Token, message_id: str, dead: list[Any]) -> bool:
        p = token.partition
        keys = [self.keys.ready(p), self.keys.mailbox(p, token.conversation), self.keys.body(p),
                self.keys.dead(p), self.keys.dead_codes(p), self.keys.failures(p, self._hour())]
        args = [GROUP, self.consumer, token.entry_id, message_id, token.conversation, *dead]
        return await self._run("finish", keys, args) == 1

    def _hour(self) -> int:
        return int(self.clock() // 3600)

    @staticmethod
    def _failure_args(envelope: Envelope | None) -> list[Any]:
        """Where a failed attempt is counted, and how long its hourly bucket is kept."""
        return [envelope.destination.describe() if envelope else "", (FAILURE_WINDOW_HOURS + 1) * 3600 * 1000]

    async def retry(self, token: Token, envelope: Envelope | None, due: float) -> bool:
        """Park the conversation until `due` (epoch seconds). envelope=None hands it back as is."""
        p = token.partition
        keys = [self.keys.ready(p), self.keys.body(p), self.keys.delayed(p), self.keys.failures(p, self._hour())]
        message_id = envelope.client_message_id if envelope else ""
        stored = encode(envelope) if envelope else ""
        args = [GROUP, self.consumer, token.entry_id, message_id, stored, int(due * 1000), token.conversation,
                *self._failure_args(envelope)]
        return await self._run("retry", keys, args) == 1

    async def renew(self, tokens: list[Token]) -> list[Token]:
        """Reset the idle time of tokens still ours; return those another worker took over.
        One script call per partition, all in one round trip."""
        groups = self._by_partition(tokens)
        replies = await asyncio.gather(*(
            self._run("renew", [self.keys.ready(p)], [GROUP, self.consumer, *(t.entry_id for t in group)])
            for p, group in groups.items()))
        lost: list[Token] = []
        for group, reply in zip(groups.values(), replies):
            gone = set(reply)
            lost.extend(t for t in group if t.entry_id in gone)
        return lost

    async def promote(self, partition: int, now: float, limit: int = 500) -> tuple[int, float | None]:
        """Release conversations whose retry time has come. Returns (moved, next due or None)."""
        keys = [self.keys.delayed(partition), self.keys.ready(partition)]
        moved, following = await self._run("promote", keys, [int(now * 1000), limit])
        following = float(following)
        return int(moved), (following / 1000 if following >= 0 else None)

    async def leave(self) -> None:
        """Remove this consumer from every partition's group where it holds nothing."""
        for p in range(PARTITIONS):
            await self._run("leave", [self.keys.ready(p)], [GROUP, self.consumer])

    # -- records -----------------------------------------------------------------------------

    async def create_record(self, kind: str, key: str, value: str, ttl: float) -> str | None:
        """Store `value` unless the record exists; return the existing value if it does."""
        name = self.keys.record(kind, key)
        if await guard(self.redis.set(name, value, nx=True, px=int(ttl * 1000))):
            return None
        return await guard(self.redis.get(name)) or None

    async def put_record(self, kind: str, key: str, value: str, ttl: float) -> None:
        """Store `value`, replacing any record there, with a fresh expiry: one round trip."""
        await guard(self.redis.set(self.keys.record(kind, key), value, px=int(ttl * 1000)))

    async def update_record(self, kind: str, key: str, value: str) -> bool:
        """Replace an existing record, keeping its expiry. False if it is gone."""
        return bool(await guard(self.redis.set(self.keys.record(kind, key), value, xx=True, keepttl=True)))

    async def record(self, kind: str, key: str) -> str | None:
        return await guard(self.redis.get(self.keys.record(kind, key)))

    async def delete_record(self, kind: str, key: str) -> None:
        await guard(self.redis.delete(self.keys.record(kind, key)))

    # -- dead letters and inspection -------------------------------------------------------

    async def dead_letters(self) -> list[DeadEntry]:
        entries: list[DeadEntry] = []
        for p in range(PARTITIONS):
            for entry_id, fields in await guard(self.redis.xrange(self.keys.dead(p))):
                try:
                    envelope = decode(fields["envelope"])
                except (KeyError, ValueError):
                    log.error("unreadable dead letter partition=%s entry=%s", p, entry_id)
                    continue
                entries.append(DeadEntry(p, entry_id, fields["id"], fields.get("reason", ""),
                                         fields.get("code", ""), int(fields.get("at", 0)) / 1000, envelope))
        return sorted(entries, key=lambda e: e.at)

    async def dead_by_id(self, ids: list[str] | None) -> tuple[list[DeadEntry], list[str]]:
        """The dead letters with these client_message_ids (all when None), and ids not found."""
        entries = await self.dead_letters()
        if ids is None:
            return entries, []
        wanted = set(ids)
        chosen = [e for e in entries if e.client_message_id in wanted]
        return chosen, sorted(wanted - {e.client_message_id for e in chosen})

    async def replay(self, entry: DeadEntry) -> bool:
        """Put a dead letter back in its conversation, same id, fresh retry budget."""
        envelope = entry.envelope.replayed(self.clock())
        conversation = envelope.destination.conversation_key
        p = entry.partition
        keys = [self.keys.dead(p), self.keys.body(p), self.keys.mailbox(p, conversation), self.keys.ready(p)]
        args = [entry.entry_id, envelope.client_message_id, encode(envelope), conversation]
        return await self._run("replay", keys, args) == 1

    async def drop(self, entry: DeadEntry) -> bool:
        return await guard(self.redis.xdel(self.keys.dead(entry.partition), entry.entry_id)) == 1

    async def depth(self) -> Depth:
        ready = in_flight = delayed = dead = 0
        for p in range(PARTITIONS):
            pipe = self.redis.pipeline(transaction=False)
            pipe.xlen(self.keys.ready(p))
            pipe.xpending(self.keys.ready(p), GROUP)
            pipe.zcard(self.keys.delayed(p))
            pipe.xlen(self.keys.dead(p))
            length, pending, waiting, dead_count = await guard(pipe.execute())
            in_flight += pending["pending"]
            ready += length - pending["pending"]
            delayed += waiting
            dead += dead_count
        return Depth(ready=ready, in_flight=in_flight, delayed=delayed, dead=dead)

    async def stats(self) -> QueueStats:
        """Numbers for operators, in two pipelined round trips over every partition.

        Each partition's counts are read atomically with the conversations holding a token;
        every undelivered message waits in such a conversation's mailbox, oldest at its head, so
        the oldest message is found among those heads (cost: one read per active conversation).
        """
        now = self.clock()
        hour = int(now // 3600)
        calls = [([self.keys.ready(p), self.keys.delayed(p), self.keys.dead(p), self.keys.body(p),
                   self.keys.dead_codes(p),
                   *(self.keys.failures(p, h) for h in range(hour - FAILURE_WINDOW_HOURS + 1, hour + 1))],
                  [GROUP, _DEAD_SCAN]) for p in range(PARTITIONS)]
        ready = delayed = in_flight = dead = 0
        by_reason: dict[str, int] = {}
        by_destination: dict[str, int] = {}
        heads: list[tuple[list[str], list[Any]]] = []
        for p, reply in enumerate(await self._evalsha_batch("stats", calls)):
            stored, claimed, parked, dead_count, codes, failures, conversations = reply
            in_flight += int(claimed)
            delayed += int(parked)
            ready += max(0, int(stored) - int(claimed) - int(parked))  # a stray token holds no message
            dead += int(dead_count)
            for counts, flat in ((by_reason, codes), (by_destination, failures)):
                for name, n in zip(flat[::2], flat[1::2]):
                    counts[name] = counts.get(name, 0) + int(n)
            for i in range(0, len(conversations), _HEADS_PER_CALL):
                mailboxes = [self.keys.mailbox(p, c) for c in conversations[i:i + _HEADS_PER_CALL]]
                heads.append(([self.keys.body(p), *mailboxes], []))
        earliest = [int(ms) for ms in (await self._evalsha_batch("oldest", heads) if heads else []) if int(ms) >= 0]
        age = max(0.0, now - min(earliest) / 1000) if earliest else None
        return QueueStats(ready=ready, delayed=delayed, in_flight=in_flight, dead=dead, oldest_waiting_age=age,
                          dead_by_reason=by_reason, failures_by_destination=by_destination)

    async def server_info(self) -> dict[str, Any]:
        """The server section of Redis INFO (redis_version, …), for `relay check`."""
        return dict(await guard(self.redis.info("server")))
