"""POST /gitlab/webhook: what is queued, what is ignored, and what GitLab is told."""

from __future__ import annotations

import json
import uuid
from dataclasses import replace
from typing import Any, AsyncIterator, Iterator

import httpx
import pytest

from relay.door_rules import GitLabRule
from relay.gitlab_api import GitLabApi
from relay.queue import Queue
from relay.routing import Destination, Route
from relay.settings import Settings
from relay.web import create_app
from tests.conftest import DEVICE
from tests.gitlab_standin import GitLabStandIn
from tests.sources.test_gitlab import sample
from tests.support import ServerThread
from tests.web.test_github import queued

pytestmark = pytest.mark.anyio
TOKEN = "gitlab-shared-webhook-token"
TENANT_TOKEN = "gitlab-token-of-the-acme-group"


@pytest.fixture
def gitlab_stand_in() -> Iterator[GitLabStandIn]:
    standin = GitLabStandIn(members={(5, 1): 40, (5, 8): 20})
    with ServerThread(standin.app) as server:
        standin.url = server.url
        yield standin


@pytest.fixture
def gitlab_settings(settings: Settings, gitlab_stand_in: GitLabStandIn) -> Settings:
    test = Route("gitlab-test", Destination(agent_id="agent-gl", device_id=DEVICE),
                 gitlab=GitLabRule(projects=("gitlab-org/gitlab-test",), approvers=("root",)))
    acme = Route("acme", Destination(agent_id="agent-acme", device_id=DEVICE),
                 gitlab=GitLabRule(projects=("acme/*",), access_level=0, secret=TENANT_TOKEN.encode()))
    return replace(settings, routes=(*settings.routes, test, acme), gitlab_webhook_token=TOKEN.encode(),
                   gitlab_token=gitlab_stand_in.token, gitlab_url=gitlab_stand_in.url)


@pytest.fixture
async def http(queue: Queue, gitlab_settings: Settings, gitlab_stand_in: GitLabStandIn
               ) -> AsyncIterator[httpx.AsyncClient]:
    api = GitLabApi(gitlab_stand_in.token, url=gitlab_stand_in.url)
    app = create_app(gitlab_settings, queue, gitlab_api=api)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://relay") as client:
        yield client
    await api.aclose()


async def deliver(http: httpx.AsyncClient, data: dict[str, Any] | bytes, *, token: str = TOKEN,
                  **headers: str) -> httpx.Response:
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    sent = {"content-type": "application/json", "x-gitlab-event": "Note Hook", "x-gitlab-token": token,
            "x-gitlab-event-uuid": str(uuid.uuid4()), "x-gitlab-webhook-uuid": str(uuid.uuid4()), **headers}
    return await http.post("/gitlab/webhook", content=raw, headers=sent)


async def test_a_note_with_the_trigger_reaches_the_agent_and_gets_eyes(
        http: httpx.AsyncClient, queue: Queue, gitlab_stand_in: GitLabStandIn) -> None:
    answer = await deliver(http, sample("note.issue.json"))
    assert answer.status_code == 202 and answer.json()["duplicate"] is False
    [envelope] = await queued(queue)
    assert envelope.route == "gitlab-test" and "gitlab-org/gitlab-test#17" in envelope.message["content"]
    assert gitlab_stand_in.wait_for(lambda s: s.names() == ["eyes"], 5)
    assert gitlab_stand_in.awards[0].note == 1241 and gitlab_stand_in.awards[0].noteable == "issues"


async def test_a_redelivery_under_new_unsigned_headers_sends_nothing_new(http: httpx.AsyncClient,
                                                                         queue: Queue) -> None:
    data = sample("note.issue.json")
    first = await deliver(http, data)
    again = await deliver(http, data, **{"x-gitlab-event": "Issue Hook", "x-gitlab-instance": "https://elsewhere"})
    assert first.status_code == again.status_code == 202 and again.json()["duplicate"] is True
    assert again.json()["client_message_ids"] == first.json()["client_message_ids"]
    assert len(await queued(queue)) == 1


