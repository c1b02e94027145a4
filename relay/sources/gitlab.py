"""The GitLab source: notes (comments) on issues and merge requests → messages for an agent.

Verification: GitLab sends the webhook's secret token as it is in `X-Gitlab-Token`; relay
compares it in constant time with the token of the route the note's project goes to (a
route's own `secret_env`, else GITLAB_WEBHOOK_TOKEN). The token is not a signature of the
body, and GitLab's headers carry no timestamp, so the replay defence is the identity: every
identity comes from the body (project, note id, action, and for an edit its updated_at), never
from X-Gitlab-Event-UUID or X-Gitlab-Webhook-UUID. A redelivery, a replay under fresh headers
and the same note through a second hook (a group's beside a project's) are one message.

A note becomes:
- a user message when it carries the route's trigger (default `@agent`), with the project,
  the issue or merge request (reference and title), the author and the note's URL;
- an approval decision for each `/approve <tool_call_id>` or `/deny <tool_call_id> <reason>`
  line, when its author is one of the route's approvers.
Who may write at all (a member access level) is the door's question: GitLab's payload does
not say, so the door asks GitLab's API.

Pure: headers, bytes and a token in; values out.
"""

from __future__ import annotations

import hmac
import re
from dataclasses import dataclass
from typing import Any, Literal, Mapping

from relay.errors import BadRequest, BadSignature, quoted
from relay.messages import Inbound, approval_decision, approval_message, client_message_id, user_message

SOURCE = "gitlab"
#: relay writes this into its own notes (agent replies), so it never answers itself.
OWN_MARKER = "<!-- relay -->"
MAX_TOKEN_LENGTH = 1024
_APPROVAL_LINE = re.compile(r"^[ \t]*/(approve|deny)[ \t]+(\S+)(?:[ \t]+([^\n]*\S))?[ \t]*\r?$", re.MULTILINE)
_PROJECT = re.compile(r"[A-Za-z0-9_.-]{1,255}(/[A-Za-z0-9_.-]{1,255}){1,20}")
_USERNAME = re.compile(r"[A-Za-z0-9_.-]{1,255}")
_TIMESTAMP = re.compile(r"[0-9A-Za-z:. +-]{1,40}")
#: GitLab's own bot users: project and group access tokens' bots, and its built-in bots.
_BOT = re.compile(r"(project|group)_[0-9]+_bot(_[0-9a-f]+)?[0-9]*|(alert|support|ghost|security-bot|automation)-?bot|ghost")
MAX_ID = 2**63 - 1
NOTEABLES = {"Issue": "issues", "MergeRequest": "merge_requests"}


def token_of(headers: Mapping[str, str]) -> str:
    """X-Gitlab-Token, checked for shape. Raises BadSignature: the web refuses with it before
    reading a body."""
    token = {k.lower(): v for k, v in headers.items()}.get("x-gitlab-token", "")
    if not token:
        raise BadSignature("missing X-Gitlab-Token header")
    if len(token) > MAX_TOKEN_LENGTH or not token.isprintable():
        raise BadSignature("X-Gitlab-Token is not a token")
    return token


def verify(headers: Mapping[str, str], secret: bytes) -> None:
    """Raises BadSignature unless X-Gitlab-Token is the secret (constant time)."""
    if not hmac.compare_digest(token_of(headers).encode(), secret):
        raise BadSignature("X-Gitlab-Token does not match")


def claimed(data: Mapping[str, Any]) -> str | None:
    """The project ("group/project") the payload says it is about (unverified: only to choose
    the token that verifies it)."""
    project = data.get("project")
    path = project.get("path_with_namespace") if isinstance(project, dict) else None
    return path if isinstance(path, str) and valid_project(path) else None


def valid_project(path: str) -> bool:
    return bool(_PROJECT.fullmatch(path)) and not any(p in (".", "..") for p in path.split("/"))


@dataclass(frozen=True)
class Ignored:
    reason: str


