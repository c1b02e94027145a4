"""Redis Cluster detection, routing per master, replica confirmation (WAIT), and the topology
relay check reports: against a real Redis Cluster (three masters, one replica each) and a
real single server, both on loopback."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any, AsyncIterator

import httpx
import pytest
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot

from relay.errors import QueueUnavailable
from relay.messages import Envelope, Inbound, client_message_id, envelope_for, user_message
from relay.queue import PARTITIONS, Keys, Queue
from relay.redis_nodes import open_for, open_redis
from relay.routing import Destination, Route
from relay.settings import Settings
from relay.web import create_app
from tests.redis_cluster import Cluster
from tests.test_check import env  # noqa: F401  (a fixture: a clean environment with a source)
from tests.support import delete_prefix, free_port, signed
from tests.test_cli import run_main
from tests.test_web import SECRET

pytestmark = pytest.mark.anyio


def message(n: int, conversations: int = 1) -> Envelope:
    message_id = client_message_id("test", f"nodes-{n}")
    route = Route("r", Destination(agent_id="a", conversation_id=f"conv-{n % conversations}", device_id="d"))
    return envelope_for(Inbound("test", str(n), message_id, user_message(f"m{n}", message_id)), route, time.time())


@pytest.fixture
async def cluster_client(redis_cluster: Cluster, prefix: str) -> AsyncIterator[RedisCluster]:
    client = await open_redis(redis_cluster.url)
    assert isinstance(client, RedisCluster)
    yield client
    await delete_prefix(client, prefix)
    await client.aclose()


@pytest.fixture
async def cluster_queue(cluster_client: RedisCluster, prefix: str) -> AsyncIterator[Queue]:
    queue = Queue(cluster_client, prefix=prefix, consumer="c")
    await queue.ensure_groups()
    yield queue
    await queue.aclose()


async def test_any_node_of_a_cluster_is_detected_as_a_cluster(redis_cluster: Cluster) -> None:
    for node in (redis_cluster.nodes[0], redis_cluster.nodes[-1]):  # a master and, at first, a replica
        client = await open_redis(f"redis://{node.name}/0")
        try:
            assert isinstance(client, RedisCluster)
            assert len(client.get_primaries()) == 3
        finally:
            await client.aclose()


async def test_a_single_server_keeps_the_single_server_client(real_redis_url: str) -> None:
    client = await open_redis(real_redis_url)
    try:
        assert type(client) is aioredis.Redis
    finally:
        await client.aclose()


async def test_cluster_off_on_a_cluster_fails_with_the_way_out(redis_cluster: Cluster, prefix: str) -> None:
    client = await open_redis(redis_cluster.url, cluster="off")
    queue = Queue(client, prefix=prefix)
    asked = redis_cluster.nodes[0].port
    elsewhere = next(m for m in (message(n) for n in range(100))
                     if redis_cluster.node_for_slot(_slot(queue.keys.identity(m.client_message_id))).port != asked)
    try:
        assert type(client) is aioredis.Redis
        with pytest.raises(QueueUnavailable, match="RELAY_REDIS_CLUSTER=on"):
            await queue.enqueue(elsewhere)
    finally:
        await client.aclose()


def _slot(key: str) -> int:
    return key_slot(key.encode())


async def test_auto_with_redis_not_answering_assumes_one_server(caplog: pytest.LogCaptureFixture) -> None:
    client = await open_for(f"redis://127.0.0.1:{free_port()}/0", "auto", attempts=1)
    try:
        assert type(client) is aioredis.Redis
    finally:
        await client.aclose()
    assert "assuming one server" in caplog.text and "RELAY_REDIS_CLUSTER" in caplog.text  # and says so


async def test_topology_names_every_master_its_partitions_and_its_replica(
        redis_cluster: Cluster, cluster_queue: Queue) -> None:
    topology = await cluster_queue.topology()
    assert topology.cluster
    masters = {n.name for n in redis_cluster.master_nodes()}
    assert {m.name for m in topology.masters} == masters
    assert sorted(p for m in topology.masters for p in m.partitions) == list(range(PARTITIONS))
    assert all(m.replicas == 1 and len(m.replica_names) == 1 for m in topology.masters)
    for m in topology.masters:  # each partition's keys really are on the master named for it
        for p in m.partitions:
            assert redis_cluster.node_for_slot(_slot(cluster_queue.keys.ready(p))).name == m.name
    lines = topology.describe()
    assert lines[0] == "Redis Cluster: 3 master(s), 16 partitions"


async def test_script_calls_go_in_one_pipeline_per_master(cluster_queue: Queue) -> None:
    for n in range(64):
        await cluster_queue.enqueue(message(n, conversations=64))
    tokens = [t for p in range(PARTITIONS) for t in await cluster_queue.read(p, 100, 10)]
    assert len({t.partition for t in tokens}) == PARTITIONS
    await cluster_queue.fetch(tokens)  # every master learns the script
    sent: list[str] = []
    plain = cluster_queue.nodes.client

    def counting(name: str) -> Any:
        client = plain(name)
        original = client.pipeline

        def pipeline(**options: Any) -> Any:
            sent.append(name)
            return original(**options)

        client.pipeline = pipeline  # type: ignore[method-assign]
        return client

    cluster_queue.nodes.client = counting  # type: ignore[method-assign]
    heads = await cluster_queue.fetch(tokens)
    assert len(heads) == 64 and all(h.envelope is not None for h in heads)
    assert sorted(sent) == sorted(cluster_queue.nodes.masters())  # one pipeline to each master


async def test_min_replicas_one_is_confirmed_by_the_masters_replica(cluster_client: RedisCluster,
                                                                    prefix: str) -> None:
    queue = Queue(cluster_client, prefix=prefix, min_replicas=1, replica_timeout=5.0)
    try:
        await queue.ensure_groups()
        for n in range(16):  # conversations on every master
            assert await queue.enqueue(message(n, conversations=16)) is True
        assert (await queue.depth()).ready == 16
    finally:
        await queue.aclose()


async def test_more_replicas_than_a_master_has_is_unavailable_and_the_retry_is_a_duplicate(
        cluster_client: RedisCluster, prefix: str) -> None:
    strict = Queue(cluster_client, prefix=prefix, min_replicas=2, replica_timeout=0.2)
    usual = Queue(cluster_client, prefix=prefix, min_replicas=1, replica_timeout=5.0)
    try:
        await strict.ensure_groups()
        with pytest.raises(QueueUnavailable, match=r"[01] of the 2 replica"):
            await strict.enqueue(message(7))
        # The sender retries (a 503 asks it to): accepted, and queued once whatever the first
        # attempt left on the masters (binding or message).
        await usual.enqueue(message(7))
        assert await usual.enqueue(message(7)) is False
        assert (await usual.depth()).ready == 1
    finally:
        await strict.aclose()
        await usual.aclose()


async def test_a_webhook_is_answered_503_when_no_replica_confirms_it(real_redis: Any, prefix: str,
                                                                     settings: Settings) -> None:
    # The loopback server has no replicas: with RELAY_REDIS_MIN_REPLICAS=1 nothing can be confirmed.
    queue = Queue(real_redis, prefix=prefix, min_replicas=1, replica_timeout=0.05)
    await queue.ensure_groups()
    app = create_app(replace(settings, redis_min_replicas=1), queue)
    raw, headers = signed({"text": "hi"}, SECRET, webhook_id="msg_unconfirmed")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://relay") as http:
        response = await http.post("/hooks/generic", content=raw, headers=headers)
    assert response.status_code == 503


def test_partition_keys_share_one_slot_per_partition() -> None:
    keys = Keys("relay")
    for p in range(PARTITIONS):
        names = [keys.ready(p), keys.body(p), keys.delayed(p), keys.dead(p), keys.pause(p), keys.dead_codes(p),
                 keys.failures(p, 1), keys.mailbox(p, "c"), keys.seen(p, "m")]
        assert len({_slot(n) for n in names}) == 1


def test_relay_status_and_check_report_the_cluster(redis_cluster: Cluster, prefix: str, env: Any,
                                                   capsys: Any) -> None:
    env.setenv("REDIS_URL", redis_cluster.url)
    env.setenv("RELAY_KEY_PREFIX", prefix)
    code, out, _ = run_main(capsys, "status")
    assert code == 0, out
    assert "Redis Cluster: 3 master(s), 16 partitions" in out
    listed = [line for line in out.splitlines() if line.startswith("  127.0.0.1:")]
    assert len(listed) == 3 and all("1 replica(s)" in line for line in listed)
    env.setenv("RELAY_REDIS_MIN_REPLICAS", "2")
    code, out, _ = run_main(capsys, "check")
    assert "Redis Cluster: 3 master(s)" in out
    assert "RELAY_REDIS_MIN_REPLICAS=2 but these masters have fewer replicas" in out


async def test_dead_letters_and_replays_wait_for_replicas_and_acks_do_not(cluster_client: RedisCluster,
                                                                          prefix: str) -> None:
    usual = Queue(cluster_client, prefix=prefix, consumer="c", min_replicas=1, replica_timeout=5.0)
    strict = Queue(cluster_client, prefix=prefix, consumer="c", min_replicas=2, replica_timeout=0.1)
    partition = Keys.partition_of(message(20).destination.conversation_key)
    try:
        await usual.ensure_groups()
        assert await usual.enqueue(message(20))
        [head] = await usual.fetch(await usual.read(partition, 10, 10))
        assert head.envelope is not None
        with pytest.raises(QueueUnavailable, match="replica"):
            await strict.dead_letter(head.token, head.envelope, "refused", "http_400")
        [dead] = await usual.dead_letters()  # written on the master: only its confirmation failed
        with pytest.raises(QueueUnavailable, match="replica"):
            await strict.replay(dead)
        [head] = await usual.fetch(await usual.read(partition, 10, 10))
        assert await strict.done(head.token, head.message_id) is True  # no WAIT for an ack
    finally:
        await usual.aclose()
        await strict.aclose()
