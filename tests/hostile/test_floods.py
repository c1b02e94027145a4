"""Floods against a real `relay serve` on loopback, with its default connection limits: huge
headers, many headers, trickling connections, unfinished huge headers, and big bodies without
signature headers. Each flood runs for a few seconds while the test samples the web process's
memory (RSS, from /proc) and open sockets and asks `/healthz`: memory stays within a budget,
sockets within RELAY_MAX_CONNECTIONS, every health check is answered, and the metrics show
which limit did the work."""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from typing import Any, Awaitable, Callable, Iterator

import httpx
import pytest

from relay.settings import Settings
from tests.hostile.served import Served, record_figures, relay_serve
from tests.support import delete_prefix, unique_prefix

pytestmark = pytest.mark.slow

FLOOD_SECONDS = 4.0
MIB = 1024 * 1024
#: Allowed growth of the web process's RSS over its warmed-up size during a flood. Unbounded, the
#: unfinished-header flood alone held 240 MiB; bounded, every flood stays within a few MiB of
#: connection buffers (max connections × max header bytes is 1.6 MiB at the defaults).
RSS_BUDGET = 40 * MIB
DEFAULTS = Settings()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, real_redis_url: str) -> Iterator[Served]:
    prefix = unique_prefix()
    try:
        with relay_serve(tmp_path_factory.mktemp("floods"), real_redis_url, prefix,
                         slack_api_url="http://127.0.0.1:9/api", slack_hooks_url="http://127.0.0.1:9/hooks/",
                         RELAY_LOG_LEVEL="WARNING") as running:
            for _ in range(50):  # warm up: imports, scripts, buffers
                httpx.post(f"{running.url}/hooks/generic", content=b"{}", timeout=5)
            yield running
    finally:
        import redis.asyncio as aioredis

        async def cleanup() -> None:
            client = aioredis.Redis.from_url(real_redis_url)
            await delete_prefix(client, prefix)
            await client.aclose()
        asyncio.run(cleanup())


async def open_connection(served: Served) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.wait_for(asyncio.open_connection("127.0.0.1", served.port), 5)


async def answer(reader: asyncio.StreamReader) -> bytes:
    """The status line, or b"" when the server closed first."""
    with contextlib.suppress(OSError, asyncio.IncompleteReadError, asyncio.TimeoutError):
        return await asyncio.wait_for(reader.readline(), 5)
    return b""


async def one_request(served: Served, data: bytes) -> bytes:
    reader, writer = await open_connection(served)
    try:
        writer.write(data)
        with contextlib.suppress(OSError):
            await writer.drain()
        return await answer(reader)
    finally:
        writer.close()


def workers(count: int) -> Callable[[Callable[[Served, float], Awaitable[None]]], Callable[[Served, float], Awaitable[None]]]:
    """Run a flood body in `count` concurrent tasks until the deadline."""
    def wrap(body: Callable[[Served, float], Awaitable[None]]) -> Callable[[Served, float], Awaitable[None]]:
        async def flood(served: Served, deadline: float) -> None:
            async def loop() -> None:
                while time.monotonic() < deadline:
                    with contextlib.suppress(OSError, asyncio.TimeoutError):
                        await body(served, deadline)
            await asyncio.gather(*(loop() for _ in range(count)))
        return flood
    return wrap


@workers(16)
async def huge_headers(served: Served, deadline: float) -> None:
    await one_request(served, b"GET /healthz HTTP/1.1\r\nHost: relay\r\nX-Big: " + b"a" * MIB + b"\r\n\r\n")


@workers(16)
async def many_headers(served: Served, deadline: float) -> None:
    fields = b"".join(b"X-%d: 1\r\n" % i for i in range(2000))
    await one_request(served, b"GET /healthz HTTP/1.1\r\nHost: relay\r\n" + fields + b"\r\n")


@workers(8)
async def unfinished_huge_headers(served: Served, deadline: float) -> None:
    """The issue's flood: 8 connections each sending a 30 MiB header that never ends."""
    _, writer = await open_connection(served)
    try:
        writer.write(b"GET / HTTP/1.1\r\nHost: relay\r\nX-Endless: ")
        chunk = b"a" * (64 * 1024)
        for _ in range(30 * 16):
            if time.monotonic() > deadline:
                break
            writer.write(chunk)
            await writer.drain()
    finally:
        writer.close()


