"""Prometheus metrics: one registry per process, and the `GET /metrics` endpoint.

Names follow Prometheus conventions (`relay_` prefix, `_total` counters, `_seconds`
histograms). Labels take a small fixed set of values (source, outcome, reason, status_class,
state, result), never ids or free text, so the number of series stays bounded.

Queue contents live in Redis, not in the process: `QueueGauges` reads `Queue.stats()` when
scraped (at most once a second, within a short timeout) and reports `relay_queue_up 0` when
Redis did not answer, rather than a stale number.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Callable, Iterator

import prometheus_client
from prometheus_client import (
    CollectorRegistry,
    Counter,
    GCCollector,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from relay.errors import BadRequest, BadSignature, QueueUnavailable, Rejected, TooLarge, UnsupportedMedia
from relay.queue import Queue, QueueStats

# Counters would each carry a second `…_created` series; nothing here reads them.
prometheus_client.disable_created_metrics()

#: The classic text format, which every Prometheus reads (relay's names need nothing newer).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: Answering a request, one Letta call: milliseconds to tens of seconds.
CALL_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
#: Waiting in the queue, end to end: retries and outages stretch these to hours.
WAIT_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 4 * 3600.0, 24 * 3600.0)

QUEUE_STATES = ("ready", "delayed", "in_flight", "dead")
_REJECT_REASONS: tuple[tuple[type[Rejected], str], ...] = (
    (BadSignature, "signature"), (TooLarge, "too_large"), (UnsupportedMedia, "media_type"), (BadRequest, "bad_request"),
)


def status_class(status: int | None, device_answered: bool = False) -> str:
    """An HTTP status → "2xx" … "5xx"; the device's own answer on the status socket → "device";
    no answer at all (timeout, refused, unresolved) → "error"."""
    if device_answered:
        return "device"
    return f"{status // 100}xx" if status is not None and 100 <= status <= 599 else "error"


def reject_reason(exc: Rejected) -> str:
    for kind, label in _REJECT_REASONS:
        if isinstance(exc, kind):
            return label
    return "other"


#: Frame types counted by name; anything else counts as "other" (labels stay a bounded set).
WATCHED_FRAMES = frozenset({"control_request", "update_device_status", "update_loop_status", "turn_finished",
                            "stream_delta", "input_accepted", "sync_response", "update_queue",
                            "update_subagent_state"})
#: Socket Mode envelope types counted by name; anything else counts as "other".
SOCKET_ENVELOPES = frozenset({"events_api", "slash_commands", "interactive"})


class Metrics:
    """Every metric one relay process exports, in a registry of its own (not the global one)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "relay_requests", "Requests at relay's doors by source and outcome (accepted, duplicate, ignored, "
            "unavailable, rejected); reason says why one was rejected", ["source", "outcome", "reason"], registry=r)
        self.connections_closed = Counter(
            "relay_connections_closed", "Web connections relay's limits closed, by reason (header_too_large, "
            "too_many_headers, header_timeout, body_timeout, unread_body, evicted, over_capacity)",
            ["reason"], registry=r)
        self.ingest_ack = Histogram(
            "relay_ingest_ack_seconds", "Time from a request's arrival to relay's answer, by door",
            ["source"], buckets=CALL_BUCKETS, registry=r)
        self.attempts = Counter(
            "relay_delivery_attempts", "Letta calls by what followed (delivered, settled, retry, dead_letter) and "
            "the answer's status class (2xx … 5xx; device for the device's own answer on the status socket; "
            "error when no answer came)",
            ["outcome", "status_class"], registry=r)
        self.delivery_call = Histogram(
            "relay_delivery_call_seconds", "Duration of one Letta delivery call, connection resolution included",
            ["status_class"], buckets=CALL_BUCKETS, registry=r)
        self.queue_wait = Histogram(
            "relay_queue_wait_seconds", "Time from a message entering the queue to its first delivery call",
            buckets=WAIT_BUCKETS, registry=r)
        self.end_to_end = Histogram(
            "relay_end_to_end_seconds", "Time from relay accepting a message to Letta confirming it",
            buckets=WAIT_BUCKETS, registry=r)
        self.dead_letters = Counter(
            "relay_dead_letters", "Messages dead-lettered, by reason code (http_422, expired, refused, …)",
            ["reason"], registry=r)
        self.connection_cache = Counter(
            "relay_connection_cache_lookups", "Connection resolutions by device id or connection name, "
            "answered from the cache (hit) or by asking Letta (miss)", ["result"], registry=r)
        self.watch_sockets = Gauge(
            "relay_watch_sockets_open", "Status sockets relay watch holds open", registry=r)
        self.watch_frames = Counter(
            "relay_watch_frames", "Status-socket frames relay watch read, by type (other: any type relay does "
            "not act on)", ["type"], registry=r)
        self.watch_cards = Counter(
            "relay_watch_cards", "Approval prompts for the agent's requests by outcome (posted, already, closed, "
            "error) and where (slack, github)", ["where", "outcome"], registry=r)
        self.watch_answers = Counter(
            "relay_watch_answers", "Answers relay watch posted, by where they went (slack, response_url, github) "
            "and outcome (ok, error)", ["via", "outcome"], registry=r)
        self.progress_updates = Counter(
            "relay_progress_updates", "Progress messages posted or edited while a turn runs, by where (slack, "
            "github) and outcome (ok, error)", ["via", "outcome"], registry=r)
        self.watch_errors = Counter(
            "relay_watch_errors", "Things relay watch could not do, by kind (resolve, socket, act)",
            ["kind"], registry=r)
        self.socket_connections = Gauge(
            "relay_socket_mode_connections_open", "Slack Socket Mode connections this process holds open "
            "(0 or 1; sum across processes, at most 10 per Slack app)", registry=r)
        self.socket_connects = Counter(
            "relay_socket_mode_connects", "Slack Socket Mode connections opened (Slack's hello), reconnections "
            "included", registry=r)
        self.socket_envelopes = Counter(
            "relay_socket_mode_envelopes", "Slack Socket Mode envelopes by type (events_api, slash_commands, "
            "interactive, other) and outcome (acked; unacked: nothing stored, Slack sends it again; rejected: "
            "malformed, acked and dropped; error: a bug, unacked)", ["type", "outcome"], registry=r)
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)
        self.queue: QueueGauges | None = None
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}

    def watch(self, queue: Queue, *, timeout: float = 2.0, max_age: float = 1.0) -> None:
        """Export this queue's contents (once per process: web and worker in `relay dev` share one)."""
        if self.queue is None:
            self.queue = QueueGauges(queue, timeout=timeout, max_age=max_age)
            self.registry.register(self.queue)

    # -- what the web, the worker and the Letta client report ------------------------------------

    def request(self, source: str, outcome: str, reason: str = "") -> None:
        self._child(self.requests, source, outcome, reason).inc()

    def rejected(self, source: str, exc: Rejected) -> None:
        self.request(source, "rejected", reject_reason(exc))

    def connection_closed(self, reason: str) -> None:
        self._child(self.connections_closed, reason).inc()

    def answered(self, source: str, seconds: float) -> None:
        self._child(self.ingest_ack, source).observe(seconds)

    def _child(self, metric: Any, *labels: str) -> Any:
        """metric.labels(*labels), remembered: the hot path skips prometheus-client's lookup and lock."""
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def attempt(self, outcome: str, status: int | None, seconds: float, device_answered: bool = False) -> None:
        label = status_class(status, device_answered)
        self._child(self.attempts, outcome, label).inc()
        self._child(self.delivery_call, label).observe(seconds)

    def dead_lettered(self, code: str) -> None:
        self.dead_letters.labels(code).inc()

    def frame(self, kind: str) -> None:
        self.watch_frames.labels(kind if kind in WATCHED_FRAMES else "other").inc()

    def card(self, where: str, outcome: str) -> None:
        self.watch_cards.labels(where, outcome).inc()

    def answer(self, via: str, outcome: str) -> None:
        self.watch_answers.labels(via, outcome).inc()

    def progress(self, via: str, outcome: str) -> None:
        self.progress_updates.labels(via, outcome).inc()

    def watch_error(self, kind: str) -> None:
        self.watch_errors.labels(kind).inc()

    def socket_mode(self, is_open: Callable[[], bool]) -> None:
        """The Socket Mode door's connection, read at scrape time."""
        self.socket_connections.set_function(lambda: 1.0 if is_open() else 0.0)

    def socket_connected(self) -> None:
        self.socket_connects.inc()

    def envelope(self, kind: str, outcome: str) -> None:
        self._child(self.socket_envelopes, kind if kind in SOCKET_ENVELOPES else "other", outcome).inc()

    def cache(self, hit: bool) -> None:
        self.connection_cache.labels("hit" if hit else "miss").inc()

    # -- exposition ------------------------------------------------------------------------------

    async def render(self) -> bytes:
        if self.queue is not None:
            await self.queue.refresh()
        return generate_latest(self.registry)

    async def endpoint(self, request: Request) -> Response:
        return Response(await self.render(), headers={"content-type": CONTENT_TYPE})

    def route(self) -> Route:
        return Route("/metrics", self.endpoint, methods=["GET"])

    def app(self) -> Starlette:
        """An app serving only GET /metrics (the worker's own port)."""
        return Starlette(routes=[self.route()])


