"""A loopback stand-in for the parts of Discord's REST API relay calls:

    PATCH /webhooks/{application}/{token}/messages/@original   edit the deferred answer
    POST  /webhooks/{application}/{token}                      a follow-up message
    POST  /channels/{channel}/messages                         a message as the bot (cards)
    PATCH /channels/{channel}/messages/{message}               edit it

Strict as Discord: an interaction's webhook takes only the tokens of interactions it was told
of (`interactions`, token → application) and only within 15 minutes of `answered_at` (then 401
"Invalid Webhook Token"); bot calls need `Authorization: Bot <token>`; content is at most 2,000
characters; a message with neither content nor components is 400; editing an unknown message is
404. Every accepted call is recorded.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from relay.standin import Watched

TOKEN_LIFETIME = 15 * 60


@dataclass
class DiscordCall:
    kind: str  # "edit_original", "follow_up", "post_message", "edit_message"
    where: str  # the token or channel
    data: dict[str, Any]


@dataclass
class DiscordStandIn(Watched):
    bot_token: str = "bot-token-for-tests"
    interactions: dict[str, tuple[str, float]] = field(default_factory=dict)  # token → (application, when)
    calls: list[DiscordCall] = field(default_factory=list)
    messages: dict[str, dict[str, Any]] = field(default_factory=dict)  # message id → its latest data
    refused: list[str] = field(default_factory=list)
    clock: Callable[[], float] = time.time

    def __post_init__(self) -> None:
        Watched.__init__(self)
        self.base_url = ""  # set by the fixture once the server listens
        self._ids = itertools.count(2000000000000000000)
        self.app = Starlette(routes=[
            Route("/webhooks/{application}/{token}/messages/@original", self._edit_original, methods=["PATCH"]),
            Route("/webhooks/{application}/{token}", self._follow_up, methods=["POST"]),
            Route("/channels/{channel}/messages", self._post, methods=["POST"]),
            Route("/channels/{channel}/messages/{message}", self._edit, methods=["PATCH"]),
        ])

    def interaction(self, application: str, token: str) -> None:
        """Discord received an interaction with this token (it answers relay's calls for 15 minutes)."""
        self.interactions[token] = (application, self.clock())

    def kinds(self) -> list[str]:
        with self._changed:
            return [c.kind for c in self.calls]

    def _refuse(self, why: str, status: int) -> Response:
        with self._changed:
            self.refused.append(why)
            self._changed.notify_all()
        return JSONResponse({"message": why, "code": 0}, status_code=status)

    def _webhook_refusal(self, request: Request) -> Response | None:
        p = request.path_params
        known = self.interactions.get(p["token"])
        if known is None or known[0] != p["application"] or self.clock() - known[1] > TOKEN_LIFETIME:
            return self._refuse("Invalid Webhook Token", 401)
        return None

    def _content_refusal(self, data: Any) -> Response | None:
        if not isinstance(data, dict):
            return self._refuse("Cannot send an empty message", 400)
        content = data.get("content")
        if content is not None and (not isinstance(content, str) or len(content) > 2000):
            return self._refuse("content: Must be 2000 or fewer in length.", 400)
        if not content and not data.get("components") and "components" not in data:
            return self._refuse("Cannot send an empty message", 400)
        return None

    def _record(self, kind: str, where: str, data: dict[str, Any], message_id: str | None = None) -> Response:
        message_id = message_id or str(next(self._ids))
        with self._changed:
            self.calls.append(DiscordCall(kind, where, data))
            self.messages[message_id] = data
            self._changed.notify_all()
        return JSONResponse({"id": message_id, **data})

    async def _edit_original(self, request: Request) -> Response:
        data = await request.json()
        refused = self._webhook_refusal(request) or self._content_refusal(data)
        return refused or self._record("edit_original", request.path_params["token"], data,
                                       f"original-{request.path_params['token'][-6:]}")

    async def _follow_up(self, request: Request) -> Response:
        data = await request.json()
        refused = self._webhook_refusal(request) or self._content_refusal(data)
        return refused or self._record("follow_up", request.path_params["token"], data)

    async def _post(self, request: Request) -> Response:
        if request.headers.get("authorization") != f"Bot {self.bot_token}":
            return self._refuse("401: Unauthorized", 401)
        data = await request.json()
        return self._content_refusal(data) or self._record("post_message", request.path_params["channel"], data)

    async def _edit(self, request: Request) -> Response:
        if request.headers.get("authorization") != f"Bot {self.bot_token}":
            return self._refuse("401: Unauthorized", 401)
        if request.path_params["message"] not in self.messages:
            return self._refuse("Unknown Message", 404)
        data = await request.json()
        return self._content_refusal(data) or self._record("edit_message", request.path_params["channel"], data,
                                                           request.path_params["message"])
