"""relay status's table: from a real queue's stats, and the rendering rules on their own."""

from __future__ import annotations

import re
from typing import Any

import pytest

from relay.messages import Envelope, Inbound, client_message_id, envelope_for, user_message
from relay.queue import Keys, Queue, QueueStats
from relay.routing import Destination, Route
from relay.status import age, render

NOW = 1_700_000_000.0  # 2023-11-14 22:13:20Z
BUILDS = Route("builds", Destination(agent_id="agent-builds", device_id="ci-box"))
OPS = Route("ops", Destination(agent_id="agent-ops", conversation_id="conv-ops", connection_name="ops-box"))


def message(n: int, route: Route, queued: float) -> Envelope:
    message_id = client_message_id("test", f"{route.name}-{n}")
    return envelope_for(Inbound("test", f"d-{n}", message_id, user_message(f"text {n}", message_id)), route, queued)


def rows(text: str) -> dict[str, str]:
    """Each indented "label   value" line of the table."""
    return dict(re.split(r"\s{2,}", line.strip(), maxsplit=1) for line in text.splitlines()
                if line.startswith("  ") and re.search(r"\S\s{2,}\S", line))


async def claim(queue: Queue, route: Route) -> Any:
    [token] = await queue.read(Keys.partition_of(route.destination.conversation_key), 10, 10)
    [head] = await queue.fetch([token])
    return head


@pytest.mark.anyio
async def test_status_shows_a_real_queue_by_state_with_its_dead_letter_and_failure(redis_client: Any,
                                                                                   prefix: str) -> None:
    queue = Queue(redis_client, prefix=prefix, consumer="w", clock=lambda: NOW)
    await queue.ensure_groups()
    for n in range(3):
        await queue.enqueue(message(n, BUILDS, NOW - 125 + n))
    await queue.enqueue(message(0, OPS, NOW - 10))
    head = await claim(queue, BUILDS)
    await queue.dead_letter(head.token, head.envelope, "HTTP 400: bad agent", "http_400")
    await claim(queue, OPS)  # in flight

    text = render(await queue.stats(), source="Redis test", now=NOW)

    table = rows(text)
    assert (table["ready"], table["in flight"], table["delayed (retry later)"], table["dead letters"]) == \
        ("2", "1", "0", "1")
    assert table["oldest waiting"] == "2m 04s"  # builds-1, queued NOW - 124, now heads its conversation
    assert table["http_400"] == "1"
    assert table["agent agent-builds via device_id=ci-box"] == "1"
    assert text.splitlines()[0] == "relay status: Redis test, 2023-11-14 22:13:20Z"


def test_empty_sections_say_none_and_counts_are_largest_first() -> None:
    stats = QueueStats(ready=0, delayed=0, in_flight=0, dead=12, oldest_waiting_age=None,
                       dead_by_reason={"expired": 2, "http_400": 7, "unresolved": 3}, failures_by_destination={})
    text = render(stats, source="relay at http://127.0.0.1:8000", now=NOW)
    assert rows(text)["oldest waiting"] == "none"
    reasons = text.split("dead letters by reason\n")[1].split("\n\n")[0].split()
    assert reasons == ["http_400", "7", "unresolved", "3", "expired", "2"]
    assert text.rstrip().endswith("last 24 h\n  none")


def test_values_line_up_in_one_column() -> None:
    stats = QueueStats(ready=12345, delayed=1, in_flight=0, dead=0, oldest_waiting_age=3.5,
                       dead_by_reason={}, failures_by_destination={"agent a via device_id=a-long-device-name": 9})
    lines = [line for line in render(stats, source="x", now=NOW).splitlines() if rows(line)]
    assert len({len(line) for line in lines}) == 1, lines


@pytest.mark.parametrize("seconds, shown", [(0.4, "0s"), (59.9, "59s"), (60, "1m 00s"), (3599, "59m 59s"),
                                            (3600, "1h 00m"), (86399, "23h 59m"), (86400 * 3 + 7200, "3d 02h")])
def test_ages_read_at_a_glance(seconds: float, shown: str) -> None:
    assert age(seconds) == shown
