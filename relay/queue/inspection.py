"""For operators: durability, dead letters, depth, stats and where the partitions live."""

from __future__ import annotations

import logging
from typing import Any

from redis.exceptions import RedisError

from relay.messages import decode, encode
from relay.queue.calls import ScriptCalls, guard
from relay.queue.keys import GROUP, PARTITIONS
from relay.queue.model import FAILURE_WINDOW_HOURS, DeadEntry, Depth, QueueStats
from relay.redis_nodes import Topology

log = logging.getLogger("relay.queue")
_HEADS_PER_CALL = 500  # mailboxes per oldest.lua call
_DEAD_SCAN = 1000  # dead letters per XRANGE when stats.lua recounts them


class Inspection(ScriptCalls):
    async def durability_warnings(self) -> list[str]:
        """What in the server's configuration could lose queued work (empty when none; also when
        CONFIG is not allowed, as on some managed services, which then answer for it)."""
        warnings = []
        for name in self.nodes.masters():
            where = f"{name}: " if name else ""
            warnings += [where + w for w in await self._node_warnings(self.nodes.client(name))]
        return warnings

    @staticmethod
    async def _node_warnings(client: Any) -> list[str]:
        try:
            config = await client.config_get("maxmemory*")
            config.update(await client.config_get("appendonly"))
            config.update(await client.config_get("save"))
        except RedisError:
            return []
        warnings = []
        policy = config.get("maxmemory-policy", "noeviction")
        if policy != "noeviction":
            warnings.append(f"maxmemory-policy is {policy}: when Redis fills up it may evict queued messages "
                            "or de-duplication markers; set maxmemory-policy noeviction")
        if config.get("appendonly") != "yes":
            snapshots = "snapshots only" if config.get("save") else "no persistence at all"
            warnings.append(f"appendonly is off ({snapshots}): a Redis restart loses recently accepted "
                            "messages; set appendonly yes (appendfsync everysec or always)")
        return warnings

    async def dead_letters(self) -> list[DeadEntry]:
        entries: list[DeadEntry] = []
        for p in range(PARTITIONS):
            for entry_id, fields in await guard(self.redis.xrange(self.keys.dead(p))):
                try:
                    envelope = decode(fields["envelope"])
                except (KeyError, ValueError):
                    log.error("unreadable dead letter partition=%s entry=%s", p, entry_id)
                    continue
                entries.append(DeadEntry(p, entry_id, fields["id"], fields.get("reason", ""),
                                         fields.get("code", ""), int(fields.get("at", 0)) / 1000, envelope))
        return sorted(entries, key=lambda e: e.at)

    async def dead_by_id(self, ids: list[str] | None) -> tuple[list[DeadEntry], list[str]]:
        """The dead letters with these client_message_ids (all when None), and ids not found."""
        entries = await self.dead_letters()
        if ids is None:
            return entries, []
        wanted = set(ids)
        chosen = [e for e in entries if e.client_message_id in wanted]
        return chosen, sorted(wanted - {e.client_message_id for e in chosen})

    async def replay(self, entry: DeadEntry) -> bool:
        """Put a dead letter back in its conversation, same id, fresh retry budget."""
        envelope = entry.envelope.replayed(self.clock())
        conversation = envelope.destination.conversation_key
        p = entry.partition
        keys = [self.keys.dead(p), self.keys.body(p), self.keys.mailbox(p, conversation), self.keys.ready(p)]
        args = [entry.entry_id, envelope.client_message_id, encode(envelope), conversation]
        [result] = await self._evalsha_batch("replay", [(keys, args)], durable=True)
        return result == 1

    async def drop(self, entry: DeadEntry) -> bool:
        return await guard(self.redis.xdel(self.keys.dead(entry.partition), entry.entry_id)) == 1

    async def depth(self) -> Depth:
        ready = in_flight = delayed = dead = 0
        for p in range(PARTITIONS):
            pipe = self.redis.pipeline(transaction=False)
            pipe.xlen(self.keys.ready(p))
            pipe.xpending(self.keys.ready(p), GROUP)
            pipe.zcard(self.keys.delayed(p))
            pipe.xlen(self.keys.dead(p))
            length, pending, waiting, dead_count = await guard(pipe.execute())
            in_flight += pending["pending"]
            ready += length - pending["pending"]
            delayed += waiting
            dead += dead_count
        return Depth(ready=ready, in_flight=in_flight, delayed=delayed, dead=dead)

    async def stats(self) -> QueueStats:
        """Numbers for operators, in two pipelined round trips over every partition.

        Each partition's counts are read atomically with the conversations holding a token;
        every undelivered message waits in such a conversation's mailbox, oldest at its head, so
        the oldest message is found among those heads (cost: one read per active conversation).
        """
        now = self.clock()
        hour = int(now // 3600)
        calls = [([self.keys.ready(p), self.keys.delayed(p), self.keys.dead(p), self.keys.body(p),
                   self.keys.dead_codes(p),
                   *(self.keys.failures(p, h) for h in range(hour - FAILURE_WINDOW_HOURS + 1, hour + 1))],
                  [GROUP, _DEAD_SCAN]) for p in range(PARTITIONS)]
        ready = delayed = in_flight = dead = 0
        by_reason: dict[str, int] = {}
        by_destination: dict[str, int] = {}
        heads: list[tuple[list[str], list[Any]]] = []
        for p, reply in enumerate(await self._evalsha_batch("stats", calls)):
            stored, claimed, parked, dead_count, codes, failures, conversations = reply
            in_flight += int(claimed)
            delayed += int(parked)
            ready += max(0, int(stored) - int(claimed) - int(parked))  # a stray token holds no message
            dead += int(dead_count)
            for counts, flat in ((by_reason, codes), (by_destination, failures)):
                for name, n in zip(flat[::2], flat[1::2]):
                    counts[name] = counts.get(name, 0) + int(n)
            for i in range(0, len(conversations), _HEADS_PER_CALL):
                mailboxes = [self.keys.mailbox(p, c) for c in conversations[i:i + _HEADS_PER_CALL]]
                heads.append(([self.keys.body(p), *mailboxes], []))
        earliest = [int(ms) for ms in (await self._evalsha_batch("oldest", heads) if heads else []) if int(ms) >= 0]
        age = max(0.0, now - min(earliest) / 1000) if earliest else None
        return QueueStats(ready=ready, delayed=delayed, in_flight=in_flight, dead=dead, oldest_waiting_age=age,
                          dead_by_reason=by_reason, failures_by_destination=by_destination)

    async def server_info(self) -> dict[str, Any]:
        """The server section of Redis INFO (redis_version, …), for `relay check`; on a cluster,
        of the master holding the first partition."""
        client = self.nodes.client(self.nodes.name_of(self.keys.ready(0)))
        return dict(await guard(client.info("server")))

    async def topology(self) -> Topology:
        """Masters, which partitions each holds, and their replicas (`relay check`, `relay status`)."""
        return await self.nodes.topology([self.keys.ready(p) for p in range(PARTITIONS)])
