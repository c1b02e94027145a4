"""POST /gitlab/webhook: notes on issues and merge requests → messages for the routed agent.

Trust before anything is read: the token header's shape is checked before the body is read;
the token must be the one of the route the note's project goes to (a route's own
`secret_env`, else GITLAB_WEBHOOK_TOKEN), so one tenant's token cannot speak for another's
projects.

Safety before anything is queued, as for GitHub: the action must be one the route accepts
(default: create), system notes, bots and relay's own notes never reach an agent, the author
must be a member with at least the route's access level (asked of GitLab's API with
GITLAB_TOKEN: the payload does not say; GitLab unreachable → 503, GitLab retries), and
/approve or /deny lines count only from the route's approvers. Everything a note yields is
queued in one atomic step; relay then awards 👀 to the note.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from relay.door_rules import GitLabRule, pick_gitlab
from relay.errors import BadRequest, BadSignature, NoRoute, UpstreamError
from relay.gitlab_api import GitLabApi
from relay.intake import Intake, Queued
from relay.logs import fields
from relay.messages import Inbound, envelope_for
from relay.metrics import Metrics
from relay.routing import Route as Destinations
from relay.routing import Router
from relay.settings import Settings
from relay.sources import gitlab as source
from relay.sources.gitlab import Ignored, Note
from relay.sources.payloads import json_object
from relay.web.common import count_queued, guarded, ignore, read_body, unavailable

log = logging.getLogger("relay.web.gitlab")


def admitted(note: Note, rule: GitLabRule, access_level: int) -> list[Inbound] | str:
    """What a note becomes under a route's rule (the author's access level known), or why not."""
    if note.action not in rule.actions:
        return f"note action {note.action!r} is not enabled for this route"
    if note.written_by_a_bot:
        return "a system note, a bot's, or relay's own"
    if access_level < rule.access_level:
        return f"@{note.author} has access level {access_level}, below the route's {rule.access_level}"
    inbounds: list[Inbound] = []
    if note.has_decisions():
        if note.author.lower() in {a.lower() for a in rule.approvers}:
            inbounds += note.decisions()
        else:
            log.warning("approval lines from a non-approver ignored",
                        extra=fields(source=source.SOURCE, delivery_id=str(note.note_id), author=note.author))
    if note.mentions(rule.trigger):
        inbounds.append(note.message())
    return inbounds or f"no {rule.trigger} and no decision from an approver"


def routes(settings: Settings, intake: Intake, router: Router, gitlab: GitLabApi | None,
           clock: Callable[[], float], metrics: Metrics) -> list[Route]:
    if not any(r.gitlab for r in settings.routes):
        return []
    shared = settings.gitlab_webhook_token

    def ignored(reason: str, delivery: str | None = None) -> Response:
        return ignore(metrics, source.SOURCE, reason, delivery)

    def verified(request: Request, body: bytes) -> tuple[dict[str, Any], Destinations | None]:
        """The payload, its token checked against the route it claims (read only to choose it)."""
        try:
            data: dict[str, Any] | None = json_object(body)
        except BadRequest as exc:
            data, problem = None, exc
        project = source.claimed(data) if data is not None else None
        route = None
        if project is not None:
            try:
                route = pick_gitlab(router.routes, project)
            except NoRoute:
                pass
        secret = (route.gitlab.secret if route and route.gitlab else None) or shared
        if secret is None:
            raise BadSignature("no webhook token is configured for the project this delivery names")
        source.verify(request.headers, secret)
        if data is None:
            raise problem
        return data, route

    async def webhook(request: Request) -> Response:
        source.token_of(request.headers)  # before the body is read
        body = await read_body(request, settings.max_body_bytes)
        data, route = verified(request, body)
        note = source.parse(data)
        if isinstance(note, Ignored):
            return ignored(note.reason)
        if route is None or route.gitlab is None:
            return ignored(f"project {note.project} is not routed to an agent", str(note.note_id))
        level = 0
        if route.gitlab.access_level:
            if gitlab is None:
                return ignored("GITLAB_TOKEN is not set: relay cannot read the author's access level")
            try:
                level = await gitlab.access_level(note.project_id, note.author_id)
            except UpstreamError as exc:
                log.warning("could not read the author's access level",
                            extra=fields(source=source.SOURCE, delivery_id=str(note.note_id), error=exc.code))
                metrics.request(source.SOURCE, "unavailable")
                return JSONResponse({"error": "GitLab did not say who the author is; retry later"},
                                    status_code=503, headers={"Retry-After": "30"})
        inbounds = admitted(note, route.gitlab, level)
        if isinstance(inbounds, str):
            return ignored(inbounds, str(note.note_id))
        results = await intake.enqueue_all([envelope_for(i, route, clock()) for i in inbounds])
        count_queued(metrics, source.SOURCE, results)
        if Queued.UNAVAILABLE in results:
            return unavailable()
        background = BackgroundTask(eyes, gitlab, note) if gitlab and Queued.QUEUED in results else None
        return JSONResponse({"client_message_ids": [i.client_message_id for i in inbounds],
                             "duplicate": all(r is Queued.DUPLICATE for r in results)},
                            status_code=202, background=background)

    return [Route("/gitlab/webhook", guarded(source.SOURCE, webhook, metrics, "x-gitlab-event-uuid"),
                  methods=["POST"])]


async def eyes(gitlab: GitLabApi, note: Note) -> None:
    try:
        await gitlab.award(note.project_id, note.noteable, note.iid, note.note_id, "eyes")
    except UpstreamError as exc:
        log.warning("could not award on GitLab", extra=fields(source=source.SOURCE, error=exc.code))
    except Exception as exc:  # after the answer: nobody to tell but the log, and it must not raise
        log.error("could not award on GitLab", exc_info=exc, extra=fields(error=type(exc).__name__))
