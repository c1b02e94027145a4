"""The Linear source: agent sessions and comments with a trigger → messages for an agent.

Verification: `Linear-Signature: <hex HMAC-SHA256 of the raw body>` with the webhook's signing
secret, compared in constant time; then the signed body's `webhookTimestamp` (milliseconds)
must be within ±60 s of relay's clock (Linear's own advice), so a captured delivery cannot be
replayed later. Which secret verifies a delivery can depend on the workspace and team it is
about (one secret per tenant): `claimed` reads that from the body only to choose the secret.

Identities come from the signed body, never from `Linear-Delivery`:
- an agent session's `created` event: the organization and the session id;
- a `prompted` event: the organization and the prompt activity's id;
- a comment: the organization, the comment id and the action (an update: and its updatedAt).

Pure: headers, bytes, a secret and a clock in; values out.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass
from typing import Any, Mapping

from relay.errors import BadRequest, BadSignature, quoted
from relay.messages import Inbound, client_message_id, user_message

SOURCE = "linear"
TOLERANCE_MS = 60_000
#: relay writes this into its own comments (agent replies), so it never answers itself.
OWN_MARKER = "<!-- relay -->"
_SIGNATURE = re.compile(r"[0-9a-fA-F]{64}")
_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_IDENTIFIER = re.compile(r"([A-Za-z0-9]{1,16})-[0-9]{1,9}")
_TIMESTAMP = re.compile(r"[0-9A-Za-z:.+-]{1,40}")


def sign(secret: bytes, body: bytes) -> str:
    return hmac.new(secret, body, hashlib.sha256).hexdigest()


def signature_of(headers: Mapping[str, str]) -> str:
    """Linear-Signature, checked for shape (not yet against the body). Raises BadSignature: the
    web refuses with it before reading a body."""
    signature = {k.lower(): v for k, v in headers.items()}.get("linear-signature", "")
    if not signature:
        raise BadSignature("missing Linear-Signature header")
    if len(signature) != 64 or not _SIGNATURE.fullmatch(signature):
        raise BadSignature("Linear-Signature is not 64 hex digits")
    return signature.lower()


def verify(headers: Mapping[str, str], body: bytes, secret: bytes) -> None:
    """Raises BadSignature unless Linear-Signature is the body's HMAC under the secret."""
    if not hmac.compare_digest(sign(secret, body), signature_of(headers)):
        raise BadSignature("Linear-Signature does not match")


def fresh(data: Mapping[str, Any], now: float, tolerance_ms: int = TOLERANCE_MS) -> None:
    """The signed webhookTimestamp is within the window. Raises BadSignature."""
    stamp = data.get("webhookTimestamp")
    if not isinstance(stamp, int) or isinstance(stamp, bool) or not 0 < stamp < 10**15:
        raise BadSignature("webhookTimestamp is missing or not milliseconds since 1970")
    if abs(now * 1000 - stamp) > tolerance_ms:
        raise BadSignature(f"webhookTimestamp is outside the ±{tolerance_ms // 1000} s window")


@dataclass(frozen=True)
class Team:
    organization: str
    key: str  # "ENG"
    id: str


def claimed(data: Mapping[str, Any]) -> Team:
    """The workspace and team a payload says it is about (unverified: only to choose a secret,
    and, once verified, the route)."""
    organization = _str(data.get("organizationId"))
    session = _dict(data.get("agentSession"))
    issue = _dict(session.get("issue")) if session else _dict(_dict(data.get("data")).get("issue"))
    team = _dict(issue.get("team"))
    identifier = _str(issue.get("identifier")) or _identifier_in(_str(data.get("url")))
    key = _str(team.get("key")) or (identifier.split("-")[0] if _IDENTIFIER.fullmatch(identifier) else "")
    team_id = _str(team.get("id")) or _str(issue.get("teamId"))
    return Team(organization if _ID.fullmatch(organization) else "", key if _ID.fullmatch(key) else "",
                team_id if _ID.fullmatch(team_id) else "")


@dataclass(frozen=True)
class Ignored:
    reason: str


@dataclass(frozen=True)
class SessionEvent:
    """An agent session created for the agent (a mention or a delegation), or a person's
    prompt in it."""

    action: str  # "created" or "prompted"
    session_id: str
    team: Team
    issue: str  # "ENG-123"
    title: str
    url: str
    prompt: str  # the prompt context (created) or the person's message (prompted)
    activity_id: str = ""  # the prompt activity (prompted)
    author: str = ""
    stop: bool = False  # the person asked the agent to stop

    def message_id(self) -> str:
        if self.action == "created":
            return client_message_id(SOURCE, self.team.organization, "session", self.session_id, "created")
        return client_message_id(SOURCE, self.team.organization, "activity", self.activity_id)

    def reply(self) -> dict[str, Any]:
        return {"via": "linear", "session": self.session_id}

    def inbound(self) -> Inbound:
        where = f"{self.issue} \"{self.title}\"" + (f" — {self.url}" if self.url else "")
        if self.action == "created":
            head = f"Linear agent session on {where}" + (f", started by {self.author}" if self.author else "")
        else:
            head = f"Linear agent session on {where}: {self.author or 'a person'} writes"
        if self.stop:
            head += " (and asks the agent to stop)"
        message_id = self.message_id()
        return Inbound(SOURCE, f"{self.session_id}:{self.activity_id or 'created'}", message_id,
                       user_message(f"{head}\n\n{self.prompt}".rstrip(), message_id), reply=self.reply())