@workers(16)
async def big_unsigned_bodies(served: Served, deadline: float) -> None:
    for path in ("/hooks/generic", "/slack/events", "/github/webhook", "/slack/interactions"):
        head = (f"POST {path} HTTP/1.1\r\nHost: relay\r\nContent-Type: application/json\r\n"
                f"Content-Length: {MIB}\r\n\r\n").encode()
        status = await one_request(served, head + b"x" * MIB)
        assert status == b"" or status.startswith(b"HTTP/1.1 401"), status


async def trickling(served: Served, deadline: float) -> None:
    """400 connections, each sending its headers a byte at a time (slowloris)."""
    async def trickle() -> None:
        with contextlib.suppress(OSError, asyncio.TimeoutError):
            _, writer = await open_connection(served)
            try:
                writer.write(b"POST /hooks/generic HTTP/1.1\r\n")
                while time.monotonic() < deadline and not writer.is_closing():
                    writer.write(b"X")
                    await writer.drain()
                    await asyncio.sleep(0.25)
            finally:
                writer.close()

    tasks = []
    for _ in range(400):
        tasks.append(asyncio.create_task(trickle()))
        await asyncio.sleep(0.005)
    await asyncio.gather(*tasks)


FLOODS: dict[str, tuple[Callable[[Served, float], Awaitable[None]], str]] = {
    "huge headers": (huge_headers, "header_too_large"),
    "many headers": (many_headers, "too_many_headers"),
    "trickling connections": (trickling, "evicted"),
    "unfinished huge headers": (unfinished_huge_headers, "header_too_large"),
    "big bodies without signature headers": (big_unsigned_bodies, "unread_body"),
}


def closed_by(served: Served, reason: str) -> float:
    text = httpx.get(f"{served.url}/metrics", timeout=5).text
    match = re.search(rf'^relay_connections_closed_total{{reason="{reason}"}} (\S+)$', text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


@pytest.mark.parametrize("kind", list(FLOODS))
def test_a_flood_leaves_memory_and_sockets_bounded_and_healthz_answering(kind: str, served: Served) -> None:
    flood, reason = FLOODS[kind]
    baseline_rss, baseline_sockets = served.rss(), served.sockets()
    closed_before = closed_by(served, reason)
    samples: dict[str, Any] = {"rss": [], "sockets": [], "health": []}

    async def watch(deadline: float) -> None:
        while time.monotonic() < deadline:
            samples["rss"].append(served.rss())
            samples["sockets"].append(served.sockets())
            samples["health"].append(await asyncio.to_thread(served.healthy, 3.0))
            await asyncio.sleep(0.1)

    async def run() -> None:
        deadline = time.monotonic() + FLOOD_SECONDS
        await asyncio.wait_for(asyncio.gather(flood(served, deadline), watch(deadline)), FLOOD_SECONDS + 30)

    asyncio.run(run())
    growth = max(samples["rss"]) - baseline_rss
    assert growth < RSS_BUDGET, f"{kind}: RSS grew {growth / MIB:.1f} MiB"
    assert max(samples["sockets"]) <= baseline_sockets + DEFAULTS.max_connections + 5, samples["sockets"]
    assert len(samples["health"]) >= 10 and all(samples["health"]), samples["health"]
    assert served.healthy()
    assert closed_by(served, reason) > closed_before  # the limit did the work
    log = served.log()
    assert "Traceback" not in log and '"level":"ERROR"' not in log
    record_figures(f"flood: {kind}", {"seconds": FLOOD_SECONDS, "rss_growth_mib": round(growth / MIB, 1),
                                      "rss_peak_mib": round(max(samples["rss"]) / MIB), "sockets_peak": max(samples["sockets"]),
                                      "health_checks_answered": f"{sum(samples['health'])}/{len(samples['health'])}",
                                      f"closed_{reason}": closed_by(served, reason) - closed_before})