async def test_an_approver_mention_and_decision_are_queued_together(http: httpx.AsyncClient, queue: Queue) -> None:
    answer = await deliver(http, sample("note.merge_request.json"))
    assert answer.status_code == 202 and len(answer.json()["client_message_ids"]) == 2
    kinds = sorted(e.kind for e in await queued(queue))
    assert kinds == ["approval", "user"]


async def test_a_member_below_the_access_level_does_not_reach_the_agent(
        http: httpx.AsyncClient, queue: Queue, gitlab_stand_in: GitLabStandIn) -> None:
    data = sample("note.issue.json")
    data["user"].update(id=8, username="reporter")
    answer = await deliver(http, data)
    assert answer.status_code == 200 and "access level 20" in answer.json()["ignored"]
    data["user"].update(id=99, username="stranger")
    answer = await deliver(http, data)
    assert "access level 0" in answer.json()["ignored"]
    assert await queued(queue) == [] and gitlab_stand_in.member_lookups == 2


async def test_decision_lines_from_a_member_who_is_no_approver_are_not_decisions(
        http: httpx.AsyncClient, queue: Queue, gitlab_stand_in: GitLabStandIn) -> None:
    gitlab_stand_in.members[(5, 8)] = 30
    data = sample("note.merge_request.json")
    data["user"].update(id=8, username="dev")
    answer = await deliver(http, data)
    assert answer.status_code == 202
    assert [e.kind for e in await queued(queue)] == ["user"]


async def test_gitlab_unreachable_for_the_access_level_is_503_and_queues_nothing(
        http: httpx.AsyncClient, queue: Queue, gitlab_stand_in: GitLabStandIn) -> None:
    gitlab_stand_in.failures.append(502)
    answer = await deliver(http, sample("note.issue.json"))
    assert answer.status_code == 503 and answer.headers["retry-after"]
    assert await queued(queue) == []


async def test_a_groups_own_token_speaks_for_it_and_for_no_one_else(http: httpx.AsyncClient, queue: Queue) -> None:
    data = sample("note.issue.json")
    data["project"]["path_with_namespace"] = "acme/shop"
    assert (await deliver(http, data, token=TOKEN)).status_code == 401
    assert (await deliver(http, data, token=TENANT_TOKEN)).status_code == 202
    assert (await deliver(http, sample("note.issue.json"), token=TENANT_TOKEN)).status_code == 401
    assert [e.route for e in await queued(queue)] == ["acme"]


@pytest.mark.parametrize("change, reason", [
    (lambda d: d["object_attributes"].update(note="just a note"), "no @agent"),
    (lambda d: d["object_attributes"].update(system=True), "system note"),
    (lambda d: d["object_attributes"].update(action="update", updated_at="2015-05-17 17:10:00 UTC"),
     "'update' is not enabled"),
    (lambda d: d["project"].update(path_with_namespace="other/project"), "not routed"),
    (lambda d: d.update(object_kind="push"), "object_kind"),
])
async def test_what_must_not_reach_an_agent_is_acknowledged_and_ignored(change: Any, reason: str,
                                                                       http: httpx.AsyncClient, queue: Queue) -> None:
    data = sample("note.issue.json")
    change(data)
    answer = await deliver(http, data)
    assert answer.status_code == 200 and reason in answer.json()["ignored"]
    assert await queued(queue) == []


@pytest.mark.parametrize("problem, status", [("no token", 401), ("wrong token", 401), ("huge token", 401),
                                             ("not json", 400), ("odd project", 400), ("too large", 413)])
async def test_bad_deliveries_are_refused_and_queue_nothing(problem: str, status: int, http: httpx.AsyncClient,
                                                           queue: Queue) -> None:
    data = sample("note.issue.json")
    raw, token = json.dumps(data).encode(), TOKEN
    headers: dict[str, str] = {}
    if problem == "no token":
        headers["x-gitlab-token"] = ""
    elif problem == "wrong token":
        token = "nope"
    elif problem == "huge token":
        token = "t" * 5000
    elif problem == "not json":
        raw = b"{not json"
    elif problem == "odd project":
        data["issue"]["iid"] = "17"
        raw = json.dumps(data).encode()
    elif problem == "too large":
        raw = b" " * (2 * 1024 * 1024)
    answer = await deliver(http, raw, token=token, **headers)
    assert answer.status_code == status, answer.text
    assert await queued(queue) == []
