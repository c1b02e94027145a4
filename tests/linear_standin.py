"""A loopback stand-in for the parts of Linear's GraphQL API relay calls, as strict as Linear
about what it takes:

    POST /graphql   agentActivityCreate, commentCreate, reactionCreate (one mutation a request)

It refuses (as Linear does, with a GraphQL `errors` answer) a missing or wrong Authorization, an
unknown mutation, an activity whose content type is not one of Linear's, a response or thought
without a body, an action without `action` and `parameter`, and an activity for a session it
does not know (tests list the sessions Linear made). Every accepted call is recorded.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from relay.standin import Watched

ACTIVITY_TYPES = {"thought", "action", "response", "error", "elicitation"}


@dataclass
class Activity:
    session: str
    type: str
    body: str
    content: dict[str, Any]
    ephemeral: bool = False


@dataclass
class LinearComment:
    issue: str
    body: str
    parent: str | None = None


@dataclass
class LinearStandIn(Watched):
    token: str = "lin_api_test_key"
    sessions: set[str] = field(default_factory=set)
    activities: list[Activity] = field(default_factory=list)
    comments: list[LinearComment] = field(default_factory=list)
    reactions: list[tuple[str, str]] = field(default_factory=list)  # (comment id, emoji)
    refused: list[str] = field(default_factory=list)  # why each refused call was refused
    failures: list[int] = field(default_factory=list)  # HTTP statuses to answer next, in order

    def __post_init__(self) -> None:
        Watched.__init__(self)
        self.url = ""  # set by the fixture once the server listens
        self._ids = itertools.count(1)
        self.app = Starlette(routes=[Route("/graphql", self._graphql, methods=["POST"])])

    def kinds(self) -> list[str]:
        with self._changed:
            return [a.type for a in self.activities]

    async def _graphql(self, request: Request) -> Response:
        with self._changed:
            if self.failures:
                status = self.failures.pop(0)
                self._changed.notify_all()
                return JSONResponse({"errors": [{"message": "scripted failure"}]}, status_code=status)
        expected = self.token if self.token.startswith("lin_api_") else f"Bearer {self.token}"
        if request.headers.get("authorization") != expected:
            return self._refuse("authentication", 400)
        try:
            body = await request.json()
            query, data = body["query"], body["variables"]["input"]
        except (ValueError, KeyError, TypeError):
            return self._refuse("not a GraphQL request", 400)
        if "agentActivityCreate" in query:
            return self._activity(data)
        if "commentCreate" in query:
            return self._record(lambda: self.comments.append(LinearComment(data["issueId"], data["body"],
                                                                            data.get("parentId"))),
                                "commentCreate", {"comment": {"id": f"comment-{next(self._ids)}"}})
        if "reactionCreate" in query:
            return self._record(lambda: self.reactions.append((data["commentId"], data["emoji"])),
                                "reactionCreate", {})
        return self._refuse("unknown mutation", 400)

    def _activity(self, data: dict[str, Any]) -> Response:
        content = data.get("content") if isinstance(data.get("content"), dict) else {}
        kind = content.get("type")
        if data.get("agentSessionId") not in self.sessions:
            return self._refuse("Entity not found: AgentSession", 200)
        if kind not in ACTIVITY_TYPES:
            return self._refuse(f"invalid activity type {kind!r}", 200)
        if kind == "action" and not (content.get("action") and "parameter" in content):
            return self._refuse("an action needs action and parameter", 200)
        if kind != "action" and not (isinstance(content.get("body"), str) and content["body"]):
            return self._refuse(f"a {kind} needs a body", 200)
        activity = Activity(data["agentSessionId"], kind, str(content.get("body", "")), content,
                            bool(data.get("ephemeral")))
        return self._record(lambda: self.activities.append(activity), "agentActivityCreate",
                            {"agentActivity": {"id": f"activity-{next(self._ids)}"}})

    def _record(self, append: Any, name: str, extra: dict[str, Any]) -> Response:
        with self._changed:
            append()
            self._changed.notify_all()
        return JSONResponse({"data": {name: {"success": True, **extra}}})

    def _refuse(self, why: str, status: int) -> Response:
        with self._changed:
            self.refused.append(why)
            self._changed.notify_all()
        return JSONResponse({"errors": [{"message": why, "extensions": {"code": "INVALID_INPUT"}}]},
                            status_code=status)
