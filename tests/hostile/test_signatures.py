"""Signature edge cases, per source, over HTTP: only an exact, fresh signature gets in, and a
captured valid request replayed is accepted once, then answered as a duplicate."""

from __future__ import annotations

import base64
import json
import time
from typing import Any, AsyncIterator

import httpx
import pytest

from relay.sources import generic
from tests.hostile.doors import HOOK_SECRET, SIGNED_SOURCES, Door, app, client, keys

pytestmark = pytest.mark.anyio
BY_NAME = {d.name: d for d in SIGNED_SOURCES}
SIGNATURE = {"generic": "webhook-signature", "slack-commands": "x-slack-signature",
             "slack-events": "x-slack-signature", "github": "x-hub-signature-256", "linear": "linear-signature",
             "gitlab": "x-gitlab-token", "discord": "x-signature-ed25519", "mapped": "x-pagerduty-signature"}
TIMESTAMP = {"generic": "webhook-timestamp", "slack-commands": "x-slack-request-timestamp",
             "slack-events": "x-slack-request-timestamp", "discord": "x-signature-timestamp"}
#: GitLab's X-Gitlab-Token is the sender's shared secret, not a signature of the body.
UNSIGNED_BODY = {"gitlab"}


@pytest.fixture
async def http(redis_client: Any, prefix: str) -> AsyncIterator[tuple[httpx.AsyncClient, Any]]:
    application, _ = app(redis_client, prefix=prefix)
    async with client(application) as c:
        yield c, redis_client


def mutate(signature: str, how: str) -> str:
    scheme, _, value = signature.partition("," if signature.startswith("v1,") else "=")
    sep = "," if signature.startswith("v1,") else "="
    if how == "truncated":
        return signature[:-4]
    if how == "prefixed":
        return f"{scheme}{sep}00{value}"
    if how == "wrong scheme":
        return f"v2{sep}{value}" if scheme == "v1" else f"sha1{sep}{value}" if scheme == "sha256" else f"v1{sep}{value}"
    raise AssertionError(how)


@pytest.mark.parametrize("door", SIGNED_SOURCES, ids=lambda d: d.name)
@pytest.mark.parametrize("case", ["wrong secret", "truncated", "prefixed", "wrong scheme", "body altered",
                                  "re-encoded JSON", "stale", "future"])
async def test_anything_but_an_exact_fresh_signature_is_401_and_writes_nothing(
        door: Door, case: str, http: tuple[httpx.AsyncClient, Any], prefix: str) -> None:
    c, redis = http
    body = door.sample
    headers = door.headers(body)
    if case == "wrong secret":
        headers = door.headers(body, secret=b"another-secret-of-24-bytes!")
    elif case in ("truncated", "prefixed", "wrong scheme"):
        headers[SIGNATURE[door.name]] = mutate(headers[SIGNATURE[door.name]], case)
    elif case in ("body altered", "re-encoded JSON") and door.name in UNSIGNED_BODY:
        pytest.skip("X-Gitlab-Token authenticates the sender, not the body; identities come from the body")
    elif case == "body altered":
        body = body.replace(b"hello", b"HELLO") if b"hello" in body else body + b" "
    elif case == "re-encoded JSON":
        if door.content_type != "application/json":
            pytest.skip("a form body has no JSON to re-encode")
        body = json.dumps(json.loads(body), indent=2).encode()  # same data, other bytes
    elif case in ("stale", "future"):
        if door.name == "linear":  # Linear signs its time inside the body: webhookTimestamp
            shifted = json.loads(body)
            shifted["webhookTimestamp"] = int(time.time() * 1000) + (61_000 if case == "future" else -61_000)
            body = json.dumps(shifted).encode()
            headers = door.headers(body)
        elif door.name not in TIMESTAMP:
            pytest.skip(f"{door.name} signatures carry no timestamp; a replay is caught by the identity in the body")
        else:
            headers = door.headers(body, int(time.time()) + (301 if case == "future" else -301))
    response = await c.post(door.path, content=body, headers=headers)
    assert response.status_code == 401, response.text
    assert await keys(redis, prefix) == []


@pytest.mark.parametrize("door", SIGNED_SOURCES, ids=lambda d: d.name)
async def test_a_captured_valid_request_replayed_is_accepted_once(door: Door, http: tuple[httpx.AsyncClient, Any],
                                                                  prefix: str) -> None:
    c, redis = http
    headers = door.headers(door.sample)
    first = await c.post(door.path, content=door.sample, headers=headers)
    written = await keys(redis, prefix)
    replayed = [await c.post(door.path, content=door.sample, headers=headers) for _ in range(3)]
    assert first.status_code in (200, 202) and written, first.text
    assert all(r.status_code in (200, 202) for r in replayed)
    mailboxes = [k for k in await keys(redis, prefix) if ":mbox:" in k]
    assert [await redis.llen(m) for m in mailboxes] == [1]  # one message, however often it is replayed


async def test_one_valid_signature_among_several_is_enough(http: tuple[httpx.AsyncClient, Any]) -> None:
    c, _ = http
    body = b'{"text": "rotation"}'
    headers = generic.signed_headers(HOOK_SECRET, "msg_rotation", int(time.time()), body)
    stale_key = "v1," + base64.b64encode(b"\0" * 32).decode()
    headers["webhook-signature"] = f"v1a,AAAA {stale_key} {headers['webhook-signature']} v2,xyz"
    assert (await c.post("/hooks/generic", content=body, headers=headers)).status_code == 202
