"""Which Redis holds a key: one server, or the master of the key's slot in a Redis Cluster.

`open_redis` connects to REDIS_URL and, unless told otherwise, asks the server whether it is
a cluster node (`INFO cluster`); a cluster gets redis-py's cluster client, which routes every
single-key command itself. What it cannot do is put a script batch and a `WAIT` on one
connection to one master, which is what makes `RELAY_REDIS_MIN_REPLICAS` mean anything: `WAIT`
counts the replicas that have the writes of *its own connection*. `Nodes` does that: it groups
calls by the master that owns their keys and gives each master a plain client of its own.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot
from redis.exceptions import RedisError

from relay.errors import QueueUnavailable

log = logging.getLogger("relay.redis")
ClusterMode = Literal["auto", "on", "off"]
AnyRedis = aioredis.Redis | RedisCluster
#: After a node failed, the slot map is read again at most this often.
REFRESH_INTERVAL = 0.5


def _options(socket_timeout: float) -> dict[str, Any]:
    return {"decode_responses": True, "socket_timeout": socket_timeout, "socket_connect_timeout": 3.0}


def connect(url: str, *, socket_timeout: float = 10.0) -> aioredis.Redis:
    """A single-server client for REDIS_URL. The timeout bounds every call (blocking reads use 1 s)."""
    return aioredis.Redis.from_url(url, health_check_interval=30, **_options(socket_timeout))


async def is_cluster(url: str) -> bool:
    """Does the server at `url` run in cluster mode? Raises QueueUnavailable if it does not answer."""
    probe = connect(url, socket_timeout=5.0)
    try:
        info = await probe.info("cluster")
    except RedisError as exc:
        raise QueueUnavailable(f"redis: {type(exc).__name__}: {exc}") from exc
    finally:
        await probe.aclose()
    return str(info.get("cluster_enabled", 0)) == "1"


async def open_redis(url: str, *, cluster: ClusterMode = "auto", socket_timeout: float = 10.0) -> AnyRedis:
    """A client for REDIS_URL: a cluster client when the server is a cluster node (or `cluster`
    says so), else a single-server one. "auto" asks the server, so it must answer."""
    if cluster == "off" or (cluster == "auto" and not await is_cluster(url)):
        return connect(url, socket_timeout=socket_timeout)
    client = RedisCluster.from_url(url, **_options(socket_timeout))
    try:
        await client.initialize()
    except RedisError as exc:  # it learns the slot map on first use instead
        log.warning("redis cluster not answering yet", extra={"error": f"{type(exc).__name__}: {exc}"})
    return client


async def open_for(url: str, mode: str, *, socket_timeout: float = 10.0, attempts: int = 4) -> AnyRedis:
    """open_redis for a process starting up: when "auto" cannot ask (Redis not answering yet),
    it asks a few times, then assumes one server and says so (a cluster then answers MOVED,
    which the queue reports with the way out: RELAY_REDIS_CLUSTER=on)."""
    chosen: ClusterMode = "on" if mode == "on" else "off" if mode == "off" else "auto"
    for attempt in range(attempts):
        try:
            return await open_redis(url, cluster=chosen, socket_timeout=socket_timeout)
        except QueueUnavailable as exc:
            if attempt + 1 < attempts:
                await asyncio.sleep(0.5 * 2 ** attempt)
                continue
            log.warning("could not ask Redis whether it is a cluster; assuming one server "
                        "(set RELAY_REDIS_CLUSTER=on or off to skip asking)", extra={"error": str(exc)})
    return connect(url, socket_timeout=socket_timeout)


@dataclass(frozen=True)
class NodeInfo:
    """One master, for `relay check` and `relay status`."""

    name: str  # host:port
    partitions: list[int] = field(default_factory=list)
    replicas: int = 0  # connected replicas (INFO replication)
    replica_names: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Topology:
    cluster: bool
    masters: list[NodeInfo]

    def describe(self) -> list[str]:
        kind = "Redis Cluster" if self.cluster else "one Redis server"
        lines = [f"{kind}: {len(self.masters)} master(s), {len([p for m in self.masters for p in m.partitions])} partitions"]
        for node in self.masters:
            where = " ".join(f"p{p:02d}" for p in node.partitions) or "none"
            replicas = ", ".join(node.replica_names) or "none"
            lines.append(f"  {node.name}: partitions {where}; {node.replicas} replica(s) ({replicas})")
        return lines


class Nodes:
    """The client for each key's master. On one server, that server's client for every key."""

    def __init__(self, redis: AnyRedis) -> None:
        self.redis = redis
        self.cluster = isinstance(redis, RedisCluster)
        self._clients: dict[str, aioredis.Redis] = {}
        self._refreshed = 0.0
        self._refresh_lock = asyncio.Lock()

    def name_of(self, key: str) -> str:
        """The name of the master holding `key` ("" on one server)."""
        if not isinstance(self.redis, RedisCluster):
            return ""
        node = self.redis.nodes_manager.get_node_from_slot(key_slot(key.encode()))
        return node.name

    def client(self, name: str) -> aioredis.Redis:
        """A plain client for the master `name` (from name_of); the one client on one server."""
        if not isinstance(self.redis, RedisCluster):
            return self.redis
        client = self._clients.get(name)
        if client is None:
            host, _, port = name.rpartition(":")
            kwargs = dict(self.redis.nodes_manager.connection_kwargs)
            kind = kwargs.pop("connection_class", aioredis.Connection)
            kwargs = {k: v for k, v in kwargs.items() if k in _accepted(kind)}  # the cluster's own are not
            pool = aioredis.ConnectionPool(connection_class=kind, host=host, port=int(port), **kwargs)
            client = self._clients[name] = aioredis.Redis(connection_pool=pool)
        return client

    def masters(self) -> list[str]:
        if not isinstance(self.redis, RedisCluster):
            return [""]
        return sorted(node.name for node in self.redis.get_primaries())

    async def refresh(self) -> None:
        """Read the slot map again (after a node failed or answered MOVED); at most every
        REFRESH_INTERVAL seconds, so a dead master is not asked for it in a tight loop."""
        if not isinstance(self.redis, RedisCluster):
            return
        async with self._refresh_lock:
            if time.monotonic() - self._refreshed < REFRESH_INTERVAL:
                return
            self._refreshed = time.monotonic()
            try:
                await self.redis.nodes_manager.initialize()
            except RedisError:
                pass  # the next call fails again and asks again

    async def topology(self, partition_keys: list[str]) -> Topology:
        """Masters, the partitions each holds (by one key of each), and their replicas."""
        owners: dict[str, list[int]] = {name: [] for name in self.masters()}
        for partition, key in enumerate(partition_keys):
            owners.setdefault(self.name_of(key), []).append(partition)
        masters = []
        for name, partitions in owners.items():
            try:
                info = await self.client(name).info("replication")
            except RedisError as exc:
                raise QueueUnavailable(f"redis {name or 'server'}: {type(exc).__name__}: {exc}") from exc
            replicas = [f"{v['ip']}:{v['port']}" for k, v in sorted(info.items())
                        if k.startswith("slave") and isinstance(v, dict)]
            masters.append(NodeInfo(name or _server_name(self.redis), partitions,
                                    int(info.get("connected_slaves", 0)), replicas))
        return Topology(self.cluster, masters)

    async def aclose(self) -> None:
        for client in self._clients.values():
            await client.aclose()
        self._clients.clear()


def _accepted(kind: type) -> set[str]:
    """The keyword arguments a connection class (and its bases) takes."""
    return {name for cls in kind.__mro__ if "__init__" in vars(cls)
            for name in inspect.signature(cls.__init__).parameters} - {"self", "args", "kwargs"}


def _server_name(redis: AnyRedis) -> str:
    kwargs = getattr(getattr(redis, "connection_pool", None), "connection_kwargs", {})
    if "path" in kwargs:
        return f"unix:{kwargs['path']}"
    return f"{kwargs.get('host', '?')}:{kwargs.get('port', '?')}"


__all__ = ["AnyRedis", "ClusterMode", "Nodes", "NodeInfo", "Topology", "connect", "is_cluster", "open_redis"]
