"""Drain: how fast one `relay worker` empties a pre-filled queue into a fast receiver, against
the client-side ceiling (the same bodies posted by a plain loop at the same concurrency, no queue).

The rate is read over the steady middle of the run (from 10% to 90% delivered), so neither the
worker's start-up nor the last stragglers count.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

import redis as sync_redis

from bench import infra
from bench.workload import envelopes
from relay.queue import PARTITIONS, Keys, Queue, connect

PREFIX = "bench"


async def prefill(redis_url: str, count: int, conversations: int) -> None:
    client = connect(redis_url)
    queue = Queue(client, prefix=PREFIX, consumer="prefill")
    await queue.ensure_groups()
    batch = envelopes(count, conversations)
    for start in range(0, count, 2000):  # concurrent enqueues share round trips (group commit)
        await asyncio.gather(*(queue.enqueue(e) for e in batch[start:start + 2000]))
    await client.aclose()


def remaining(client: sync_redis.Redis) -> int:
    """Messages not yet delivered: each lives in its partition's body hash until acked."""
    keys = Keys(PREFIX)
    pipe = client.pipeline(transaction=False)
    for p in range(PARTITIONS):
        pipe.hlen(keys.body(p))
    return sum(pipe.execute())


@dataclass
class DrainResult:
    rate: float  # messages/s over the steady middle of the run
    seconds: float
    rss_mib: float = 0.0


def watch_drain(redis_url: str, count: int, proc: infra.Process | None = None, timeout: float = 300,
                remaining: Callable[[sync_redis.Redis], int] = remaining) -> DrainResult:
    client = sync_redis.Redis.from_url(redis_url)
    marks: dict[float, float] = {}
    start = time.perf_counter()
    rss = 0.0
    while time.perf_counter() - start < timeout:
        left = remaining(client)
        done = count - left
        for fraction in (0.1, 0.9):
            if fraction not in marks and done >= fraction * count:
                marks[fraction] = time.perf_counter()
        if proc is not None:
            rss = max(rss, proc.rss_mib())
        if left == 0:
            break
        time.sleep(0.02)
    else:
        raise SystemExit(f"bench: drain did not finish ({remaining(client)} left)")
    client.close()
    steady = marks[0.9] - marks[0.1]
    return DrainResult(rate=0.8 * count / steady if steady > 0 else float("inf"),
                       seconds=time.perf_counter() - start, rss_mib=rss)


def relay_drain(redis_url: str, letta_url: str, count: int, conversations: int,
                concurrency: int = 32, **settings: str) -> DrainResult:
    asyncio.run(prefill(redis_url, count, conversations))
    with infra.relay_worker(redis_url, letta_url, RELAY_CONCURRENCY=str(concurrency), **settings) as proc:
        return watch_drain(redis_url, count, proc)


# -- the client-side ceiling: the same bodies, posted by a plain loop --------------------------------

Poster = Callable[[str, dict[str, Any]], Awaitable[int]]


async def _post_all(post: Poster, bodies: list[dict[str, Any]], concurrency: int) -> float:
    path = "/v1/environments/conn-bench/messages"
    cursor = iter(bodies)

    async def lane() -> None:
        for body in cursor:
            status = await post(path, body)
            if status != 200:
                raise SystemExit(f"bench: receiver answered {status}")

    await post(path, bodies[0])  # warm one connection
    start = time.perf_counter()
    await asyncio.gather(*(lane() for _ in range(concurrency)))
    return len(bodies) / (time.perf_counter() - start)


async def _httpx_loop(url: str, bodies: list[dict[str, Any]], concurrency: int, transport: str) -> float:
    import httpx

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    if transport == "aiohttp-transport":
        from httpx_aiohttp import AiohttpTransport

        client = httpx.AsyncClient(base_url=url, transport=AiohttpTransport(limits=limits))
    else:
        client = httpx.AsyncClient(base_url=url, limits=limits)

    async def post(path: str, body: dict[str, Any]) -> int:
        response = await client.post(path, json=body, headers={"Authorization": "Bearer bench-key"})
        return response.status_code

    try:
        return await _post_all(post, bodies, concurrency)
    finally:
        await client.aclose()


async def _aiohttp_loop(url: str, bodies: list[dict[str, Any]], concurrency: int) -> float:
    import aiohttp

    async with aiohttp.ClientSession(base_url=url, connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        async def post(path: str, body: dict[str, Any]) -> int:
            async with session.post(path, json=body, headers={"Authorization": "Bearer bench-key"}) as response:
                await response.read()
                return response.status

        return await _post_all(post, bodies, concurrency)


async def _http1_loop(url: str, bodies: list[dict[str, Any]], concurrency: int) -> float:
    import orjson

    from relay.http1 import Http1Pool

    pool = Http1Pool(url, {"Authorization": "Bearer bench-key"}, max_connections=concurrency,
                     connect_timeout=5.0, answer_timeout=30.0)

    async def post(path: str, body: dict[str, Any]) -> int:
        return (await pool.request("POST", path, orjson.dumps(body))).status

    try:
        return await _post_all(post, bodies, concurrency)
    finally:
        await pool.aclose()


def client_ceiling(url: str, count: int, concurrency: int, client: str) -> float:
    """Requests/s of a plain loop (no queue) posting relay's request bodies at `concurrency`."""
    bodies = [e.request_body() for e in envelopes(count, 1000)]
    from relay.serving import run

    if client == "aiohttp":
        return run(_aiohttp_loop(url, bodies, concurrency))
    if client == "http1":
        return run(_http1_loop(url, bodies, concurrency))
    return run(_httpx_loop(url, bodies, concurrency, client))
