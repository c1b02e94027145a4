"""The GitHub source: issue and pull-request comments → messages for an agent.

Verification: `X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the raw body>`, compared in
constant time. A request signed only with SHA-1 (`X-Hub-Signature`) is refused. GitHub
signatures carry no timestamp and cover only the body, so a captured delivery can be re-sent
with any headers: every identity comes from the signed body (repository, comment id, action,
and for an edit its `updated_at`), never from X-GitHub-Delivery or X-GitHub-Hook-ID. A
redelivery, a replay under fresh headers and the same comment through a second hook (an
organization's beside a repository's) are then one message.

Which secret verifies a delivery can depend on the repository it is about (one secret per
tenant): `claimed` reads that from the body before verification, only to choose the secret.

A comment becomes:
- a user message when it carries the route's trigger (default `@agent`), with the context an
  agent needs: repository, issue/PR number and title, author, the comment and its URL;
- an approval decision for each `/approve <tool_call_id>` or `/deny <tool_call_id> <reason>`
  line, when its author is one of the route's approvers.

Pure: headers, bytes and a secret in; values out.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass
from typing import Any, Literal, Mapping

from relay.errors import BadRequest, BadSignature, quoted
from relay.context import github_files
from relay.messages import Inbound, approval_decision, approval_message, client_message_id, user_message
from relay.sources.payloads import form_fields, json_object

SOURCE = "github"
COMMENT_EVENTS = ("issue_comment", "pull_request_review_comment")
#: relay writes this into its own comments (agent replies), so it never answers itself.
OWN_MARKER = "<!-- relay -->"
# Within one line only: [ \t], never \s, which would let a line's reason swallow the next line.
_APPROVAL_LINE = re.compile(r"^[ \t]*/(approve|deny)[ \t]+(\S+)(?:[ \t]+([^\n]*\S))?[ \t]*\r?$", re.MULTILINE)
_SIGNATURE = re.compile(r"sha256=[0-9a-fA-F]{64}")
_EVENT = re.compile(r"[a-z_]{1,64}")
#: One path segment of "owner/name": what GitHub allows in logins and repository names.
_SEGMENT = re.compile(r"[A-Za-z0-9_.-]{1,100}")
_TIMESTAMP = re.compile(r"[0-9A-Za-z:.+-]{1,40}")
_LOGIN = re.compile(r"[A-Za-z0-9_.\[\]-]{1,100}")  # bots are "name[bot]"
MAX_ID = 2**63 - 1


def sign(secret: bytes, body: bytes) -> str:
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def signature_of(headers: Mapping[str, str]) -> str:
    """X-Hub-Signature-256, checked for shape (not yet against the body). Raises BadSignature:
    the web refuses with it before reading a body."""
    lowered = {k.lower(): v for k, v in headers.items()}
    signature = lowered.get("x-hub-signature-256", "")
    if not signature:
        if lowered.get("x-hub-signature"):
            raise BadSignature("only a SHA-1 signature (X-Hub-Signature) was sent; relay requires X-Hub-Signature-256")
        raise BadSignature("missing X-Hub-Signature-256 header")
    if len(signature) != 71 or not _SIGNATURE.fullmatch(signature):
        raise BadSignature("X-Hub-Signature-256 is not sha256=<64 hex digits>")
    return signature


def verify(headers: Mapping[str, str], body: bytes, secret: bytes) -> None:
    """Raises BadSignature unless X-Hub-Signature-256 is the body's HMAC under the secret."""
    signature = signature_of(headers)
    if not hmac.compare_digest(sign(secret, body), signature.lower()):
        raise BadSignature("X-Hub-Signature-256 does not match")


@dataclass(frozen=True)
class Delivery:
    """What the unsigned headers say about a delivery: which event the body is (a wrong one
    makes the body unreadable, never another message), and the GUID logs carry. Neither is
    part of any message's identity."""

    event: str
    delivery_id: str

    @classmethod
    def from_headers(cls, headers: Mapping[str, str]) -> Delivery:
        lowered = {k.lower(): v for k, v in headers.items()}
        event = lowered.get("x-github-event", "")
        delivery_id = lowered.get("x-github-delivery", "")
        if not event:
            raise BadRequest("missing X-GitHub-Event header")
        if not _EVENT.fullmatch(event):
            raise BadRequest("X-GitHub-Event is not an event name")
        if not delivery_id or len(delivery_id) > 100 or not delivery_id.isprintable():
            raise BadRequest("missing or malformed X-GitHub-Delivery header")
        return cls(event, delivery_id)


