"""Metrics: scraped from GET /metrics and parsed, they move as messages flow through the web
and the worker (fakeredis and real Redis; the loopback Letta stand-in)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any, AsyncIterator, Callable

import httpx
import pytest
import redis.asyncio as aioredis
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from relay.cli import common as cli
from relay.errors import BadRequest, BadSignature, ConfigError, Rejected, TooLarge, UnsupportedMedia
from relay.messages import Envelope, Inbound, client_message_id, envelope_for, user_message
from relay.metrics import Metrics, QueueGauges, reject_reason, status_class
from relay.queue import Queue
from relay.routing import Destination, Route
from relay.settings import Settings, load
from relay.web import create_app
from tests.support import SPEC_SECRET, free_port, relay_env, running_worker, signed

pytestmark = pytest.mark.anyio

SECRET = base64.b64decode(SPEC_SECRET.removeprefix("whsec_"))
HOME = Route("default", Destination(agent_id="agent-test", device_id="device-test"))
ROOT = Path(__file__).resolve().parents[1]


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Exposition text → {(sample name, labels): value}."""
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(scraped: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return scraped.get((name, frozenset(labels.items())), 0.0)


async def scrape(http: httpx.AsyncClient) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    response = await http.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return samples(response.text)


def registry(metrics: Metrics) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return samples(generate_latest(metrics.registry).decode())


@contextlib.asynccontextmanager
async def web(settings: Settings, queue: Queue) -> AsyncIterator[httpx.AsyncClient]:
    metrics = Metrics()
    metrics.watch(queue, max_age=0)  # every scrape reads Redis (create_app keeps this watch)
    app = create_app(replace(settings, max_body_bytes=4096), queue, metrics=metrics)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://relay") as client:
        yield client


async def post(http: httpx.AsyncClient, body: dict[str, Any] | bytes, secret: bytes = SECRET,
               **sign: Any) -> httpx.Response:
    raw, headers = signed(body, secret, **sign)
    return await http.post("/hooks/generic", content=raw, headers=headers)


def message(n: int | str, route: Route = HOME, received_at: float | None = None) -> Envelope:
    message_id = client_message_id("test", str(n))
    return envelope_for(Inbound("test", str(n), message_id, user_message(f"m{n}", message_id)), route,
                        time.time() if received_at is None else received_at)


async def until(condition: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


# --- the web: requests by source and outcome, ingest latency, queue depth ---------------------


async def test_requests_are_counted_by_outcome_and_reason(queue: Queue, settings: Settings) -> None:
    async with web(settings, queue) as http:
        before = await scrape(http)
        assert value(before, "relay_requests_total", source="generic", outcome="accepted", reason="") == 0
        assert (await post(http, {"text": "one"}, webhook_id="msg_a")).status_code == 202
        assert (await post(http, {"text": "two"}, webhook_id="msg_b")).status_code == 202
        assert (await post(http, {"text": "one"}, webhook_id="msg_a")).status_code == 200
        assert (await post(http, {"text": "x"}, secret=b"w" * 32)).status_code == 401
        assert (await post(http, {"text": "x"}, timestamp=int(time.time()) - 3600)).status_code == 401
        assert (await post(http, {"text": "x" * 5000})).status_code == 413
        assert (await post(http, b'{"text": ')).status_code == 400
        after = await scrape(http)
    counted = {(outcome, reason): value(after, "relay_requests_total", source="generic", outcome=outcome,
                                        reason=reason)
               for outcome, reason in [("accepted", ""), ("duplicate", ""), ("rejected", "signature"),
                                       ("rejected", "too_large"), ("rejected", "bad_request")]}
    assert counted == {("accepted", ""): 2, ("duplicate", ""): 1, ("rejected", "signature"): 2,
                       ("rejected", "too_large"): 1, ("rejected", "bad_request"): 1}
    assert value(after, "relay_ingest_ack_seconds_count", source="generic") == 7
    assert value(after, "relay_ingest_ack_seconds_bucket", source="generic", le="+Inf") == 7


async def test_a_bug_at_a_door_is_a_counted_logged_500_not_a_crash(queue: Queue, settings: Settings,
                                                                    monkeypatch: pytest.MonkeyPatch,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr("relay.web.generic.envelope_for", broken)
    async with web(settings, queue) as http:
        with caplog.at_level("ERROR", logger="relay.web"):
            answer = await post(http, {"text": "one"})
        after = await scrape(http)
    assert answer.status_code == 500 and answer.json() == {"error": "internal error"}
    assert value(after, "relay_requests_total", source="generic", outcome="error", reason="internal") == 1
    assert [r.getMessage() for r in caplog.records if r.levelname == "ERROR"] == ["internal error"]


async def test_queue_contents_are_read_from_redis_at_scrape_time(queue: Queue, settings: Settings) -> None:
    async with web(settings, queue) as http:
        empty = await scrape(http)
        assert value(empty, "relay_queue_up") == 1
        assert value(empty, "relay_queue_messages", state="ready") == 0
        assert ("relay_queue_oldest_waiting_age_seconds", frozenset()) in empty
        assert value(empty, "relay_queue_oldest_waiting_age_seconds") == 0
        await queue.enqueue(message(1, received_at=time.time() - 600))
        await queue.enqueue(message(2, Route("other", Destination(agent_id="agent-other", device_id="d"))))
        two = await scrape(http)
    assert value(two, "relay_queue_messages", state="ready") == 2
    assert {value(two, "relay_queue_messages", state=s) for s in ("delayed", "in_flight", "dead")} == {0}
    assert 600 <= value(two, "relay_queue_oldest_waiting_age_seconds") < 3600


async def test_redis_down_shows_queue_up_0_and_no_stale_numbers(settings: Settings) -> None:
    from relay.queue import connect

    client = connect(f"redis://127.0.0.1:{free_port()}/0", socket_timeout=1.0)
    try:
        async with web(settings, Queue(client, prefix="relaytest-unreachable")) as http:
            raw, headers = signed({"text": "hi"}, SECRET)
            assert (await http.post("/hooks/generic", content=raw, headers=headers)).status_code == 503
            scraped = await scrape(http)
    finally:
        await client.aclose()
    assert value(scraped, "relay_queue_up") == 0
    stale = {"relay_queue_messages", "relay_queue_oldest_waiting_age_seconds", "relay_queue_dead_letters"}
    assert not [key for key in scraped if key[0] in stale]
    assert value(scraped, "relay_requests_total", source="generic", outcome="unavailable", reason="") == 1


async def test_metrics_can_be_turned_off_on_the_web_port(queue: Queue, settings: Settings) -> None:
    async with web(replace(settings, web_metrics=False), queue) as http:
        assert (await http.get("/metrics")).status_code == 404


async def test_queue_gauges_cache_one_read_for_max_age(queue: Queue) -> None:
    now = [100.0]
    gauges = QueueGauges(queue, max_age=1.0, clock=lambda: now[0])

    def ready() -> float:
        [depth] = [f for f in gauges.collect() if f.name == "relay_queue_messages"]
        return next(s.value for s in depth.samples if s.labels["state"] == "ready")

    await gauges.refresh()
    assert ready() == 0
    await queue.enqueue(message(1))
    now[0] += 0.5
    await gauges.refresh()
    assert ready() == 0  # still the cached read
    now[0] += 0.6
    await gauges.refresh()
    assert ready() == 1


async def test_queue_gauges_give_up_on_a_redis_that_does_not_answer() -> None:
    with socket.socket() as silent:  # accepts connections (the kernel's backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        client = aioredis.Redis(host="127.0.0.1", port=silent.getsockname()[1], decode_responses=True)
        gauges = QueueGauges(Queue(client, prefix="relaytest-silent"), timeout=0.2)
        try:
            await gauges.refresh()
        finally:
            await client.aclose(close_connection_pool=True)
    [up] = list(gauges.collect())
    assert up.name == "relay_queue_up" and up.samples[0].value == 0


def test_registries_are_per_instance() -> None:
    first, second = Metrics(), Metrics()
    first.request("generic", "accepted")
    assert value(registry(first), "relay_requests_total", source="generic", outcome="accepted", reason="") == 1
    assert value(registry(second), "relay_requests_total", source="generic", outcome="accepted", reason="") == 0


def test_socket_mode_envelope_types_are_a_bounded_set_and_the_connection_is_read_at_scrape_time() -> None:
    metrics = Metrics()
    connected = [False]
    metrics.socket_mode(lambda: connected[0])
    for kind in ("events_api", "slash_commands", "interactive", "hello-from-the-future", "x" * 500):
        metrics.envelope(kind, "acked")
    metrics.socket_connected()
    before = registry(metrics)
    connected[0] = True
    after = registry(metrics)
    assert value(before, "relay_socket_mode_connections_open") == 0
    assert value(after, "relay_socket_mode_connections_open") == 1
    assert value(after, "relay_socket_mode_connects_total") == 1
    kinds = {dict(labels)["type"] for name, labels in after if name == "relay_socket_mode_envelopes_total"}
    assert kinds == {"events_api", "slash_commands", "interactive", "other"}
    assert value(after, "relay_socket_mode_envelopes_total", type="other", outcome="acked") == 2


@pytest.mark.parametrize("status, label", [(200, "2xx"), (204, "2xx"), (301, "3xx"), (404, "4xx"), (429, "4xx"),
                                           (503, "5xx"), (None, "error"), (999, "error")])
def test_status_classes(status: int | None, label: str) -> None:
    assert status_class(status) == label


@pytest.mark.parametrize("exc, label", [(BadSignature("x"), "signature"), (TooLarge("x"), "too_large"),
                                        (UnsupportedMedia("x"), "media_type"), (BadRequest("x"), "bad_request"),
                                        (Rejected("x"), "other")])
def test_reject_reasons_are_a_fixed_set(exc: Rejected, label: str) -> None:
    assert reject_reason(exc) == label


# --- the worker: attempts, latencies, dead letters, connection cache --------------------------


async def test_worker_metrics_move_as_messages_are_delivered_retried_and_dead_lettered(
        queue: Queue, redis_client: Any, prefix: str, settings: Settings, stand_in) -> None:  # type: ignore[no-untyped-def]
    standin, url = stand_in
    flaky, poison = message("flaky"), message("poison")
    standin.add_fault(500, times=1, message_id=flaky.client_message_id)
    standin.add_fault(422, times=None, body={"detail": "no"}, message_id=poison.client_message_id)
    metrics = Metrics()
    metrics.watch(queue, max_age=0)
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=metrics.app()), base_url="http://worker")
    before = await scrape(http)
    for envelope in (message(1, received_at=time.time() - 30), flaky, poison):
        await queue.enqueue(envelope)
    async with running_worker(redis_client, prefix, settings, url, consumer="metrics-worker", metrics=metrics):
        await until(lambda: len(standin.delivered()) == 2 and len(standin.attempts) == 4)
        await until(lambda: value(registry(metrics), "relay_dead_letters_total", reason="http_422") == 1)
    after = await scrape(http)
    await http.aclose()

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("relay_delivery_attempts_total", outcome="delivered", status_class="2xx") == 2
    assert moved("relay_delivery_attempts_total", outcome="retry", status_class="5xx") == 1
    assert moved("relay_delivery_attempts_total", outcome="dead_letter", status_class="4xx") == 1
    assert moved("relay_dead_letters_total", reason="http_422") == 1
    assert sum(moved("relay_delivery_call_seconds_count", status_class=c) for c in ("2xx", "4xx", "5xx")) == 4
    assert moved("relay_queue_wait_seconds_count") == 3  # first attempts only
    assert moved("relay_end_to_end_seconds_count") == 2
    # The message received 30 s ago took at least that long end to end; the bucket below it is empty.
    assert moved("relay_end_to_end_seconds_bucket", le="10.0") < 2
    assert moved("relay_connection_cache_lookups_total", result="miss") == 1  # one device, resolved once
    assert moved("relay_connection_cache_lookups_total", result="hit") == 3
    assert value(after, "relay_queue_messages", state="dead") == 1
    assert value(after, "relay_queue_dead_letters", reason="http_422") == 1
    assert value(after, "relay_queue_messages", state="ready") == 0


async def test_delivery_call_without_a_response_is_status_class_error(queue: Queue, redis_client: Any, prefix: str,
                                                                      settings: Settings) -> None:
    metrics = Metrics()
    await queue.enqueue(message("nobody-home"))
    async with running_worker(redis_client, prefix, replace(settings, retry_base=5.0, retry_cap=5.0),
                              f"http://127.0.0.1:{free_port()}", consumer="metrics-worker", metrics=metrics):
        await until(lambda: value(registry(metrics), "relay_delivery_attempts_total", outcome="retry",
                                  status_class="error") >= 1)
    scraped = registry(metrics)
    assert value(scraped, "relay_delivery_attempts_total", outcome="retry", status_class="error") >= 1
    assert value(scraped, "relay_delivery_attempts_total", outcome="delivered", status_class="2xx") == 0


async def test_metrics_labels_carry_no_id_secret_or_body(queue: Queue, redis_client: Any, prefix: str,
                                                         settings: Settings, stand_in) -> None:  # type: ignore[no-untyped-def]
    """Ids, secrets and bodies of real traffic (accepted, duplicate, refused, delivered, retried,
    dead-lettered) appear in no label: label names and values stay a small fixed vocabulary."""
    standin, url = stand_in
    standin.add_fault(500, times=1)
    standin.add_fault(422, times=None, body={"detail": "no"}, match=lambda b: "poison-body" in str(b))
    claimed = f"msg_claimed_{uuid.uuid4().hex}"
    metrics = Metrics()
    metrics.watch(queue, max_age=0)
    app = create_app(settings, queue, metrics=metrics)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://relay") as http:
        sent = [await post(http, {"text": "secret-body-1"}, webhook_id="msg_label_one"),
                await post(http, {"text": "poison-body"}, webhook_id="msg_label_two"),
                await post(http, {"text": "secret-body-1"}, webhook_id="msg_label_one"),
                await post(http, {"text": "x"}, secret=b"w" * 32, webhook_id=claimed)]
        assert [r.status_code for r in sent] == [202, 202, 200, 401]
        async with running_worker(redis_client, prefix, settings, url, metrics=metrics):
            await until(lambda: len(standin.delivered()) == 1
                        and value(registry(metrics), "relay_dead_letters_total", reason="http_422") == 1)
        text = (await http.get("/metrics")).text
    ids = [r.json()["client_message_id"] for r in sent[:2]]
    destination = settings.routes[0].destination
    for forbidden in (*ids, "msg_label_one", "msg_label_two", claimed, "secret-body-1", "poison-body", SECRET.hex(),
                      "test-key", destination.agent_id, destination.device_id or "", "conn-test", prefix):
        assert forbidden not in text, forbidden
    names = {"source", "outcome", "reason", "status_class", "state", "result", "le",  # relay's own
             "generation", "implementation", "major", "minor", "patchlevel", "version"}  # the Python collectors
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            assert set(sample.labels) <= names, sample
            if family.name.startswith("relay_"):
                assert all(re.fullmatch(r"[a-z0-9_.]{0,20}|\+Inf", v) for v in sample.labels.values()), sample


# --- settings and the worker's own port ------------------------------------------------------


def test_metrics_settings_are_read_and_checked() -> None:
    assert load({}).metrics_port is None and load({}).web_metrics is True
    loaded = load({"RELAY_METRICS_PORT": "9200", "RELAY_METRICS_HOST": "127.0.0.1", "RELAY_WEB_METRICS": "off"})
    assert (loaded.metrics_port, loaded.metrics_host, loaded.web_metrics) == (9200, "127.0.0.1", False)
    assert load({"RELAY_METRICS_PORT": "0"}).metrics_port == 0
    for name, bad in (("RELAY_METRICS_PORT", "70000"), ("RELAY_METRICS_PORT", "-1"), ("RELAY_WEB_METRICS", "maybe"),
                      ("RELAY_METRICS_HOST", "a host")):
        with pytest.raises(ConfigError, match=name):
            load({name: bad})


def test_a_chosen_metrics_port_that_is_taken_is_a_config_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match="RELAY_METRICS_PORT"):
            cli.metrics_listener(Settings(metrics_port=port, metrics_host="127.0.0.1"))


