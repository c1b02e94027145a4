"""Accepting a message: queue it and log what happened, the same way for every source."""

from __future__ import annotations

import enum
import logging

from relay.errors import QueueUnavailable
from relay.logs import fields
from relay.messages import Envelope
from relay.queue import Queue

log = logging.getLogger("relay.intake")


class Queued(enum.Enum):
    QUEUED = "queued"
    DUPLICATE = "duplicate"
    UNAVAILABLE = "unavailable"


class Intake:
    def __init__(self, queue: Queue) -> None:
        self.queue = queue

    async def enqueue(self, envelope: Envelope) -> Queued:
        [result] = await self.enqueue_all([envelope])
        return result

    async def enqueue_all(self, envelopes: list[Envelope]) -> list[Queued]:
        """Messages of one request, for one conversation: all stored, or (Redis away) none."""
        try:
            flags = await self.queue.enqueue_all(envelopes)
        except QueueUnavailable as exc:
            for envelope in envelopes:
                log.error("queue unavailable", extra=fields(**envelope.log_fields(), error=str(exc)))
            return [Queued.UNAVAILABLE] * len(envelopes)
        results = [Queued.QUEUED if queued else Queued.DUPLICATE for queued in flags]
        if log.isEnabledFor(logging.INFO):  # the hot path: build no fields nobody will read
            for envelope, queued in zip(envelopes, flags):
                if queued:
                    log.info("accepted", extra=fields(**envelope.log_fields(), kind=envelope.kind))
                else:
                    log.info("duplicate", extra=fields(**envelope.log_fields()))
        return results
