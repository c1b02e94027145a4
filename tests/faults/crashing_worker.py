"""`relay worker`, SIGKILLed by itself at one point of its first delivery (for fault tests).

    python -m tests.faults.crashing_worker after_read|during_call|before_ack|during_retry

The point is reached by wrapping one method; relay's own code carries no test hooks.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from typing import Any

from relay import cli
from relay.letta import LettaClient
from relay.queue import Queue

POINTS = ("after_read", "during_call", "before_ack", "during_retry")


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def arm(point: str) -> None:
    if point == "after_read":  # the token is read and claimed, its message fetched: nothing sent
        fetch = Queue.fetch

        async def fetched(self: Queue, tokens: Any) -> Any:
            heads = await fetch(self, tokens)
            if any(h.envelope for h in heads):
                die()
            return heads

        Queue.fetch = fetched  # type: ignore[method-assign]
    elif point == "during_call":  # the request is on the wire; no answer read
        send = LettaClient.send

        async def sending(self: LettaClient, connection_id: str, body: Any) -> Any:
            asyncio.ensure_future(send(self, connection_id, body))
            await asyncio.sleep(0.2)
            die()

        LettaClient.send = sending  # type: ignore[method-assign]
    elif point == "before_ack":  # Letta answered 2xx; the queue never hears of it (either ack)
        done, advance = Queue.done, Queue.advance

        async def acking(self: Queue, token: Any, message_id: str) -> bool:
            if message_id:
                die()
            return await done(self, token, message_id)

        async def advancing(self: Queue, token: Any, message_id: str) -> Any:
            die()
            return await advance(self, token, message_id)

        Queue.done = acking  # type: ignore[method-assign]
        Queue.advance = advancing  # type: ignore[method-assign]
    elif point == "during_retry":  # a failure was judged retryable; the retry is never scheduled
        retry = Queue.retry

        async def retrying(self: Queue, token: Any, envelope: Any, due: float) -> bool:
            if envelope is not None:
                die()
            return await retry(self, token, envelope, due)

        Queue.retry = retrying  # type: ignore[method-assign]
    else:
        raise SystemExit(f"unknown crash point {point!r}; one of {', '.join(POINTS)}")


if __name__ == "__main__":
    arm(sys.argv[1])
    sys.exit(cli.main(["worker"]))
