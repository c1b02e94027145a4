"""Approval prompts as comments: a turn started from a GitHub or GitLab comment asks there.

When the agent asks to run a tool during a turn a GitHub comment (or a GitLab note) started,
`relay watch` posts one comment on that issue, pull request or merge request (in its review
thread or discussion): the tool, its arguments, and how the route's approvers answer
(`/approve <id>`, `/deny <id> <reason>`, which the GitHub and GitLab sources read from
approvers only). The comment carries relay's marker, so relay never reads it as a request. When
the request ends elsewhere, the comment is edited to say so. One prompt per tool call across
watchers and restarts (a claim, then the comment's place, in Redis: `rec:prompt-claim:…`,
`rec:prompt:…`).
"""

from __future__ import annotations

import json
from typing import Any, Protocol

from relay.answers import github_comment
from relay.github_api import GitHubApi
from relay.gitlab_api import GitLabApi
from relay.messages import ApprovalRequest, tool_call_key
from relay.origins import Origin
from relay.routing import Destination, Route

PLACE_KIND = "prompt"
CLAIM_KIND = "prompt-claim"
TTL = 7 * 24 * 3600.0
CLAIM_TTL = 30.0
ARGUMENTS_SHOWN = 4000


class Records(Protocol):
    async def record(self, kind: str, record_id: str) -> str | None: ...

    async def create_record(self, kind: str, record_id: str, value: str, ttl: float) -> str | None: ...

    async def put_record(self, kind: str, record_id: str, value: str, ttl: float) -> None: ...


class Thread(Protocol):
    """Where a prompt goes on one platform: post it under the triggering comment, edit it later."""

    async def post(self, reply: dict[str, Any], body: str) -> dict[str, Any]: ...

    async def edit(self, place: dict[str, Any], body: str) -> None: ...


class GitHubThread:
    def __init__(self, github: GitHubApi) -> None:
        self.github = github

    async def post(self, reply: dict[str, Any], body: str) -> dict[str, Any]:
        if reply["api"] == "pulls":
            comment_id = await self.github.reply_to_review_comment(reply["repository"], reply["number"],
                                                                   reply["comment_id"], body)
        else:
            comment_id = await self.github.comment(reply["repository"], reply["number"], body)
        return {"repository": reply["repository"], "api": reply["api"], "comment_id": comment_id}

    async def edit(self, place: dict[str, Any], body: str) -> None:
        await self.github.edit_comment(place["repository"], place["api"], place["comment_id"], body)


class GitLabThread:
    def __init__(self, gitlab: GitLabApi) -> None:
        self.gitlab = gitlab

    async def post(self, reply: dict[str, Any], body: str) -> dict[str, Any]:
        note_id = await self.gitlab.note(reply["project"], reply["noteable"], reply["iid"], body,
                                         str(reply.get("discussion") or ""))
        return {"project": reply["project"], "noteable": reply["noteable"], "iid": reply["iid"], "note": note_id}

    async def edit(self, place: dict[str, Any], body: str) -> None:
        await self.gitlab.edit_note(place["project"], place["noteable"], place["iid"], place["note"], body)


def prompt_text(route: Route, request: ApprovalRequest, via: str) -> str:
    """The prompt's body (before relay's marker)."""
    arguments = json.dumps(request.input, indent=2, ensure_ascii=False)
    if len(arguments) > ARGUMENTS_SHOWN:
        arguments = arguments[:ARGUMENTS_SHOWN] + "\n… (cut)"
    rule = route.gitlab if via == "gitlab" else route.github
    approvers = getattr(rule, "approvers", ()) if rule is not None else ()
    who = ", ".join(f"@{login}" for login in approvers) if approvers else "nobody (the route lists no approvers)"
    return (f"**The agent asks to run `{request.tool_name}`**\n\n```json\n{arguments.replace('```', '` ` `')}\n```\n\n"
            f"Approvers ({who}) answer with a comment:\n\n"
            f"`/approve {request.tool_call_id}`\n\n`/deny {request.tool_call_id} <reason>`")


def closed_text(request_text: str, note: str) -> str:
    return f"{request_text}\n\n---\n**Closed: {note}.** Nothing more is needed here."


class CommentPrompts:
    def __init__(self, records: Records, threads: dict[str, Thread]) -> None:
        self.records, self.threads = records, threads

    def asks(self, origin: Origin) -> bool:
        """Whether a turn this origin started gets its approval prompts as a comment."""
        return origin.reply.get("via") in self.threads

    async def ask(self, route: Route, request: ApprovalRequest, origin: Origin) -> bool:
        """Post the prompt under the comment that started the turn. True if this call posted it.
        Raises UpstreamError when the platform refuses, QueueUnavailable when Redis is away."""
        via = str(origin.reply.get("via"))
        key = tool_call_key(request.agent_id, request.conversation_id, request.tool_call_id)
        if await self.records.record(PLACE_KIND, key) is not None:
            return False
        if await self.records.create_record(CLAIM_KIND, key, "1", CLAIM_TTL) is not None:
            return False  # another watcher is posting it
        text = prompt_text(route, request, via)
        place = await self.threads[via].post(origin.reply, github_comment(text))
        place.update(via=via, text=text)
        await self.records.put_record(PLACE_KIND, key, json.dumps(place, separators=(",", ":")), TTL)
        return True

    async def close(self, route: Route, destination: Destination, tool_call_id: str, note: str) -> bool:
        """Say on the prompt that the request ended. True if there was an open prompt to edit."""
        key = tool_call_key(destination.agent_id, destination.conversation_id, tool_call_id)
        raw = await self.records.record(PLACE_KIND, key)
        place: dict[str, Any] = json.loads(raw) if raw else {}
        if not place or place.get("closed") or place.get("via") not in self.threads:
            return False
        await self.threads[place["via"]].edit(place, github_comment(closed_text(place["text"], note)))
        await self.records.put_record(PLACE_KIND, key, json.dumps({**place, "closed": note}, separators=(",", ":")),
                                      TTL)
        return True


def prompts_for(records: Records, github: GitHubApi | None, gitlab: GitLabApi | None) -> CommentPrompts | None:
    threads: dict[str, Thread] = {}
    if github is not None:
        threads["github"] = GitHubThread(github)
    if gitlab is not None:
        threads["gitlab"] = GitLabThread(gitlab)
    return CommentPrompts(records, threads) if threads else None