@dataclass(frozen=True)
class Ping:
    zen: str


@dataclass(frozen=True)
class Ignored:
    reason: str


@dataclass(frozen=True)
class Comment:
    event: str
    action: str
    repository: str  # owner/name
    number: int
    title: str
    kind: Literal["issue", "pull request"]
    author: str
    author_type: str  # "User", "Bot", "Organization"
    association: str  # OWNER, MEMBER, COLLABORATOR, CONTRIBUTOR, NONE, …
    body: str
    url: str
    comment_id: int
    by_app: bool  # posted through a GitHub App (performed_via_github_app)
    path: str | None = None  # review comments: the file and line
    line: int | None = None
    sender: str = ""  # who did this (created, edited or deleted it): not always the author
    updated_at: str = ""  # the comment's last change; an edit's identity

    @property
    def written_by_a_bot(self) -> bool:
        return self.author_type == "Bot" or self.by_app or OWN_MARKER in self.body

    @property
    def by_its_author(self) -> bool:
        """Whether the author did this. Someone allowed to edit another's comment could
        otherwise put words (and /approve lines) in an approver's mouth."""
        return bool(self.sender) and self.sender.lower() == self.author.lower()

    @property
    def api(self) -> Literal["issues", "pulls"]:
        return "pulls" if self.event == "pull_request_review_comment" else "issues"

    def message_id(self) -> str:
        """One per comment and action, and per edit: a real new edit (a new updated_at) is a
        new message; a redelivery, a replay or a second hook is the same one."""
        edit = (self.updated_at,) if self.action == "edited" else ()
        return client_message_id(SOURCE, *self._identity(), self.action, *edit)

    def decision_id(self, tool_call_id: str) -> str:
        """One per comment and tool call, whatever the action: an edit that keeps a decision
        line does not decide again."""
        return client_message_id(SOURCE, *self._identity(), "decision", tool_call_id)

    def _identity(self) -> tuple[str, str, str]:
        # Comment ids are unique per API on one GitHub; the repository keeps tenants apart.
        return self.repository.lower(), self.api, str(self.comment_id)

    def reply(self) -> dict[str, Any]:
        return {"via": "github", "repository": self.repository, "comment_id": self.comment_id, "api": self.api,
                "number": self.number}

    def mentions(self, trigger: str) -> bool:
        return re.search(rf"(?<![\w@]){re.escape(trigger)}(?![\w-])", self.body, re.IGNORECASE) is not None

    def message(self, delivery: Delivery) -> Inbound:
        where = f"{self.repository} {self.kind} #{self.number}: \"{self.title}\""
        if self.path:
            where += f", on {self.path}" + (f" line {self.line}" if self.line else "")
        content = (f"GitHub comment on {where}\n"
                   f"by @{self.author} ({self.association.lower()}) — {self.url}\n\n{self.body}")
        message_id = self.message_id()
        files = github_files(self.body)
        return Inbound(SOURCE, delivery.delivery_id, message_id, user_message(content, message_id),
                       reply=self.reply(), context={"files": [f.to_dict() for f in files]} if files else None)

    def decisions(self, delivery: Delivery) -> list[Inbound]:
        """One approval message per /approve or /deny line, in order."""
        out = []
        for verb, tool_call_id, reason in _APPROVAL_LINE.findall(self.body):
            decision = approval_decision(tool_call_id, verb == "approve", reason or None)
            message_id = self.decision_id(tool_call_id)
            out.append(Inbound(SOURCE, delivery.delivery_id, message_id, approval_message([decision]),
                               reply=self.reply()))
        return out

    def has_decisions(self) -> bool:
        return _APPROVAL_LINE.search(self.body) is not None


def parse(headers: Mapping[str, str], body: bytes, delivery: Delivery) -> Ping | Ignored | Comment:
    return parse_payload(payload(headers, body), delivery)


