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
    assert replayed.json() == {"replayed": [first], "missing": ["nope"], "held": []}
    dropped = await http.post("/admin/dead-letters/drop", headers=AUTH, json={"ids": [second]})
    assert dropped.json() == {"dropped": [second], "missing": []}
    depth = (await http.get("/admin/queue", headers=AUTH)).json()
    assert (depth["dead"], depth["ready"]) == (1, 1)
    assert (await http.post("/admin/dead-letters/replay", headers=AUTH, json={"all": True})).json()["replayed"] == [third]


async def bury_old(queue: Queue, hours_ago: float, code: str = "timeout", attempts: int = 3) -> str:
    """A user message first received `hours_ago`, dead after `attempts` attempts ending in `code`."""
    message_id = client_message_id("test", f"old-{hours_ago}-{code}-{attempts}")
    route = Route("old", Destination(agent_id="agent-old", device_id="d"))
    envelope = envelope_for(Inbound("test", "old", message_id, user_message("x", message_id)), route,
                            time.time() - hours_ago * 3600)
    await queue.enqueue(envelope)
    [head] = await queue.fetch([t for p in range(PARTITIONS) for t in await queue.read(p, 10, 10)])
    failed = replace(envelope, attempts=attempts, last_error=code)
    await queue.dead_letter(head.token, failed, f"gave up: {code}", code)
    return message_id


async def test_a_replay_that_could_reach_the_agent_twice_is_held_until_forced(
        http: httpx.AsyncClient, queue: Queue) -> None:
    """The device forgets a client_message_id an hour after accepting it; relay remembers 96 h."""
    old = await bury_old(queue, hours_ago=2)  # timed out: it may have been taken, over an hour ago
    held = (await http.post("/admin/dead-letters/replay", headers=AUTH, json={"ids": [old]})).json()
    assert held["replayed"] == [] and held["held"] == [old] and "may see it twice" in held["held_because"]
    assert (await queue.depth()).dead == 1
    forced = (await http.post("/admin/dead-letters/replay", headers=AUTH, json={"ids": [old], "force": True})).json()
    assert forced == {"replayed": [old], "missing": [], "held": []}
    assert (await queue.depth()).dead == 0


@pytest.mark.parametrize("hours_ago, code, attempts, held", [
    (0.5, "timeout", 3, False),  # the device still remembers the id: a replay is ignored there
    (2, "http_400", 1, False),   # refused on its only attempt: nothing reached the device
    (2, "http_400", 2, True),    # an earlier attempt may have timed out after reaching it
    (2, "expired", 5, True),
    (2, "http_503", 1, True),
])
async def test_which_old_dead_letters_are_held(hours_ago: float, code: str, attempts: int, held: bool,
                                               http: httpx.AsyncClient, queue: Queue) -> None:
    message_id = await bury_old(queue, hours_ago, code, attempts)
    answer = (await http.post("/admin/dead-letters/replay", headers=AUTH, json={"all": True})).json()
    assert answer["held"] == ([message_id] if held else [])


@pytest.mark.parametrize("body", [b"", b"[]", b'{"ids": []}', b'{"ids": "x"}', b'{"ids": [1]}', b'{"all": 1}',
                                  b'{"ids": ["a"], "extra": 1}', b"{" * 5000, b'{"ids": ["a"], "force": 1}'])
async def test_malformed_admin_bodies_are_400(body: bytes, http: httpx.AsyncClient, queue: Queue) -> None:
    await bury(queue, 1)
    response = await http.post("/admin/dead-letters/replay", headers=AUTH, content=body)
    assert response.status_code == 400
    assert (await queue.depth()).dead == 1
