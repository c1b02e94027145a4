"""The Redis queue, against fakeredis, a real Redis server and a real Redis Cluster (three
masters, one replica each): every test here runs on all three (the `redis_client` fixture)."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import Any, AsyncIterator

from redis.asyncio.cluster import RedisCluster

import pytest
from redis.crc import key_slot

from relay.messages import Envelope, Inbound, client_message_id, envelope_for, user_message
from relay.errors import QueueUnavailable
from relay.queue.calls import SCRIPTS
from relay.queue import (FAILURE_WINDOW_HOURS, GROUP, PARTITIONS, STALE_BINDING_MS, Head, Keys, Queue, QueueStats,
                         Token)
from relay.routing import Destination, Route
from tests.conftest import client_for

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["fakeredis", "redis", "cluster"])
async def redis_client(request: pytest.FixtureRequest, prefix: str) -> AsyncIterator[Any]:
    async with client_for(request, prefix) as client:
        yield client


@pytest.fixture
async def queue(redis_client: Any, prefix: str) -> AsyncIterator[Queue]:
    q = Queue(redis_client, prefix=prefix, consumer="consumer-a")
    await q.ensure_groups()
    yield q
    await q.aclose()

ROUTE = Route("default", Destination(agent_id="agent-1", device_id="device-1"))
OTHER = Route("other", Destination(agent_id="agent-2", conversation_id="conv-2", device_id="device-1"))


def message(n: int | str, route: Route = ROUTE, now: float | None = None) -> Envelope:
    message_id = client_message_id("test", str(n))
    inbound = Inbound("test", f"delivery-{n}", message_id, user_message(f"text {n}", message_id))
    return envelope_for(inbound, route, time.time() if now is None else now)


def partition(route: Route = ROUTE) -> int:
    return Keys.partition_of(route.destination.conversation_key)


async def take(queue: Queue, route: Route = ROUTE) -> tuple[Token, Envelope | None]:
    tokens = await queue.read(partition(route), 10, 10)
    assert len(tokens) == 1, tokens
    [head] = await queue.fetch(tokens)
    return head.token, head.envelope


async def test_accepted_message_is_read_back_unchanged(queue: Queue) -> None:
    sent = message(1)
    assert await queue.enqueue(sent) is True
    _token, received = await take(queue)
    assert received == sent


async def test_same_client_message_id_is_queued_once(queue: Queue) -> None:
    assert await queue.enqueue(message(1)) is True
    assert await queue.enqueue(message(1)) is False
    depth = await queue.depth()
    assert (depth.ready, depth.in_flight) == (1, 0)
    token, _ = await take(queue)
    assert await queue.done(token, message(1).client_message_id)
    assert await queue.read(partition(), 10, 10) == []


async def test_dedup_marker_expires_after_the_window(redis_client: Any, prefix: str) -> None:
    queue = Queue(redis_client, prefix=prefix, consumer="c", dedup_window=3600)
    await queue.ensure_groups()
    sent = message(1)
    await queue.enqueue(sent)
    ttl = await redis_client.pttl(queue.keys.seen(partition(), sent.client_message_id))
    assert 3_590_000 < ttl <= 3_600_000


async def test_one_conversation_is_delivered_in_order_one_at_a_time(queue: Queue) -> None:
    for n in range(3):
        await queue.enqueue(message(n))
    seen = []
    for n in range(3):
        token, envelope = await take(queue)
        assert envelope is not None
        seen.append(envelope.message["content"])
        # While the head is claimed, no other token for this conversation is readable.
        assert await queue.read(partition(), 10, 10) == []
        assert await queue.done(token, envelope.client_message_id)
    assert seen == ["text 0", "text 1", "text 2"]
    assert await queue.depth() == type(await queue.depth())(ready=0, in_flight=0, delayed=0, dead=0)


async def test_advance_acks_the_head_and_hands_over_the_next_message_under_the_same_claim(queue: Queue) -> None:
    for n in range(3):
        await queue.enqueue(message(n))
    token, envelope = await take(queue)
    assert envelope is not None
    seen = [envelope.message["content"]]
    while True:
        following = await queue.advance(token, envelope.client_message_id)
        if following is True:
            break
        assert isinstance(following, Head) and following.envelope is not None
        assert (following.token.entry_id, following.token.takeovers) == (token.entry_id, 0)
        # The conversation is still claimed: no second token for it is readable.
        assert await queue.read(partition(), 10, 10) == []
        token, envelope = following.token, following.envelope
        seen.append(envelope.message["content"])
    assert seen == ["text 0", "text 1", "text 2"]
    assert await queue.depth() == type(await queue.depth())(ready=0, in_flight=0, delayed=0, dead=0)


async def test_advance_carries_the_partition_s_pause(queue: Queue) -> None:
    for n in range(2):
        await queue.enqueue(message(n))
    token, envelope = await take(queue)
    assert envelope is not None
    until = round(time.time() + 30, 3)
    await queue.pause_all(until)
    following = await queue.advance(token, envelope.client_message_id)
    assert isinstance(following, Head) and following.paused_until == until


async def test_a_claim_advanced_by_a_worker_that_then_dies_is_reclaimed_at_the_next_message(
        queue: Queue, redis_client: Any, prefix: str) -> None:
    await queue.enqueue(message(1))
    await queue.enqueue(message(2))
    token, envelope = await take(queue)
    assert envelope is not None
    following = await queue.advance(token, envelope.client_message_id)
    assert isinstance(following, Head)
    await asyncio.sleep(0.05)  # the worker dies here, holding message 2
    other = Queue(redis_client, prefix=prefix, consumer="consumer-b")
    [reclaimed] = await other.reclaim(partition(), min_idle=0.01)
    assert (reclaimed.entry_id, reclaimed.takeovers) == (token.entry_id, 1)  # message 2's first takeover
    [head] = await other.fetch([reclaimed])
    assert head.envelope is not None and head.envelope.client_message_id == message(2).client_message_id
    # The dead worker's late ack changes nothing; the new owner finishes the conversation.
    assert await queue.advance(following.token, message(2).client_message_id) is False
    assert await other.advance(reclaimed, message(2).client_message_id) is True
    assert await queue.depth() == type(await queue.depth())(ready=0, in_flight=0, delayed=0, dead=0)


async def test_takeovers_count_per_message_across_an_advanced_claim(queue: Queue, redis_client: Any,
                                                                     prefix: str) -> None:
    await queue.enqueue(message(1))
    await queue.enqueue(message(2))
    await take(queue)
    await asyncio.sleep(0.02)  # the first worker dies holding message 1
    second = Queue(redis_client, prefix=prefix, consumer="consumer-b")
    [token] = await second.reclaim(partition(), min_idle=0.01)
    assert token.takeovers == 1
    following = await second.advance(token, message(1).client_message_id)
    assert isinstance(following, Head)
    await asyncio.sleep(0.02)  # the second dies holding message 2: its first takeover, not its second
    [token] = await Queue(redis_client, prefix=prefix, consumer="consumer-c").reclaim(partition(), min_idle=0.01)
    assert token.takeovers == 1


async def test_different_conversations_are_claimed_in_parallel(queue: Queue) -> None:
    routes = [Route(f"r{i}", Destination(agent_id=f"agent-{i}", device_id="d")) for i in range(40)]
    for i, route in enumerate(routes):
        await queue.enqueue(message(i, route))
    tokens = []
    for p in range(PARTITIONS):
        tokens += await queue.read(p, 100, 10)
    assert len(tokens) == 40
    heads = await queue.fetch(tokens)
    assert sorted(h.envelope.message["content"] for h in heads if h.envelope) == sorted(f"text {i}" for i in range(40))


async def test_retry_keeps_the_head_until_due_then_returns_it_updated(queue: Queue) -> None:
    await queue.enqueue(message(1))
    await queue.enqueue(message(2))
    token, envelope = await take(queue)
    assert envelope is not None
    due = time.time() + 60
    assert await queue.retry(token, envelope.after_failure("HTTP 503"), due)
    assert await queue.read(partition(), 10, 10) == []  # message 2 waits behind message 1
    moved, following = await queue.promote(partition(), time.time())
    assert moved == 0 and following == pytest.approx(due, abs=0.01)
    moved, _ = await queue.promote(partition(), due + 0.001)
    assert moved == 1
    _token, again = await take(queue)
    assert again is not None
    assert again.client_message_id == envelope.client_message_id
    assert (again.attempts, again.last_error) == (1, "HTTP 503")


async def test_dead_letter_keeps_reason_and_lets_the_next_message_through(queue: Queue) -> None:
    await queue.enqueue(message(1))
    await queue.enqueue(message(2))
    token, envelope = await take(queue)
    assert envelope is not None
    assert await queue.dead_letter(token, envelope.after_failure("HTTP 400: bad"), "HTTP 400: bad", "http_400")
    _token, following = await take(queue)
    assert following is not None and following.message["content"] == "text 2"
    [dead] = await queue.dead_letters()
    assert (dead.client_message_id, dead.reason, dead.code) == (envelope.client_message_id, "HTTP 400: bad", "http_400")
    assert dead.envelope.attempts == 1


async def test_replay_requeues_a_dead_letter_with_the_same_id_once(queue: Queue) -> None:
    await queue.enqueue(message(1))
    token, envelope = await take(queue)
    assert envelope is not None
    await queue.dead_letter(token, envelope.after_failure("x"), "x", "http_400")
    [dead] = await queue.dead_letters()
    assert await queue.replay(dead) is True
    assert await queue.replay(dead) is False  # a second replay of the same entry is a no-op
    assert await queue.dead_letters() == []
    _token, replayed = await take(queue)
    assert replayed is not None
    assert replayed.client_message_id == envelope.client_message_id
    assert replayed.attempts == 0 and replayed.received_at == envelope.received_at


async def test_drop_removes_a_dead_letter(queue: Queue) -> None:
    await queue.enqueue(message(1))
    token, envelope = await take(queue)
    assert envelope is not None
    await queue.dead_letter(token, envelope, "x", "http_400")
    [dead] = await queue.dead_letters()
    assert await queue.drop(dead) is True
    assert await queue.drop(dead) is False
    assert (await queue.depth()).dead == 0


async def test_silent_workers_claim_is_reclaimed_by_another(queue: Queue, redis_client: Any, prefix: str) -> None:
    await queue.enqueue(message(1))
    token, _ = await take(queue)
    other = Queue(redis_client, prefix=prefix, consumer="consumer-b")
    assert await other.reclaim(partition(), min_idle=60) == []  # not idle long enough
    await asyncio.sleep(0.05)
    [reclaimed] = await other.reclaim(partition(), min_idle=0.01)
    assert reclaimed.entry_id == token.entry_id
    # The first worker's late acknowledgement changes nothing: the new owner finishes.
    assert await queue.done(token, message(1).client_message_id) is False
    [head] = await other.fetch([reclaimed])
    envelope = head.envelope
    assert envelope is not None and envelope.client_message_id == message(1).client_message_id
    assert await other.done(reclaimed, envelope.client_message_id) is True


async def test_renewing_a_claim_prevents_its_takeover(queue: Queue, redis_client: Any, prefix: str) -> None:
    await queue.enqueue(message(1))
    token, _ = await take(queue)
    other = Queue(redis_client, prefix=prefix, consumer="consumer-b")
    await asyncio.sleep(0.15)
    assert await queue.renew([token]) == []
    assert await other.reclaim(partition(), min_idle=0.1) == []


async def test_renew_reports_claims_taken_over(queue: Queue, redis_client: Any, prefix: str) -> None:
    await queue.enqueue(message(1))
    token, _ = await take(queue)
    other = Queue(redis_client, prefix=prefix, consumer="consumer-b")
    await asyncio.sleep(0.05)
    assert len(await other.reclaim(partition(), min_idle=0.01)) == 1
    assert await queue.renew([token]) == [token]
    assert await queue.retry(token, None, time.time()) is False  # nor can it hand it back


async def test_hand_back_makes_the_conversation_available_again(queue: Queue) -> None:
    await queue.enqueue(message(1))
    token, _ = await take(queue)
    assert await queue.retry(token, None, time.time())
    await queue.promote(partition(), time.time() + 0.001)
    _token, envelope = await take(queue)
    assert envelope is not None and envelope.attempts == 0


async def test_stray_token_is_released_without_touching_the_mailbox(queue: Queue) -> None:
    await queue.enqueue(message(1))
    token, envelope = await take(queue)
    assert envelope is not None
    assert await queue.done(token, envelope.client_message_id)
    # A token for a conversation whose mailbox is empty reads as a None head.
    await queue.redis.xadd(queue.keys.ready(partition()), {"c": ROUTE.destination.conversation_key})
    stray, head = await take(queue)
    assert head is None
    assert await queue.done(stray, "")
    assert await queue.depth() == type(await queue.depth())(ready=0, in_flight=0, delayed=0, dead=0)


async def test_messages_enqueued_before_the_group_exists_are_read(redis_client: Any, prefix: str) -> None:
    web = Queue(redis_client, prefix=prefix)
    await web.enqueue(message(1))  # the web process may start before any worker
    worker = Queue(redis_client, prefix=prefix, consumer="w")
    await worker.ensure_groups()
    await worker.ensure_groups()  # idempotent
    _token, envelope = await take(worker)
    assert envelope is not None and envelope.client_message_id == message(1).client_message_id


async def test_worker_leaves_the_group_only_when_it_holds_nothing(queue: Queue, redis_client: Any) -> None:
    await queue.enqueue(message(1))
    token, _ = await take(queue)
    await queue.leave()
    consumers = await redis_client.xinfo_consumers(queue.keys.ready(partition()), GROUP)
    assert [c["name"] for c in consumers] == ["consumer-a"]
    await queue.done(token, message(1).client_message_id)
    await queue.leave()
    assert await redis_client.xinfo_consumers(queue.keys.ready(partition()), GROUP) == []


class SlotRecorder:
    """Wraps a client and records the key slots of every script call, direct or pipelined."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.calls: list[set[int]] = []

    def record(self, keys: list[Any]) -> None:
        self.calls.append({key_slot(k.encode() if isinstance(k, str) else k) for k in keys})

    def register_script(self, source: str) -> Any:
        script = self.client.register_script(source)
        recorder = self

        class Recorded:
            sha, script_source = script.sha, script.script

            async def __call__(self, keys: list[str], args: list[Any], client: Any = None) -> Any:
                recorder.record(keys)
                return await script(keys=keys, args=args, client=client)

        Recorded.script = script.script  # type: ignore[attr-defined]
        return Recorded()

    def pipeline(self, **options: Any) -> Any:
        pipe, recorder = self.client.pipeline(**options), self

        class RecordingPipeline:
            def execute_command(self, *args: Any) -> Any:
                if args[0] == "EVALSHA":
                    recorder.record(list(args[3:3 + args[2]]))
                return pipe.execute_command(*args)

            def __getattr__(self, name: str) -> Any:
                return getattr(pipe, name)

        return RecordingPipeline()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)


