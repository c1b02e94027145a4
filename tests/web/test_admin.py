"""/admin/…: queue depths and dead letters over HTTP, for operators holding RELAY_ADMIN_TOKEN."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import AsyncIterator

import httpx
import pytest

from relay.messages import Inbound, client_message_id, envelope_for, user_message
from relay.queue import PARTITIONS, Queue
from relay.routing import Destination, Route
from relay.settings import Settings
from relay.web import create_app
from tests.conftest import ADMIN_TOKEN

pytestmark = pytest.mark.anyio
AUTH = {"authorization": f"Bearer {ADMIN_TOKEN}"}
ENDPOINTS = [("GET", "/admin/queue"), ("GET", "/admin/dead-letters"),
             ("POST", "/admin/dead-letters/replay"), ("POST", "/admin/dead-letters/drop")]


@pytest.fixture
async def http(queue: Queue, settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(replace(settings, admin_token=ADMIN_TOKEN), queue)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://relay") as client:
        yield client


async def bury(queue: Queue, n: int) -> list[str]:
    """n dead letters in n conversations; returns their ids."""
    ids = []
    for i in range(n):
        message_id = client_message_id("test", f"dead-{i}")
        route = Route(f"r{i}", Destination(agent_id=f"agent-{i}", device_id="d"))
        await queue.enqueue(envelope_for(Inbound("test", str(i), message_id, user_message("x", message_id)),
                                         route, time.time()))
        ids.append(message_id)
    for head in await queue.fetch([t for p in range(PARTITIONS) for t in await queue.read(p, 10, 10)]):
        assert head.envelope is not None
        await queue.dead_letter(head.token, head.envelope, "HTTP 400: nope", "http_400")
    return ids


@pytest.mark.parametrize("method, path", ENDPOINTS)
@pytest.mark.parametrize("authorization", [None, "Bearer ", "Bearer wrong-token-wrong-token", f"Basic {ADMIN_TOKEN}",
                                           f"Bearer {ADMIN_TOKEN}x", f"Bearer {ADMIN_TOKEN[:-1]}"])
async def test_admin_endpoints_refuse_missing_or_wrong_tokens(method: str, path: str, authorization: str | None,
                                                              http: httpx.AsyncClient, queue: Queue) -> None:
    await bury(queue, 1)
    headers = {"authorization": authorization} if authorization is not None else {}
    response = await http.request(method, path, headers=headers, json={"all": True})
    assert response.status_code == 401
    assert (await queue.depth()).dead == 1  # nothing replayed or dropped


async def test_admin_is_not_served_without_a_token(queue: Queue, settings: Settings) -> None:
    app = create_app(replace(settings, admin_token=None), queue)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://relay") as client:
        assert (await client.get("/admin/queue", headers=AUTH)).status_code == 404


async def test_token_comparison_is_constant_time(monkeypatch: pytest.MonkeyPatch, http: httpx.AsyncClient) -> None:
    import hmac

    compared = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    await http.get("/admin/queue", headers={"authorization": "Bearer guess"})
    assert compared and compared[-1][0] == b"guess"


async def test_dead_letters_are_listed_replayed_and_dropped(http: httpx.AsyncClient, queue: Queue) -> None:
    first, second, third = await bury(queue, 3)
    listed = (await http.get("/admin/dead-letters", headers=AUTH)).json()["dead_letters"]
    assert {d["client_message_id"] for d in listed} == {first, second, third}
    assert {d["code"] for d in listed} == {"http_400"} and listed[0]["reason"] == "HTTP 400: nope"
    replayed = await http.post("/admin/dead-letters/replay", headers=AUTH, json={"ids": [first, "nope"]})
    assert replayed.json() == {"replayed": [first], "missing": ["nope"]}
    dropped = await http.post("/admin/dead-letters/drop", headers=AUTH, json={"ids": [second]})
    assert dropped.json() == {"dropped": [second], "missing": []}
    depth = (await http.get("/admin/queue", headers=AUTH)).json()
    assert (depth["dead"], depth["ready"]) == (1, 1)
    assert (await http.post("/admin/dead-letters/replay", headers=AUTH, json={"all": True})).json()["replayed"] == [third]


@pytest.mark.parametrize("body", [b"", b"[]", b'{"ids": []}', b'{"ids": "x"}', b'{"ids": [1]}', b'{"all": 1}',
                                  b'{"ids": ["a"], "extra": 1}', b"{" * 5000])
async def test_malformed_admin_bodies_are_400(body: bytes, http: httpx.AsyncClient, queue: Queue) -> None:
    await bury(queue, 1)
    response = await http.post("/admin/dead-letters/replay", headers=AUTH, content=body)
    assert response.status_code == 400
    assert (await queue.depth()).dead == 1
