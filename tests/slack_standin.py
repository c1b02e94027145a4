"""A loopback stand-in for the Slack Web API and for response_url endpoints.

    POST /api/{method}        chat.postMessage, chat.update, views.open, reactions.add,
                              usergroups.users.list: recorded, answered like Slack
    POST /response/{key}      a response_url: recorded, answered "ok" (a scripted failure:
                              HTTP 404 with the error, as Slack answers an expired or used-up URL)

Tests script failures with `fail(method, error)` and group membership with `groups`.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from relay.standin import Watched


@dataclass
class Call:
    method: str  # a Web API method, or "response:<key>"
    body: dict[str, Any]
    authorization: str = ""


@dataclass
class SlackStandIn(Watched):
    groups: dict[str, list[str]] = field(default_factory=dict)
    calls: list[Call] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.base_url = ""  # set by the fixture once the server listens
        self._failures: dict[str, list[str]] = {}
        self._ts = itertools.count(1)
        Watched.__init__(self)
        self.app = Starlette(routes=[
            Route("/api/{method}", self._api, methods=["POST"]),
            Route("/response/{key}", self._response, methods=["POST"]),
        ])

    @property
    def api_url(self) -> str:
        return f"{self.base_url}/api"

    def response_url(self, key: str) -> str:
        return f"{self.base_url}/response/{key}"

    @property
    def hooks_url(self) -> str:
        """What SLACK_HOOKS_URL is in tests: the prefix of this stand-in's response URLs."""
        return f"{self.base_url}/response/"

    def fail(self, method: str, error: str, times: int = 1) -> None:
        with self._changed:
            self._failures.setdefault(method, []).extend([error] * times)

    def of(self, method: str) -> list[Call]:
        with self._changed:
            return [c for c in self.calls if c.method == method]

    def responses(self, key: str) -> list[dict[str, Any]]:
        return [c.body for c in self.of(f"response:{key}")]

    def _record(self, call: Call) -> str | None:
        with self._changed:
            self.calls.append(call)
            failures = self._failures.get(call.method)
            failure = failures.pop(0) if failures else None
            self._changed.notify_all()
            return failure

    async def _api(self, request: Request) -> Response:
        method = request.path_params["method"]
        body = await request.json()
        failure = self._record(Call(method, body, request.headers.get("authorization", "")))
        if failure is not None:
            return JSONResponse({"ok": False, "error": failure})
        if method == "chat.postMessage":
            return JSONResponse({"ok": True, "channel": body.get("channel"), "ts": f"1700000000.{next(self._ts):06d}"})
        if method == "usergroups.users.list":
            return JSONResponse({"ok": True, "users": self.groups.get(body.get("usergroup", ""), [])})
        if method == "views.open":
            return JSONResponse({"ok": True, "view": {"id": "V0001"}})
        return JSONResponse({"ok": True})

    async def _response(self, request: Request) -> Response:
        key = f"response:{request.path_params['key']}"
        failure = self._record(Call(key, await request.json()))
        if failure is not None:
            return PlainTextResponse(failure, status_code=404)
        return PlainTextResponse("ok")