@dataclass(frozen=True)
class Note:
    action: str  # "create" or "update"
    project_id: int
    project: str  # group/project
    noteable: Literal["issues", "merge_requests"]
    iid: int
    title: str
    note_id: int
    discussion_id: str
    author: str  # username
    author_id: int
    body: str
    url: str
    system: bool
    updated_at: str = ""

    @property
    def written_by_a_bot(self) -> bool:
        return self.system or OWN_MARKER in self.body or bool(_BOT.fullmatch(self.author))

    @property
    def reference(self) -> str:
        return f"{self.project}{'#' if self.noteable == 'issues' else '!'}{self.iid}"

    def message_id(self) -> str:
        edit = (self.updated_at,) if self.action == "update" else ()
        return client_message_id(SOURCE, *self._identity(), self.action, *edit)

    def decision_id(self, tool_call_id: str) -> str:
        """One per note and tool call, whatever the action: an edit that keeps a decision line
        does not decide again."""
        return client_message_id(SOURCE, *self._identity(), "decision", tool_call_id)

    def _identity(self) -> tuple[str, str, str]:
        return str(self.project_id), "note", str(self.note_id)

    def reply(self) -> dict[str, Any]:
        return {"via": "gitlab", "project": self.project_id, "noteable": self.noteable, "iid": self.iid,
                "note": self.note_id, "discussion": self.discussion_id}

    def mentions(self, trigger: str) -> bool:
        return re.search(rf"(?<![\w@]){re.escape(trigger)}(?![\w-])", self.body, re.IGNORECASE) is not None

    def message(self) -> Inbound:
        kind = "issue" if self.noteable == "issues" else "merge request"
        content = (f"GitLab comment on {kind} {self.reference}: \"{self.title}\"\n"
                   f"by @{self.author} — {self.url}\n\n{self.body}")
        message_id = self.message_id()
        return Inbound(SOURCE, str(self.note_id), message_id, user_message(content, message_id), reply=self.reply())

    def decisions(self) -> list[Inbound]:
        """One approval message per /approve or /deny line, in order."""
        out = []
        for verb, tool_call_id, reason in _APPROVAL_LINE.findall(self.body):
            decision = approval_decision(tool_call_id, verb == "approve", reason or None)
            out.append(Inbound(SOURCE, str(self.note_id), self.decision_id(tool_call_id),
                               approval_message([decision]), reply=self.reply()))
        return out

    def has_decisions(self) -> bool:
        return _APPROVAL_LINE.search(self.body) is not None


def parse(data: Mapping[str, Any]) -> Note | Ignored:
    """A verified payload → a Note, or why it is ignored. Raises BadRequest."""
    if data.get("object_kind") != "note":
        return Ignored(f"object_kind {quoted(data.get('object_kind'))}")
    attributes = data.get("object_attributes")
    noteable = attributes.get("noteable_type") if isinstance(attributes, dict) else None
    if noteable not in NOTEABLES:
        return Ignored(f"a note on {quoted(noteable)}")
    try:
        return _note(data, NOTEABLES[noteable])
    except (KeyError, TypeError, ValueError, AttributeError):
        raise BadRequest("note payload is missing fields relay needs, or has odd ones") from None


def _note(data: Mapping[str, Any], noteable: str) -> Note | Ignored:
    attributes, project, user = data["object_attributes"], data["project"], data["user"]
    action = attributes.get("action", "create")
    if action not in ("create", "update"):
        return Ignored(f"note action {quoted(action)}")
    path = project["path_with_namespace"]
    if not isinstance(path, str) or not valid_project(path):
        raise BadRequest(f"project {quoted(path)} is not group/project")
    thread = data["issue" if noteable == "issues" else "merge_request"]
    updated_at = _text(attributes.get("updated_at"))
    if action == "update" and not _TIMESTAMP.fullmatch(updated_at):
        raise ValueError("an updated note without updated_at")
    username = user["username"]
    if not isinstance(username, str) or not _USERNAME.fullmatch(username):
        raise ValueError("no username")
    return Note(action=action, project_id=_whole(project["id"]), project=path, noteable=noteable,  # type: ignore[arg-type]
                iid=_whole(thread["iid"]), title=_text(thread.get("title")), note_id=_whole(attributes["id"]),
                discussion_id=_discussion(attributes.get("discussion_id")), author=username,
                author_id=_whole(user.get("id", attributes.get("author_id"))), body=_text(attributes.get("note")),
                url=_text(attributes.get("url")), system=attributes.get("system") is True, updated_at=updated_at)


def _discussion(value: Any) -> str:
    return value if isinstance(value, str) and re.fullmatch(r"[0-9a-f]{1,64}", value) else ""


def _whole(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= MAX_ID:
        raise ValueError("not a positive id")
    return value


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""
