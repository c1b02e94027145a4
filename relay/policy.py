"""What to do after a delivery attempt: done, retry at a time, or dead-letter.

Pure: an `Outcome` (plain values from the HTTP call), the attempt count and a clock in; a
`Decision` out. The classification follows the Letta contract's "design for it" notes:

- the far side said it took the message (the device's `input_accepted`) → delivered;
- the device has no such pending approval (answered elsewhere, or gone) → settled: done,
  never retried, and the person is told;
- the device refused for good → dead-letter;
- connect errors, timeouts, 408, 429, 5xx, no online connection, a device replacing its
  listener → retry with capped, jittered exponential backoff, honouring Retry-After;
- 404 → resolve the connection again, then retry;
- other 4xx and 3xx, or a 2xx whose body says `"success": false` → dead-letter;
- a retryable failure once the message is older than its maximum age → dead-letter.
"""

from __future__ import annotations

import email.utils
import random
from dataclasses import dataclass

import orjson

#: A Retry-After longer than this is treated as this (a misbehaving server cannot park work).
MAX_RETRY_AFTER = 3600.0
#: How long a Letta Code device remembers a client_message_id it accepted (0.34.12:
#: ACCEPTED_INPUT_DISPOSITION_TTL_MS). relay remembers ids far longer (RELAY_DEDUP_WINDOW).
DEVICE_DEDUP_WINDOW = 3600.0
REASON_BODY_LIMIT = 500


@dataclass(frozen=True)
class Outcome:
    """One delivery attempt, as plain values: an HTTP response (`status`), the device's own
    answer (`accepted`, or the error "settled" / "refused"), or a failure to get either (`error`)."""

    status: int | None = None
    body: str = ""
    retry_after: str | None = None
    error: str | None = None  # "connect", "timeout", "transport", "unresolved", "inactive", "settled", "refused"
    detail: str = ""
    accepted: bool = False  # the device answered input_accepted: true

    def describe(self) -> str:
        if self.accepted:
            return self.detail or "accepted by the device"
        if self.status is None:
            return f"{self.error}: {self.detail}" if self.detail else str(self.error)
        snippet = self.body.strip()[:REASON_BODY_LIMIT]
        return f"HTTP {self.status}: {snippet}" if snippet else f"HTTP {self.status}"

    @property
    def answered(self) -> bool:
        """The device itself answered (on the status socket), rather than an HTTP server."""
        return self.accepted or self.error in FINAL_ERRORS or self.error == "inactive"

    @property
    def code(self) -> str:
        """A short, body-free label for logs and counters: "http_503", "timeout"."""
        if self.accepted:
            return "accepted"
        return f"http_{self.status}" if self.status is not None else str(self.error)


@dataclass(frozen=True)
class Backoff:
    """Capped exponential backoff with jitter: attempt n waits between d/2 and d, d = base·2ⁿ⁻¹."""

    base: float = 1.0
    cap: float = 300.0

    def delay(self, attempt: int, rng: random.Random) -> float:
        # Bound the exponent first: 2.0 ** 1024 overflows a float long before any cap applies.
        ceiling = min(self.cap, self.base * 2.0 ** min(max(0, attempt - 1), 64))
        return rng.uniform(ceiling / 2, ceiling)


@dataclass(frozen=True)
class Delivered:
    pass


@dataclass(frozen=True)
class Retry:
    at: float
    reason: str
    code: str
    reresolve: bool = False
    pause_until: float | None = None  # set on 429: hold every delivery, not just this one


@dataclass(frozen=True)
class DeadLetter:
    reason: str
    code: str


@dataclass(frozen=True)
class Settled:
    """Nothing more to send: the device has no such pending request (it was answered elsewhere)."""

    reason: str


Decision = Delivered | Retry | DeadLetter | Settled

#: Outcome errors that end a message without delivering it.
FINAL_ERRORS = {"settled", "refused"}


def decide(
    outcome: Outcome,
    *,
    attempt: int,
    age: float,
    max_age: float,
    now: float,
    backoff: Backoff,
    rng: random.Random,
) -> Decision:
    """`attempt` counts this one (1 for the first); `age` is seconds since the message was queued."""
    status = outcome.status
    if outcome.accepted:
        return Delivered()
    if outcome.error == "settled":
        return Settled(outcome.describe())
    if status is not None and 200 <= status < 300:
        refusal = _refusal(outcome.body)
        if refusal is not None:
            return DeadLetter(f"Letta answered {status} with success=false: {refusal}", "refused")
        return Delivered()
    reason = outcome.describe()
    if not _retryable(outcome):
        return DeadLetter(reason, outcome.code)
    if age >= max_age:
        return DeadLetter(
            f"gave up after {attempt} attempts over {_duration(age)}; last error: {reason}", "expired"
        )
    delay = backoff.delay(attempt, rng)
    server_wait = retry_after_seconds(outcome.retry_after, now)
    if server_wait is not None:
        delay = max(delay, server_wait)
    return Retry(
        at=now + delay,
        reason=reason,
        code=outcome.code,
        reresolve=status == 404,
        pause_until=now + delay if status == 429 else None,
    )


def retry_after_seconds(value: str | None, now: float) -> float | None:
    """Retry-After as seconds from now: delta-seconds or an HTTP date; None if absent or bad."""
    if value is None:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        seconds = float(value)
    else:
        try:
            seconds = email.utils.parsedate_to_datetime(value).timestamp() - now
        except (TypeError, ValueError, IndexError):
            return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def _retryable(outcome: Outcome) -> bool:
    status = outcome.status
    if status is None:
        return outcome.error not in FINAL_ERRORS
    return status in (404, 408, 429) or status >= 500


def _refusal(body: str) -> str | None:
    """The message of a 2xx body that says `"success": false`, else None."""
    try:
        data = orjson.loads(body)  # every delivery's answer: ~5x faster than json
    except ValueError:
        return None
    if isinstance(data, dict) and data.get("success") is False:
        return str(data.get("message") or "no message given")[:REASON_BODY_LIMIT]
    return None


def _duration(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds:.0f} s"


def replay_may_repeat(kind: str, attempts: int, code: str, received_at: float, queued_at: float,
                      now: float) -> bool:
    """Could replaying this dead letter show the agent its message twice?

    Only a user message an earlier attempt may have delivered (every attempt counts, unless the
    one attempt was a plain refusal), once the device's own memory of its id may have lapsed:
    the first attempt came after `received_at`, so after DEVICE_DEDUP_WINDOW from then it may
    be forgotten. A replay of an approval is harmless: the device answers "no longer pending".
    """
    if kind != "user":
        return False
    attempted = attempts > 0 or queued_at > received_at  # a replayed message was attempted before it
    refused_once = attempts == 1 and queued_at <= received_at and _plain_refusal(code)
    return attempted and not refused_once and now - received_at > DEVICE_DEDUP_WINDOW


def _plain_refusal(code: str) -> bool:
    """A dead-letter code that says the server took nothing (a 4xx that is no connection problem)."""
    if code == "refused":
        return True
    status = code.removeprefix("http_")
    return status.isdigit() and 400 <= int(status) < 500 and int(status) not in (404, 408, 429)
