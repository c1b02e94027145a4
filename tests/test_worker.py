"""The worker end to end against the loopback Letta stand-in, on fakeredis, a real Redis server
and a real Redis Cluster (three masters, one replica each)."""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import replace
from typing import Any, AsyncIterator, Callable

import pytest
from relay.messages import Envelope, Inbound, approval_decision, approval_message, client_message_id
from relay.messages import envelope_for, user_message
from relay.queue import Keys, Queue
from relay.routing import Destination, Route
from relay.settings import Settings
from relay.worker import CHAIN_LIMIT, chain_length
from relay.standin import LettaStandIn
from tests.conftest import client_for
from tests.support import running_worker

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["fakeredis", "redis", "cluster"])
async def redis_client(request: pytest.FixtureRequest, prefix: str) -> AsyncIterator[Any]:
    async with client_for(request, prefix) as client:
        yield client

HOME = Route("default", Destination(agent_id="agent-test", device_id="device-test"))


def message(n: int | str, route: Route = HOME) -> Envelope:
    message_id = client_message_id("test", str(n))
    return envelope_for(Inbound("test", str(n), message_id, user_message(f"m{n}", message_id)), route, time.time())


def approval(tool_call_id: str, route: Route = HOME) -> Envelope:
    message_id = client_message_id("test", tool_call_id)
    body = approval_message([approval_decision(tool_call_id, False, "no")])
    return envelope_for(Inbound("test", tool_call_id, message_id, body), route, time.time())