async def test_every_script_touches_one_cluster_slot(redis_client: Any, prefix: str) -> None:
    recorder = SlotRecorder(redis_client)
    queue = Queue(recorder, prefix=prefix, consumer="c")  # type: ignore[arg-type]
    queue.nodes.cluster = True  # write as on a cluster (one server binds and queues in one call)
    await queue.ensure_groups()
    for route in (ROUTE, OTHER):
        for n in range(2):
            await queue.enqueue(message(f"{route.name}{n}", route))
        token, envelope = await take(queue, route)
        assert envelope is not None
        await queue.renew([token])
        await queue.retry(token, envelope.after_failure("x"), time.time())
        await queue.promote(partition(route), time.time() + 1)
        token, envelope = await take(queue, route)
        assert envelope is not None
        await queue.dead_letter(token, envelope, "x", "http_400")
        token, envelope = await take(queue, route)
        assert envelope is not None
        await queue.advance(token, envelope.client_message_id)
        await queue.enqueue(message(f"{route.name}-last", route))
        token, envelope = await take(queue, route)
        assert envelope is not None
        await queue.done(token, envelope.client_message_id)
    for dead in await queue.dead_letters():
        await queue.replay(dead)
    await queue.pause_all(time.time() + 1)
    await queue.leave()
    assert len(recorder.calls) > 15
    assert all(len(slots) == 1 for slots in recorder.calls), recorder.calls