class QueueGauges:
    """A collector of `Queue.stats()`, read from Redis at scrape time and cached for `max_age` s.

    `collect` is synchronous (prometheus_client's contract) and Redis is not: the endpoint
    awaits `refresh` first, and `collect` reports what that read found.
    """

    def __init__(self, queue: Queue, *, timeout: float = 2.0, max_age: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.queue, self.timeout, self.max_age, self.clock = queue, timeout, max_age, clock
        self._read_at: float | None = None
        self._stats: QueueStats | None = None
        self._lock = asyncio.Lock()

    async def refresh(self) -> None:
        async with self._lock:  # concurrent scrapes share one read
            if self._read_at is not None and self.clock() - self._read_at < self.max_age:
                return
            try:
                self._stats = await asyncio.wait_for(self.queue.stats(), self.timeout)
            except (QueueUnavailable, asyncio.TimeoutError):
                self._stats = None
            self._read_at = self.clock()

    def collect(self) -> Iterator[Metric]:
        if self._read_at is None:
            return
        stats = self._stats
        yield GaugeMetricFamily("relay_queue_up", "1 when the last read of the queue from Redis succeeded, "
                                "0 when Redis did not answer in time", value=int(stats is not None))
        if stats is None:
            return
        messages = GaugeMetricFamily("relay_queue_messages", "Messages in the queue by state: ready (waiting "
                                     "their turn), delayed (until a retry time), in_flight (being delivered), "
                                     "dead (dead letters)", labels=["state"])
        for state in QUEUE_STATES:
            messages.add_metric([state], getattr(stats, state))
        yield messages
        yield GaugeMetricFamily("relay_queue_oldest_waiting_age_seconds", "Age of the oldest undelivered message "
                                "(0 when none waits)", value=stats.oldest_waiting_age or 0.0)
        dead = GaugeMetricFamily("relay_queue_dead_letters", "Dead letters held, by reason code",
                                 labels=["reason"])
        for reason, count in sorted(stats.dead_by_reason.items()):
            dead.add_metric([reason], count)
        yield dead
