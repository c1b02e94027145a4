"""A loopback stand-in for the Slack Web API and for response_url endpoints.

    POST /api/{method}        chat.postMessage, chat.update, views.open, reactions.add,
                              usergroups.users.list: recorded, answered like Slack
                              conversations.replies and users.info (form-encoded, from `replies`
                              and `users`)
    POST /response/{key}      a response_url: recorded, answered "ok" (a scripted failure:
                              HTTP 404 with the error, as Slack answers an expired or used-up URL)
    GET  /files/{name}        a private file (`files`), only with the bot token
    POST /api/apps.connections.open   with the app token (`app_token`) only: a new URL of the
                              Socket Mode stand-in (`socket`, tests/socket_mode_standin.py)

Tests script failures with `fail(method, error)` and group membership with `groups`.
"""

from __future__ import annotations

import itertools
from urllib.parse import parse_qs
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from relay.standin import Watched
from tests.socket_mode_standin import SocketModeStandIn

APP_TOKEN = "xapp-1-A0RELAYTEST-1-standin"


@dataclass
class Call:
    method: str  # a Web API method, or "response:<key>"
    body: dict[str, Any]
    authorization: str = ""


@dataclass
class Message:
    """A message as it stands now: posted, then perhaps edited (chat.update)."""

    channel: str
    ts: str
    thread_ts: str | None
    body: dict[str, Any]
    edits: int = 0
    streaming: bool = False  # a chat.startStream message not yet stopped
    tasks: list[dict[str, Any]] = field(default_factory=list)  # a stream's task_update chunks, in order

    @property
    def text(self) -> str:
        return str(self.body.get("text", ""))