async def test_head_whose_message_is_missing_is_reported_by_id_and_can_be_dropped(queue: Queue) -> None:
    await queue.enqueue(message(1))
    await queue.enqueue(message(2))
    await queue.redis.hdel(queue.keys.body(partition()), message(1).client_message_id)
    token, envelope = await take(queue)
    [head] = await queue.fetch([token])
    assert (head.message_id, head.envelope) == (message(1).client_message_id, None)
    assert await queue.done(token, head.message_id)
    _token, following = await take(queue)
    assert following is not None and following.client_message_id == message(2).client_message_id


async def test_durable_server_gets_no_warnings_and_evicting_or_volatile_ones_do(redis_server: Any) -> None:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
    queue = Queue(client, prefix="relaytest-durability")
    assert await queue.durability_warnings() == []  # the test server runs with AOF, noeviction
    await client.config_set("maxmemory-policy", "allkeys-lru")
    await client.config_set("appendonly", "no")
    warnings = await queue.durability_warnings()
    await client.aclose()
    assert len(warnings) == 2
    assert "allkeys-lru" in warnings[0] and "noeviction" in warnings[0]
    assert "appendonly is off" in warnings[1]


async def test_durability_check_stays_quiet_when_redis_is_unreachable() -> None:
    from relay.queue import connect
    from tests.support import free_port

    client = connect(f"redis://127.0.0.1:{free_port()}/0", socket_timeout=1.0)
    assert await Queue(client).durability_warnings() == []
    await client.aclose()


