"""The Linear GraphQL client: the only module that talks to Linear (agent activities in a
session; comments and reactions on an issue).

`LINEAR_API_KEY` is a personal API key (`lin_api_…`, sent as it is) or an OAuth app's access
token (sent as `Bearer …`, the form an agent app uses). `LINEAR_API_URL` points it elsewhere
(a stand-in in tests). Failures, including a GraphQL `errors` answer or `success: false`,
become UpstreamError with the HTTP status or the error's code.
"""

from __future__ import annotations

from typing import Any, Literal

import httpx

from relay import __version__
from relay.errors import UpstreamError
from relay.settings import Settings

ActivityType = Literal["thought", "action", "response", "error", "elicitation"]

_ACTIVITY = """mutation AgentActivityCreate($input: AgentActivityCreateInput!) {
  agentActivityCreate(input: $input) { success agentActivity { id } }
}"""
_COMMENT = """mutation CommentCreate($input: CommentCreateInput!) {
  commentCreate(input: $input) { success comment { id } }
}"""
_REACTION = """mutation ReactionCreate($input: ReactionCreateInput!) {
  reactionCreate(input: $input) { success }
}"""


def authorization(token: str) -> str:
    return token if token.startswith("lin_api_") else f"Bearer {token}"


class LinearApi:
    def __init__(self, token: str, *, url: str = "https://api.linear.app/graphql", timeout: float = 10.0,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.url = url
        self._http = httpx.AsyncClient(timeout=timeout, transport=transport, headers={
            "Authorization": authorization(token), "Content-Type": "application/json",
            "User-Agent": f"relay/{__version__}"})

    @classmethod
    def from_settings(cls, settings: Settings) -> LinearApi | None:
        if not settings.linear_api_key:
            return None
        return cls(settings.linear_api_key, url=settings.linear_api_url)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def activity(self, session_id: str, kind: ActivityType, body: str, *, ephemeral: bool = False) -> str:
        """An agent activity in a session (a thought, a response, an error…); its id."""
        content: dict[str, Any] = {"type": kind, "body": body}
        data: dict[str, Any] = {"agentSessionId": session_id, "content": content}
        if ephemeral:
            data["ephemeral"] = True
        result = await self._mutation(_ACTIVITY, data, "agentActivityCreate")
        return str((result.get("agentActivity") or {}).get("id") or "")

    async def action(self, session_id: str, action: str, parameter: str, result: str | None = None) -> str:
        """An action activity: what the agent is doing (a tool it runs), and its result once known."""
        content: dict[str, Any] = {"type": "action", "action": action, "parameter": parameter}
        if result is not None:
            content["result"] = result
        answer = await self._mutation(_ACTIVITY, {"agentSessionId": session_id, "content": content},
                                      "agentActivityCreate")
        return str((answer.get("agentActivity") or {}).get("id") or "")

    async def comment(self, issue_id: str, body: str, parent_id: str | None = None) -> str:
        """A comment on an issue (a reply in `parent_id`'s thread); its id."""
        data: dict[str, Any] = {"issueId": issue_id, "body": body}
        if parent_id:
            data["parentId"] = parent_id
        result = await self._mutation(_COMMENT, data, "commentCreate")
        return str((result.get("comment") or {}).get("id") or "")

    async def react(self, comment_id: str, emoji: str) -> None:
        await self._mutation(_REACTION, {"commentId": comment_id, "emoji": emoji}, "reactionCreate")

    async def _mutation(self, query: str, data: dict[str, Any], name: str) -> dict[str, Any]:
        try:
            response = await self._http.post(self.url, json={"query": query, "variables": {"input": data}})
        except httpx.TransportError as exc:
            raise UpstreamError("linear", name, type(exc).__name__) from exc
        if response.status_code >= 300:
            raise UpstreamError("linear", name, f"HTTP {response.status_code}")
        try:
            answer = response.json()
        except ValueError:
            raise UpstreamError("linear", name, "not JSON") from None
        if not isinstance(answer, dict):
            raise UpstreamError("linear", name, "not a GraphQL answer")
        errors = answer.get("errors")
        if errors:
            first = errors[0] if isinstance(errors, list) and errors and isinstance(errors[0], dict) else {}
            code = (first.get("extensions") or {}).get("code") if isinstance(first.get("extensions"), dict) else None
            raise UpstreamError("linear", name, str(code or first.get("message") or "error")[:80])
        result = (answer.get("data") or {}).get(name) if isinstance(answer.get("data"), dict) else None
        if not isinstance(result, dict) or result.get("success") is not True:
            raise UpstreamError("linear", name, "success: false")
        return result
