"""POST /github/webhook: issue and pull-request comments → messages for the routed agent.

Trust before anything is read: the signature header's shape is checked before the body is
read; the body is verified with the secret of the route its repository goes to (a route's
own `secret_env`, else GITHUB_WEBHOOK_SECRET), so one tenant's secret cannot sign for
another's repositories.

Safety before anything is queued: the action must be one the route accepts (default:
created), the comment's author must be who did it (`sender`: an edit by someone else is
never an approver's words), bots and relay's own comments never reach an agent, the
author's author_association must be allowed (default OWNER, MEMBER, COLLABORATOR), and
/approve or /deny lines count only from the route's approvers. Everything a comment yields
is queued in one atomic step. With GITHUB_TOKEN, relay reacts 👀 once queued.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any, Callable

from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from relay.errors import BadRequest, BadSignature, NoRoute, UpstreamError
from relay.github_api import GitHubApi
from relay.intake import Intake, Queued
from relay.logs import fields
from relay.messages import Inbound, envelope_for
from relay.metrics import Metrics
from relay.routing import GitHubRule, Route as Destinations, Router
from relay.settings import Settings
from relay.sources import github as source
from relay.sources.github import Comment, Delivery, Ignored, Ping
from relay.web.common import count_queued, guarded, ignore, read_body, unavailable

log = logging.getLogger("relay.web.github")


def admitted(comment: Comment, rule: GitHubRule, delivery: Delivery) -> list[Inbound] | str:
    """What a comment becomes under a route's rule, or why it is ignored."""
    if comment.action not in rule.actions:
        return f"comment action {comment.action!r} is not enabled for this route"
    if not comment.by_its_author:
        return (f"comment {comment.action} by {comment.sender or 'an unnamed sender'}, "
                f"not by its author {comment.author}")
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
    if not settings.serves_github:
        return []
    shared = settings.github_webhook_secret

    def ignored(delivery: Delivery, reason: str) -> Response:
        return ignore(metrics, source.SOURCE, reason, delivery.delivery_id)

    async def webhook(request: Request) -> Response:
        source.signature_of(request.headers)  # before the body is read
        delivery = Delivery.from_headers(request.headers)
        body = await read_body(request, settings.max_body_bytes)
        data, route = verified(request, body)
        event = source.parse_payload(data, delivery)
        if isinstance(event, Ping):
            return JSONResponse({"ok": True, "zen": event.zen})
        if isinstance(event, Ignored):
            return ignored(delivery, event.reason)
        if route is None:
            return ignored(delivery, f"repository {event.repository} is not routed to an agent")
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

    def verified(request: Request, body: bytes) -> tuple[dict[str, Any], Destinations | None]:
        """The payload, verified with the secret of the route it claims (read only to choose
        the secret), and that route (None: not routed)."""
        problem: BadRequest | None = None
        try:
            data = source.payload(request.headers, body)
        except BadRequest as exc:  # still verified first: an unsigned body gets a 401, not a 400
            data, problem = {}, exc
        repository, owner = source.claimed(data)
        secret = router.github_secret(repository, owner) or shared
        if secret is None:
            raise BadSignature("no webhook secret is configured for the repository this delivery names")
        source.verify(request.headers, body, secret)
        if problem is not None:
            raise problem
        route = None
        if repository is not None:
            with contextlib.suppress(NoRoute):
                route = router.for_github(repository)
        return data, route

    return [Route("/github/webhook", guarded(source.SOURCE, webhook, metrics, "x-github-delivery"), methods=["POST"])]


async def eyes(github: GitHubApi, comment: Comment) -> None:
    reply: dict[str, Any] = comment.reply()
    try:
        await github.react(reply["repository"], reply["comment_id"], reply["api"], "eyes")
    except UpstreamError as exc:
        log.warning("could not react on GitHub", extra=fields(repository=comment.repository, error=exc.code))
    except Exception as exc:  # after the answer: nobody to tell but the log, and it must not raise
        log.error("could not react on GitHub", exc_info=exc, extra=fields(error=type(exc).__name__))