def parse_payload(data: Mapping[str, Any], delivery: Delivery) -> Ping | Ignored | Comment:
    """A decoded (and verified) payload → what it is."""
    if delivery.event == "ping":
        zen = data.get("zen")
        return Ping(zen if isinstance(zen, str) else "")
    if delivery.event not in COMMENT_EVENTS:
        return Ignored(f"event {quoted(delivery.event)}")
    try:
        return _comment(delivery.event, data)
    except (KeyError, TypeError, ValueError, AttributeError):
        raise BadRequest(f"{delivery.event} payload is missing fields relay needs, or has odd ones") from None


def claimed(data: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """(repository, owner) the payload says it is about, unverified: only to choose the secret
    that verifies it. A ping of an organization's hook names no repository, only the organization."""
    repository = data.get("repository")
    full_name = repository.get("full_name") if isinstance(repository, dict) else None
    if isinstance(full_name, str) and valid_repository(full_name):
        return full_name, full_name.split("/", 1)[0]
    organization = data.get("organization")
    login = organization.get("login") if isinstance(organization, dict) else None
    return None, login if isinstance(login, str) and _SEGMENT.fullmatch(login) else None


def valid_repository(name: str) -> bool:
    """owner/name, each a GitHub name: never "." or "..", which would change an API path."""
    parts = name.split("/")
    return len(parts) == 2 and all(_SEGMENT.fullmatch(p) and p not in (".", "..") for p in parts)


def _comment(event: str, data: Mapping[str, Any]) -> Comment:
    comment, repository = data["comment"], data["repository"]
    if "issue" in data and "pull_request" in data:
        raise ValueError("a comment payload is about an issue or a pull request, not both")
    if event == "issue_comment":
        thread = data["issue"]
        kind: Literal["issue", "pull request"] = "pull request" if thread.get("pull_request") else "issue"
    else:
        thread, kind = data["pull_request"], "pull request"
    user = comment["user"]
    for required in (repository["full_name"], user["login"], data["action"]):
        if not isinstance(required, str) or not required:
            raise ValueError("a required field is not a string")
    if not valid_repository(repository["full_name"]):
        raise BadRequest(f"repository {quoted(repository['full_name'])} is not owner/name")
    action = data["action"]
    updated_at = _text(comment.get("updated_at"))
    if action == "edited" and not _TIMESTAMP.fullmatch(updated_at):
        raise ValueError("an edited comment without updated_at")
    line = comment.get("line") if event == "pull_request_review_comment" else None
    path = comment.get("path") if event == "pull_request_review_comment" else None
    return Comment(
        event=event, action=action, repository=repository["full_name"],
        number=_whole(thread["number"]), title=_text(thread.get("title")), kind=kind,
        author=user["login"], author_type=_text(user.get("type")) or "User",
        association=_text(comment.get("author_association")) or "NONE", body=_text(comment.get("body")),
        url=_text(comment.get("html_url")), comment_id=_whole(comment["id"]),
        by_app=bool(comment.get("performed_via_github_app")),
        path=path if isinstance(path, str) else None,
        line=line if type(line) is int and 0 < line <= MAX_ID else None,
        sender=_sender(data.get("sender")), updated_at=updated_at if _TIMESTAMP.fullmatch(updated_at) else "",
    )


def _whole(value: Any) -> int:
    """A GitHub id or number: a JSON integer, never a float (1e400 is infinity), a bool or a string."""
    if type(value) is not int or not 0 < value <= MAX_ID:
        raise ValueError("not a positive integer")
    return value


def _text(value: Any) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ValueError("not a string")
    return value


def _sender(value: Any) -> str:
    login = value.get("login") if isinstance(value, dict) else None
    return login if isinstance(login, str) and _LOGIN.fullmatch(login) else ""


def payload(headers: Mapping[str, str], body: bytes) -> dict[str, Any]:
    """JSON, or a form whose `payload` field is JSON (both are GitHub webhook content types).
    Strict: duplicate keys and NaN/Infinity are refused (GitHub sends neither)."""
    lowered = {k.lower(): v for k, v in headers.items()}
    media = lowered.get("content-type", "application/json").split(";")[0].strip().lower()
    if media == "application/x-www-form-urlencoded":
        return json_object(form_fields(body, max_fields=10).get("payload", ""), strict=True)
    if media != "application/json":
        raise BadRequest("content-type must be application/json or application/x-www-form-urlencoded")
    return json_object(body, strict=True)
