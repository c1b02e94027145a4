"""The Queue: ingest, claims, records and inspection over one Redis (or Redis Cluster)."""

from __future__ import annotations

import time
from typing import Any, Callable

from relay.messages import Envelope
from relay.queue.calls import GroupCommit, Lanes, guard
from relay.queue.claims import Claims
from relay.queue.ingest import Ingest
from relay.queue.inspection import Inspection
from relay.queue.keys import Keys
from relay.queue.model import Head, Token
from relay.queue.records import Records
from relay.redis_nodes import AnyRedis, Nodes


class Queue(Ingest, Claims, Records, Inspection):
    def __init__(
        self,
        redis: AnyRedis,
        *,
        prefix: str = "relay",
        consumer: str = "",
        dedup_window: float = 96 * 3600.0,
        clock: Callable[[], float] = time.time,
        min_replicas: int = 0,
        replica_timeout: float = 1.0,
    ) -> None:
        self.redis = redis
        self.nodes = Nodes(redis)
        self.keys = Keys(prefix)
        self.consumer = consumer
        self.dedup_ms = int(dedup_window * 1000)
        self.clock = clock
        self.min_replicas = min_replicas
        self.replica_timeout_ms = max(1, int(replica_timeout * 1000))
        self._writes: GroupCommit[list[Envelope], list[bool]] = GroupCommit(self._write)
        self._calls: Lanes[tuple[str, list[str], list[Any]], Any] = Lanes(
            self._evalsha_many, lambda call: self.nodes.name_of(call[1][0]))
        self._advances: Lanes[tuple[Token, str], Head | bool] = Lanes(
            self._advance_all, lambda item: self.nodes.name_of(self.keys.ready(item[0].partition)))

    async def ping(self) -> None:
        await guard(self.redis.ping())

    async def aclose(self) -> None:
        """Close the per-master clients (the main client belongs to whoever opened it)."""
        await self.nodes.aclose()
