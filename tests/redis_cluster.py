"""A real Redis Cluster on loopback, started and stopped by the test that needs it.

Each node is a `redis-server` process in a temp dir of its own, with AOF (fsync every second)
and a short node timeout so a failover happens within seconds. Data ports are chosen free,
together with their cluster bus ports (data port + 10,000), and stay ≤ 55,535.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

HOST = "127.0.0.1"


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


def free_ports(count: int) -> list[int]:
    """`count` data ports whose bus ports (+10,000) are free too."""
    for _ in range(200):
        base = random.randrange(20_000, 45_000 - count)
        ports = list(range(base, base + count))
        if all(_free(p) and _free(p + 10_000) for p in ports):
            return ports
    raise RuntimeError("no free ports for a Redis Cluster")


@dataclass
class Node:
    port: int
    folder: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def name(self) -> str:
        return f"{HOST}:{self.port}"

    def start(self, node_timeout_ms: int) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            ["redis-server", "--bind", HOST, "--port", str(self.port), "--cluster-enabled", "yes",
             "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", str(node_timeout_ms),
             "--appendonly", "yes", "--appendfsync", "everysec", "--save", "", "--dir", str(self.folder),
             "--logfile", "redis.log", "--protected-mode", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def client(self) -> redis.Redis:
        return redis.Redis(host=HOST, port=self.port, decode_responses=True, socket_timeout=5)

    def kill(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


@dataclass
class Cluster:
    folder: Path
    masters: int = 3
    replicas: int = 0  # per master
    node_timeout_ms: int = 2000
    nodes: list[Node] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"redis://{self.nodes[0].name}/0"

    def start(self) -> Cluster:
        ports = free_ports(self.masters * (1 + self.replicas))
        self.nodes = [Node(port, self.folder / str(port)) for port in ports]
        for node in self.nodes:
            node.start(self.node_timeout_ms)
        for node in self.nodes:
            _wait(lambda n=node: n.client().ping(), f"node {node.name} did not start")
        subprocess.run(["redis-cli", "--cluster", "create", *(n.name for n in self.nodes),
                        "--cluster-replicas", str(self.replicas), "--cluster-yes"],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=60)
        self.wait_ok()
        if self.replicas:
            _wait(lambda: all(self.replica_count(m) == self.replicas for m in self.master_nodes()),
                  "replicas did not connect")
        return self

    def wait_ok(self, timeout: float = 30.0) -> None:
        live = [n for n in self.nodes if n.process and n.process.poll() is None]
        _wait(lambda: all(n.client().cluster("info").get("cluster_state") == "ok" for n in live),
              "cluster state not ok", timeout)

    def wait_promoted(self, victim: Node, slot: int, timeout: float = 60.0) -> Node:
        """After `victim` died: wait until another node serves its `slot` (its replica took over)
        and the live nodes say the cluster is ok; return the new master. The live nodes report
        "ok" until they notice the death (the node timeout), so "ok" alone proves nothing."""
        live = [n for n in self.nodes if n is not victim and n.process and n.process.poll() is None]
        _wait(lambda: self.node_for_slot(slot, live[0]).port != victim.port, "no replica took over", timeout)
        self.wait_ok(timeout)
        return self.node_for_slot(slot, live[0])

    def master_nodes(self) -> list[Node]:
        """Live masters, as the live nodes see them now."""
        out = []
        for node in self.nodes:
            if node.process and node.process.poll() is None:
                try:
                    if node.client().info("replication").get("role") == "master":
                        out.append(node)
                except redis.RedisError:
                    pass
        return out

    def replica_count(self, node: Node) -> int:
        return int(node.client().info("replication").get("connected_slaves", 0))

    def node_for_slot(self, slot: int, asking: Node | None = None) -> Node:
        """The master of `slot`, as `asking` (by default the first node) sees it."""
        for entry in (asking or self.nodes[0]).client().execute_command("CLUSTER", "SLOTS"):
            low, high, master = entry[0], entry[1], entry[2]
            if low <= slot <= high:
                return next(n for n in self.nodes if n.port == int(master[1]))
        raise LookupError(slot)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def _wait(check: object, message: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if check():  # type: ignore[operator]
                return
        except (redis.RedisError, OSError) as exc:
            last = exc
        time.sleep(0.1)
    raise AssertionError(f"{message} (last error: {last})")


def have_redis_cli() -> bool:
    return any(os.access(os.path.join(d, "redis-cli"), os.X_OK) for d in os.environ.get("PATH", "").split(":"))
