"""A loopback stand-in for the parts of GitHub's REST API relay calls: reactions on comments,
new issue/PR comments, replies in a review thread, and edits of relay's own comments."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from relay.standin import Watched


@dataclass
class Reaction:
    repository: str
    api: str  # "issues" or "pulls"
    comment_id: int
    content: str
    authorization: str


@dataclass
class Comment:
    repository: str
    number: int
    body: str
    in_reply_to: int | None = None  # a review comment's reply: the comment it answers
    id: int = 0
    api: str = "issues"  # where it lives: "issues" (a conversation comment) or "pulls" (a review reply)
    edits: list[str] = field(default_factory=list)  # earlier bodies, oldest first


@dataclass
class GitHubStandIn(Watched):
    reactions: list[Reaction] = field(default_factory=list)
    comments: list[Comment] = field(default_factory=list)
    failures: list[int] = field(default_factory=list)  # statuses to answer next, in order (any call)

    def __post_init__(self) -> None:
        self.base_url = ""
        Watched.__init__(self)
        self.app = Starlette(routes=[
            Route("/repos/{owner}/{repo}/{api}/comments/{comment_id:int}/reactions", self._react, methods=["POST"]),
            Route("/repos/{owner}/{repo}/issues/{number:int}/comments", self._comment, methods=["POST"]),
            Route("/repos/{owner}/{repo}/pulls/{number:int}/comments/{comment_id:int}/replies", self._comment,
                  methods=["POST"]),
            Route("/repos/{owner}/{repo}/{api}/comments/{comment_id:int}", self._edit, methods=["PATCH"]),
        ])

    def comment(self, comment_id: int) -> Comment:
        with self._changed:
            return next(c for c in self.comments if c.id == comment_id)

    def contents(self) -> list[str]:
        with self._changed:
            return [r.content for r in self.reactions]

    async def _react(self, request: Request) -> Response:
        body: dict[str, Any] = await request.json()
        p = request.path_params
        with self._changed:
            self.reactions.append(Reaction(f"{p['owner']}/{p['repo']}", p["api"], p["comment_id"],
                                           body.get("content", ""), request.headers.get("authorization", "")))
            status = self.failures.pop(0) if self.failures else 201
            self._changed.notify_all()
        return JSONResponse({"id": len(self.reactions), "content": body.get("content")}, status_code=status)

    async def _comment(self, request: Request) -> Response:
        body: dict[str, Any] = await request.json()
        p = request.path_params
        with self._changed:
            status = self.failures.pop(0) if self.failures else 201
            comment_id = 1000 + len(self.comments) + 1
            if status < 300:
                self.comments.append(Comment(f"{p['owner']}/{p['repo']}", p["number"], str(body.get("body", "")),
                                             p.get("comment_id"), comment_id,
                                             "pulls" if "comment_id" in p else "issues"))
            self._changed.notify_all()
        return JSONResponse({"id": comment_id}, status_code=status)

    async def _edit(self, request: Request) -> Response:
        body: dict[str, Any] = await request.json()
        p = request.path_params
        with self._changed:
            status = self.failures.pop(0) if self.failures else 200
            found = next((c for c in self.comments if c.id == p["comment_id"] and c.api == p["api"]), None)
            if found is None:
                status = 404
            elif status < 300:
                found.edits.append(found.body)
                found.body = str(body.get("body", ""))
            self._changed.notify_all()
        return JSONResponse({"id": p["comment_id"]}, status_code=status)
