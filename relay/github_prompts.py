"""Approval prompts on GitHub: a turn started from a comment asks there.

When the agent asks to run a tool during a turn a GitHub comment started, `relay watch` posts
one comment on that issue or pull request (a review comment: a reply in its thread): the tool,
its arguments, and how the route's approvers answer (`/approve <id>`, `/deny <id> <reason>`,
which the GitHub source reads from approvers only). The comment carries relay's marker, so relay
never reads it as a request. When the request ends elsewhere, the comment is edited to say so.
One prompt per tool call across watchers and restarts (a claim, then the comment's place, in
Redis: `rec:gh-prompt-claim:…`, `rec:gh-prompt:…`).
"""

from __future__ import annotations

import json
from typing import Any, Protocol

from relay.answers import github_comment
from relay.github_api import GitHubApi
from relay.messages import ApprovalRequest, tool_call_key
from relay.origins import Origin
from relay.routing import Destination, Route

PLACE_KIND = "gh-prompt"
CLAIM_KIND = "gh-prompt-claim"
TTL = 7 * 24 * 3600.0
CLAIM_TTL = 30.0
ARGUMENTS_SHOWN = 4000


class Records(Protocol):
    async def record(self, kind: str, record_id: str) -> str | None: ...

    async def create_record(self, kind: str, record_id: str, value: str, ttl: float) -> str | None: ...

    async def put_record(self, kind: str, record_id: str, value: str, ttl: float) -> None: ...


def prompt_text(route: Route, request: ApprovalRequest) -> str:
    """The prompt's body (before relay's marker)."""
    arguments = json.dumps(request.input, indent=2, ensure_ascii=False)
    if len(arguments) > ARGUMENTS_SHOWN:
        arguments = arguments[:ARGUMENTS_SHOWN] + "\n… (cut)"
    approvers = route.github.approvers if route.github is not None else ()
    who = ", ".join(f"@{login}" for login in approvers) if approvers else "nobody (the route lists no approvers)"
    return (f"**The agent asks to run `{request.tool_name}`**\n\n```json\n{arguments.replace('```', '` ` `')}\n```\n\n"
            f"Approvers ({who}) answer with a comment:\n\n"
            f"`/approve {request.tool_call_id}`\n\n`/deny {request.tool_call_id} <reason>`")


def closed_text(request_text: str, note: str) -> str:
    return f"{request_text}\n\n---\n**Closed: {note}.** Nothing more is needed here."


class GitHubPrompts:
    def __init__(self, records: Records, github: GitHubApi) -> None:
        self.records, self.github = records, github

    async def ask(self, route: Route, request: ApprovalRequest, origin: Origin) -> bool:
        """Post the prompt under the comment that started the turn. True if this call posted it.
        Raises UpstreamError when GitHub refuses, QueueUnavailable when Redis is away."""
        key = tool_call_key(request.agent_id, request.conversation_id, request.tool_call_id)
        if await self.records.record(PLACE_KIND, key) is not None:
            return False
        if await self.records.create_record(CLAIM_KIND, key, "1", CLAIM_TTL) is not None:
            return False  # another watcher is posting it
        reply, text = origin.reply, prompt_text(route, request)
        if reply["api"] == "pulls":
            comment_id = await self.github.reply_to_review_comment(reply["repository"], reply["number"],
                                                                   reply["comment_id"], github_comment(text))
        else:
            comment_id = await self.github.comment(reply["repository"], reply["number"], github_comment(text))
        place = {"repository": reply["repository"], "api": reply["api"], "comment_id": comment_id, "text": text}
        await self.records.put_record(PLACE_KIND, key, json.dumps(place, separators=(",", ":")), TTL)
        return True

    async def close(self, route: Route, destination: Destination, tool_call_id: str, note: str) -> bool:
        """Say on the prompt that the request ended. True if there was an open prompt to edit."""
        key = tool_call_key(destination.agent_id, destination.conversation_id, tool_call_id)
        raw = await self.records.record(PLACE_KIND, key)
        place: dict[str, Any] = json.loads(raw) if raw else {}
        if not place or place.get("closed"):
            return False
        await self.github.edit_comment(place["repository"], place["api"], place["comment_id"],
                                       github_comment(closed_text(place["text"], note)))
        await self.records.put_record(PLACE_KIND, key, json.dumps({**place, "closed": note}, separators=(",", ":")),
                                      TTL)
        return True
