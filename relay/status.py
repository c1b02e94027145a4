"""`relay status`: a queue snapshot as a terminal table. Pure: stats in, text out."""

from __future__ import annotations

from datetime import datetime, timezone

from relay.queue import FAILURE_WINDOW_HOURS, QueueStats

INDENT = "  "


def render(stats: QueueStats, *, source: str, now: float) -> str:
    """`source` says where the numbers came from; `now` (epoch seconds) stamps them."""
    stamp = datetime.fromtimestamp(now, timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")
    sections = [
        ("messages", [("ready", str(stats.ready)), ("in flight", str(stats.in_flight)),
                      ("delayed (retry later)", str(stats.delayed)), ("dead letters", str(stats.dead)),
                      ("oldest waiting", age(stats.oldest_waiting_age))]),
        ("dead letters by reason", _by_count(stats.dead_by_reason)),
        (f"failed attempts by destination, last {FAILURE_WINDOW_HOURS} h", _by_count(stats.failures_by_destination)),
    ]
    rows = [row for _, section in sections for row in section]
    label_width = max(len(label) for label, _ in rows)
    value_width = max(len(value) for _, value in rows)
    lines = [f"relay status: {source}, {stamp}"]
    for title, section in sections:
        lines += ["", title]
        lines += [f"{INDENT}{label:<{label_width}}  {value:>{value_width}}" for label, value in section] or [
            f"{INDENT}none"]
    return "\n".join(lines)


def age(seconds: float | None) -> str:
    """42s, 4m 12s, 3h 05m, 2d 04h; "none" when nothing waits."""
    if seconds is None:
        return "none"
    whole = int(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m {whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h {whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d {whole % 86400 // 3600:02d}h"


def _by_count(counts: dict[str, int]) -> list[tuple[str, str]]:
    return [(name, str(n)) for name, n in sorted(counts.items(), key=lambda item: (-item[1], item[0]))]
