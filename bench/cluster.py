"""Cluster: relay on a Redis Cluster against relay on one Redis server, the same load on each.

Ingest: wrk against `relay serve` (as the ingest section), on one server, on a cluster of
three masters, and on three masters with a replica each and RELAY_REDIS_MIN_REPLICAS=1 (every
webhook waits for its replica). Drain: 20,000 messages over 1,000 conversations into nginx,
with one worker and with two. Every server keeps an AOF with fsync every second, as the
ingest and drain sections' server does. The cluster is the tests' own (tests/redis_cluster.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
from pathlib import Path
from typing import Iterator

import redis as sync_redis
from redis.cluster import RedisCluster as SyncCluster

from bench import drain, infra
from bench.workload import envelopes
from relay.queue import PARTITIONS, Keys, Queue
from relay.redis_nodes import open_redis
from tests.redis_cluster import Cluster


@contextlib.contextmanager
def redis_cluster(replicas: int = 0) -> Iterator[Cluster]:
    infra.need("redis-cli", "redis-tools")
    with tempfile.TemporaryDirectory(prefix="relay-bench-cluster-") as folder:
        cluster = Cluster(Path(folder), masters=3, replicas=replicas).start()
        try:
            yield cluster
        finally:
            cluster.stop()


def flush(url: str) -> None:
    """Empty every master (between measurements on the same servers)."""
    client = sync_redis.Redis.from_url(url)
    if client.info("cluster").get("cluster_enabled") == 1:
        SyncCluster.from_url(url).flushall(target_nodes=SyncCluster.PRIMARIES)
    else:
        client.flushall()


async def prefill(url: str, count: int, conversations: int) -> None:
    client = await open_redis(url)
    queue = Queue(client, prefix=drain.PREFIX, consumer="prefill")
    await queue.ensure_groups()
    batch = envelopes(count, conversations)
    for start in range(0, count, 2000):  # concurrent enqueues share round trips (group commit)
        await asyncio.gather(*(queue.enqueue(e) for e in batch[start:start + 2000]))
    await queue.aclose()
    await client.aclose()


def remaining_on(url: str):  # type: ignore[no-untyped-def]
    """drain.watch_drain's `remaining`, for one server or a cluster."""
    keys = Keys(drain.PREFIX)
    client = sync_redis.Redis.from_url(url)
    cluster = SyncCluster.from_url(url) if client.info("cluster").get("cluster_enabled") == 1 else None

    def remaining(_: sync_redis.Redis) -> int:
        if cluster is None:
            return drain.remaining(client)
        return sum(int(cluster.hlen(keys.body(p))) for p in range(PARTITIONS))
    return remaining


def drain_rate(url: str, letta: str, count: int, workers: int) -> float:
    """Messages/s from 10% to 90% delivered, `workers` worker processes at concurrency 32."""
    flush(url)
    asyncio.run(prefill(url, count, 1000))
    with contextlib.ExitStack() as stack:
        procs = [stack.enter_context(infra.relay_worker(url, letta, RELAY_CONCURRENCY="32")) for _ in range(workers)]
        return drain.watch_drain(url, count, procs[0], remaining=remaining_on(url)).rate


def ingest_rate(url: str, requests: list[str], seconds: float, **settings: str) -> infra.WrkResult:
    flush(url)
    with infra.relay_serve(url, **settings) as relay:
        infra.wrk(relay.url + "/hooks/generic", infra.signed_requests(2000), 1.0)  # warm-up
        return infra.wrk(relay.url + "/hooks/generic", requests, seconds)
