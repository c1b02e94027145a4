"""Accepting messages: each stored durably once, whatever route a re-send resolves to."""

from __future__ import annotations

import logging
from itertools import islice
from typing import Any, Iterable

from relay.errors import QueueUnavailable
from relay.messages import Envelope, encode
from relay.queue.calls import GroupCommit, ScriptCalls

log = logging.getLogger("relay.queue")

#: A binding older than this whose message never reached its partition was left by an attempt
#: that died between the two steps (every call is bounded by the socket timeout, far less).
STALE_BINDING_MS = 120_000


class Ingest(ScriptCalls):
    _writes: GroupCommit[list[Envelope], list[bool]]

    async def enqueue(self, envelope: Envelope) -> bool:
        """Store one message durably. False when its id was already accepted (a redelivery)."""
        [queued] = await self.enqueue_all([envelope])
        return queued

    async def enqueue_all(self, envelopes: list[Envelope]) -> list[bool]:
        """Store messages for one conversation atomically, in order; False for each duplicate.

        Concurrent callers are written together (a group commit): one pipelined round trip per
        flush, one script call per partition. Each caller returns once its own write is done.
        """
        conversation = envelopes[0].destination.conversation_key
        if any(e.destination.conversation_key != conversation for e in envelopes):
            raise ValueError("enqueue_all takes messages for one conversation")
        return await self._writes.submit(envelopes)

    async def _write(self, batches: list[list[Envelope]]) -> list[list[bool] | Exception]:
        """Bind each id to its partition (one delivery identity is accepted once, whatever route
        it resolves to) and queue it: per partition, one call with its messages in arrival
        order. One server: both in that one call, one round trip. A cluster: the ids' bindings
        live on other masters, so binding is a round trip of its own first."""
        envelopes = [e for batch in batches for e in batch]
        partitions = [self.keys.partition_of(e.destination.conversation_key) for e in envelopes]
        request_of = [n for n, batch in enumerate(batches) for _ in batch]
        refused: dict[int, QueueUnavailable] = {}
        todo = range(len(envelopes))
        if self.nodes.cluster:
            elsewhere, refused = await self._bind(envelopes, partitions)
            late = {request_of[i] for i in refused}  # a request is stored whole or not at all
            todo = [i for i in todo if i not in elsewhere and request_of[i] not in late]
        codes = await self._enqueue(envelopes, partitions, todo, bound=not self.nodes.cluster)
        for i, code in codes.items():
            if code == 2:
                refused[i] = QueueUnavailable(f"message {envelopes[i].client_message_id} is being accepted "
                                              "for another route; retry later")
        refused_requests = {request_of[i]: error for i, error in refused.items()}
        answers = iter([codes.get(i) == 1 for i in range(len(envelopes))])
        out: list[list[bool] | Exception] = []
        for n, batch in enumerate(batches):
            mine = list(islice(answers, len(batch)))
            out.append(refused_requests.get(n) or mine)
        return out

    async def _enqueue(self, envelopes: list[Envelope], partitions: list[int], todo: Iterable[int],
                       bound: bool) -> dict[int, int]:
        """Per partition, one enqueue call: code 1 queued, 0 duplicate, 2 being accepted for
        another route right now. `bound`: the call binds the ids too (enqueue_bound.lua)."""
        by_partition: dict[int, list[int]] = {}
        for i in todo:
            by_partition.setdefault(partitions[i], []).append(i)
        calls = []
        for p, indexes in by_partition.items():
            keys = [self.keys.body(p), self.keys.ready(p)]
            args: list[Any] = [self.dedup_ms]
            if bound:
                args += [int(self.clock() * 1000), STALE_BINDING_MS, p, self.keys.tag_start]
            for i in indexes:
                e = envelopes[i]
                conversation = e.destination.conversation_key
                keys += [self.keys.seen(p, e.client_message_id), self.keys.mailbox(p, conversation)]
                if bound:
                    keys.append(self.keys.identity(e.client_message_id))
                args += [e.client_message_id, encode(e), conversation]
            calls.append((keys, args))
        script = "enqueue_bound" if bound else "enqueue"
        results = await self._evalsha_batch(script, calls, durable=True) if calls else []
        return {i: int(code) for indexes, result in zip(by_partition.values(), results)
                for i, code in zip(indexes, result)}

    async def _bind(self, envelopes: list[Envelope], partitions: list[int]
                    ) -> tuple[set[int], dict[int, QueueUnavailable]]:
        """Bind ids to their partitions. Returns the indexes already accepted in another
        partition, and those that cannot be accepted now (being accepted for another route at
        this moment: the sender retries)."""
        now_ms = int(self.clock() * 1000)
        groups: dict[int, list[int]] = {}
        for i, envelope in enumerate(envelopes):
            groups.setdefault(self.keys.partition_of(envelope.client_message_id), []).append(i)
        calls = [([self.keys.identity(envelopes[i].client_message_id) for i in indexes],
                  [now_ms, self.dedup_ms, *(partitions[i] for i in indexes)]) for indexes in groups.values()]
        bound: dict[int, str] = {}
        for indexes, reply in zip(groups.values(), await self._evalsha_batch("bind", calls, durable=True)):
            bound.update((i, found) for i, found in zip(indexes, reply) if found)
        if not bound:
            return set(), {}
        return await self._settle_bindings(envelopes, partitions, bound, now_ms)

    async def _settle_bindings(self, envelopes: list[Envelope], partitions: list[int], bound: dict[int, str],
                               now_ms: int) -> tuple[set[int], dict[int, QueueUnavailable]]:
        """Ids bound to another partition (a re-send that now resolves to another route): a
        duplicate if that partition has the message; else the first attempt died between
        binding and queueing, and a binding that old moves here."""
        others = {i: int(found.split(":")[0]) for i, found in bound.items()}
        by_other: dict[int, list[int]] = {}
        for i, q in others.items():
            by_other.setdefault(q, []).append(i)
        calls = [([self.keys.seen(q, envelopes[i].client_message_id) for i in indexes], [])
                 for q, indexes in by_other.items()]
        duplicates: set[int] = set()
        for indexes, reply in zip(by_other.values(), await self._evalsha_batch("seen", calls, durable=True)):
            duplicates.update(i for i, seen in zip(indexes, reply) if seen == 1)
        refused: dict[int, QueueUnavailable] = {}
        for i in sorted(set(bound) - duplicates):
            message_id = envelopes[i].client_message_id
            if now_ms - int(bound[i].split(":")[1]) < STALE_BINDING_MS:
                refused[i] = QueueUnavailable(f"message {message_id} is being accepted for another route; retry later")
                continue
            moved = await self._run("rebind", [self.keys.identity(message_id)],
                                    [bound[i], f"{partitions[i]}:{now_ms}", self.dedup_ms])
            if moved != 1:
                refused[i] = QueueUnavailable(f"message {message_id} was bound meanwhile; retry")
        if duplicates:
            log.info("already accepted for another route", extra={"count": len(duplicates)})
        return duplicates, refused
