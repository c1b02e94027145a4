"""The messages the drain benchmarks queue, the same for relay and for the arq peer. Imports
relay's pure modules only, so it loads in both venvs."""

from __future__ import annotations

import time

from relay.messages import Envelope, Inbound, client_message_id, envelope_for, user_message
from relay.routing import Destination, Route


def envelopes(count: int, conversations: int) -> list[Envelope]:
    """`count` ~100-byte user messages spread round-robin over `conversations` conversations."""
    now = time.time()
    out = []
    for n in range(count):
        route = Route("bench", Destination(agent_id="agent-bench", conversation_id=f"conv-{n % conversations}",
                                           connection_id="conn-bench"))
        message_id = client_message_id("bench", f"{count}-{n}")
        inbound = Inbound("generic", f"msg_{n}", message_id,
                          user_message(f"deploy {n} finished, please summarize the log", message_id))
        out.append(envelope_for(inbound, route, now))
    return out
