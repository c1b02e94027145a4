"""The web process: a Starlette app built from each door's routes.

    POST /hooks/generic                    Standard Webhooks (web/generic.py)
    POST /slack/commands|events|interactions   Slack (web/slack.py)
    POST /github/webhook                   GitHub issue and pull-request comments (web/github.py)
    POST /linear/webhook                   Linear agent sessions and comments (web/linear.py)
    POST /gitlab/webhook                   GitLab notes on issues and merge requests (web/gitlab.py)
    POST /discord/interactions             Discord slash commands and approval buttons (web/discord.py)
    POST /hooks/mapped/{route}             any JSON webhook, mapped to a message by its route (web/mapped.py)
    POST /approvals                        post an approval card in Slack (web/approvals.py)
    /admin/…                               queue depths and dead letters (web/admin.py)
    GET  /healthz, /readyz                 liveness, and readiness (Redis answers)
    GET  /metrics                          Prometheus metrics, unauthenticated (RELAY_WEB_METRICS=off: 404)

A door whose secret is not configured is not served (404). Every refusal is a JSON
`{"error": reason}`; nothing is queued unless the whole request was accepted.
"""

from __future__ import annotations

import logging
import time
from typing import Callable

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from relay.cards import Cards
from relay.discord_api import DiscordApi
from relay.discord_cards import DiscordCards
from relay.errors import QueueUnavailable
from relay.github_api import GitHubApi
from relay.gitlab_api import GitLabApi
from relay.intake import Intake
from relay.linear_api import LinearApi
from relay.logs import fields
from relay.metrics import Metrics
from relay.queue import Queue
from relay.routing import Router
from relay.settings import Settings
from relay.slack_api import SlackApi
from relay.web import admin, approvals, discord, generic, github, gitlab, linear, mapped, slack
from relay.web.common import read_body

__all__ = ["create_app", "read_body"]

log = logging.getLogger("relay.web")


def create_app(settings: Settings, queue: Queue, *, slack_api: SlackApi | None = None,
               github_api: GitHubApi | None = None, clock: Callable[[], float] = time.time,
               metrics: Metrics | None = None, linear_api: LinearApi | None = None,
               gitlab_api: GitLabApi | None = None, discord_api: DiscordApi | None = None) -> Starlette:
    """`metrics`: the process's registry (`relay dev` shares one with its worker); else a new one."""
    metrics = metrics or Metrics()
    metrics.watch(queue)
    router = Router(settings.routes, settings.slack_fallback, settings.github_fallback)
    intake = Intake(queue)
    if slack_api is None and settings.slack_signing_secret is not None:
        slack_api = SlackApi(settings.slack_bot_token, base_url=settings.slack_api_base_url)
    cards = Cards(queue, slack_api, router, intake, clock) if slack_api and slack_api.can_post else None
    discord_cards = (DiscordCards(queue, discord_api, router, intake, clock)
                     if discord_api is not None and discord_api.can_post else None)

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        try:
            await queue.ping()
        except QueueUnavailable:
            return JSONResponse({"status": "redis unavailable"}, status_code=503)
        return JSONResponse({"status": "ready"})

    routes = [
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        *generic.routes(settings, intake, router, clock, metrics),
        *slack.routes(settings, intake, router, slack_api, cards, clock, metrics),
        *github.routes(settings, intake, router, github_api, clock, metrics),
        *linear.routes(settings, intake, router, linear_api, clock, metrics),
        *gitlab.routes(settings, intake, router, gitlab_api, clock, metrics),
        *discord.routes(settings, intake, router, discord_cards, clock, metrics),
        *mapped.routes(settings, intake, router, clock, metrics),
        *approvals.routes(settings, router, cards, metrics),
        *admin.routes(settings, queue, metrics),
        *([metrics.route()] if settings.web_metrics else []),
    ]
    async def server_error(request: Request, exc: Exception) -> Response:
        metrics.request("web", "error", "internal")
        log.error("internal error", exc_info=exc, extra=fields(path=request.url.path))
        return JSONResponse({"error": "internal error"}, status_code=500)

    return Starlette(routes=routes, exception_handlers={HTTPException: _http_error, Exception: server_error})


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    reason = {404: "not found", 405: "method not allowed"}.get(exc.status_code, exc.detail)
    return JSONResponse({"error": reason}, status_code=exc.status_code, headers=exc.headers)