def test_the_default_metrics_port_taken_means_no_metrics_and_a_warning(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        monkeypatch.setattr(cli, "DEFAULT_METRICS_PORT", taken.getsockname()[1])
        with caplog.at_level(logging.WARNING):
            assert cli.metrics_listener(Settings(metrics_host="127.0.0.1")) is None
    assert "serves no metrics" in caplog.text
    assert cli.metrics_listener(Settings(metrics_port=0)) is None


def test_relay_worker_serves_metrics_on_its_own_port(real_redis_url: str, prefix: str,
                                                     stand_in, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    standin, letta_url = stand_in
    port = free_port()
    env = relay_env(REDIS_URL=real_redis_url, RELAY_KEY_PREFIX=prefix, LETTA_API_KEY="test-key",
                    LETTA_BASE_URL=letta_url, RELAY_METRICS_PORT=str(port), RELAY_METRICS_HOST="127.0.0.1")
    with open(tmp_path / "log", "wb") as out:
        worker = subprocess.Popen([sys.executable, "-m", "relay", "worker"], env=env, stdout=out, stderr=out, cwd=ROOT)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                response = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2)
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline and worker.poll() is None, (tmp_path / "log").read_text()
                time.sleep(0.1)
        assert httpx.get(f"http://127.0.0.1:{port}/anything-else", timeout=2).status_code == 404
    finally:
        worker.terminate()
        assert worker.wait(timeout=30) == 0, (tmp_path / "log").read_text()
    scraped = samples(response.text)
    assert value(scraped, "relay_queue_up") == 1
    assert value(scraped, "relay_queue_messages", state="ready") == 0
    names = {family.name for family in text_string_to_metric_families(response.text)}
    assert {"relay_delivery_attempts", "relay_delivery_call_seconds", "relay_queue_wait_seconds",
            "relay_end_to_end_seconds", "relay_connection_cache_lookups", "process_resident_memory_bytes"} <= names


def test_relay_dev_serves_one_registry_for_its_web_and_worker_and_logs_text(tmp_path: Path) -> None:
    from relay.dev import DEV_HOOK_SECRET
    from relay.sources.generic import decode_secret

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with open(tmp_path / "err", "wb") as err:
        dev = subprocess.Popen([sys.executable, "-m", "relay", "dev", "--port", str(port)], env=relay_env(),
                               stdout=subprocess.DEVNULL, stderr=err, cwd=ROOT)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                httpx.get(f"{base}/readyz", timeout=1).raise_for_status()
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline and dev.poll() is None, (tmp_path / "err").read_text()
                time.sleep(0.1)
        raw, headers = signed({"text": "count me"}, decode_secret(DEV_HOOK_SECRET))
        assert httpx.post(f"{base}/hooks/generic", content=raw, headers=headers, timeout=5).status_code == 202
        while True:
            scraped = samples(httpx.get(f"{base}/metrics", timeout=5).text)
            if value(scraped, "relay_delivery_attempts_total", outcome="delivered", status_class="2xx") == 1:
                break
            assert time.monotonic() < deadline + 10, (tmp_path / "err").read_text()
            time.sleep(0.1)
    finally:
        dev.send_signal(signal.SIGINT)
        assert dev.wait(timeout=30) == 0, (tmp_path / "err").read_text()
    assert value(scraped, "relay_requests_total", source="generic", outcome="accepted", reason="") == 1
    assert value(scraped, "relay_end_to_end_seconds_count") == 1
    log = (tmp_path / "err").read_text()
    assert f"metrics: {base}/metrics" in log
    assert " INFO relay.worker delivered " in log and '{"ts"' not in log