async def test_a_shared_pause_reaches_every_partition_and_is_never_shortened(queue: Queue) -> None:
    now = time.time()
    await queue.pause_all(now + 30)
    await queue.pause_all(now + 5)  # a later, shorter Retry-After does not cut the pause
    await queue.enqueue(message(1))
    _token, _ = await take(queue)
    [head] = await queue.fetch([_token])
    assert head.paused_until == pytest.approx(now + 30, abs=0.01)
    ttls = [await queue.redis.pttl(queue.keys.pause(p)) for p in range(PARTITIONS)]
    assert all(25_000 < ttl <= 30_000 for ttl in ttls)  # it expires by itself


async def test_pause_of_reads_the_shared_pause_of_one_partition(queue: Queue) -> None:
    assert await queue.pause_of(3) == 0.0
    until = time.time() + 30
    await queue.pause_all(until)
    assert await queue.pause_of(3) == pytest.approx(until, abs=0.01)


async def test_each_takeover_of_a_claim_is_counted(queue: Queue, redis_client: Any, prefix: str) -> None:
    await queue.enqueue(message(1))
    token, _ = await take(queue)
    assert token.takeovers == 0
    for n in range(3):
        await asyncio.sleep(0.02)
        [token] = await Queue(redis_client, prefix=prefix, consumer=f"ghost-{n}").reclaim(partition(), 0.01)
        assert token.takeovers == n + 1


