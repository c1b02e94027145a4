"""The worker's side: claims on conversations, their head messages, and how each ends."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from redis.exceptions import RedisError, ResponseError

from relay.errors import QueueUnavailable
from relay.messages import Envelope, decode, encode
from relay.queue.calls import Lanes, ScriptCalls
from relay.queue.keys import GROUP, PARTITIONS
from relay.queue.model import FAILURE_WINDOW_HOURS, Head, Token

log = logging.getLogger("relay.queue")


class Claims(ScriptCalls):
    _advances: Lanes[tuple[Token, str], Head | bool]

    async def ensure_groups(self) -> None:
        """Create each partition's stream and consumer group (from the start: id 0)."""
        for partition in range(PARTITIONS):
            try:
                await self.redis.xgroup_create(self.keys.ready(partition), GROUP, id="0", mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise QueueUnavailable(f"redis: {exc}") from exc
            except RedisError as exc:
                raise QueueUnavailable(f"redis: {type(exc).__name__}: {exc}") from exc

    async def read(self, partition: int, count: int, block_ms: int) -> list[Token]:
        """New tokens for this consumer; blocks up to block_ms when there are none."""
        stream = self.keys.ready(partition)
        try:
            reply = await self.redis.xreadgroup(GROUP, self.consumer, {stream: ">"}, count=count, block=block_ms)
        except ResponseError as exc:
            if "NOGROUP" in str(exc):  # Redis lost its data (restart without persistence)
                await self.ensure_groups()
                return []
            raise QueueUnavailable(f"redis: {exc}") from exc
        except RedisError as exc:
            raise QueueUnavailable(f"redis: {type(exc).__name__}: {exc}") from exc
        tokens = []
        for _stream, entries in reply or []:
            tokens.extend(Token(partition, entry_id, fields["c"]) for entry_id, fields in entries)
        return tokens

    async def reclaim(self, partition: int, min_idle: float, limit: int = 100) -> list[Token]:
        """Take over tokens whose worker has been silent for min_idle seconds (XAUTOCLAIM)."""
        flat = await self._run("reclaim", [self.keys.ready(partition)],
                               [GROUP, self.consumer, int(min_idle * 1000), limit])
        return [Token(partition, flat[i], flat[i + 1], takeovers=max(0, int(flat[i + 2]) - 1))
                for i in range(0, len(flat), 3)]

    @staticmethod
    def _by_partition(tokens: list[Token]) -> dict[int, list[Token]]:
        groups: dict[int, list[Token]] = {}
        for token in tokens:
            groups.setdefault(token.partition, []).append(token)
        return groups

    async def fetch(self, tokens: list[Token]) -> list[Head]:
        """Each token's head message: one script call per partition, all in one round trip."""
        out: list[Head] = []
        groups = self._by_partition(tokens)
        replies = await asyncio.gather(*(
            self._run("fetch", [self.keys.body(p), self.keys.pause(p),
                                *(self.keys.mailbox(p, t.conversation) for t in group)], [])
            for p, group in groups.items()))
        for group, (pause, *flat) in zip(groups.values(), replies):
            paused_until = int(pause) / 1000 if pause else 0.0
            for i, token in enumerate(group):
                message_id, raw = flat[2 * i], flat[2 * i + 1]
                out.append(Head(token, message_id, self._decode(token, raw) if raw else None, paused_until))
        return out

    async def pause_all(self, until: float) -> None:
        """Hold every worker's deliveries until `until` (epoch seconds): every partition, one round trip."""
        until_ms = int(until * 1000)
        ttl_ms = max(1, until_ms - int(self.clock() * 1000))
        await self._evalsha_batch("pause", [([self.keys.pause(p)], [until_ms, ttl_ms]) for p in range(PARTITIONS)])

    def _decode(self, token: Token, raw: str) -> Envelope | None:
        try:
            return decode(raw)
        except ValueError as exc:
            log.error("unreadable envelope partition=%s conversation=%s error=%s",
                      token.partition, token.conversation, exc)
            return None

    async def pause_of(self, partition: int) -> float:
        """The partition's shared pause (epoch seconds; 0 when none). A fetch of no mailboxes, so
        the workers' checks before each delivery share round trips with their acks."""
        [pause] = await self._run("fetch", [self.keys.body(partition), self.keys.pause(partition)], [])
        return int(pause) / 1000 if pause else 0.0

    async def done(self, token: Token, message_id: str) -> bool:
        """The head message was delivered. False if another worker took the token over."""
        return await self._finish(token, message_id, [])

    async def advance(self, token: Token, message_id: str) -> Head | bool:
        """The head message was delivered; keep the claim for the conversation's next message.

        Returns that next message's Head (same stream entry, takeovers 0), True when the
        conversation is empty (the token is retired, as done() does), or False if another
        worker took the token over. Acks made while a round trip is out go together, one script
        call per partition, so a busy conversation costs no read or fetch per message and a
        busy worker few script calls per ack."""
        return await self._advances.submit((token, message_id))

    async def _advance_all(self, items: list[tuple[Token, str]]) -> list[Head | bool | Exception]:
        groups: dict[int, list[int]] = {}
        for n, (token, _) in enumerate(items):
            groups.setdefault(token.partition, []).append(n)
        calls = []
        for p, indexes in groups.items():
            keys = [self.keys.ready(p), self.keys.body(p), self.keys.pause(p),
                    *(self.keys.mailbox(p, items[n][0].conversation) for n in indexes)]
            args = [GROUP, self.consumer, *(part for n in indexes for part in (items[n][0].entry_id, items[n][1]))]
            calls.append(("advance", keys, args))
        out: list[Head | bool | Exception] = [False] * len(items)
        for indexes, reply in zip(groups.values(), await self._evalsha_many(calls)):
            if isinstance(reply, Exception):
                for n in indexes:
                    out[n] = reply
                continue
            pause, flat = reply[0], reply[1:]
            paused_until = int(pause) / 1000 if pause else 0.0
            for i, n in enumerate(indexes):
                state, following, raw = flat[3 * i:3 * i + 3]
                if int(state) != 2:
                    out[n] = int(state) == 1
                    continue
                token = items[n][0]
                token = Token(token.partition, token.entry_id, token.conversation)
                out[n] = Head(token, following, self._decode(token, raw) if raw else None, paused_until)
        return out

    async def dead_letter(self, token: Token, envelope: Envelope, reason: str, code: str) -> bool:
        at_ms = int(self.clock() * 1000)
        return await self._finish(token, envelope.client_message_id,
                                  [reason, code, at_ms, encode(envelope), *self._failure_args(envelope)])

    async def _finish(self, token: Token, message_id: str, dead: list[Any]) -> bool:
        p = token.partition
        keys = [self.keys.ready(p), self.keys.mailbox(p, token.conversation), self.keys.body(p),
                self.keys.dead(p), self.keys.dead_codes(p), self.keys.failures(p, self._hour())]
        args = [GROUP, self.consumer, token.entry_id, message_id, token.conversation, *dead]
        if dead:  # a dead letter must not roll back in a failover: it would be delivered again
            [result] = await self._evalsha_batch("finish", [(keys, args)], durable=True)
            return result == 1
        # An ack need not wait for replicas: lost in a failover, the message is delivered again
        # with the same client_message_id, which Letta drops as a duplicate.
        return await self._run("finish", keys, args) == 1

    def _hour(self) -> int:
        return int(self.clock() // 3600)

    @staticmethod
    def _failure_args(envelope: Envelope | None) -> list[Any]:
        """Where a failed attempt is counted, and how long its hourly bucket is kept."""
        return [envelope.destination.describe() if envelope else "", (FAILURE_WINDOW_HOURS + 1) * 3600 * 1000]

    async def retry(self, token: Token, envelope: Envelope | None, due: float) -> bool:
        """Park the conversation until `due` (epoch seconds). envelope=None hands it back as is."""
        p = token.partition
        keys = [self.keys.ready(p), self.keys.body(p), self.keys.delayed(p), self.keys.failures(p, self._hour())]
        message_id = envelope.client_message_id if envelope else ""
        stored = encode(envelope) if envelope else ""
        args = [GROUP, self.consumer, token.entry_id, message_id, stored, int(due * 1000), token.conversation,
                *self._failure_args(envelope)]
        return await self._run("retry", keys, args) == 1

    async def renew(self, tokens: list[Token]) -> list[Token]:
        """Reset the idle time of tokens still ours; return those another worker took over.
        One script call per partition, all in one round trip."""
        groups = self._by_partition(tokens)
        replies = await asyncio.gather(*(
            self._run("renew", [self.keys.ready(p)], [GROUP, self.consumer, *(t.entry_id for t in group)])
            for p, group in groups.items()))
        lost: list[Token] = []
        for group, reply in zip(groups.values(), replies):
            gone = set(reply)
            lost.extend(t for t in group if t.entry_id in gone)
        return lost

    async def promote(self, partition: int, now: float, limit: int = 500) -> tuple[int, float | None]:
        """Release conversations whose retry time has come. Returns (moved, next due or None)."""
        keys = [self.keys.delayed(partition), self.keys.ready(partition)]
        moved, following = await self._run("promote", keys, [int(now * 1000), limit])
        following = float(following)
        return int(moved), (following / 1000 if following >= 0 else None)

    async def leave(self) -> None:
        """Remove this consumer from every partition's group where it holds nothing."""
        for p in range(PARTITIONS):
            await self._run("leave", [self.keys.ready(p)], [GROUP, self.consumer])
