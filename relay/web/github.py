"""POST /github/webhook: issue and pull-request comments → messages for the routed agent.

Safety before anything is queued: the action must be one the route accepts (default:
created), bots and relay's own comments never reach an agent, the author's
author_association must be allowed (default OWNER, MEMBER, COLLABORATOR), and /approve or
/deny lines count only from the route's approvers. Everything a comment yields is queued in
one atomic step. With GITHUB_TOKEN, relay reacts 👀 once queued.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from relay.errors import NoRoute, UpstreamError
from relay.github_api import GitHubApi
from relay.intake import Intake, Queued
from relay.logs import fields
from relay.messages import Inbound, envelope_for
from relay.metrics import Metrics
from relay.routing import GitHubRule, Router
from relay.settings import Settings
from relay.sources import github as source
from relay.sources.github import Comment, Delivery, Ignored, Ping
from relay.web.common import count_queued, guarded, read_body, unavailable

log = logging.getLogger("relay.web.github")


def admitted(comment: Comment, rule: GitHubRule, delivery: Delivery) -> list[Inbound] | str:
    """What a comment becomes under a route's rule, or why it is ignored."""
    if comment.action not in rule.actions:
        return f"comment action {comment.action!r} is not enabled for this route"
    if comment.written_by_a_bot:
        return "written by a bot"
    if comment.association not in rule.associations:
        return f"author association {comment.association} is not allowed"
    inbounds: list[Inbound] = []
    if comment.has_decisions():
        if comment.author.lower() in {a.lower() for a in rule.approvers}:
            inbounds += comment.decisions(delivery)
        else:
            log.warning("approval lines from a non-approver ignored",
                        extra=fields(source="github", delivery_id=delivery.delivery_id, author=comment.author))
    if comment.mentions(rule.trigger):
        inbounds.append(comment.message(delivery))
    return inbounds or f"no {rule.trigger} and no decision from an approver"


def routes(settings: Settings, intake: Intake, router: Router, github: GitHubApi | None,
           clock: Callable[[], float], metrics: Metrics) -> list[Route]:
    secret = settings.github_webhook_secret
    if secret is None:
        return []

    def ignored(delivery: Delivery, reason: str) -> Response:
        log.info("ignored", extra=fields(source="github", delivery_id=delivery.delivery_id, reason=reason))
        metrics.request(source.SOURCE, "ignored")
        return JSONResponse({"ignored": reason})

    async def webhook(request: Request) -> Response:
        body = await read_body(request, settings.max_body_bytes)
        source.verify(request.headers, body, secret)
        delivery = Delivery.from_headers(request.headers)
        event = source.parse(request.headers, body, delivery)
        if isinstance(event, Ping):
            return JSONResponse({"ok": True, "zen": event.zen})
        if isinstance(event, Ignored):
            return ignored(delivery, event.reason)
        try:
            route = router.for_github(event.repository)
        except NoRoute as exc:
            return ignored(delivery, exc.reason)
        rule = route.github or GitHubRule(repositories=())  # a fallback route without rules: defaults
        inbounds = admitted(event, rule, delivery)
        if isinstance(inbounds, str):
            return ignored(delivery, inbounds)
        results = await intake.enqueue_all([envelope_for(i, route, clock()) for i in inbounds])
        count_queued(metrics, source.SOURCE, results)
        if Queued.UNAVAILABLE in results:
            return unavailable()
        answer = {"client_message_ids": [i.client_message_id for i in inbounds],
                  "duplicate": all(r is Queued.DUPLICATE for r in results)}
        background = None
        if github is not None and Queued.QUEUED in results:
            background = BackgroundTask(eyes, github, event)
        return JSONResponse(answer, status_code=202, background=background)

    return [Route("/github/webhook", guarded(source.SOURCE, webhook, metrics, "x-github-delivery"), methods=["POST"])]


async def eyes(github: GitHubApi, comment: Comment) -> None:
    reply: dict[str, Any] = comment.reply()
    try:
        await github.react(reply["repository"], reply["comment_id"], reply["api"], "eyes")
    except UpstreamError as exc:
        log.warning("could not react on GitHub", extra=fields(repository=comment.repository, error=exc.code))