class RoundTripCounter:
    """Wraps a client and counts script calls and pipelines executed (a round trip each)."""

    def __init__(self, client: Any) -> None:
        self.client, self.round_trips = client, 0

    def pipeline(self, **options: Any) -> Any:
        pipe, counter = self.client.pipeline(**options), self

        class Counted:
            async def execute(self, **kwargs: Any) -> Any:
                counter.round_trips += 1
                return await pipe.execute(**kwargs)

            def __getattr__(self, name: str) -> Any:
                return getattr(pipe, name)

        return Counted()

    def register_script(self, source: str) -> Any:
        inner, counter = self.client.register_script(source), self

        class Counted:
            sha, script = inner.sha, inner.script

            async def __call__(self, *args: Any, **kwargs: Any) -> Any:
                counter.round_trips += 1
                return await inner(*args, **kwargs)

        return Counted()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)


async def counted_queue(redis_client: Any, prefix: str) -> tuple[RoundTripCounter, Queue]:
    if isinstance(redis_client, RedisCluster):  # one pipeline per master there: test_redis_nodes.py counts them
        pytest.skip("round trips are counted on one server")
    counter = RoundTripCounter(redis_client)
    queue = Queue(counter, prefix=prefix, consumer="c")  # type: ignore[arg-type]
    await queue.ensure_groups()
    return counter, queue


def conversation_routes(count: int) -> list[Route]:
    """One route per conversation, so the messages spread over the partitions."""
    return [Route(f"r{n}", Destination(agent_id="a", conversation_id=f"conv-{n}", device_id="d"))
            for n in range(count)]


async def test_concurrent_enqueues_share_round_trips_and_each_gets_its_own_answer(
        redis_client: Any, prefix: str) -> None:
    counter, queue = await counted_queue(redis_client, prefix)
    routes = conversation_routes(40)
    await queue.enqueue(message("dup", routes[7]))
    counter.round_trips = 0
    sent = [message("dup" if n == 7 else n, route) for n, route in enumerate(routes)]
    flags = await asyncio.gather(*(queue.enqueue(e) for e in sent))
    assert flags == [n != 7 for n in range(40)]
    assert counter.round_trips < 40 / 4  # 40 callers, a handful of group commits
    assert (await queue.depth()).ready == 40  # 39 new + the earlier one; none lost, none doubled


class FailsOnce(RoundTripCounter):
    """The first pipelined round trip fails as if the connection dropped."""

    def pipeline(self, **options: Any) -> Any:
        if self.round_trips == 0:
            self.round_trips += 1
            inner = self.client.pipeline(**options)

            class Broken:
                async def execute(self, **kwargs: Any) -> Any:
                    from redis.exceptions import ConnectionError as RedisConnectionError
                    raise RedisConnectionError("connection dropped")

                def __getattr__(self, name: str) -> Any:
                    return getattr(inner, name)

            return Broken()
        return super().pipeline(**options)


async def test_a_failed_group_commit_fails_each_caller_and_the_next_one_goes_through(
        redis_client: Any, prefix: str) -> None:
    from relay.errors import QueueUnavailable

    queue = Queue(FailsOnce(redis_client), prefix=prefix, consumer="c")  # type: ignore[arg-type]
    queue.nodes.cluster = isinstance(redis_client, RedisCluster)  # the wrapper hides what it wraps
    await queue.ensure_groups()
    routes = conversation_routes(5)
    results = await asyncio.gather(*(queue.enqueue(message(n, route)) for n, route in enumerate(routes)),
                                   return_exceptions=True)
    assert all(isinstance(r, QueueUnavailable) for r in results), results
    assert len({id(r) for r in results}) == len(results)  # each caller raises its own exception
    # The callers retry (as a webhook sender would): each message lands once.
    assert await asyncio.gather(*(queue.enqueue(message(n, route)) for n, route in enumerate(routes))) == [True] * 5
    assert (await queue.depth()).ready == 5