@dataclass(frozen=True)
class CommentEvent:
    action: str  # "create" or "update"
    comment_id: str
    issue_id: str
    team: Team
    issue: str  # "ENG-123", when known
    title: str
    body: str
    author: str
    by_a_person: bool  # the actor is a user (not an integration, an OAuth app or relay)
    url: str
    updated_at: str = ""

    @property
    def written_by_a_bot(self) -> bool:
        return not self.by_a_person or OWN_MARKER in self.body

    def mentions(self, trigger: str) -> bool:
        return re.search(rf"(?<![\w@]){re.escape(trigger)}(?![\w-])", self.body, re.IGNORECASE) is not None

    def message_id(self) -> str:
        edit = (self.updated_at,) if self.action == "update" else ()
        return client_message_id(SOURCE, self.team.organization, "comment", self.comment_id, self.action, *edit)

    def reply(self) -> dict[str, Any]:
        return {"via": "linear", "issue": self.issue_id, "comment": self.comment_id}

    def inbound(self) -> Inbound:
        where = f"{self.issue} \"{self.title}\"" if self.issue else f"\"{self.title}\""
        content = f"Linear comment on {where} by {self.author}" + (f" — {self.url}" if self.url else "")
        message_id = self.message_id()
        return Inbound(SOURCE, self.comment_id, message_id, user_message(f"{content}\n\n{self.body}", message_id),
                       reply=self.reply())


def parse(data: Mapping[str, Any]) -> SessionEvent | CommentEvent | Ignored:
    """A verified, fresh payload → what it is. Raises BadRequest for a payload relay should
    understand but cannot."""
    kind, action = data.get("type"), data.get("action")
    if kind in ("AgentSessionEvent", "Comment") and not isinstance(action, str):
        raise BadRequest(f"a {kind} webhook without an action")
    try:
        if kind == "AgentSessionEvent":
            if action not in ("created", "prompted"):
                return Ignored(f"agent session action {quoted(action)}")
            return _session(data, action)
        if kind == "Comment":
            if action not in ("create", "update"):
                return Ignored(f"comment action {quoted(action)}")
            return _comment(data, action)
    except (KeyError, TypeError, ValueError, AttributeError):
        raise BadRequest(f"{quoted(kind)} payload is missing fields relay needs, or has odd ones") from None
    return Ignored(f"webhook type {quoted(kind)}")


def _session(data: Mapping[str, Any], action: str) -> SessionEvent:
    session = data["agentSession"]
    session_id = _required_id(session["id"])
    issue = _dict(session.get("issue"))
    team = claimed(data)
    if not team.organization:
        raise ValueError("no organization")
    creator = _dict(session.get("creator"))
    if action == "created":
        comment = _dict(session.get("comment"))
        prompt = _str(data.get("promptContext")) or _str(comment.get("body"))
        return SessionEvent(action, session_id, team, _str(issue.get("identifier")), _str(issue.get("title")),
                            _str(issue.get("url")), prompt, author=_str(creator.get("name")))
    activity = data["agentActivity"]
    content = _dict(activity.get("content"))
    return SessionEvent(action, session_id, team, _str(issue.get("identifier")), _str(issue.get("title")),
                        _str(issue.get("url")), _str(content.get("body")), activity_id=_required_id(activity["id"]),
                        author=_str(_dict(activity.get("user")).get("name")) or _str(creator.get("name")),
                        stop=activity.get("signal") == "stop")


def _comment(data: Mapping[str, Any], action: str) -> CommentEvent:
    comment = data["data"]
    issue = _dict(comment.get("issue"))
    team = claimed(data)
    if not team.organization:
        raise ValueError("no organization")
    updated_at = _str(comment.get("updatedAt"))
    if action == "update" and not _TIMESTAMP.fullmatch(updated_at):
        raise ValueError("an updated comment without updatedAt")
    actor = _dict(data.get("actor"))
    user = _dict(comment.get("user"))
    by_a_person = actor.get("type", "user") == "user" and not comment.get("botActor")
    url = _str(data.get("url"))
    return CommentEvent(action, _required_id(comment["id"]), _required_id(comment.get("issueId") or issue["id"]), team,
                        _str(issue.get("identifier")) or _identifier_in(url), _str(issue.get("title")),
                        _str(comment.get("body")), _str(user.get("name")) or _str(actor.get("name")) or "someone",
                        by_a_person, url, updated_at)


def _identifier_in(url: str) -> str:
    match = re.search(r"/issue/([A-Za-z0-9]{1,16}-[0-9]{1,9})(?:/|$|#)", url)
    return match.group(1) if match else ""


def _required_id(value: Any) -> str:
    if not isinstance(value, str) or not _ID.fullmatch(value):
        raise ValueError("an id is not a Linear id")
    return value


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}
