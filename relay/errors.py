"""relay's own exceptions.

    RelayError
    ├── ConfigError          a setting is missing or malformed; the message names it
    ├── Rejected             an inbound request is refused; carries the HTTP status to answer
    │   ├── BadSignature     401: missing, wrong or stale signature
    │   ├── BadRequest       400: malformed body or unknown shape
    │   ├── UnsupportedMedia 415: a body that is not JSON
    │   └── TooLarge         413: body over the configured limit
    ├── NoRoute              no configured route accepts this request's workspace/channel/repository
    ├── QueueUnavailable     Redis did not answer; the caller may try again later
    ├── UpstreamError        a source's API (Slack, GitHub) refused or failed a call
    ├── ResolveFailed        Letta's environments API could not say which connection a
    │                        destination names; carries the attempt as an `Outcome`
    └── HttpFailed           a call to Letta could not connect, broke, or timed out; `kind`
                             says which ("connect", "transport", "timeout")

Reasons are written for the person who sent the request and for the log; they never
contain secrets, signatures or message bodies.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from relay.policy import Outcome


class RelayError(Exception):
    """Base of every error relay raises on purpose."""


class ConfigError(RelayError):
    """A setting is missing or malformed. The message names the setting."""


class Rejected(RelayError):
    """An inbound request that relay refuses; nothing was enqueued."""

    status: int = 400

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class BadSignature(Rejected):
    status = 401


class BadRequest(Rejected):
    status = 400


class UnsupportedMedia(Rejected):
    status = 415


class TooLarge(Rejected):
    status = 413


class NoRoute(RelayError):
    """No route accepts the request. Sources answer it in their own way (Slack: an ephemeral
    note; events: acknowledged and dropped), never by queueing it somewhere else."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class QueueUnavailable(RelayError):
    """Redis could not be reached or did not answer in time."""


class UpstreamError(RelayError):
    """A call to Slack or GitHub failed; `code` is the API's error code or the HTTP status."""

    def __init__(self, api: str, method: str, code: str) -> None:
        super().__init__(f"{api} {method}: {code}")
        self.api, self.method, self.code = api, method, code


class ResolveFailed(RelayError):
    """Resolving a device id or connection name failed: Letta refused, answered something
    unreadable, or could not be reached. `outcome` is that attempt, for `policy.decide` to
    judge like a failed delivery (a 5xx or transport trouble is retried, a 401 is not)."""

    def __init__(self, outcome: Outcome) -> None:
        super().__init__(outcome.describe())
        self.outcome = outcome


class HttpFailed(RelayError):
    """A call over `relay.http1` failed: "connect" (nothing was sent), "transport" (the
    connection broke or the answer was unreadable) or "timeout" (no whole answer, or no free
    connection, in time)."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind


def quoted(value: object, limit: int = 40) -> str:
    """A short repr of a request-supplied name for a reason; never the whole of a large value."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 4] + "…" + text[-1]
