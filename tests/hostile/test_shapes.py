"""Size and shape, on every public endpoint: a clear 4xx, nothing written, and an oversized body
refused without being read into memory."""

from __future__ import annotations

import json
from typing import Any, AsyncIterator
from urllib.parse import urlencode

import httpx
import pytest

from tests.hostile.doors import DOORS, Door, app, client, keys

pytestmark = pytest.mark.anyio
LIMIT = 4096


@pytest.fixture
async def http(redis_client: Any, prefix: str) -> AsyncIterator[tuple[httpx.AsyncClient, Any]]:
    application, _ = app(redis_client, max_body_bytes=LIMIT, prefix=prefix)
    async with client(application) as c:
        yield c, redis_client


@pytest.mark.parametrize("door", DOORS, ids=lambda d: d.name)
async def test_an_oversized_body_is_413_by_its_declared_length(door: Door, http: tuple[httpx.AsyncClient, Any],
                                                               prefix: str) -> None:
    c, redis = http
    body = door.sample + b" " * (LIMIT + 1)
    response = await c.post(door.path, content=body, headers=door.headers(body))
    assert response.status_code == 413 and response.json()["error"]
    assert await keys(redis, prefix) == []


@pytest.mark.parametrize("door", DOORS, ids=lambda d: d.name)
async def test_an_endless_body_is_413_without_being_read(door: Door, http: tuple[httpx.AsyncClient, Any],
                                                         prefix: str) -> None:
    c, redis = http
    sent = []

    async def endless() -> AsyncIterator[bytes]:
        while len(sent) < 10_000:  # 10 MB offered, no Content-Length
            sent.append(1)
            yield b"x" * 1024

    response = await c.post(door.path, content=endless(), headers=door.headers(b""))
    assert response.status_code == 413
    assert len(sent) <= LIMIT // 1024 + 2  # stopped just past the limit
    assert await keys(redis, prefix) == []


def bad_bodies(door: Door) -> dict[str, bytes]:
    nested = b"[" * 1500 + b"]" * 1500  # deeper than Python's recursion limit, under the size limit
    bodies = {"deeply nested": nested, "invalid UTF-8": b'{"text": "\xff\xfe"}', "empty": b"", "not an object": b"[1, 2]"}
    if door.form == "fields":
        bodies = {"deeply nested": b"text=" + b"[" * 1900 + b"&team_id=" + b"]" * 1900, "invalid UTF-8": b"text=%ff&team_id=\xff",
                  "missing fields": urlencode({"text": "hello"}).encode(), "empty": b""}
    elif door.form == "payload":
        bodies = {"deeply nested": b"payload=" + nested,
                  "invalid UTF-8": b"payload=\xff", "missing payload": b"text=hello",
                  "payload not an object": urlencode({"payload": "[1]"}).encode(),
                  # json.dumps escapes it as \ud800: valid JSON syntax, not Unicode text
                  "unpaired surrogate": urlencode({"payload": json.dumps({"type": "block_actions\ud800"})}).encode()}
    else:
        sample = json.loads(door.sample)
        first = sorted(sample)[0]
        bodies[f"missing {first}"] = json.dumps({k: v for k, v in sample.items() if k != first}).encode()
        text_key = next((k for k, v in sorted(sample.items()) if isinstance(v, str)), None)
        if text_key:
            bodies["unpaired surrogate"] = json.dumps({**sample, text_key: sample[text_key] + "\ud800"}).encode()
    return bodies


CASES = [(door, case) for door in DOORS for case in bad_bodies(door) if not door.name.startswith("admin")
         or case not in ("missing all",)]


@pytest.mark.parametrize("door, case", CASES, ids=lambda v: v.name if isinstance(v, Door) else v)
async def test_malformed_signed_bodies_get_a_clear_400_and_write_nothing(
        door: Door, case: str, http: tuple[httpx.AsyncClient, Any], prefix: str) -> None:
    c, redis = http
    body = bad_bodies(door)[case]
    response = await c.post(door.path, content=body, headers=door.headers(body))
    if door.name == "slack-events" and case == "missing challenge":
        assert response.status_code == 200  # an event_callback needs no challenge
        return
    assert response.status_code == 400, (case, response.status_code, response.text)
    assert response.json()["error"]
    assert await keys(redis, prefix) == []


@pytest.mark.parametrize("door, content_type", [
    (DOORS[0], "text/plain"), (DOORS[0], "application/x-www-form-urlencoded"),
    (next(d for d in DOORS if d.name == "github"), "text/plain"),
    (next(d for d in DOORS if d.name == "github"), "multipart/form-data; boundary=x"),
], ids=lambda v: v.name if isinstance(v, Door) else v)
async def test_wrong_content_types_are_refused_after_the_signature(door: Door, content_type: str,
                                                                   http: tuple[httpx.AsyncClient, Any],
                                                                   prefix: str) -> None:
    c, redis = http
    headers = {**door.headers(door.sample), "content-type": content_type}
    response = await c.post(door.path, content=door.sample, headers=headers)
    assert response.status_code in (400, 415) and "content-type" in response.json()["error"]
    assert await keys(redis, prefix) == []
