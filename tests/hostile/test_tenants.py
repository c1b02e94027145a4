"""GitHub, as a tenant who turned attacker would try it: words put in an approver's mouth by an
edit (or any other action) someone else made, and payloads for another organization signed
with one's own per-route secret. Every forgery is answered (a 2xx for the one GitHub signed,
a 401 for the other) and nothing is queued."""

from __future__ import annotations

import copy
import json
from dataclasses import replace
from typing import Any, AsyncIterator

import fakeredis
import httpx
import pytest

from relay.queue import Queue
from relay.routing import Destination, GitHubRule, Route
from relay.sources import github
from relay.web import create_app
from tests.hostile.doors import COMMENT, GITHUB_SECRET, client, keys, settings

pytestmark = pytest.mark.anyio
ACME, GLOBEX = b"acme-tenant-secret-0123456789", b"globex-tenant-secret-0123456789"
EVENTS = ["issue_comment", "pull_request_review_comment"]
ACTIONS = ["created", "edited", "deleted"]


def tenant(owner: str, secret: bytes | None, approver: str) -> Route:
    return Route(owner, Destination(agent_id=f"agent-{owner}", device_id="d"),
                 github=GitHubRule(repositories=(f"{owner}/*",), approvers=(approver,), actions=tuple(ACTIONS),
                                   secret=secret))


@pytest.fixture
async def http() -> AsyncIterator[tuple[httpx.AsyncClient, Any]]:
    redis = fakeredis.FakeAsyncRedis(decode_responses=True)
    routes = (tenant("octo", None, "octocat"), tenant("acme", ACME, "wile"), tenant("globex", GLOBEX, "hank"))
    application = create_app(replace(settings(), routes=routes), Queue(redis, prefix="tenants"))
    async with client(application) as c:
        yield c, redis
    await redis.aclose()


def comment(event: str, action: str, *, owner: str = "octo", author: str = "octocat",
            sender: Any = None, body: str = "@agent deploy it\n/approve toolu_01") -> dict[str, Any]:
    data = copy.deepcopy(COMMENT)
    data.update(action=action, repository={"full_name": f"{owner}/repo"})
    data["comment"].update(user={"login": author, "type": "User"}, body=body, updated_at="2024-05-01T10:00:00Z")
    data["sender"] = {"login": author, "type": "User"} if sender is None else sender
    if event == "pull_request_review_comment":
        data["pull_request"] = data.pop("issue")
    return data


async def deliver(c: httpx.AsyncClient, event: str, payload: dict[str, Any], secret: bytes) -> httpx.Response:
    body = json.dumps(payload).encode()
    return await c.post("/github/webhook", content=body, headers={
        "content-type": "application/json", "x-github-event": event, "x-github-delivery": "d-1",
        "x-hub-signature-256": github.sign(secret, body)})


FORGED_SENDERS = {"another user": {"login": "mallory", "type": "User"}, "no sender": {},
                  "a sender that is not an object": "octocat", "a bot": {"login": "octocat[bot]", "type": "Bot"},
                  "an unreadable login": {"login": ["octocat"]}}


@pytest.mark.parametrize("forgery", list(FORGED_SENDERS))
@pytest.mark.parametrize("action", ACTIONS)
@pytest.mark.parametrize("event", EVENTS)
async def test_a_comment_someone_other_than_its_author_sent_is_acknowledged_and_queues_nothing(
        event: str, action: str, forgery: str, http: tuple[httpx.AsyncClient, Any]) -> None:
    c, redis = http
    response = await deliver(c, event, comment(event, action, sender=FORGED_SENDERS[forgery]), GITHUB_SECRET)
    assert response.status_code == 200 and "not by its author" in response.json()["ignored"]
    assert await keys(redis, "tenants") == []


@pytest.mark.parametrize("action", ACTIONS)
@pytest.mark.parametrize("event", EVENTS)
async def test_the_same_comment_sent_by_its_author_is_acted_on(event: str, action: str,
                                                               http: tuple[httpx.AsyncClient, Any]) -> None:
    c, redis = http
    author_in_other_case = {"login": "OctoCat", "type": "User"}
    response = await deliver(c, event, comment(event, action, sender=author_in_other_case), GITHUB_SECRET)
    assert response.status_code == 202 and len(response.json()["client_message_ids"]) == 2  # decision + mention


PAYLOADS = {
    "a comment": lambda owner: ("issue_comment", comment("issue_comment", "created", owner=owner, author="x",
                                                         body="@agent hi")),
    "a review comment": lambda owner: ("pull_request_review_comment",
                                       comment("pull_request_review_comment", "created", owner=owner, author="x")),
    "an edit": lambda owner: ("issue_comment", comment("issue_comment", "edited", owner=owner, author="x")),
    "a ping": lambda owner: ("ping", {"zen": "z", "hook_id": 1, "repository": {"full_name": f"{owner}/repo"}}),
    "an organization's ping": lambda owner: ("ping", {"zen": "z", "hook_id": 1, "organization": {"login": owner}}),
    "another event": lambda owner: ("issues", {"action": "opened", "repository": {"full_name": f"{owner}/repo"}}),
    "an undecodable body": lambda owner: ("issue_comment", None),
}


@pytest.mark.parametrize("victim, signer", [("globex", ACME), ("acme", GLOBEX), ("octo", ACME), ("globex", GITHUB_SECRET)],
                         ids=["acme-signs-for-globex", "globex-signs-for-acme", "acme-signs-for-the-shared-route",
                              "the-shared-secret-signs-for-globex"])
@pytest.mark.parametrize("kind", list(PAYLOADS))
async def test_a_payload_for_one_tenant_signed_with_another_tenants_secret_is_401(
        kind: str, victim: str, signer: bytes, http: tuple[httpx.AsyncClient, Any]) -> None:
    c, redis = http
    event, payload = PAYLOADS[kind](victim)
    if payload is None:
        body = b"{not json"
        response = await c.post("/github/webhook", content=body, headers={
            "content-type": "application/json", "x-github-event": event, "x-github-delivery": "d-1",
            "x-hub-signature-256": github.sign(signer, body)})
        # Nothing in it names a tenant: only the shared secret could verify it, and that is not the signer's.
        assert response.status_code == (400 if signer == GITHUB_SECRET else 401)
    else:
        response = await deliver(c, event, payload, signer)
        assert response.status_code == 401, response.text
    assert await keys(redis, "tenants") == []


async def test_a_payload_naming_one_tenants_repository_and_anothers_organization_needs_the_repositorys_secret(
        http: tuple[httpx.AsyncClient, Any]) -> None:
    c, redis = http
    payload = {**comment("issue_comment", "created", owner="globex", author="x", body="@agent hi"),
               "organization": {"login": "acme"}}
    assert (await deliver(c, "issue_comment", payload, ACME)).status_code == 401
    assert (await deliver(c, "issue_comment", payload, GLOBEX)).status_code == 202
