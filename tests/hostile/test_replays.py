"""Replays with every unsigned header varied, per door: a captured signed request re-sent under
fresh delivery ids, hook ids, retry counters, user agents, content-type parameters, extra
signatures and anything else the signature does not cover is answered (never a 5xx) and is
still one message."""

from __future__ import annotations

import uuid
from typing import Any, AsyncIterator

import httpx
import pytest

from tests.hostile.doors import SIGNED_SOURCES, Door, app, client, keys

pytestmark = pytest.mark.anyio
BY_NAME = {d.name: d for d in SIGNED_SOURCES}

COMMON: dict[str, list[str | None]] = {
    "user-agent": ["curl/8.5.0", "GitHub-Hookshot/044aadd", "Slackbot 1.0 (+https://api.slack.com/robots)", ""],
    "x-forwarded-for": ["10.0.0.1", "1.2.3.4, 5.6.7.8"],
    "x-request-id": [str(uuid.uuid4())],
    "accept": ["*/*", "application/json"],
}
#: Per door: headers the signature does not cover, and values a replayer might send them with.
UNSIGNED: dict[str, dict[str, list[str | None]]] = {
    "generic": {"content-type": ["application/json; charset=utf-8", "application/vnd.relay+json", None]},
    "slack-commands": {"x-slack-retry-num": ["1", "2", "3"], "x-slack-retry-reason": ["http_timeout", "http_error"],
                       "content-type": ["application/x-www-form-urlencoded; charset=utf-8"]},
    "slack-events": {"x-slack-retry-num": ["1", "2", "3"], "x-slack-retry-reason": ["http_timeout", "http_error"],
                     "content-type": ["application/json; charset=utf-8", "text/plain"]},
    "github": {"x-github-delivery": [str(uuid.uuid4()) for _ in range(3)],
               "x-github-hook-id": ["1", "2", "987654321", None],
               "x-github-hook-installation-target-id": ["1", "42"],
               "x-github-hook-installation-target-type": ["repository", "organization", "integration"],
               "x-hub-signature": ["sha1=" + "0" * 40],
               "content-type": ["application/json; charset=utf-8"],
               "x-github-event": ["issues", "ping", "pull_request_review_comment", "push"]},
    "linear": {"linear-delivery": [str(uuid.uuid4()) for _ in range(3)] + [None],
               "linear-event": ["Comment", "Issue", "AgentSessionEvent", None],
               "content-type": ["application/json; charset=utf-8"]},
    "gitlab": {"x-gitlab-event-uuid": [str(uuid.uuid4()) for _ in range(3)] + [None],
               "x-gitlab-webhook-uuid": [str(uuid.uuid4()), None], "x-gitlab-instance": ["https://gitlab.example"],
               "x-gitlab-event": ["Issue Hook", "System Hook", None], "idempotency-key": [str(uuid.uuid4())]},
    "discord": {"content-type": ["application/json; charset=utf-8", None]},
    "mapped": {"webhook-id": [str(uuid.uuid4())], "x-request-id": [str(uuid.uuid4())],
               "content-type": ["application/json; charset=utf-8", None]},
}
#: Signature headers whose signed value can be written another way (still valid, still the same request).
RESPELLED = {"generic": lambda v: f"v1,AAAA {v} v2,xyz", "github": lambda v: v.upper().replace("SHA256=", "sha256="),
             "linear": str.upper, "discord": str.upper, "mapped": lambda v: f"v1={'0' * 64},{v}"}
SIGNATURE = {"generic": "webhook-signature", "github": "x-hub-signature-256", "linear": "linear-signature",
             "discord": "x-signature-ed25519", "mapped": "x-pagerduty-signature"}


def variants(door: Door) -> list[tuple[str, str | None]]:
    table = {**COMMON, **UNSIGNED[door.name]}
    return [(name, value) for name, values in table.items() for value in values]


@pytest.fixture
async def http(redis_client: Any, prefix: str) -> AsyncIterator[tuple[httpx.AsyncClient, Any]]:
    application, _ = app(redis_client, prefix=prefix)
    async with client(application) as c:
        yield c, redis_client


async def mailboxes(redis: Any, prefix: str) -> list[int]:
    return [await redis.llen(k) for k in await keys(redis, prefix) if ":mbox:" in k]


@pytest.mark.parametrize("door", [BY_NAME[n] for n in UNSIGNED], ids=lambda d: d.name)
async def test_a_replay_with_any_unsigned_header_varied_is_still_one_message(
        door: Door, http: tuple[httpx.AsyncClient, Any], prefix: str) -> None:
    c, redis = http
    headers = door.headers(door.sample)
    first = await c.post(door.path, content=door.sample, headers=headers)
    assert first.status_code in (200, 202), first.text
    answers = []
    for name, value in variants(door):
        varied = {k: v for k, v in headers.items() if k != name}
        if value is not None:
            varied[name] = value
        answers.append((name, value, (await c.post(door.path, content=door.sample, headers=varied)).status_code))
    if door.name in RESPELLED:
        respelled = {**headers, SIGNATURE[door.name]: RESPELLED[door.name](headers[SIGNATURE[door.name]])}
        answers.append(("signature", "respelled", (await c.post(door.path, content=door.sample,
                                                                  headers=respelled)).status_code))
    assert [a for a in answers if a[2] >= 500] == []
    assert await mailboxes(redis, prefix) == [1], answers  # one message, however it was replayed


async def test_a_github_comment_replayed_as_another_event_is_never_a_second_message(
        http: tuple[httpx.AsyncClient, Any], prefix: str) -> None:
    c, redis = http
    door = BY_NAME["github"]
    answers = []
    for event in ("issue_comment", "pull_request_review_comment", "discussion_comment", "ping", "issues"):
        headers = {**door.headers(door.sample), "x-github-event": event}
        answers.append((event, (await c.post(door.path, content=door.sample, headers=headers)).status_code))
    assert dict(answers) == {"issue_comment": 202, "pull_request_review_comment": 400, "discussion_comment": 200,
                             "ping": 200, "issues": 200}
    assert await mailboxes(redis, prefix) == [1]
