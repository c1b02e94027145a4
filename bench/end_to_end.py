"""End to end: latency from a webhook sent to its body received by the (timestamping) Letta
stand-in, at a fixed moderate rate, through a whole pipeline (relay, or the arq peer)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import statistics
import time
import uuid
from dataclasses import dataclass
from typing import Iterator

import aiohttp
import httpx

from bench import infra
from relay.sources.generic import signed_headers


@contextlib.contextmanager
def timestamping_receiver() -> Iterator[str]:
    port = infra.free_port()
    url = f"http://127.0.0.1:{port}"
    with infra.process(["-m", "bench.receiver", str(port)], infra.relay_env(), f"{url}/latencies"):
        yield url


@dataclass
class Latency:
    count: int
    p50_ms: float
    p99_ms: float
    max_ms: float


async def _send(ingest_url: str, rate: float, seconds: float) -> int:
    """Signed webhooks at `rate` per second, each stamped with its send time; returns how many."""
    total = int(rate * seconds)
    async with aiohttp.ClientSession() as session:
        async def one(n: int) -> None:
            body = json.dumps({"text": f"deploy {n} finished sent={time.time():.6f}"}).encode()
            headers = signed_headers(infra.HOOK_SECRET, f"msg_{uuid.uuid4().hex}", int(time.time()), body)
            async with session.post(f"{ingest_url}/hooks/generic", data=body,
                                    headers={**headers, "Content-Type": "application/json"}) as response:
                if response.status >= 300:
                    raise SystemExit(f"bench: ingest answered {response.status}: {await response.text()}")

        start, tasks = time.perf_counter(), []
        for n in range(total):
            await asyncio.sleep(max(0.0, start + n / rate - time.perf_counter()))
            tasks.append(asyncio.create_task(one(n)))
        await asyncio.gather(*tasks)
    return total


def measure(ingest_url: str, receiver_url: str, rate: float = 200.0, seconds: float = 10.0) -> Latency:
    httpx.delete(f"{receiver_url}/latencies")
    sent = asyncio.run(_send(ingest_url, rate, seconds))
    deadline = time.monotonic() + 60
    while True:
        latencies = httpx.get(f"{receiver_url}/latencies").json()
        if len(latencies) >= sent or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    if len(latencies) < sent:
        raise SystemExit(f"bench: only {len(latencies)} of {sent} messages arrived")
    ordered = sorted(latencies)
    return Latency(count=len(ordered), p50_ms=1000 * statistics.median(ordered),
                   p99_ms=1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))],
                   max_ms=1000 * ordered[-1])
