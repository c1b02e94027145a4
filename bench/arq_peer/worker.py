"""The peer's delivery: an arq worker whose one job POSTs an envelope's Letta body.

The send is relay's (`relay.letta.LettaClient`, one shared client, its pool sized to the
concurrency, as `relay worker` builds it) unless `--client httpx` asks for a plain
`httpx.AsyncClient` with httpx's default limits. The answer is judged by relay's own
`policy.decide`: delivered → the job succeeds; retry (5xx, 429, timeouts …) → arq's `Retry`
with relay's backoff; dead letter → the job fails. `max_jobs` is relay's concurrency, results
are kept for relay's dedup window (arq's de-duplication of finished jobs rests on them).

    python -m bench.arq_peer.worker REDIS_URL LETTA_URL [--client relay|httpx] [--poll-delay S]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import time
from typing import Any, Protocol
from urllib.parse import quote

import httpx
from arq import Retry
from arq.connections import RedisSettings
from arq.worker import create_worker, func

from bench.arq_peer.shared import CLIENTS, FUNCTION, POLL_DELAY, QUEUE, SETTINGS, Undeliverable
from relay import __version__, policy
from relay.letta import LettaClient
from relay.messages import decode
from relay.policy import Backoff, Delivered, Outcome, decide

API_KEY = "bench-key"  # what bench/infra.py gives relay_worker
#: relay gives up by age (policy's max_age), not by count; arq must not stop it first.
MAX_TRIES = 1_000_000


class Sender(Protocol):
    async def send(self, connection_id: str, body: dict[str, Any]) -> Outcome: ...
    async def aclose(self) -> None: ...


class PlainHttpx:
    """What an arq user would write: one httpx.AsyncClient, httpx's default pool limits."""

    def __init__(self, base_url: str, api_key: str) -> None:
        self._http = httpx.AsyncClient(
            base_url=base_url,
            headers={"Authorization": f"Bearer {api_key}", "User-Agent": f"relay/{__version__}"},
            timeout=httpx.Timeout(SETTINGS.letta_timeout, connect=min(SETTINGS.letta_timeout, 5.0)))

    async def send(self, connection_id: str, body: dict[str, Any]) -> Outcome:
        try:
            response = await self._http.post(f"/v1/environments/{quote(connection_id, safe='')}/messages", json=body)
        except httpx.TransportError as exc:
            return Outcome(error="timeout" if isinstance(exc, httpx.TimeoutException) else "transport",
                           detail=type(exc).__name__)
        return Outcome(status=response.status_code, body=response.text[:4000],
                       retry_after=response.headers.get("retry-after"))

    async def aclose(self) -> None:
        await self._http.aclose()


def make_sender(client: str, letta_url: str) -> Sender:
    if client == "relay":
        return LettaClient.from_settings(SETTINGS, base_url=letta_url, api_key=API_KEY)
    if client == "httpx":
        return PlainHttpx(letta_url, API_KEY)
    raise ValueError(f"client must be one of {', '.join(CLIENTS)}")


async def deliver(ctx: dict[str, Any], encoded: str) -> None:
    envelope = decode(encoded)
    sender: Sender = ctx["sender"]
    _, connection_id = envelope.destination.selector  # the bench routes name a connection_id
    outcome = await sender.send(connection_id, envelope.request_body())
    now = time.time()
    decision = decide(outcome, attempt=ctx["job_try"], age=now - envelope.queued_at,
                      max_age=SETTINGS.max_age_for(envelope.kind), now=now, backoff=ctx["backoff"], rng=ctx["rng"])
    if isinstance(decision, Delivered):
        return
    if isinstance(decision, policy.Retry):
        raise Retry(defer=max(0.0, decision.at - now))
    raise Undeliverable(decision.reason)


def worker_settings(redis_url: str, letta_url: str, *, client: str = "relay", poll_delay: float = POLL_DELAY,
                    max_jobs: int = SETTINGS.concurrency) -> dict[str, Any]:
    """arq WorkerSettings (as a dict, which arq takes as readily as a class)."""
    if client not in CLIENTS:
        raise ValueError(f"client must be one of {', '.join(CLIENTS)}")

    async def startup(ctx: dict[str, Any]) -> None:
        ctx["sender"] = make_sender(client, letta_url)
        ctx["backoff"] = Backoff(SETTINGS.retry_base, SETTINGS.retry_cap)
        ctx["rng"] = random.Random()

    async def shutdown(ctx: dict[str, Any]) -> None:
        await ctx["sender"].aclose()

    return {
        "functions": [func(deliver, name=FUNCTION, max_tries=MAX_TRIES)],
        "queue_name": QUEUE,
        "redis_settings": RedisSettings.from_dsn(redis_url),
        "max_jobs": max_jobs,
        "poll_delay": poll_delay,
        "keep_result": SETTINGS.dedup_window,
        "on_startup": startup,
        "on_shutdown": shutdown,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.arq_peer.worker")
    parser.add_argument("redis_url")
    parser.add_argument("letta_url")
    parser.add_argument("--client", choices=CLIENTS, default="relay")
    parser.add_argument("--poll-delay", type=float, default=POLL_DELAY)
    parser.add_argument("--max-jobs", type=int, default=SETTINGS.concurrency)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)  # relay's bench processes log at WARNING too
    import uvloop

    asyncio.set_event_loop(uvloop.new_event_loop())  # arq's Worker takes the current loop; relay runs on uvloop
    create_worker(worker_settings(args.redis_url, args.letta_url, client=args.client,
                                  poll_delay=args.poll_delay, max_jobs=args.max_jobs)).run()


if __name__ == "__main__":
    main()
