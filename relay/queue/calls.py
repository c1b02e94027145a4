"""Script calls: the only way the queue changes Redis.

Calls made while a round trip to their master is out go together in the next one
(`GroupCommit`, one per master: `Lanes`); a batch goes as one pipeline to each master that owns
its keys (one server: one pipeline; after a slot moved, a batch can span masters), with WAIT
last on the same connection when the writes must be on replicas before anyone is told.
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass
from importlib import resources
from typing import Any, Awaitable, Callable, Generic, TypeVar

from redis.exceptions import (AskError, ClusterCrossSlotError, ConnectionError, MovedError, NoScriptError,
                              RedisError)
from redis.exceptions import TimeoutError as RedisTimeout

from relay.errors import QueueUnavailable
from relay.queue.keys import Keys
from relay.redis_nodes import AnyRedis, Nodes

T = TypeVar("T")
I = TypeVar("I")


class GroupCommit(Generic[I, T]):
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


class Lanes(Generic[I, T]):
    """A `GroupCommit` per lane (per master): a batch bound for one master never waits for
    another master's round trip. On one server every item is in the one lane ""."""

    def __init__(self, send: Callable[[list[I]], Awaitable[list[T | Exception]]],
                 lane_of: Callable[[I], str]) -> None:
        self._send, self._lane_of = send, lane_of
        self._lanes: dict[str, GroupCommit[I, T]] = {}

    async def submit(self, item: I) -> T:
        lane = self._lane_of(item)
        commit = self._lanes.get(lane)
        if commit is None:  # bounded: one per master name ever seen
            commit = self._lanes[lane] = GroupCommit(self._send)
        return await commit.submit(item)


async def guard(call: Awaitable[T]) -> T:
    """Await a redis-py call; a Redis failure becomes QueueUnavailable."""
    try:
        return await call
    except RedisError as exc:
        raise QueueUnavailable(f"redis: {type(exc).__name__}: {exc}") from exc


@dataclass(frozen=True)
class Script:
    source: str
    sha: str


def _load_scripts() -> dict[str, Script]:
    folder = resources.files("relay") / "lua"
    lib = (folder / "_lib.lua").read_text(encoding="utf-8")
    names = ("enqueue", "enqueue_bound", "fetch", "finish", "advance", "retry", "promote", "renew", "replay", "leave",
             "pause", "reclaim", "stats", "oldest", "bind", "rebind", "seen")
    sources = {name: lib + (folder / f"{name}.lua").read_text(encoding="utf-8") for name in names}
    return {name: Script(src, hashlib.sha1(src.encode()).hexdigest()) for name, src in sources.items()}


SCRIPTS = _load_scripts()


class ScriptCalls:
    """What every part of the Queue shares: the client, the key names, and script calls."""

    redis: AnyRedis
    nodes: Nodes
    keys: Keys
    consumer: str
    dedup_ms: int
    clock: Callable[[], float]
    min_replicas: int
    replica_timeout_ms: int
    _calls: Lanes[tuple[str, list[str], list[Any]], Any]

    async def _run(self, script: str, keys: list[str], args: list[Any]) -> Any:
        """One script call. Calls made while a round trip to their master is out go together in
        the next one (one pipeline), so a busy worker's acks, fetches and retries share round
        trips."""
        return await self._calls.submit((script, keys, args))

    async def _evalsha_batch(self, name: str, calls: list[tuple[list[str], list[Any]]], *,
                             durable: bool = False) -> list[Any]:
        """Run one script several times in one round trip; raise if any call failed."""
        results = await self._evalsha_many([(name, keys, args) for keys, args in calls], durable=durable)
        for result in results:
            if isinstance(result, Exception):
                raise result
        return results

    async def _evalsha_many(self, calls: list[tuple[str, list[str], list[Any]]], *,
                            durable: bool = False) -> list[Any]:
        """Script calls in one pipelined round trip per master; each result, or a
        QueueUnavailable for a call that failed. A script Redis does not know (after a restart
        or a failover) is loaded where it was missing and the call made again; a call that
        reached the wrong master (the slot moved) is made again once the slot map is fresh.

        durable: with min_replicas, each master's batch ends with WAIT, and its calls fail
        unless that many replicas confirm them in time."""
        results: list[Any] = [None] * len(calls)
        todo = list(range(len(calls)))
        for _ in range(3):
            groups: dict[str, list[int]] = {}
            for i in todo:
                groups.setdefault(self.nodes.name_of(calls[i][1][0]), []).append(i)
            if len(groups) == 1:  # one server, or one master: no task to spawn
                [(name, indexes)] = groups.items()
                replies = [await self._node_batch(name, [calls[i] for i in indexes], durable)]
            else:
                replies = await asyncio.gather(*(self._node_batch(name, [calls[i] for i in indexes], durable)
                                                 for name, indexes in groups.items()))
            for indexes, reply in zip(groups.values(), replies):
                for i, result in zip(indexes, reply):
                    results[i] = result
            todo = [i for i in todo if isinstance(results[i], (MovedError, AskError, NoScriptError))]
            if not todo:
                break
            if any(isinstance(results[i], (MovedError, AskError)) for i in todo):
                await self.nodes.refresh()
        return [self._unavailable(r) if isinstance(r, Exception) else r for r in results]

    def _unavailable(self, error: Exception) -> QueueUnavailable:
        if isinstance(error, QueueUnavailable):
            return error
        if not self.nodes.cluster and isinstance(error, (MovedError, ClusterCrossSlotError)):
            return QueueUnavailable("redis answered as a Redis Cluster, and relay took it for one server "
                                    "(RELAY_REDIS_CLUSTER=off, or Redis did not answer at start); "
                                    "set RELAY_REDIS_CLUSTER=on, or restart relay")
        return QueueUnavailable(f"redis: {type(error).__name__}: {error}")

    async def _node_batch(self, name: str, calls: list[tuple[str, list[str], list[Any]]], durable: bool) -> list[Any]:
        """One master's calls in one pipeline; WAIT last on the same connection when durable."""
        client = self.nodes.client(name)
        missing = {call[0] for call in calls}
        pipe = client.pipeline(transaction=False)
        for script, keys, args in calls:
            pipe.execute_command("EVALSHA", SCRIPTS[script].sha, len(keys), *keys, *args)
        waiting = durable and self.min_replicas > 0
        if waiting:
            pipe.execute_command("WAIT", self.min_replicas, self.replica_timeout_ms)
        try:
            replies = list(await pipe.execute(raise_on_error=False))
        except (ConnectionError, RedisTimeout) as exc:
            await self.nodes.refresh()  # a master may have failed over
            return [QueueUnavailable(f"redis {name or 'server'}: {type(exc).__name__}: {exc}")] * len(calls)
        except RedisError as exc:
            return [QueueUnavailable(f"redis: {type(exc).__name__}: {exc}")] * len(calls)
        if any(isinstance(r, NoScriptError) for r in replies):
            for script in missing:
                await guard(client.script_load(SCRIPTS[script].source))
        if waiting:
            confirmed = replies.pop()
            if isinstance(confirmed, Exception) or int(confirmed) < self.min_replicas:
                failure = QueueUnavailable(
                    f"redis {name or 'server'}: {confirmed} of the {self.min_replicas} replica(s) asked for "
                    f"confirmed the write within {self.replica_timeout_ms} ms")
                # A call that never ran (the slot moved, the script was unknown) keeps its own
                # error, so it is made again where it belongs; only a write that ran waits.
                return [r if isinstance(r, (NoScriptError, MovedError, AskError)) else failure for r in replies]
        return replies
