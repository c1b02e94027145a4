"""Where each delivered message came from, so that the agent's answer can go back there.

The worker remembers a user message's origin once Letta has taken it; whoever sees the turn
end (the status-socket watcher) recalls it by `client_message_id`. One small JSON record per
message, `{prefix}:rec:origin:{client_message_id}` (queue.Keys names it), expiring after
`RELAY_ORIGIN_TTL`. Redis failures raise QueueUnavailable, as the queue's do.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis

from relay.messages import Envelope
from relay.queue import Keys, guard

KIND = "origin"
DEFAULT_TTL = 7 * 24 * 3600.0  # RELAY_ORIGIN_TTL's default


@dataclass(frozen=True)
class Origin:
    """A message's route and source, and the reply target the source put on it (see replies.py)."""

    route: str
    source: str
    reply: dict[str, Any] = field(default_factory=dict)
    client_message_id: str = ""

    def slack_thread(self) -> tuple[str, str] | None:
        """(channel, thread ts) where answers and cards for this message belong, if any.

        A mention or DM: its thread, or the thread it starts. A slash command has no thread
        (its answers go to the response_url); other sources are not in Slack.
        """
        if self.reply.get("via") != "reaction":
            return None
        channel, ts = self.reply.get("channel"), self.reply.get("ts")
        if not isinstance(channel, str) or not channel or not isinstance(ts, str) or not ts:
            return None
        thread_ts = self.reply.get("thread_ts")
        return channel, thread_ts if isinstance(thread_ts, str) and thread_ts else ts


class Origins:
    def __init__(self, redis: aioredis.Redis, prefix: str, ttl: float = DEFAULT_TTL) -> None:
        if ttl <= 0:
            raise ValueError("ttl must be positive")
        self.redis = redis
        self.keys = Keys(prefix)
        self.ttl = ttl

    async def remember(self, envelope: Envelope) -> None:
        value = json.dumps({"route": envelope.route, "source": envelope.source, "reply": envelope.reply or {}},
                           separators=(",", ":"), ensure_ascii=False)
        key = self.keys.record(KIND, envelope.client_message_id)
        await guard(self.redis.set(key, value, px=max(1, int(self.ttl * 1000))))

    async def recall(self, client_message_id: str) -> Origin | None:
        """The origin of a message relay delivered, or None (unknown, expired, or unreadable)."""
        raw = await guard(self.redis.get(self.keys.record(KIND, client_message_id)))
        if raw is None:
            return None
        try:
            data = json.loads(raw)
            reply = data.get("reply") or {}
            if not isinstance(data["route"], str) or not isinstance(data["source"], str) or \
                    not isinstance(reply, dict):
                return None
        except (ValueError, KeyError, TypeError, AttributeError):
            return None
        return Origin(data["route"], data["source"], reply, client_message_id)