async def until(condition: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


def contents(standin: LettaStandIn) -> list[str]:
    return [m.get("content") for a in standin.delivered() for m in a.body["messages"]]


async def test_queued_message_reaches_letta_and_leaves_the_queue(queue: Queue, redis_client: Any, prefix: str,
                                                                 settings: Settings, stand_in) -> None:  # type: ignore[no-untyped-def]
    standin, url = stand_in
    sent = message(1)
    await queue.enqueue(sent)
    async with running_worker(redis_client, prefix, settings, url):
        await until(lambda: len(standin.delivered()) == 1)
    [attempt] = standin.delivered()
    assert attempt.body == sent.request_body()
    depth = await queue.depth()
    assert (depth.ready, depth.in_flight, depth.delayed, depth.dead) == (0, 0, 0, 0)


async def test_server_errors_are_retried_with_the_same_id_in_order(queue: Queue, redis_client: Any, prefix: str,
                                                                   settings: Settings, stand_in) -> None:  # type: ignore[no-untyped-def]
    standin, url = stand_in
    second = message(2)
    standin.add_fault(500, times=2, message_id=second.client_message_id)
    for n in range(1, 6):
        await queue.enqueue(message(n))
    async with running_worker(redis_client, prefix, settings, url):
        await until(lambda: len(standin.delivered()) == 5)
    assert contents(standin) == ["m1", "m2", "m3", "m4", "m5"]
    tries = [a for a in standin.attempts if second.client_message_id in a.message_ids]
    assert [a.status for a in tries] == [500, 500, 200]


async def test_a_long_conversation_is_delivered_in_order_across_chained_claims(
        queue: Queue, redis_client: Any, prefix: str, settings: Settings, stand_in) -> None:  # type: ignore[no-untyped-def]
    standin, url = stand_in
    count = 2 * CHAIN_LIMIT + 3
    for n in range(count):
        await queue.enqueue(message(n))
    async with running_worker(redis_client, prefix, settings, url):
        await until(lambda: len(standin.delivered()) == count)
    assert contents(standin) == [f"m{n}" for n in range(count)]
    depth = await queue.depth()
    assert (depth.ready, depth.in_flight, depth.delayed, depth.dead) == (0, 0, 0, 0)


async def test_a_backlogged_conversation_yields_its_slot_after_a_chain(
        queue: Queue, redis_client: Any, prefix: str, settings: Settings, stand_in) -> None:  # type: ignore[no-untyped-def]
    standin, url = stand_in
    for n in range(CHAIN_LIMIT + 4):
        await queue.enqueue(message(n))
    # In the same partition, so one reader sees both tokens, the backlogged one first.
    home = Keys.partition_of(HOME.destination.conversation_key)
    other = next(route for route in (Route("other", Destination(agent_id=f"agent-{i}", device_id="device-test"))
                                     for i in range(1000))
                 if Keys.partition_of(route.destination.conversation_key) == home)
    await queue.enqueue(message("other", other))
    async with running_worker(redis_client, prefix, replace(settings, concurrency=1), url):
        await until(lambda: len(standin.delivered()) == CHAIN_LIMIT + 5)
    order = contents(standin)
    assert order.index("mother") < order.index(f"m{CHAIN_LIMIT}")


def test_chains_end_at_different_lengths_so_claims_taken_together_do_not_end_together() -> None:
    rng = random.Random(7)
    lengths = [chain_length(rng) for _ in range(200)]
    assert min(lengths) == CHAIN_LIMIT // 2 and max(lengths) == CHAIN_LIMIT


async def test_concurrency_bounds_the_letta_calls_in_flight_exactly(
        queue: Queue, redis_client: Any, prefix: str, settings: Settings, stand_in) -> None:  # type: ignore[no-untyped-def]
    standin, url = stand_in
    standin.add_fault(200, delay=0.2, times=None)
    for n in range(12):  # more conversations than call slots, each with two messages
        for k in range(2):
            await queue.enqueue(message(f"{n}-{k}", Route(f"r{n}", Destination(agent_id=f"agent-{n}",
                                                                               device_id="device-test"))))
    async with running_worker(redis_client, prefix, replace(settings, concurrency=4), url):
        await until(lambda: len(standin.delivered()) == 24)
    edges = sorted([(a.at, 1) for a in standin.attempts] + [(a.answered_at, -1) for a in standin.attempts])
    in_flight = [sum(step for _, step in edges[:i + 1]) for i in range(len(edges))]
    assert max(in_flight) == 4


async def test_conversations_do_not_wait_for_each_other(queue: Queue, redis_client: Any, prefix: str,
                                                        settings: Settings, stand_in) -> None:  # type: ignore[no-untyped-def]
    standin, url = stand_in
    slow, fast = message("slow"), message("fast", Route("other", Destination(agent_id="agent-other",
                                                                             device_id="device-test")))
    standin.add_fault(200, delay=1.5, message_id=slow.client_message_id)
    await queue.enqueue(slow)
    async with running_worker(redis_client, prefix, settings, url):
        await until(lambda: len(standin.attempts) == 1)  # the slow call is under way
        await queue.enqueue(fast)
        await until(lambda: len(standin.delivered()) == 2)
    answered = {a.message_ids[0]: a.answered_at for a in standin.delivered()}
    assert answered[fast.client_message_id] < answered[slow.client_message_id]


async def test_retry_after_is_honoured_before_any_further_request(queue: Queue, redis_client: Any, prefix: str,
                                                                  settings: Settings, stand_in) -> None:  # type: ignore[no-untyped-def]
    standin, url = stand_in
    standin.add_fault(429, retry_after="1")
    other = Route("other", Destination(agent_id="agent-other", device_id="device-test"))
    await queue.enqueue(message(1))
    async with running_worker(redis_client, prefix, settings, url) as worker:
        await until(lambda: worker.paused_until > 0)  # the 429 has been answered and read
        await queue.enqueue(message(2, other))  # another conversation, during the pause
        await until(lambda: len(standin.delivered()) == 2)
    first, *later = standin.attempts
    assert first.status == 429
    assert all(a.at >= first.answered_at + 1.0 for a in later), [a.at - first.answered_at for a in later]


async def test_client_errors_are_dead_lettered_with_the_reason(queue: Queue, redis_client: Any, prefix: str,
                                                               settings: Settings, stand_in) -> None:  # type: ignore[no-untyped-def]
    standin, url = stand_in
    poison = message("poison")
    standin.add_fault(422, times=None, body={"detail": "content too long"}, message_id=poison.client_message_id)
    await queue.enqueue(poison)
    await queue.enqueue(message("after"))
    async with running_worker(redis_client, prefix, settings, url):
        await until(lambda: len(standin.delivered()) == 1)
        await until_dead(queue, 1)
    [dead] = await queue.dead_letters()
    assert dead.client_message_id == poison.client_message_id
    assert dead.code == "http_422" and "content too long" in dead.reason
    assert contents(standin) == ["mafter"]
    assert len([a for a in standin.attempts if poison.client_message_id in a.message_ids]) == 1


async def test_success_false_is_dead_lettered(queue: Queue, redis_client: Any, prefix: str,
                                              settings: Settings, stand_in) -> None:  # type: ignore[no-untyped-def]
    standin, url = stand_in
    standin.add_fault(200, body={"message": "device refused the frame", "success": False})
    await queue.enqueue(message(1))
    async with running_worker(redis_client, prefix, settings, url):
        await until(lambda: len(standin.attempts) == 1)
        await until_dead(queue, 1)
    [dead] = await queue.dead_letters()
    assert dead.code == "refused" and "device refused the frame" in dead.reason


async def until_dead(queue: Queue, count: int) -> None:
    deadline = time.monotonic() + 15
    while len(await queue.dead_letters()) < count:
        assert time.monotonic() < deadline, "dead letters did not appear"
        await asyncio.sleep(0.05)


async def test_rotated_connection_is_resolved_again_after_a_404(queue: Queue, redis_client: Any, prefix: str,
                                                                settings: Settings, stand_in) -> None:  # type: ignore[no-untyped-def]
    standin, url = stand_in
    async with running_worker(redis_client, prefix, settings, url):
        await queue.enqueue(message(1))
        await until(lambda: len(standin.delivered()) == 1)
        new_connection = standin.rotate("device-test")
        await queue.enqueue(message(2))
        await until(lambda: len(standin.delivered()) == 2)
    statuses = [a.status for a in standin.attempts]
    assert statuses == [200, 404, 200]
    assert standin.delivered()[-1].connection_id == new_connection


async def test_timeouts_are_retried_and_the_same_id_arrives(queue: Queue, redis_client: Any, prefix: str,
                                                            settings: Settings, stand_in) -> None:  # type: ignore[no-untyped-def]
    standin, url = stand_in
    standin.add_fault(200, delay=3.0)  # longer than letta_timeout (2 s)
    sent = message(1)
    await queue.enqueue(sent)
    async with running_worker(redis_client, prefix, settings, url):
        await until(lambda: any(200 <= a.status < 300 for a in standin.attempts[1:]), timeout=20)
    assert {i for a in standin.attempts for i in a.message_ids} == {sent.client_message_id}


async def test_offline_device_is_retried_until_it_comes_online(queue: Queue, redis_client: Any, prefix: str,
                                                               settings: Settings, stand_in) -> None:  # type: ignore[no-untyped-def]
    standin, url = stand_in
    standin.devices[0].online = False
    await queue.enqueue(message(1))
    async with running_worker(redis_client, prefix, settings, url):
        await until(lambda: standin.list_requests >= 2)  # it keeps trying to resolve
        assert standin.attempts == []
        standin.devices[0].online = True
        await until(lambda: len(standin.delivered()) == 1)


async def test_message_older_than_its_max_age_is_dead_lettered(queue: Queue, redis_client: Any, prefix: str,
                                                               settings: Settings, stand_in) -> None:  # type: ignore[no-untyped-def]
    standin, url = stand_in
    standin.add_fault(503, times=None)
    short = replace(settings, max_age=1.5)
    async with running_worker(redis_client, prefix, short, url):
        await queue.enqueue(message(1))  # its age counts from here, not from before the worker started
        await until_dead(queue, 1)
    [dead] = await queue.dead_letters()
    assert dead.code == "expired" and "HTTP 503" in dead.reason
    assert len(standin.attempts) >= 2  # retried (backoff 0.05–0.2 s) until the age ran out


async def test_an_approval_older_than_its_max_age_is_dead_lettered(queue: Queue, redis_client: Any, prefix: str,
                                                                   settings: Settings, stand_in) -> None:  # type: ignore[no-untyped-def]
    standin, url = stand_in
    standin.simulated().inactive = 10_000  # a device that keeps answering "Runtime is no longer active"
    await queue.enqueue(approval("call-1"))
    short = replace(settings, approval_max_age=0.3)
    async with running_worker(redis_client, prefix, short, url):
        await until_dead(queue, 1)
    [dead] = await queue.dead_letters()
    assert dead.code == "expired" and "Runtime is no longer active" in dead.reason


async def test_slow_live_delivery_is_not_taken_over(queue: Queue, redis_client: Any, prefix: str,
                                                    settings: Settings, stand_in) -> None:  # type: ignore[no-untyped-def]
    standin, url = stand_in
    quick = replace(settings, reclaim_after=0.3, letta_timeout=5.0)
    standin.add_fault(200, delay=1.5)  # five times the reclaim time
    sent = message(1)
    await queue.enqueue(sent)
    async with running_worker(redis_client, prefix, quick, url, consumer="worker-1"):
        await until(lambda: len(standin.attempts) == 1)
        async with running_worker(redis_client, prefix, quick, url, consumer="worker-2"):
            await until(lambda: len(standin.delivered()) == 1)
            await asyncio.sleep(0.6)  # give worker-2 reclaim rounds after the delivery too
    assert [i for a in standin.attempts for i in a.message_ids] == [sent.client_message_id]


async def test_stopping_hands_unfinished_work_back_at_once(queue: Queue, redis_client: Any, prefix: str,
                                                           settings: Settings, stand_in) -> None:  # type: ignore[no-untyped-def]
    standin, url = stand_in
    patient = replace(settings, reclaim_after=60.0, shutdown_grace=0.2, letta_timeout=10.0)
    standin.add_fault(200, delay=8.0)
    sent = message(1)
    await queue.enqueue(sent)
    async with running_worker(redis_client, prefix, patient, url, consumer="worker-1"):
        await until(lambda: len(standin.attempts) == 1)
    # Handed back, not left for a 60 s reclaim: a fresh worker delivers it straight away.
    async with running_worker(redis_client, prefix, patient, url, consumer="worker-2"):
        await until(lambda: len([a for a in standin.attempts if a.status == 200]) >= 1, timeout=5)
    assert set(standin.delivered_ids()) == {sent.client_message_id}


async def test_worker_finishes_in_flight_work_within_the_grace_period(queue: Queue, redis_client: Any, prefix: str,
                                                                      settings: Settings, stand_in) -> None:  # type: ignore[no-untyped-def]
    standin, url = stand_in
    standin.add_fault(200, delay=0.5)
    await queue.enqueue(message(1))
    async with running_worker(redis_client, prefix, replace(settings, shutdown_grace=5.0), url):
        await until(lambda: len(standin.attempts) == 1)
    assert len(standin.delivered()) == 1
    depth = await queue.depth()
    assert (depth.ready, depth.in_flight, depth.delayed) == (0, 0, 0)


async def test_unreadable_head_is_dropped_and_the_conversation_moves_on(queue: Queue, redis_client: Any, prefix: str,
                                                                        settings: Settings, stand_in) -> None:  # type: ignore[no-untyped-def]
    standin, url = stand_in
    broken, good = message("broken"), message("good")
    await queue.enqueue(broken)
    await queue.enqueue(good)
    partition = queue.keys.partition_of(HOME.destination.conversation_key)
    await redis_client.hset(queue.keys.body(partition), broken.client_message_id, "{not an envelope")
    async with running_worker(redis_client, prefix, settings, url):
        await until(lambda: len(standin.delivered()) == 1)
        await asyncio.sleep(0.3)  # a release-without-pop bug would spin here re-reading the broken head
    assert standin.delivered_ids() == [good.client_message_id]
    depth = await queue.depth()
    assert (depth.ready, depth.in_flight, depth.delayed) == (0, 0, 0)


async def test_retry_after_holds_every_worker_not_just_the_one_that_heard_it(
        queue: Queue, redis_client: Any, prefix: str, settings: Settings, stand_in) -> None:  # type: ignore[no-untyped-def]
    standin, url = stand_in
    standin.add_fault(429, retry_after="1")
    limited = message(0)
    await queue.enqueue(limited)
    async with running_worker(redis_client, prefix, settings, url, consumer="worker-1"):
        async with running_worker(redis_client, prefix, settings, url, consumer="worker-2"):
            # Once the pause is published, nothing relay did not already hold may go out before it ends.
            while not await queue.pause_of(0):
                await asyncio.sleep(0.01)
            for n in range(1, 9):  # other conversations, picked up by either worker
                await queue.enqueue(message(n, Route(f"r{n}", Destination(agent_id=f"agent-{n}",
                                                                          device_id="device-test"))))
            await until(lambda: len(standin.delivered()) == 9)
    first_attempt, *later = standin.attempts
    assert first_attempt.status == 429
    assert all(a.at >= first_attempt.answered_at + 1.0 for a in later), \
        sorted(round(a.at - first_attempt.answered_at, 3) for a in later)


async def test_a_delivery_that_waited_for_a_call_slot_honours_a_pause_published_meanwhile(
        queue: Queue, redis_client: Any, prefix: str, settings: Settings, stand_in) -> None:  # type: ignore[no-untyped-def]
    standin, url = stand_in
    standin.add_fault(200, delay=0.5, times=2)
    routes = [Route(f"r{n}", Destination(agent_id=f"agent-{n}", device_id="device-test")) for n in range(3)]
    async with running_worker(redis_client, prefix, replace(settings, concurrency=2), url) as worker:
        for n, route in enumerate(routes):
            await queue.enqueue(message(n, route))
        # Two slow calls hold both slots; the third message waits for one, claimed and fetched.
        await until(lambda: len(standin.attempts) == 2 and len(worker.in_flight) == 3)
        pause_until = time.time() + 1.0
        await queue.pause_all(pause_until)  # another worker heard a 429 meanwhile
        await until(lambda: len(standin.delivered()) == 3)
    waited = max(standin.attempts, key=lambda a: a.at)  # the third message, after a slot freed
    assert waited.at >= pause_until - 0.01, round(pause_until - waited.at, 3)


async def test_a_message_that_keeps_stopping_workers_is_dead_lettered_unsent(
        queue: Queue, redis_client: Any, prefix: str, settings: Settings, stand_in) -> None:  # type: ignore[no-untyped-def]
    from relay.worker import MAX_TAKEOVERS

    standin, url = stand_in
    deadly = message("deadly")
    await queue.enqueue(deadly)
    await queue.read(queue.keys.partition_of(HOME.destination.conversation_key), 10, 10)
    for n in range(MAX_TAKEOVERS - 1):  # workers that took it over and then died with it
        await asyncio.sleep(0.02)
        await Queue(redis_client, prefix=prefix, consumer=f"ghost-{n}").reclaim(
            queue.keys.partition_of(HOME.destination.conversation_key), 0.01)
    await queue.enqueue(message("behind"))
    async with running_worker(redis_client, prefix, replace(settings, reclaim_after=0.2), url):
        await until_dead(queue, 1)
        await until(lambda: len(standin.delivered()) == 1)
    [dead] = await queue.dead_letters()
    assert dead.client_message_id == deadly.client_message_id and dead.code == "takeovers"
    assert "workers stopped 10 times" in dead.reason
    assert standin.delivered_ids() == [message("behind").client_message_id]  # the rest go on


async def test_a_loop_that_hits_a_bug_logs_it_and_keeps_going(queue: Queue, redis_client: Any, prefix: str,
                                                              settings: Settings, stand_in,  # type: ignore[no-untyped-def]
                                                              monkeypatch: pytest.MonkeyPatch,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    standin, url = stand_in
    fetch, failures = Queue.fetch, []

    async def flaky_fetch(self: Queue, tokens: Any) -> Any:
        if not failures:
            failures.append(1)
            raise RuntimeError("a bug in fetch")
        return await fetch(self, tokens)

    monkeypatch.setattr(Queue, "fetch", flaky_fetch)
    await queue.enqueue(message(1))
    async with running_worker(redis_client, prefix, replace(settings, reclaim_after=0.3), url):
        await until(lambda: len(standin.delivered()) == 1)
    assert failures and "worker loop failed; restarting it" in caplog.text