@dataclass
class SlackStandIn(Watched):
    groups: dict[str, list[str]] = field(default_factory=dict)
    calls: list[Call] = field(default_factory=list)
    messages: list[Message] = field(default_factory=list)
    replies: dict[tuple[str, str], list[dict[str, Any]]] = field(default_factory=dict)  # (channel, thread) →
    users: dict[str, str] = field(default_factory=dict)  # user id → display name
    files: dict[str, bytes] = field(default_factory=dict)  # name → content, served at /files/{name}
    streaming: bool = False  # answer chat.startStream (else unknown_method, as where it is not offered)
    socket: SocketModeStandIn | None = None  # where apps.connections.open sends Socket Mode clients
    app_token: str = APP_TOKEN

    def __post_init__(self) -> None:
        self.base_url = ""  # set by the fixture once the server listens
        self._failures: dict[str, list[str]] = {}
        self._ts = itertools.count(1)
        Watched.__init__(self)
        self.app = Starlette(routes=[
            Route("/api/{method}", self._api, methods=["POST"]),
            Route("/response/{key}", self._response, methods=["POST"]),
            Route("/files/{name}", self._file, methods=["GET"]),
        ])

    def file_url(self, name: str) -> str:
        return f"{self.base_url}/files/{name}"

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

    def thread(self, channel: str, thread_ts: str) -> list[Message]:
        """The messages posted in a thread, as they read now (edits applied), oldest first."""
        with self._changed:
            return [m for m in self.messages if m.channel == channel and m.thread_ts == thread_ts]

    def _record(self, call: Call) -> str | None:
        with self._changed:
            self.calls.append(call)
            failures = self._failures.get(call.method)
            failure = failures.pop(0) if failures else None
            self._changed.notify_all()
            return failure

    async def _api(self, request: Request) -> Response:
        method = request.path_params["method"]
        raw = await request.body()
        if request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
            body = {k: v[-1] for k, v in parse_qs(raw.decode()).items()}
        else:
            body = await request.json() if raw else {}
        authorization = request.headers.get("authorization", "")
        failure = self._record(Call(method, body, authorization))
        if failure is not None:
            return JSONResponse({"ok": False, "error": failure})
        if method == "apps.connections.open":
            return self._connections_open(authorization)
        if method == "chat.postMessage":
            ts = f"1700000000.{next(self._ts):06d}"
            with self._changed:
                self.messages.append(Message(str(body.get("channel")), ts, body.get("thread_ts"), dict(body)))
                self._changed.notify_all()
            return JSONResponse({"ok": True, "channel": body.get("channel"), "ts": ts})
        if method.startswith("chat.") and method.endswith("Stream"):
            return self._stream(method, body)
        if method == "chat.update":
            with self._changed:
                found = next((m for m in self.messages if m.channel == body.get("channel") and m.ts == body.get("ts")),
                             None)
                if found is None:
                    return JSONResponse({"ok": False, "error": "message_not_found"})
                found.body = {**found.body, **{k: v for k, v in body.items() if k not in ("channel", "ts")}}
                found.edits += 1
                self._changed.notify_all()
        if method == "conversations.replies":
            thread = self.replies.get((str(body.get("channel")), str(body.get("ts"))), [])
            latest = str(body.get("latest") or "9999999999")
            return JSONResponse({"ok": True, "has_more": False,
                                 "messages": [m for m in thread if str(m.get("ts", "")) < latest]})
        if method == "users.info":
            name = self.users.get(str(body.get("user")))
            if name is None:
                return JSONResponse({"ok": False, "error": "user_not_found"})
            return JSONResponse({"ok": True, "user": {"id": body.get("user"), "name": name.lower(),
                                                      "profile": {"display_name": name}}})
        if method == "usergroups.users.list":
            return JSONResponse({"ok": True, "users": self.groups.get(body.get("usergroup", ""), [])})
        if method == "views.open":
            return JSONResponse({"ok": True, "view": {"id": "V0001"}})
        return JSONResponse({"ok": True})

    def _connections_open(self, authorization: str) -> Response:
        """As Slack: an app-level token only (a bot token is the wrong type), then a fresh URL."""
        token = authorization.removeprefix("Bearer ")
        if not token.startswith("xapp-"):
            return JSONResponse({"ok": False, "error": "not_allowed_token_type" if token else "not_authed"})
        if token != self.app_token or self.socket is None:
            return JSONResponse({"ok": False, "error": "invalid_auth"})
        return JSONResponse({"ok": True, "url": self.socket.issue_url()})

    def _stream(self, method: str, body: dict[str, Any]) -> Response:
        with self._changed:
            if not self.streaming:
                return JSONResponse({"ok": False, "error": "unknown_method"})
            if method == "chat.startStream":
                if not body.get("thread_ts"):
                    return JSONResponse({"ok": False, "error": "invalid_arguments"})
                ts = f"1700000000.{next(self._ts):06d}"
                found = Message(str(body.get("channel")), ts, body["thread_ts"], {"text": ""}, streaming=True)
                self.messages.append(found)
                self._take_chunks(found, body)
                self._changed.notify_all()
                return JSONResponse({"ok": True, "channel": body.get("channel"), "ts": ts})
            found = next((m for m in self.messages if m.channel == body.get("channel") and m.ts == body.get("ts")
                          and m.streaming), None)
            if found is None:
                return JSONResponse({"ok": False, "error": "message_not_in_streaming_state"})
            self._take_chunks(found, body)
            found.edits += 1
            found.streaming = method != "chat.stopStream"
            self._changed.notify_all()
            return JSONResponse({"ok": True, "channel": found.channel, "ts": found.ts})

    @staticmethod
    def _take_chunks(message: Message, body: dict[str, Any]) -> None:
        """A stream call's markdown (the argument, or markdown_text chunks) and task updates."""
        text = str(body.get("markdown_text", ""))
        for chunk in body.get("chunks") or []:
            if chunk.get("type") == "markdown_text":
                text += str(chunk.get("text", ""))
            elif chunk.get("type") == "task_update":
                message.tasks.append({k: chunk.get(k) for k in ("id", "title", "status")})
        message.body["text"] = message.text + text

    async def _file(self, request: Request) -> Response:
        name = request.path_params["name"]
        self._record(Call(f"file:{name}", {}, request.headers.get("authorization", "")))
        if request.headers.get("authorization") != "Bearer xoxb-test-token" or name not in self.files:
            return PlainTextResponse("not found", status_code=404)
        return Response(self.files[name], media_type="text/plain")

    async def _response(self, request: Request) -> Response:
        key = f"response:{request.path_params['key']}"
        failure = self._record(Call(key, await request.json()))
        if failure is not None:
            return PlainTextResponse(failure, status_code=404)
        return PlainTextResponse("ok")
