"""7. A Redis Cluster master SIGKILLed under traffic: its replica takes over, relay recovers.

Three masters and three replicas on loopback (AOF, node timeout 2 s), `relay serve` and two
`relay worker`s as subprocesses with RELAY_REDIS_MIN_REPLICAS=1, senders posting to many
conversations and retrying a refused webhook with the same id (as Slack and GitHub do) before
sending that conversation's next one. The master holding the most partitions is SIGKILLed;
once its replica has taken over, it is started again (it rejoins as a replica, so the shard
can confirm writes again). Then the ledger: every message answered 2xx delivered, none
arriving that was never accepted, each with one client_message_id, and per-conversation order.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest
from redis.crc import key_slot

from relay.queue import PARTITIONS, DeadEntry, Keys, Queue
from relay.redis_nodes import open_redis
from relay.sources.generic import signed_headers
from relay.standin import Device, LettaStandIn
from tests.conftest import DEVICE
from tests.faults.conftest import ROOT, SECRET, WORKER_SETTINGS, _results
from tests.faults.ledger import Ledger
from tests.redis_cluster import Cluster, Node
from tests.support import SPEC_SECRET, ServerThread, free_port, relay_env

pytestmark = pytest.mark.slow

PREFIX = "relayfailover"
CONVERSATIONS = 32
SENDERS = 4


def routes_file(folder: Path) -> Path:
    path = folder / "routes.toml"
    path.write_text("".join(f'[routes.c{i}]\nagent_id = "agent-{i}"\ndevice_id = "{DEVICE}"\n\n'
                            for i in range(CONVERSATIONS)))
    return path


class Senders:
    """Threads posting to their conversations in turn; a refused post is sent again, same id."""

    def __init__(self, web_url: str, ledger: Ledger) -> None:
        self.web_url, self.ledger = web_url, ledger
        self.stop = threading.Event()
        self.refused = 0
        self.sent = 0
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._send, args=(k,), daemon=True) for k in range(SENDERS)]

    def __enter__(self) -> Senders:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self._threads:
            thread.join(60)

    def _send(self, k: int) -> None:
        mine = range(k, CONVERSATIONS, SENDERS)
        with httpx.Client(timeout=10) as http:
            seq = 0
            while not self.stop.is_set():
                for conversation in mine:
                    self._until_accepted(http, conversation, seq)
                seq += 1

    def _until_accepted(self, http: httpx.Client, conversation: int, seq: int) -> None:
        body = json.dumps({"text": f"c{conversation}:{seq}", "route": f"c{conversation}"}).encode()
        webhook_id = f"msg_{uuid.uuid4().hex}"
        for _ in range(600):  # a sender retries for minutes; here about 60 s
            headers = signed_headers(SECRET, webhook_id, int(time.time()), body)
            try:
                response = http.post(f"{self.web_url}/hooks/generic", content=body, headers=headers)
            except httpx.HTTPError:
                response = None
            if response is not None and response.status_code in (200, 202):
                with self._lock:
                    self.ledger.accept(response.json()["client_message_id"], f"c{conversation}", seq)
                    self.sent += 1
                return
            with self._lock:
                self.refused += 1
            time.sleep(0.1)
        raise AssertionError(f"c{conversation}:{seq} never accepted")


def busiest_master(cluster: Cluster) -> Node:
    keys = Keys(PREFIX)
    owners = [cluster.node_for_slot(key_slot(keys.ready(p).encode())).port for p in range(PARTITIONS)]
    port = max(set(owners), key=owners.count)
    return next(node for node in cluster.nodes if node.port == port)


def victim_partition(cluster: Cluster, victim: Node) -> int:
    """One partition the victim holds (read before it dies)."""
    keys = Keys(PREFIX)
    return next(p for p in range(PARTITIONS) if cluster.node_for_slot(key_slot(keys.ready(p).encode())).port == victim.port)


def dead_letters(url: str) -> list[DeadEntry]:
    async def read() -> list[DeadEntry]:
        client = await open_redis(url)
        try:
            return await Queue(client, prefix=PREFIX).dead_letters()
        finally:
            await client.aclose()
    return asyncio.run(read())


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    started = Cluster(tmp_path / "cluster", masters=3, replicas=1, node_timeout_ms=2000).start()
    try:
        yield started
    finally:
        started.stop()


def test_a_master_killed_under_traffic_fails_over_and_the_ledger_holds(cluster: Cluster, tmp_path: Path) -> None:
    standin = LettaStandIn([Device(DEVICE, "fault-box", "conn-fault")], seed=20261204)
    ledger = Ledger("cluster master SIGKILLed under traffic (3+3, MIN_REPLICAS=1)")
    env = relay_env(REDIS_URL=cluster.url, RELAY_KEY_PREFIX=PREFIX, RELAY_HOOK_SECRET=SPEC_SECRET,
                    RELAY_ROUTES=str(routes_file(tmp_path)), RELAY_REDIS_MIN_REPLICAS="1",
                    RELAY_REDIS_REPLICA_TIMEOUT="1s", LETTA_API_KEY="fault-key", **WORKER_SETTINGS)
    port = free_port()
    processes: list[subprocess.Popen[bytes]] = []
    log = open(tmp_path / "relay.log", "ab")
    try:
        with ServerThread(standin.app) as letta:
            env["LETTA_BASE_URL"] = letta.url
            processes.append(subprocess.Popen([sys.executable, "-m", "relay", "serve", "--host", "127.0.0.1",
                                               "--port", str(port)], env=env, stdout=log, stderr=log, cwd=ROOT))
            for _ in range(2):
                processes.append(subprocess.Popen([sys.executable, "-m", "relay", "worker"], env=env,
                                                  stdout=log, stderr=log, cwd=ROOT))
            web = f"http://127.0.0.1:{port}"
            _wait(lambda: httpx.get(f"{web}/healthz", timeout=1).status_code == 200, "relay serve up", tmp_path)
            with Senders(web, ledger) as senders:
                _wait(lambda: len(standin.delivered_ids()) >= 200, "traffic flowing", tmp_path)
                victim = busiest_master(cluster)
                slot = key_slot(Keys(PREFIX).ready(victim_partition(cluster, victim)).encode())
                before = len(ledger.accepted)
                victim.kill()
                ledger.fault(f"SIGKILL master {victim.name}")
                promoted = cluster.wait_promoted(victim, slot)  # its replica took over
                ledger.fault(f"replica {promoted.name} promoted")
                victim.start(cluster.node_timeout_ms)  # back from its AOF, as a replica now
                ledger.fault(f"restart {victim.name}")
                _wait(lambda: len(ledger.accepted) >= before + 400, "traffic accepted after the failover", tmp_path)
                _wait(lambda: victim.client().info("replication").get("role") == "slave",
                      "the old master back as a replica", tmp_path)
                assert all(p.poll() is None for p in processes), "a relay process died"
            refused = senders.refused
            _wait(lambda: set(ledger.accepted) <= set(standin.delivered_ids()),
                  "every accepted message delivered", tmp_path, timeout=120)
            result = ledger.check(standin, dead_letters(cluster.url))
            result["refused_then_resent"] = refused
            _results.append(result)
            assert result["lost"] == 0 and result["new_ids"] == 0 and result["dead_lettered"] == 0
            assert refused > 0  # the failover was felt: senders were told to retry
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
        log.close()


def _wait(check: Any, what: str, folder: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    tail = (folder / "relay.log").read_text(errors="replace")[-5000:]
    raise AssertionError(f"{what}: not reached in {timeout:g}s\n{tail}")
