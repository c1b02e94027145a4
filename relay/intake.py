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
        context = envelope.log_fields()
        try:
            queued = await self.queue.enqueue(envelope)
        except QueueUnavailable as exc:
            log.error("queue unavailable", extra=fields(**context, error=str(exc)))
            return Queued.UNAVAILABLE
        if not queued:
            log.info("duplicate", extra=fields(**context))
            return Queued.DUPLICATE
        log.info("accepted", extra=fields(**context, kind=envelope.kind))
        return Queued.QUEUED
