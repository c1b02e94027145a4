"""What the queue hands back: claims, heads, dead letters, depth and stats."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from relay.messages import Envelope

#: Failed attempts per destination are counted in hourly buckets; stats() sums this many.
FAILURE_WINDOW_HOURS = 24


@dataclass(frozen=True)
class Token:
    """A claim on one conversation: its head message is this worker's to deliver."""

    partition: int
    entry_id: str
    conversation: str
    takeovers: int = 0  # how often this claim was taken from a silent worker


@dataclass(frozen=True)
class Head:
    """What a token points at: its conversation's first message id and envelope.

    message_id "" means the mailbox is empty (a stray token); envelope None with an id means
    the stored message is missing or unreadable and can only be dropped.
    """

    token: Token
    message_id: str
    envelope: Envelope | None
    paused_until: float = 0.0  # epoch seconds; Letta asked every worker to wait until then


@dataclass(frozen=True)
class DeadEntry:
    partition: int
    entry_id: str
    client_message_id: str
    reason: str
    code: str
    at: float
    envelope: Envelope


@dataclass(frozen=True)
class Depth:
    ready: int  # conversations waiting to be read
    in_flight: int  # conversations claimed by a worker
    delayed: int  # conversations waiting for a retry time
    dead: int  # dead letters


@dataclass(frozen=True)
class QueueStats:
    """A snapshot for operators (`relay status`, metrics). Counts are messages."""

    ready: int  # waiting for their turn: neither being delivered nor parked for a retry
    delayed: int  # parked until a retry time (the head of each parked conversation)
    in_flight: int  # being delivered by a worker (the head of each claimed conversation)
    dead: int  # dead letters
    oldest_waiting_age: float | None  # seconds since the oldest undelivered message entered the queue
    dead_by_reason: dict[str, int]  # dead letters by code: "http_400", "expired", "unresolved", …
    failures_by_destination: dict[str, int]  # failed attempts in the last FAILURE_WINDOW_HOURS,
    #                                          by Destination.describe()

    @classmethod
    def from_dict(cls, data: Any) -> QueueStats:
        """The inverse of dataclasses.asdict (the admin API's JSON); ValueError if malformed."""
        try:
            age = data["oldest_waiting_age"]
            return cls(ready=int(data["ready"]), delayed=int(data["delayed"]),
                       in_flight=int(data["in_flight"]), dead=int(data["dead"]),
                       oldest_waiting_age=None if age is None else float(age),
                       dead_by_reason={str(k): int(v) for k, v in data["dead_by_reason"].items()},
                       failures_by_destination={str(k): int(v) for k, v in data["failures_by_destination"].items()})
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"not queue stats: {exc!r}") from None
