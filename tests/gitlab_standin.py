"""A loopback stand-in for the parts of GitLab's REST API (v4) relay calls:

    GET  /api/v4/projects/{id}/members/all/{user}                          a member's access level (404: none)
    POST /api/v4/projects/{id}/{issues|merge_requests}/{iid}/notes/{note}/award_emoji
    POST /api/v4/projects/{id}/{issues|merge_requests}/{iid}/notes         a new note
    POST /api/v4/projects/{id}/{issues|merge_requests}/{iid}/discussions/{discussion}/notes   a reply
    PUT  /api/v4/projects/{id}/{issues|merge_requests}/{iid}/notes/{note}  an edit of relay's own note

Strict as GitLab: a wrong or missing PRIVATE-TOKEN is 401; an emoji awarded twice by the same
user is 404 ("Award Emoji Name has already been taken" is GitLab's 404 there); a note without a
body is 400. Tests set members' levels in `members` and script failures in `failures`.
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


@dataclass
class Award:
    project: int
    noteable: str
    iid: int
    note: int
    name: str


@dataclass
class GitLabNote:
    project: int
    noteable: str
    iid: int
    body: str
    discussion: str | None = None
    id: int = 0
    edits: list[str] = field(default_factory=list)  # earlier bodies, oldest first


@dataclass
class GitLabStandIn(Watched):
    token: str = "glpat-test-token"
    members: dict[tuple[int, int], int] = field(default_factory=dict)  # (project, user) → access level
    awards: list[Award] = field(default_factory=list)
    notes: list[GitLabNote] = field(default_factory=list)
    member_lookups: int = 0
    failures: list[int] = field(default_factory=list)  # statuses to answer next, in order (any call)

    def __post_init__(self) -> None:
        Watched.__init__(self)
        self.url = ""  # the instance URL, set by the fixture once the server listens
        self._ids = itertools.count(5000)
        thread = "/api/v4/projects/{project:int}/{noteable}/{iid:int}"
        self.app = Starlette(routes=[
            Route("/api/v4/projects/{project:int}/members/all/{user:int}", self._member, methods=["GET"]),
            Route(thread + "/notes/{note:int}/award_emoji", self._award, methods=["POST"]),
            Route(thread + "/notes", self._note, methods=["POST"]),
            Route(thread + "/discussions/{discussion}/notes", self._note, methods=["POST"]),
            Route(thread + "/notes/{note:int}", self._edit, methods=["PUT"]),
        ])

    def names(self) -> list[str]:
        with self._changed:
            return [a.name for a in self.awards]

    def _refused(self, request: Request) -> Response | None:
        with self._changed:
            if self.failures:
                status = self.failures.pop(0)
                self._changed.notify_all()
                return JSONResponse({"message": "scripted failure"}, status_code=status)
        if request.headers.get("private-token") != self.token:
            return JSONResponse({"message": "401 Unauthorized"}, status_code=401)
        if request.path_params.get("noteable", "issues") not in ("issues", "merge_requests"):
            return JSONResponse({"error": "404 Not Found"}, status_code=404)
        return None

    async def _member(self, request: Request) -> Response:
        if (refused := self._refused(request)) is not None:
            return refused
        p = request.path_params
        with self._changed:
            self.member_lookups += 1
            level = self.members.get((p["project"], p["user"]))
        if level is None:
            return JSONResponse({"message": "404 Not found"}, status_code=404)
        return JSONResponse({"id": p["user"], "username": f"user{p['user']}", "access_level": level, "state": "active"})

    async def _award(self, request: Request) -> Response:
        if (refused := self._refused(request)) is not None:
            return refused
        p, body = request.path_params, await request.json()
        award = Award(p["project"], p["noteable"], p["iid"], p["note"], str(body.get("name", "")))
        with self._changed:
            if award in self.awards:
                return JSONResponse({"message": "404 Award Emoji Name has already been taken"}, status_code=404)
            self.awards.append(award)
            self._changed.notify_all()
        return JSONResponse({"id": next(self._ids), "name": award.name}, status_code=201)

    async def _note(self, request: Request) -> Response:
        if (refused := self._refused(request)) is not None:
            return refused
        p, body = request.path_params, await request.json()
        text: Any = body.get("body")
        if not isinstance(text, str) or not text:
            return JSONResponse({"message": "400 Bad request - body is missing"}, status_code=400)
        with self._changed:
            note_id = next(self._ids)
            self.notes.append(GitLabNote(p["project"], p["noteable"], p["iid"], text, p.get("discussion"), note_id))
            self._changed.notify_all()
        return JSONResponse({"id": note_id, "body": text}, status_code=201)

    async def _edit(self, request: Request) -> Response:
        if (refused := self._refused(request)) is not None:
            return refused
        p, body = request.path_params, await request.json()
        with self._changed:
            found = next((n for n in self.notes if n.id == p["note"] and n.iid == p["iid"]), None)
            if found is None:
                return JSONResponse({"message": "404 Note Not Found"}, status_code=404)
            found.edits.append(found.body)
            found.body = str(body.get("body", ""))
            self._changed.notify_all()
        return JSONResponse({"id": found.id, "body": found.body})
