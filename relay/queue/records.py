"""Small records with a TTL (approval cards, origins, leases), one key each."""

from __future__ import annotations

from relay.queue.calls import ScriptCalls, guard


class Records(ScriptCalls):
    async def create_record(self, kind: str, key: str, value: str, ttl: float) -> str | None:
        """Store `value` unless the record exists; return the existing value if it does."""
        name = self.keys.record(kind, key)
        if await guard(self.redis.set(name, value, nx=True, px=int(ttl * 1000))):
            return None
        return await guard(self.redis.get(name)) or None

    async def put_record(self, kind: str, key: str, value: str, ttl: float) -> None:
        """Store `value`, replacing any record there, with a fresh expiry: one round trip."""
        await guard(self.redis.set(self.keys.record(kind, key), value, px=int(ttl * 1000)))

    async def update_record(self, kind: str, key: str, value: str) -> bool:
        """Replace an existing record, keeping its expiry. False if it is gone."""
        return bool(await guard(self.redis.set(self.keys.record(kind, key), value, xx=True, keepttl=True)))

    async def record(self, kind: str, key: str) -> str | None:
        return await guard(self.redis.get(self.keys.record(kind, key)))

    async def delete_record(self, kind: str, key: str) -> None:
        await guard(self.redis.delete(self.keys.record(kind, key)))
