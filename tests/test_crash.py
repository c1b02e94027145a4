"""Worker processes killed or stopped mid-delivery lose nothing.

Real parts: a redis-server of the test's own (AOF, fsync always), `relay worker`
subprocesses, and the loopback Letta stand-in.
"""

from __future__ import annotations

import asyncio
import collections
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from relay.messages import Envelope, Inbound, client_message_id, envelope_for, user_message
from relay.queue import Queue, connect
from relay.routing import Destination, Route
from relay.standin import LettaStandIn
from tests.support import RedisServer, relay_env

CONVERSATIONS = [Route(f"c{i}", Destination(agent_id=f"agent-{i}", device_id="device-test")) for i in range(4)]


def messages(per_conversation: int) -> list[Envelope]:
    out = []
    for n in range(per_conversation):
        for route in CONVERSATIONS:
            message_id = client_message_id("crash", f"{route.name}-{n}")
            out.append(envelope_for(Inbound("crash", f"{route.name}-{n}", message_id,
                                            user_message(f"{route.name}:{n}", message_id)), route, time.time()))
    return out


def enqueue(url: str, prefix: str, envelopes: list[Envelope]) -> None:
    async def run() -> None:
        redis = connect(url)
        queue = Queue(redis, prefix=prefix)
        for envelope in envelopes:
            assert await queue.enqueue(envelope)
        await redis.aclose()

    asyncio.run(run())


def worker(redis: RedisServer, letta_url: str, prefix: str, log: Path, **settings: str) -> subprocess.Popen[bytes]:
    env = relay_env(REDIS_URL=redis.url, LETTA_API_KEY="test-key", LETTA_BASE_URL=letta_url,
                    RELAY_KEY_PREFIX=prefix, RELAY_RETRY_BASE="0.05", RELAY_RETRY_CAP="0.5",
                    RELAY_LETTA_TIMEOUT="60", **settings)
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "relay", "worker"], env=env, stdout=out, stderr=out,
                                cwd=Path(__file__).parent.parent)


def assert_ledger(standin: LettaStandIn, sent: list[Envelope], faults: int = 1) -> None:
    """Every accepted message arrived; repeats are same-id re-sends of what was in flight at a
    fault (at most one message per conversation is ever in flight); order holds."""
    delivered = standin.delivered_ids()
    assert set(delivered) == {e.client_message_id for e in sent}, "a message was lost or invented"
    counts = collections.Counter(delivered)
    assert max(counts.values()) <= faults + 1
    content = {e.client_message_id: e.message["content"] for e in sent}
    for route in CONVERSATIONS:
        ids = [i for i in dict.fromkeys(delivered) if content[i].startswith(f"{route.name}:")]
        assert [content[i] for i in ids] == [f"{route.name}:{n}" for n in range(len(ids))], "order broken"
        assert sum(counts[i] > 1 for i in ids) <= faults, f"{route.name}: more repeats than faults"


def stop(process: subprocess.Popen[bytes]) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    return process.wait(timeout=30)


def hang_then_fault(standin: LettaStandIn, victim: str, redis: RedisServer, letta_url: str, prefix: str,
                    log: Path, fault: str, **settings: str) -> None:
    """Start a worker, let it get stuck delivering `victim`, then SIGKILL or SIGTERM it."""
    standin.add_fault(200, delay=30.0, message_id=victim)
    process = worker(redis, letta_url, prefix, log, **settings)
    try:
        assert standin.wait_for(lambda s: any(victim in a.message_ids for a in s.attempts), 20)
        if fault == "kill":
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
        else:
            assert stop(process) == 0
    finally:
        if process.poll() is None:
            process.kill()


def finish_with_another_worker(standin: LettaStandIn, sent: list[Envelope], redis: RedisServer, letta_url: str,
                               prefix: str, log: Path, **settings: str) -> None:
    process = worker(redis, letta_url, prefix, log, **settings)
    try:
        assert standin.wait_for(lambda s: set(s.delivered_ids()) >= {e.client_message_id for e in sent}, 30), \
            log.read_text()
    finally:
        assert stop(process) == 0
    assert_ledger(standin, sent)


def test_worker_killed_mid_delivery_loses_nothing(redis_server: RedisServer, stand_in, prefix: str,  # type: ignore[no-untyped-def]
                                                  tmp_path: Path) -> None:
    standin, letta_url = stand_in
    sent = messages(5)
    enqueue(redis_server.url, prefix, sent)
    quick = {"RELAY_RECLAIM_AFTER": "1"}
    log = tmp_path / "worker.log"
    hang_then_fault(standin, sent[0].client_message_id, redis_server, letta_url, prefix, log, "kill", **quick)
    finish_with_another_worker(standin, sent, redis_server, letta_url, prefix, log, **quick)


def test_sigterm_hands_in_flight_work_back_for_another_worker(redis_server: RedisServer, stand_in, prefix: str,  # type: ignore[no-untyped-def]
                                                              tmp_path: Path) -> None:
    standin, letta_url = stand_in
    sent = messages(3)
    enqueue(redis_server.url, prefix, sent)
    # Reclaim after 10 minutes: only a hand-back can let the second worker finish in time.
    patient = {"RELAY_RECLAIM_AFTER": "600", "RELAY_SHUTDOWN_GRACE": "0.5"}
    log = tmp_path / "worker.log"
    hang_then_fault(standin, sent[0].client_message_id, redis_server, letta_url, prefix, log, "term", **patient)
    finish_with_another_worker(standin, sent, redis_server, letta_url, prefix, log, **patient)