async def test_enqueue_reloads_its_script_after_redis_forgot_it(redis_server: Any) -> None:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(redis_server.url, decode_responses=True)  # test-owned server
    queue = Queue(client, prefix="relaytest-noscript", consumer="c")
    await queue.ensure_groups()
    assert await queue.enqueue(message(1))
    await client.script_flush()  # what a restarted Redis without its script cache looks like
    assert await queue.enqueue(message(2, OTHER))
    depth = await queue.depth()
    await client.aclose()
    assert depth.ready == 2


# -- stats ---------------------------------------------------------------------------------------

NOW = 1_700_000_000.0
A = Route("a", Destination(agent_id="agent-a", device_id="device-a"))
B = Route("b", Destination(agent_id="agent-b", connection_name="box-b"))
C = Route("c", Destination(agent_id="agent-c", conversation_id="conv-c", device_id="device-c"))


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock(NOW)


@pytest.fixture
async def timed(redis_client: Any, prefix: str, clock: Clock) -> Queue:
    queue = Queue(redis_client, prefix=prefix, consumer="consumer-a", clock=clock)
    await queue.ensure_groups()
    return queue


async def test_stats_count_messages_in_each_state_and_age_the_oldest(timed: Queue, clock: Clock) -> None:
    for n in range(3):
        await timed.enqueue(message(f"a{n}", A, now=NOW - 300 + n))  # a0 is the oldest of all
    await timed.enqueue(message("b", B, now=NOW - 100))
    await timed.enqueue(message("c", C, now=NOW - 50))
    await take(timed, A)  # a0 in flight, a1 and a2 behind it
    token, envelope = await take(timed, B)
    assert envelope is not None
    await timed.retry(token, envelope.after_failure("HTTP 503"), NOW + 60)
    token, envelope = await take(timed, C)
    assert envelope is not None
    await timed.dead_letter(token, envelope.after_failure("HTTP 400: no"), "HTTP 400: no", "http_400")
    clock.now = NOW + 20
    stats = await timed.stats()
    assert (stats.ready, stats.in_flight, stats.delayed, stats.dead) == (2, 1, 1, 1)
    assert stats.oldest_waiting_age == pytest.approx(320, abs=0.01)
    assert stats.dead_by_reason == {"http_400": 1}
    assert stats.failures_by_destination == {B.destination.describe(): 1, C.destination.describe(): 1}


async def test_stats_oldest_age_looks_past_conversations_that_were_delivered(timed: Queue, clock: Clock) -> None:
    await timed.enqueue(message("early", A, now=NOW - 90))
    await timed.enqueue(message("later", B, now=NOW - 30))
    assert (await timed.stats()).oldest_waiting_age == pytest.approx(90, abs=0.01)
    token, envelope = await take(timed, A)
    assert envelope is not None and await timed.done(token, envelope.client_message_id)
    assert (await timed.stats()).oldest_waiting_age == pytest.approx(30, abs=0.01)
    token, envelope = await take(timed, B)
    assert envelope is not None and await timed.done(token, envelope.client_message_id)
    stats = await timed.stats()
    assert stats.oldest_waiting_age is None and (stats.ready, stats.in_flight, stats.delayed) == (0, 0, 0)


async def test_stats_dead_letters_by_reason_follow_replays_and_drops(timed: Queue) -> None:
    for route, code in ((A, "http_400"), (B, "expired"), (C, "http_400")):
        await timed.enqueue(message(route.name, route))
        token, envelope = await take(timed, route)
        assert envelope is not None
        await timed.dead_letter(token, envelope, f"{code} happened", code)
    assert (await timed.stats()).dead_by_reason == {"http_400": 2, "expired": 1}
    dead = {d.envelope.route: d for d in await timed.dead_letters()}
    assert await timed.replay(dead["a"])
    assert (await timed.stats()).dead_by_reason == {"http_400": 1, "expired": 1}
    assert await timed.drop(dead["b"])
    stats = await timed.stats()
    assert stats.dead_by_reason == {"http_400": 1} and stats.dead == 1
    assert stats.ready == 1  # the replayed message waits again


async def test_stats_count_failed_attempts_per_destination_for_a_day(timed: Queue, clock: Clock) -> None:
    await timed.enqueue(message(1, A))
    for attempt in range(3):
        token, envelope = await take(timed, A)
        assert envelope is not None
        await timed.retry(token, envelope.after_failure("timeout"), clock.now)
        await timed.promote(partition(A), clock.now + 1)
        clock.now += 3600  # a new hourly bucket each time
    token, _ = await take(timed, A)
    await timed.retry(token, None, clock.now)  # a hand-back (shutdown, shared pause) is no failure
    assert (await timed.stats()).failures_by_destination == {A.destination.describe(): 3}
    clock.now += (FAILURE_WINDOW_HOURS - 3) * 3600  # the first attempt's hour has left the window
    assert (await timed.stats()).failures_by_destination == {A.destination.describe(): 2}
    clock.now += 2 * 3600
    assert (await timed.stats()).failures_by_destination == {}


