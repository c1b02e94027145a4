"""POST /linear/webhook: what is queued, what is ignored, what Linear is told at once."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import replace
from typing import Any, AsyncIterator, Iterator

import httpx
import pytest

from relay.door_rules import LinearRule
from relay.linear_api import LinearApi
from relay.queue import Queue
from relay.routing import Destination, Route
from relay.settings import Settings
from relay.sources import linear as source
from relay.web import create_app
from tests.conftest import DEVICE
from tests.linear_standin import LinearStandIn
from tests.sources.test_linear import sample
from tests.support import ServerThread
from tests.web.test_github import queued

pytestmark = pytest.mark.anyio
SECRET = b"lin_wh_shared_secret_for_tests"
TENANT_SECRET = b"lin_wh_secret_of_the_ops_team"
ORG = "2c7a5b3e-1f0d-4f8e-9a4b-6d1e0c9f7a21"
SESSION = "a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d"


@pytest.fixture
def linear_stand_in() -> Iterator[LinearStandIn]:
    standin = LinearStandIn(sessions={SESSION})
    with ServerThread(standin.app) as server:
        standin.url = server.url + "/graphql"
        yield standin


@pytest.fixture
def linear_settings(settings: Settings, linear_stand_in: LinearStandIn) -> Settings:
    eng = Route("eng", Destination(agent_id="agent-eng", device_id=DEVICE), linear=LinearRule(teams=("ENG",)))
    ops = Route("ops-linear", Destination(agent_id="agent-ops", device_id=DEVICE),
                linear=LinearRule(teams=("OPS",), comments=False, secret=TENANT_SECRET))
    return replace(settings, routes=(*settings.routes, eng, ops), linear_webhook_secret=SECRET,
                   linear_api_key=linear_stand_in.token, linear_api_url=linear_stand_in.url)


@pytest.fixture
async def http(queue: Queue, linear_settings: Settings, linear_stand_in: LinearStandIn
               ) -> AsyncIterator[httpx.AsyncClient]:
    api = LinearApi(linear_stand_in.token, url=linear_stand_in.url)
    app = create_app(linear_settings, queue, linear_api=api)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://relay") as client:
        yield client
    await api.aclose()


def fresh(name: str, **changes: Any) -> dict[str, Any]:
    data = sample(name)
    data["webhookTimestamp"] = int(time.time() * 1000)
    data.update(changes)
    return data


async def deliver(http: httpx.AsyncClient, data: dict[str, Any] | bytes, *, secret: bytes = SECRET,
                  **headers: str) -> httpx.Response:
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    sent = {"content-type": "application/json", "linear-delivery": str(uuid.uuid4()),
            "linear-event": "AgentSessionEvent", "linear-signature": source.sign(secret, raw), **headers}
    return await http.post("/linear/webhook", content=raw, headers=sent)


async def test_a_new_agent_session_reaches_the_teams_agent_and_linear_gets_a_first_thought(
        http: httpx.AsyncClient, queue: Queue, linear_stand_in: LinearStandIn) -> None:
    answer = await deliver(http, fresh("agent_session.created.json"))
    assert answer.status_code == 200 and answer.json()["duplicate"] is False
    [envelope] = await queued(queue)
    assert (envelope.route, envelope.source, envelope.reply) == ("eng", "linear", {"via": "linear", "session": SESSION})
    assert "ENG-482" in envelope.message["content"]
    assert linear_stand_in.wait_for(lambda s: s.kinds() == ["thought"], 5)
    assert linear_stand_in.activities[0].session == SESSION and linear_stand_in.refused == []


async def test_a_redelivery_under_new_unsigned_headers_sends_nothing_new(
        http: httpx.AsyncClient, queue: Queue, linear_stand_in: LinearStandIn) -> None:
    data = fresh("agent_session.prompted.json")
    first = await deliver(http, data)
    again = await deliver(http, data, **{"linear-delivery": str(uuid.uuid4()), "linear-event": "Issue"})
    assert first.status_code == again.status_code == 200
    assert again.json() == {"client_message_id": first.json()["client_message_id"], "duplicate": True}
    assert len(await queued(queue)) == 1


async def test_a_stale_or_future_delivery_is_refused(http: httpx.AsyncClient, queue: Queue) -> None:
    for shift in (-61_000, 61_000):
        data = fresh("agent_session.created.json")
        data["webhookTimestamp"] += shift
        answer = await deliver(http, data)
        assert answer.status_code == 401 and "window" in answer.json()["error"]
    assert await queued(queue) == []


async def test_a_teams_own_secret_signs_for_it_and_for_no_one_else(http: httpx.AsyncClient, queue: Queue) -> None:
    ops = fresh("agent_session.created.json")
    ops["agentSession"]["issue"]["team"] = {"id": "t-ops", "key": "OPS"}
    assert (await deliver(http, ops, secret=SECRET)).status_code == 401  # the shared secret cannot sign for OPS
    assert (await deliver(http, ops, secret=TENANT_SECRET)).status_code == 200
    eng = fresh("agent_session.created.json")
    assert (await deliver(http, eng, secret=TENANT_SECRET)).status_code == 401  # nor OPS's for ENG
    assert [e.route for e in await queued(queue)] == ["ops-linear"]


async def test_a_comment_with_the_trigger_is_queued_and_gets_eyes(http: httpx.AsyncClient, queue: Queue,
                                                                  linear_stand_in: LinearStandIn) -> None:
    answer = await deliver(http, fresh("comment.create.json"), **{"linear-event": "Comment"})
    assert answer.status_code == 200
    [envelope] = await queued(queue)
    assert envelope.reply == {"via": "linear", "issue": "7e6d5c4b-3a29-4180-9f7e-6d5c4b3a2918",
                              "comment": "d4c3b2a1-0f9e-4d8c-b7a6-958473625140"}
    assert linear_stand_in.wait_for(lambda s: s.reactions == [("d4c3b2a1-0f9e-4d8c-b7a6-958473625140", "👀")], 5)


@pytest.mark.parametrize("change, reason", [
    (lambda d: d["data"].update(body="summarize please"), "no @agent"),
    (lambda d: d.update(actor={"id": "a", "type": "oauthClient", "name": "bot"}), "integration"),
    (lambda d: d["data"].update(body="@agent hi " + source.OWN_MARKER), "integration or by relay"),
    (lambda d: d.update(url="https://linear.app/acme/issue/SALES-1/x", data=dict(d["data"], issue={"id": "i"})),
     "not routed"),
    (lambda d: d.update(type="Issue"), "webhook type"),
])
async def test_what_must_not_reach_an_agent_is_acknowledged_and_ignored(
        change: Any, reason: str, http: httpx.AsyncClient, queue: Queue) -> None:
    data = fresh("comment.create.json")
    change(data)
    answer = await deliver(http, data)
    assert answer.status_code == 200 and reason in answer.json()["ignored"]
    assert await queued(queue) == []


async def test_a_route_without_comments_ignores_them(http: httpx.AsyncClient, queue: Queue) -> None:
    data = fresh("comment.create.json", url="https://linear.app/acme/issue/OPS-7/x")
    data["data"]["issue"] = {"id": "i-ops", "title": "x"}
    answer = await deliver(http, data, secret=TENANT_SECRET)
    assert answer.status_code == 200 and "comments are not enabled" in answer.json()["ignored"]


@pytest.mark.parametrize("problem, status", [
    ("no signature", 401), ("bad signature", 401), ("not json", 400), ("not an object", 400), ("no timestamp", 401),
    ("huge signature", 401)])
async def test_bad_deliveries_are_refused_and_queue_nothing(problem: str, status: int, http: httpx.AsyncClient,
                                                           queue: Queue) -> None:
    data = fresh("agent_session.created.json")
    raw = json.dumps(data).encode()
    headers = {"content-type": "application/json", "linear-signature": source.sign(SECRET, raw)}
    if problem == "no signature":
        del headers["linear-signature"]
    elif problem == "bad signature":
        headers["linear-signature"] = source.sign(b"wrong", raw)
    elif problem == "huge signature":
        headers["linear-signature"] = "a" * 8000
    elif problem in ("not json", "not an object"):
        raw = b"{nope" if problem == "not json" else b"[1, 2]"
        headers["linear-signature"] = source.sign(SECRET, raw)
    elif problem == "no timestamp":
        del data["webhookTimestamp"]
        raw = json.dumps(data).encode()
        headers["linear-signature"] = source.sign(SECRET, raw)
    answer = await http.post("/linear/webhook", content=raw, headers=headers)
    assert answer.status_code == status, answer.text
    assert await queued(queue) == []


async def test_a_failing_linear_api_does_not_change_the_answer(http: httpx.AsyncClient, queue: Queue,
                                                               linear_stand_in: LinearStandIn) -> None:
    linear_stand_in.failures.append(500)
    answer = await deliver(http, fresh("agent_session.created.json"))
    assert answer.status_code == 200 and len(await queued(queue)) == 1
    assert linear_stand_in.wait_for(lambda s: not s.failures, 5)


async def test_the_door_is_not_served_without_linear_routes(queue: Queue, settings: Settings) -> None:
    app = create_app(settings, queue)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://relay") as client:
        assert (await client.post("/linear/webhook", content=b"{}")).status_code == 404
