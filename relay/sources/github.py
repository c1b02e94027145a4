"""The GitHub source: issue and pull-request comments → messages for an agent.

Verification: `X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the raw body>`, compared in
constant time. A request signed only with SHA-1 (`X-Hub-Signature`) is refused. GitHub
signatures carry no timestamp, so a captured delivery could be replayed: the delivery
identity (X-GitHub-Delivery + X-GitHub-Hook-ID) is the dedup key, which makes a replay
(or a manual redelivery) a duplicate rather than a second message.

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


def sign(secret: bytes, body: bytes) -> str:
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def verify(headers: Mapping[str, str], body: bytes, secret: bytes) -> None:
    """Raises BadSignature unless X-Hub-Signature-256 is the body's HMAC under the secret."""
    lowered = {k.lower(): v for k, v in headers.items()}
    signature = lowered.get("x-hub-signature-256", "")
    if not signature:
        if lowered.get("x-hub-signature"):
            raise BadSignature("only a SHA-1 signature (X-Hub-Signature) was sent; relay requires X-Hub-Signature-256")
        raise BadSignature("missing X-Hub-Signature-256 header")
    if not re.fullmatch(r"sha256=[0-9a-fA-F]{64}", signature):
        raise BadSignature("X-Hub-Signature-256 is not sha256=<64 hex digits>")
    if not hmac.compare_digest(sign(secret, body), signature.lower()):
        raise BadSignature("X-Hub-Signature-256 does not match")


@dataclass(frozen=True)
class Delivery:
    event: str
    delivery_id: str
    hook_id: str

    @classmethod
    def from_headers(cls, headers: Mapping[str, str]) -> Delivery:
        lowered = {k.lower(): v for k, v in headers.items()}
        event = lowered.get("x-github-event", "")
        delivery_id = lowered.get("x-github-delivery", "")
        if not event:
            raise BadRequest("missing X-GitHub-Event header")
        if not delivery_id or len(delivery_id) > 100 or not delivery_id.isprintable():
            raise BadRequest("missing or malformed X-GitHub-Delivery header")
        return cls(event, delivery_id, lowered.get("x-github-hook-id", "")[:40])

    def message_id(self, *part: str) -> str:
        """The delivery GUID is shared by every hook it is sent to; the hook id tells them apart."""
        return client_message_id(SOURCE, self.hook_id, self.delivery_id, *part)


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

    @property
    def written_by_a_bot(self) -> bool:
        return self.author_type == "Bot" or self.by_app or OWN_MARKER in self.body

    def reply(self) -> dict[str, Any]:
        api = "pulls" if self.event == "pull_request_review_comment" else "issues"
        return {"via": "github", "repository": self.repository, "comment_id": self.comment_id, "api": api,
                "number": self.number}

    def mentions(self, trigger: str) -> bool:
        return re.search(rf"(?<![\w@]){re.escape(trigger)}(?![\w-])", self.body, re.IGNORECASE) is not None

    def message(self, delivery: Delivery) -> Inbound:
        where = f"{self.repository} {self.kind} #{self.number}: \"{self.title}\""
        if self.path:
            where += f", on {self.path}" + (f" line {self.line}" if self.line else "")
        content = (f"GitHub comment on {where}\n"
                   f"by @{self.author} ({self.association.lower()}) — {self.url}\n\n{self.body}")
        message_id = delivery.message_id("comment")
        files = github_files(self.body)
        return Inbound(SOURCE, delivery.delivery_id, message_id, user_message(content, message_id),
                       reply=self.reply(), context={"files": [f.to_dict() for f in files]} if files else None)

    def decisions(self, delivery: Delivery) -> list[Inbound]:
        """One approval message per /approve or /deny line, in order."""
        out = []
        for verb, tool_call_id, reason in _APPROVAL_LINE.findall(self.body):
            decision = approval_decision(tool_call_id, verb == "approve", reason or None)
            message_id = delivery.message_id("decision", tool_call_id)
            out.append(Inbound(SOURCE, delivery.delivery_id, message_id, approval_message([decision]),
                               reply=self.reply()))
        return out

    def has_decisions(self) -> bool:
        return _APPROVAL_LINE.search(self.body) is not None


def parse(headers: Mapping[str, str], body: bytes, delivery: Delivery) -> Ping | Ignored | Comment:
    data = _payload(headers, body)
    if delivery.event == "ping":
        return Ping(str(data.get("zen", "")))
    if delivery.event not in COMMENT_EVENTS:
        return Ignored(f"event {quoted(delivery.event)}")
    try:
        return _comment(delivery.event, data)
    except (KeyError, TypeError, ValueError, AttributeError):
        raise BadRequest(f"{delivery.event} payload is missing fields relay needs") from None


def _comment(event: str, data: Mapping[str, Any]) -> Comment:
    comment, repository = data["comment"], data["repository"]
    if event == "issue_comment":
        thread = data["issue"]
        kind: Literal["issue", "pull request"] = "pull request" if thread.get("pull_request") else "issue"
    else:
        thread, kind = data["pull_request"], "pull request"
    user = comment["user"]
    for required in (repository["full_name"], user["login"], data["action"]):
        if not isinstance(required, str) or not required:
            raise ValueError("a required field is not a string")
    return Comment(
        event=event, action=str(data["action"]), repository=str(repository["full_name"]),
        number=int(thread["number"]), title=str(thread.get("title") or ""), kind=kind,
        author=str(user["login"]), author_type=str(user.get("type") or "User"),
        association=str(comment.get("author_association") or "NONE"), body=str(comment.get("body") or ""),
        url=str(comment.get("html_url") or ""), comment_id=int(comment["id"]),
        by_app=bool(comment.get("performed_via_github_app")),
        path=comment.get("path") if event == "pull_request_review_comment" else None,
        line=comment.get("line") if event == "pull_request_review_comment" else None,
    )


def _payload(headers: Mapping[str, str], body: bytes) -> dict[str, Any]:
    """JSON, or a form whose `payload` field is JSON (both are GitHub webhook content types)."""
    lowered = {k.lower(): v for k, v in headers.items()}
    media = lowered.get("content-type", "application/json").split(";")[0].strip().lower()
    if media == "application/x-www-form-urlencoded":
        return json_object(form_fields(body, max_fields=10).get("payload", ""))
    if media != "application/json":
        raise BadRequest("content-type must be application/json or application/x-www-form-urlencoded")
    return json_object(body)