async def test_stats_work_before_any_worker_created_the_groups(redis_client: Any, prefix: str, clock: Clock) -> None:
    web = Queue(redis_client, prefix=prefix, clock=clock)
    await web.enqueue(message(1, A, now=NOW - 5))
    stats = await web.stats()
    assert (stats.ready, stats.in_flight, stats.delayed, stats.dead) == (1, 0, 0, 0)
    assert stats.oldest_waiting_age == pytest.approx(5, abs=0.01)


async def test_stats_scripts_touch_one_cluster_slot_each(redis_client: Any, prefix: str) -> None:
    recorder = SlotRecorder(redis_client)
    queue = Queue(recorder, prefix=prefix, consumer="c")  # type: ignore[arg-type]
    queue.nodes.cluster = True  # write as on a cluster (one server binds and queues in one call)
    await queue.ensure_groups()
    for route in (A, B, C):
        await queue.enqueue(message(route.name, route))
    token, envelope = await take(queue, C)
    assert envelope is not None
    await queue.dead_letter(token, envelope, "x", "http_400")
    recorder.calls.clear()
    stats = await queue.stats()
    assert stats.ready == 2 and stats.dead == 1
    assert all(len(slots) == 1 for slots in recorder.calls), recorder.calls
    assert len(set().union(*recorder.calls)) == PARTITIONS


async def test_stats_survive_a_round_trip_through_json(timed: Queue) -> None:
    import json
    from dataclasses import asdict

    await timed.enqueue(message(1, A))
    token, envelope = await take(timed, A)
    assert envelope is not None
    await timed.dead_letter(token, envelope, "x", "refused")
    stats = await timed.stats()
    assert QueueStats.from_dict(json.loads(json.dumps(asdict(stats)))) == stats
    with pytest.raises(ValueError):
        QueueStats.from_dict({"ready": "many"})


async def test_fetch_and_renew_over_many_partitions_take_one_round_trip_each(
        redis_client: Any, prefix: str) -> None:
    counter, queue = await counted_queue(redis_client, prefix)
    routes = conversation_routes(24)
    await asyncio.gather(*(queue.enqueue(message(n, route)) for n, route in enumerate(routes)))
    tokens = [t for p in range(PARTITIONS) for t in await queue.read(p, 100, 10)]
    assert len({t.partition for t in tokens}) > 4
    await queue.fetch(tokens[:1])  # Redis learns the scripts (a NOSCRIPT answer costs a round trip)
    await queue.renew(tokens[:1])
    counter.round_trips = 0
    heads = await queue.fetch(tokens)
    assert counter.round_trips == 1
    assert sorted(h.envelope.client_message_id for h in heads if h.envelope) == \
        sorted(message(n, route).client_message_id for n, route in enumerate(routes))
    counter.round_trips = 0
    assert await queue.renew(tokens) == []
    assert counter.round_trips == 1


async def test_concurrent_acks_share_round_trips_and_each_gets_its_own_answer(
        redis_client: Any, prefix: str) -> None:
    counter, queue = await counted_queue(redis_client, prefix)
    routes = conversation_routes(24)
    await asyncio.gather(*(queue.enqueue(message(n, route)) for n, route in enumerate(routes)))
    tokens = [t for p in range(PARTITIONS) for t in await queue.read(p, 100, 10)]
    heads = await queue.fetch(tokens)
    assert len(heads) == 24
    stolen = heads[0].token  # another consumer's claim by now: its ack must answer False alone
    other = Queue(redis_client, prefix=prefix, consumer="other")
    await redis_client.xclaim(other.keys.ready(stolen.partition), GROUP, "other", 0, [stolen.entry_id])
    counter.round_trips = 0
    acked = await asyncio.gather(*(queue.done(h.token, h.message_id) for h in heads))
    assert acked == [False] + [True] * 23
    assert counter.round_trips < 24 / 4
    depth = await queue.depth()
    assert (depth.ready, depth.in_flight) == (0, 1)


async def test_put_record_replaces_a_record_with_a_fresh_expiry(queue: Queue, redis_client: Any) -> None:
    await queue.put_record("note", "k", "first", 10.0)
    await queue.put_record("note", "k", "second", 3600.0)
    assert await queue.record("note", "k") == "second"
    assert 3_590_000 < await redis_client.pttl(queue.keys.record("note", "k")) <= 3_600_000


# -- one delivery identity, accepted once whatever route it resolves to ---------------------------

def far_route() -> Route:
    """A route whose conversation lives in another partition than ROUTE's."""
    for n in range(100):
        route = Route(f"far{n}", Destination(agent_id="agent-far", conversation_id=f"conv-{n}", device_id="d"))
        if partition(route) != partition():
            return route
    raise AssertionError("no other partition")


def same_id(sent: Envelope, route: Route) -> Envelope:
    """The same delivery (same client_message_id), resolved to another route."""
    return dataclasses.replace(sent, route=route.name, destination=route.destination)


async def test_one_delivery_id_resolved_to_another_route_is_queued_once(queue: Queue) -> None:
    first, other = message(1), far_route()
    assert await queue.enqueue(first) is True
    assert await queue.enqueue(same_id(first, other)) is False
    assert (await queue.depth()).ready == 1
    assert await queue.read(partition(other), 10, 10) == []
    _token, received = await take(queue)
    assert received == first


async def test_an_identity_bound_by_an_attempt_that_never_queued_moves_once_it_is_stale(
        queue: Queue, redis_client: Any) -> None:
    sent, other = message(2), far_route()
    stale_ms = int(time.time() * 1000) - STALE_BINDING_MS - 1000
    # A first attempt bound the id to ROUTE's partition, then died before queueing it.
    await redis_client.set(queue.keys.identity(sent.client_message_id), f"{partition()}:{stale_ms}", px=60_000)
    assert await queue.enqueue(same_id(sent, other)) is True
    assert await queue.read(partition(), 10, 10) == []
    tokens = await queue.read(partition(other), 10, 10)
    assert [t.conversation for t in tokens] == [other.destination.conversation_key]
    assert await queue.enqueue(sent) is False  # now bound to the other partition, where it is queued


async def test_an_identity_being_accepted_for_another_route_right_now_is_answered_unavailable(
        queue: Queue, redis_client: Any) -> None:
    sent, other = message(3), far_route()
    now_ms = int(time.time() * 1000)
    await redis_client.set(queue.keys.identity(sent.client_message_id), f"{partition()}:{now_ms}", px=60_000)
    with pytest.raises(QueueUnavailable, match="being accepted for another route"):
        await queue.enqueue(same_id(sent, other))
    assert (await queue.depth()).ready == 0


async def test_a_message_that_must_wait_refuses_only_its_own_request(queue: Queue, redis_client: Any) -> None:
    blocked, other = message(4), far_route()
    await redis_client.set(queue.keys.identity(blocked.client_message_id),
                           f"{partition()}:{int(time.time() * 1000)}", px=60_000)
    results = await asyncio.gather(queue.enqueue(same_id(blocked, other)), queue.enqueue(message(5)),
                                   return_exceptions=True)
    assert isinstance(results[0], QueueUnavailable) and results[1] is True
    assert (await queue.depth()).ready == 1


async def test_concurrent_acks_of_one_partition_share_one_script_call(redis_client: Any, prefix: str) -> None:
    if isinstance(redis_client, RedisCluster):
        pytest.skip("recorded on one server; the cluster runs every other test of advance")
    recorder = SlotRecorder(redis_client)
    queue = Queue(recorder, prefix=prefix, consumer="c")  # type: ignore[arg-type]
    await queue.ensure_groups()
    routes = [r for r in conversation_routes(200) if partition(r) == 0][:3]
    for n, route in enumerate(routes):
        await queue.enqueue(message(f"a{n}", route))
        await queue.enqueue(message(f"b{n}", route))
    heads = await queue.fetch(await queue.read(0, 10, 10))
    assert len(heads) == 3
    await redis_client.script_load(SCRIPTS["advance"].source)  # no NOSCRIPT round: count the calls alone
    recorder.calls.clear()
    results = await asyncio.gather(*(queue.advance(h.token, h.message_id) for h in heads))
    assert len(recorder.calls) == 1  # one call for the three acks
    assert sorted(r.envelope.message["content"] for r in results if isinstance(r, Head) and r.envelope) == [
        "text b0", "text b1", "text b2"]


async def test_script_calls_take_one_lane_per_master(queue: Queue) -> None:
    """A batch for one master never waits on another's round trip: one group commit per master."""
    await asyncio.gather(*(queue.promote(p, time.time()) for p in range(PARTITIONS)))
    masters = {queue.nodes.name_of(queue.keys.ready(p)) for p in range(PARTITIONS)}
    assert set(queue._calls._lanes) == masters
    assert len(masters) == (3 if isinstance(queue.redis, RedisCluster) else 1)
