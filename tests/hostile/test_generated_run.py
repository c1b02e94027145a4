"""A generated run of 100,000 requests across every door of a real `relay serve` on loopback,
a few connections at a time: valid deliveries, their replays, and the ways an attacker gets
things wrong (unsigned, wrong or cross-tenant secrets, stale or absurd headers, altered and
odd signed bodies, forged authors, oversized and malformed requests). Every answer is the one
its kind should get, none is a 5xx, and Redis ends up holding exactly the messages the valid
requests carried: nothing queued without a valid signature, nothing lost, nothing doubled.
The figures go to tests/hostile/last-run.json (the README's Reliability section quotes them).
Marked slow; it runs in the default suite (about 10 to 20 s alone on a 2-core machine)."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import random
import re
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator
from urllib.parse import urlencode

import httpx
import pytest
import redis.asyncio as aioredis

from relay.messages import client_message_id
from relay.queue import PARTITIONS, Keys
from relay.sources import discord, generic, github, linear, mapped, slack
from relay.door_rules import HmacScheme
from tests.hostile.served import (ACME_SECRET, DISCORD_SEED, GITHUB_SECRET, GITLAB_TOKEN, HOOK_KEY, LINEAR_SECRET,
                                  MAPPED_SECRET, SLACK_SECRET, Served, record_figures, relay_serve)
from tests.support import delete_prefix, unique_prefix

pytestmark = pytest.mark.slow

REQUESTS = 100_000
CONNECTIONS = 6
SEED = 20_13
OTHER = b"another-secret-of-at-least-24-bytes"


@dataclass(frozen=True)
class Request:
    kind: str
    door: str
    data: bytes
    expect: frozenset[int]
    message_ids: tuple[str, ...] = ()  # what relay must queue for it (valid, new requests only)
    answer_ids: bool = False  # the 2xx answer lists the message ids (generic, GitHub)


def http(method: str, path: str, headers: dict[str, str], body: bytes = b"") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: relay", *(f"{k}: {v}" for k, v in headers.items())]
    if method == "POST" and "content-length" not in {k.lower() for k in headers}:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


COMMENT = {"action": "created", "issue": {"number": 1, "title": "t"}, "repository": {"full_name": "octo/repo"},
           "sender": {"login": "octocat", "type": "User"},
           "comment": {"id": 1, "user": {"login": "octocat", "type": "User"}, "author_association": "OWNER",
                       "body": "@agent hello", "html_url": "https://github.com/octo/repo/issues/1#c1"}}


class Generator:
    """Requests by kind, drawn at random (seeded) in proportion to their weights."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.counter = 0
        self.answered_generic: list[bytes] = []  # valid requests relay has answered (so replays follow them)
        self.answered_github: list[tuple[str, bytes]] = []
        self.answered_linear: list[bytes] = []
        self.kinds: list[tuple[str, int, Callable[[], Request]]] = [
            ("generic: valid", 30, self.generic_valid), ("slack command: valid", 12, self.slack_command_valid),
            ("slack event: valid", 12, self.slack_event_valid), ("github: valid", 12, self.github_valid),
            ("github tenant: valid", 6, self.github_tenant_valid),
            ("generic: replay", 20, self.generic_replay), ("github: replay, new delivery id", 20, self.github_replay),
        ]
        for door, path in (("generic", "/hooks/generic"), ("slack", "/slack/commands"), ("slack", "/slack/events"),
                           ("slack", "/slack/interactions"), ("github", "/github/webhook"), ("approvals", "/approvals"),
                           ("admin", "/admin/dead-letters/replay"), ("linear", "/linear/webhook"),
                           ("gitlab", "/gitlab/webhook"), ("discord", "/discord/interactions"),
                           ("mapped", "/hooks/mapped/pd")):
            self.kinds.append((f"{path}: unsigned", 40, self.unsigned(door, path)))
        for door in ("generic", "slack", "github"):
            self.kinds += [(f"{door}: wrong secret", 30, self.signed_badly(door, "wrong secret")),
                           (f"{door}: body altered", 30, self.signed_badly(door, "body altered")),
                           (f"{door}: absurd signature", 20, self.signed_badly(door, "absurd signature"))]
        for door in ("generic", "slack"):
            for case in ("stale", "300-digit timestamp", "5,000-digit timestamp", "future"):
                self.kinds.append((f"{door}: {case}", 15, self.signed_badly(door, case)))
        self.kinds += NewDoors(self).kinds()
        self.kinds += [
            ("github: cross-tenant", 30, self.cross_tenant), ("github: forged author", 25, self.forged_author),
            ("github: 1e400 comment id", 15, self.github_odd_number), ("generic: signed, not JSON", 15,
                                                                        self.generic_not_json),
            ("slack: signed interaction, response_url not a string", 15, self.interaction_bad_url),
            ("generic: signed, wrong content type", 10, self.generic_wrong_type),
            ("approvals: wrong token", 20, self.bearer("/approvals", "Bearer not-the-token-0123456789")),
            ("admin: wrong token", 20, self.bearer("/admin/dead-letters/replay", "Bearer guess")),
            ("any: declared body over the limit", 10, self.too_large),
            ("any: 20 KiB header", 10, self.huge_header), ("any: 150 header fields", 10, self.many_headers),
            ("any: not HTTP", 10, self.not_http), ("any: unknown path", 10, self.unknown_path),
            ("any: wrong method", 10, self.wrong_method), ("healthz", 10, self.healthz),
        ]
        self.weights = [w for _, w, _ in self.kinds]

    def draw(self) -> Request:
        name, _, make = self.rng.choices(self.kinds, self.weights)[0]
        request = make()
        return request if request.kind == name else Request(name, request.door, request.data, request.expect,
                                                            request.message_ids, request.answer_ids)

    def fresh(self) -> int:
        self.counter += 1
        return self.counter

    # -- valid, and replays -------------------------------------------------------------------------

    def generic_valid(self) -> Request:
        body = json.dumps({"text": f"run {self.fresh()}"}).encode()
        msg_id = f"msg_{uuid.uuid4().hex}"
        headers = generic.signed_headers(HOOK_KEY, msg_id, int(time.time()), body)
        return Request("generic: valid", "generic", http("POST", "/hooks/generic", headers, body),
                       frozenset({202}), (client_message_id("generic", msg_id),), True)

    def generic_replay(self) -> Request:
        if not self.answered_generic:
            return self.generic_valid()
        return Request("generic: replay", "generic", self.rng.choice(self.answered_generic), frozenset({200}))

    def slack_command_valid(self) -> Request:
        trigger = f"{self.fresh()}.{self.rng.randrange(10**6)}"
        body = urlencode({"team_id": "T0001", "channel_id": "C1", "user_id": "U0002", "user_name": "u",
                          "command": "/agent", "text": "hello", "response_url": "http://127.0.0.1:9/hooks/x",
                          "trigger_id": trigger}).encode()
        return Request("slack command: valid", "slack", http("POST", "/slack/commands", self.slack_headers(body),
                                                             body), frozenset({200}),
                       (client_message_id("slack", "T0001", "command", trigger),))

    def slack_event_valid(self) -> Request:
        ts = f"1700000000.{self.fresh():06d}"
        event = {"type": "event_callback", "team_id": "T0001", "event_id": f"Ev{ts}",
                 "event": {"type": "app_mention", "user": "U0002", "text": "<@U0BOT> hi", "ts": ts, "channel": "C1"}}
        body = json.dumps(event).encode()
        return Request("slack event: valid", "slack", http("POST", "/slack/events", self.slack_headers(body, "json"),
                                                           body), frozenset({200}),
                       (client_message_id("slack", "T0001", "C1", ts),))

    def comment(self, owner: str = "octo", **changes: Any) -> dict[str, Any]:
        data = copy.deepcopy(COMMENT)
        data["comment"]["id"] = self.fresh()
        data["repository"] = {"full_name": f"{owner}/repo"}
        data.update(changes)
        return data

    def github_headers(self, body: bytes, secret: bytes = GITHUB_SECRET) -> dict[str, str]:
        return {"Content-Type": "application/json", "X-GitHub-Event": "issue_comment",
                "X-GitHub-Delivery": str(uuid.uuid4()), "X-GitHub-Hook-ID": str(self.rng.randrange(10**6)),
                "X-Hub-Signature-256": github.sign(secret, body)}

    def github_valid(self, owner: str = "octo", secret: bytes = GITHUB_SECRET) -> Request:
        body = json.dumps(self.comment(owner)).encode()
        return Request("github: valid", "github", http("POST", "/github/webhook", self.github_headers(body, secret),
                                                       body), frozenset({202}), ("?",), True)

    def github_tenant_valid(self) -> Request:
        return self.github_valid("acme", ACME_SECRET)

    def github_replay(self) -> Request:
        if not self.answered_github:
            return self.github_valid()
        owner, body = self.rng.choice(self.answered_github)
        secret = ACME_SECRET if owner == "acme" else GITHUB_SECRET
        return Request("github: replay, new delivery id", "github",
                       http("POST", "/github/webhook", self.github_headers(body, secret), body), frozenset({202}))

    # -- refused -------------------------------------------------------------------------------------

    def slack_headers(self, body: bytes, kind: str = "form", timestamp: str | None = None,
                      secret: bytes = SLACK_SECRET) -> dict[str, str]:
        ts = timestamp or str(int(time.time()))
        digest = slack.sign(secret, int(ts) if len(ts) < 20 else 0, body)
        return {"Content-Type": "application/json" if kind == "json" else "application/x-www-form-urlencoded",
                "X-Slack-Request-Timestamp": ts, "X-Slack-Signature": digest}

    def unsigned(self, door: str, path: str) -> Callable[[], Request]:
        def make() -> Request:
            body = self.rng.choice([b'{"text": "hi"}', b"payload=%7B%7D", json.dumps(self.comment()).encode(),
                                    bytes(self.rng.randrange(256) for _ in range(self.rng.randrange(200)))])
            return Request("", door, http("POST", path, {"Content-Type": "application/json"}, body), frozenset({401}))
        return make

    def signed_badly(self, door: str, case: str) -> Callable[[], Request]:
        def make() -> Request:
            now = int(time.time())
            timestamp = {"stale": str(now - 3600), "future": str(now + 3600), "300-digit timestamp": "9" * 300,
                         "5,000-digit timestamp": "9" * 5000}.get(case, str(now))
            secret = OTHER if case == "wrong secret" else None
            if door == "generic":
                body = json.dumps({"text": "never"}).encode()
                headers = generic.signed_headers(secret or HOOK_KEY, f"msg_{uuid.uuid4().hex}", 0, body)
                headers["webhook-timestamp"] = timestamp
                headers["webhook-signature"] = generic.sign(secret or HOOK_KEY, headers["webhook-id"],
                                                            timestamp, body)  # type: ignore[arg-type]
                path, signature = "/hooks/generic", "webhook-signature"
            elif door == "slack":
                body = urlencode({"team_id": "T0001", "channel_id": "C1", "user_id": "U2", "command": "/agent",
                                  "text": "never", "response_url": "https://hooks.slack.com/x",
                                  "trigger_id": str(self.fresh())}).encode()
                headers = self.slack_headers(body, timestamp=timestamp, secret=secret or SLACK_SECRET)
                path, signature = "/slack/commands", "X-Slack-Signature"
            else:
                body = json.dumps(self.comment()).encode()
                headers = self.github_headers(body, secret or GITHUB_SECRET)
                path, signature = "/github/webhook", "X-Hub-Signature-256"
            if case == "body altered":
                body = body.replace(b"never", b"NEVER").replace(b"hello", b"HELLO")
            if case == "absurd signature":
                headers[signature] = "v1," + "A" * 10_000 if door == "generic" else "sha256=" + "0" * 10_000
            return Request("", door, http("POST", path, headers, body), frozenset({401}))
        return make

    def cross_tenant(self) -> Request:
        owner, secret = self.rng.choice([("acme", GITHUB_SECRET), ("octo", ACME_SECRET), ("acme", OTHER)])
        body = json.dumps(self.comment(owner)).encode()
        return Request("", "github", http("POST", "/github/webhook", self.github_headers(body, secret), body),
                       frozenset({401}))

    def forged_author(self) -> Request:
        data = self.comment(action=self.rng.choice(["created", "edited", "deleted"]),
                            sender={"login": "mallory", "type": "User"})
        data["comment"]["body"] = "@agent go\n/approve toolu_01"
        data["comment"]["updated_at"] = "2024-05-01T10:00:00Z"
        body = json.dumps(data).encode()
        return Request("", "github", http("POST", "/github/webhook", self.github_headers(body), body), frozenset({200}))

    def github_odd_number(self) -> Request:
        body = json.dumps(self.comment()).encode().replace(b'"id": ', b'"id": 1e400, "x": ', 1)
        return Request("", "github", http("POST", "/github/webhook", self.github_headers(body), body), frozenset({400}))

    def generic_not_json(self) -> Request:
        body = b'{"text": "unfinished'
        headers = generic.signed_headers(HOOK_KEY, f"msg_{uuid.uuid4().hex}", int(time.time()), body)
        return Request("", "generic", http("POST", "/hooks/generic", headers, body), frozenset({400}))

    def generic_wrong_type(self) -> Request:
        body = b'{"text": "hi"}'
        headers = {**generic.signed_headers(HOOK_KEY, f"msg_{uuid.uuid4().hex}", int(time.time()), body),
                   "content-type": "text/plain"}
        return Request("", "generic", http("POST", "/hooks/generic", headers, body), frozenset({415}))

    def interaction_bad_url(self) -> Request:
        payload = {"type": "block_actions", "user": {"id": "U0001"}, "team": {"id": "T0001"},
                   "response_url": self.rng.choice([{"u": 1}, ["x"], 7, True]),
                   "actions": [{"action_id": "relay_approve", "value": "card"}]}
        body = urlencode({"payload": json.dumps(payload)}).encode()
        return Request("", "slack", http("POST", "/slack/interactions", self.slack_headers(body), body),
                       frozenset({400}))

    def bearer(self, path: str, authorization: str) -> Callable[[], Request]:
        def make() -> Request:
            return Request("", "approvals" if path == "/approvals" else "admin", http("POST", path, {"Authorization": authorization,
                                                            "Content-Type": "application/json"}, b'{"all": true}'),
                           frozenset({401}))
        return make

    def too_large(self) -> Request:
        path = self.rng.choice(["/hooks/generic", "/slack/events", "/github/webhook"])
        headers = {"Content-Type": "application/json", "Content-Length": "2000000",
                   "webhook-id": "msg_x", "webhook-timestamp": str(int(time.time())), "webhook-signature": "v1,AAAA",
                   "X-Slack-Request-Timestamp": str(int(time.time())), "X-Slack-Signature": "v0=" + "0" * 64,
                   "X-GitHub-Event": "issue_comment", "X-GitHub-Delivery": "d",
                   "X-Hub-Signature-256": "sha256=" + "0" * 64}
        return Request("", "other", http("POST", path, headers), frozenset({413}))  # the body is never sent

    def huge_header(self) -> Request:
        return Request("", "other", http("GET", "/healthz", {"X-Big": "a" * 20_000}), frozenset({431}))

    def many_headers(self) -> Request:
        return Request("", "other", http("GET", "/healthz", {f"X-{i}": "1" for i in range(150)}), frozenset({431}))

    def not_http(self) -> Request:
        return Request("", "other", self.rng.choice([b"GARBAGE\r\n\r\n", b"GET / HTTP/9.9\r\n\r\n",
                                                   b"POST /hooks/generic HTTP/1.1\r\nContent-Length: -5\r\n\r\n"]),
                       frozenset({400}))

    def unknown_path(self) -> Request:
        return Request("", "other", http("POST", f"/hooks/{self.rng.randrange(1000)}", {}, b"{}"), frozenset({404}))

    def wrong_method(self) -> Request:
        return Request("", "other", http("GET", self.rng.choice(["/hooks/generic", "/github/webhook"]), {}),
                       frozenset({405}))

    def healthz(self) -> Request:
        return Request("", "other", http("GET", "/healthz", {}), frozenset({200}))


PD_SCHEME = HmacScheme("x-pagerduty-signature", prefix="v1=", separator=",")


class NewDoors:
    """The Linear, GitLab, Discord and mapped doors' requests: valid ones (and Linear replays),
    and signed with the wrong key, stale, or not at all."""

    def __init__(self, g: Generator) -> None:
        self.g = g

    def kinds(self) -> list[tuple[str, int, Callable[[], Request]]]:
        return [("linear: valid", 8, self.linear_valid), ("linear: replay", 6, self.linear_replay),
                ("gitlab: valid", 8, self.gitlab_valid), ("discord: valid", 8, self.discord_valid),
                ("mapped: valid", 8, self.mapped_valid),
                ("linear: wrong secret", 15, self.linear_bad("wrong secret")),
                ("linear: stale", 15, self.linear_bad("stale")),
                ("gitlab: wrong token", 15, self.gitlab_bad), ("discord: wrong key", 15, self.discord_bad("key")),
                ("discord: stale", 15, self.discord_bad("stale")), ("mapped: wrong secret", 15, self.mapped_bad)]

    def linear_body(self, shift_ms: int = 0) -> tuple[bytes, str]:
        session = f"session-{self.g.fresh()}"
        return json.dumps({"type": "AgentSessionEvent", "action": "created", "organizationId": "org-1",
                           "webhookTimestamp": int(time.time() * 1000) + shift_ms, "promptContext": "hello",
                           "agentSession": {"id": session, "issue": {"identifier": "ENG-1", "title": "t",
                                                                     "team": {"key": "ENG"}}}}).encode(), session

    def linear_valid(self) -> Request:
        body, session = self.linear_body()
        headers = {"Content-Type": "application/json", "Linear-Signature": linear.sign(LINEAR_SECRET, body)}
        return Request("linear: valid", "linear", http("POST", "/linear/webhook", headers, body), frozenset({200}),
                       (client_message_id("linear", "org-1", "session", session, "created"),))

    def linear_replay(self) -> Request:
        if not self.g.answered_linear:
            return self.linear_valid()
        # A recent one, well within Linear's 60 s: a replay, not a stale delivery.
        return Request("linear: replay", "linear", self.g.rng.choice(self.g.answered_linear[-20:]), frozenset({200}))

    def linear_bad(self, case: str) -> Callable[[], Request]:
        def make() -> Request:
            body, _ = self.linear_body(-3_600_000 if case == "stale" else 0)
            secret = b"another-secret-of-at-least-24-bytes" if case == "wrong secret" else LINEAR_SECRET
            headers = {"Content-Type": "application/json", "Linear-Signature": linear.sign(secret, body)}
            return Request("", "linear", http("POST", "/linear/webhook", headers, body), frozenset({401}))
        return make

    def gitlab_body(self) -> tuple[bytes, int]:
        note = self.g.fresh()
        return json.dumps({"object_kind": "note", "user": {"id": 1, "username": "octocat"},
                           "project": {"id": 5, "path_with_namespace": "octo/repo"}, "issue": {"iid": 1, "title": "t"},
                           "object_attributes": {"id": note, "note": "@agent hello", "noteable_type": "Issue",
                                                 "action": "create"}}).encode(), note

    def gitlab_valid(self) -> Request:
        body, note = self.gitlab_body()
        headers = {"Content-Type": "application/json", "X-Gitlab-Token": GITLAB_TOKEN.decode()}
        return Request("gitlab: valid", "gitlab", http("POST", "/gitlab/webhook", headers, body), frozenset({202}),
                       (client_message_id("gitlab", "5", "note", str(note), "create"),))

    def gitlab_bad(self) -> Request:
        body, _ = self.gitlab_body()
        headers = {"Content-Type": "application/json", "X-Gitlab-Token": self.g.rng.choice(["guess", "x" * 5000])}
        return Request("", "gitlab", http("POST", "/gitlab/webhook", headers, body), frozenset({401}))

    def discord_request(self, seed: bytes, shift: int = 0) -> tuple[bytes, str]:
        interaction = str(1600000000000000000 + self.g.fresh())
        body = json.dumps({"type": 2, "id": interaction, "application_id": "1100000000000000001", "token": "tok",
                           "guild_id": "1300000000000000001", "channel_id": "1400000000000000002",
                           "member": {"user": {"id": "1800000000000000006", "username": "u"}, "roles": []},
                           "data": {"name": "agent", "options": [{"type": 3, "value": "hello"}]}}).encode()
        now = int(time.time()) + shift
        headers = {"Content-Type": "application/json", "X-Signature-Timestamp": str(now),
                   "X-Signature-Ed25519": discord.sign(seed, now, body)}
        return http("POST", "/discord/interactions", headers, body), interaction

    def discord_valid(self) -> Request:
        data, interaction = self.discord_request(DISCORD_SEED)
        return Request("discord: valid", "discord", data, frozenset({200}),
                       (client_message_id("discord", "1100000000000000001", "interaction", interaction),))

    def discord_bad(self, case: str) -> Callable[[], Request]:
        def make() -> Request:
            data, _ = self.discord_request(b"\x07" * 32 if case == "key" else DISCORD_SEED,
                                           -3600 if case == "stale" else 0)
            return Request("", "discord", data, frozenset({401}))
        return make

    def mapped_request(self, secret: bytes) -> tuple[bytes, str]:
        event = f"evt-{self.g.fresh()}"
        body = json.dumps({"event": {"id": event, "event_type": "incident.triggered", "data": {"title": "t"}}}).encode()
        headers = {"Content-Type": "application/json",
                   "X-PagerDuty-Signature": mapped.sign_hmac(PD_SCHEME, secret, body)}
        return http("POST", "/hooks/mapped/pd", headers, body), event

    def mapped_valid(self) -> Request:
        data, event = self.mapped_request(MAPPED_SECRET)
        return Request("mapped: valid", "mapped", data, frozenset({202}), (client_message_id("mapped", "pd", event),))

    def mapped_bad(self) -> Request:
        return Request("", "mapped", self.mapped_request(b"another-secret")[0], frozenset({401}))


@dataclass
class Tally:
    statuses: Counter[int] = field(default_factory=Counter)
    by_kind: Counter[str] = field(default_factory=Counter)
    by_door: Counter[str] = field(default_factory=Counter)
    surprises: list[tuple[str, int, bytes]] = field(default_factory=list)
    expected_ids: set[str] = field(default_factory=set)
    reconnects: int = 0


async def exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes) -> tuple[int, bytes, bool]:
    """Send one request, read its response: (status, body, whether the server closes)."""
    writer.write(data)
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
    status = int(head.split(b" ", 2)[1])
    match = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
    body = await reader.readexactly(int(match.group(1))) if match else b""
    return status, body, re.search(rb"(?i)\r\nconnection: *close", head) is not None


async def client(served: Served, requests: Iterator[Request], generator: Generator, tally: Tally) -> None:
    connection = await asyncio.open_connection("127.0.0.1", served.port)
    for request in requests:
        try:
            status, body, closing = await exchange(*connection, request.data)
        except (asyncio.IncompleteReadError, ConnectionError):
            # The server had closed this connection after the last answer (a refusal it did not
            # read the rest of): the request was never read. Once more, on a new connection.
            connection = await reconnect(served, connection, tally)
            try:
                status, body, closing = await exchange(*connection, request.data)
            except (asyncio.IncompleteReadError, ConnectionError):
                status, body, closing = 0, b"", True
        record(request, status, body, generator, tally)
        if closing or status in (0, 408, 413, 431) or (status == 400 and request.door == "other"):
            connection = await reconnect(served, connection, tally)
    connection[1].close()


async def reconnect(served: Served, connection: tuple[asyncio.StreamReader, asyncio.StreamWriter],
                    tally: Tally) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    connection[1].close()
    with contextlib.suppress(ConnectionError):
        await connection[1].wait_closed()
    tally.reconnects += 1
    return await asyncio.open_connection("127.0.0.1", served.port)


def record(request: Request, status: int, body: bytes, generator: Generator, tally: Tally) -> None:
    tally.statuses[status] += 1
    tally.by_kind[request.kind] += 1
    tally.by_door[request.door] += 1
    if status not in request.expect:
        tally.surprises.append((request.kind, status, body[:200]))
        return
    if not request.message_ids:
        return
    if request.door == "github":
        tally.expected_ids.update(json.loads(body)["client_message_ids"])
        owner = "acme" if b'"acme/repo"' in request.data else "octo"
        generator.answered_github.append((owner, request.data.split(b"\r\n\r\n", 1)[1]))
    else:
        tally.expected_ids.update(request.message_ids)
        if request.door == "generic":
            generator.answered_generic.append(request.data)
        elif request.door == "linear":
            generator.answered_linear.append(request.data)


async def stored_ids(redis_url: str, prefix: str) -> set[str]:
    redis = aioredis.Redis.from_url(redis_url, decode_responses=True)
    keys = Keys(prefix)
    try:
        return {i for p in range(PARTITIONS) for i in await redis.hkeys(keys.body(p))}
    finally:
        await redis.aclose()


def metric_total(served: Served, outcome: str) -> float:
    text = httpx.get(f"{served.url}/metrics", timeout=10).text
    return sum(float(v) for v in re.findall(rf'^relay_requests_total{{[^}}]*outcome="{outcome}"[^}}]*}} (\S+)$',
                                            text, re.MULTILINE))


def test_a_generated_run_of_100_000_requests_across_every_door(tmp_path: Path, real_redis_url: str) -> None:
    prefix = unique_prefix()
    generator, tally = Generator(SEED), Tally()
    requests = (generator.draw() for _ in range(REQUESTS))  # shared: each connection takes the next one
    try:
        with relay_serve(tmp_path, real_redis_url, prefix, slack_api_url="http://127.0.0.1:9/api",
                         slack_hooks_url="http://127.0.0.1:9/hooks/", RELAY_LOG_LEVEL="ERROR") as served:
            started = time.monotonic()

            async def run() -> None:
                clients = (client(served, requests, generator, tally) for _ in range(CONNECTIONS))
                await asyncio.wait_for(asyncio.gather(*clients), 300)
            asyncio.run(run())
            seconds = time.monotonic() - started
            errors = metric_total(served, "error")
            stored = asyncio.run(stored_ids(real_redis_url, prefix))
            log = served.log()
    finally:
        async def cleanup() -> None:
            redis = aioredis.Redis.from_url(real_redis_url)
            await delete_prefix(redis, prefix)
            await redis.aclose()
        asyncio.run(cleanup())
    total = sum(tally.statuses.values())
    server_errors = sum(n for status, n in tally.statuses.items() if status >= 500)
    figures = {"requests": total, "seconds": round(seconds, 1), "per_second": round(total / seconds),
               "connections": CONNECTIONS, "kinds": len(generator.kinds), "statuses": dict(sorted(tally.statuses.items())),
               "by_door": dict(sorted(tally.by_door.items())), "server_errors": server_errors,
               "messages_expected": len(tally.expected_ids), "messages_stored": len(stored),
               "stored_without_a_valid_request": len(stored - tally.expected_ids),
               "valid_but_not_stored": len(tally.expected_ids - stored), "reconnects": tally.reconnects}
    record_figures("generated run", figures)
    print("\n" + json.dumps(figures))
    assert total == REQUESTS
    assert server_errors == 0 and errors == 0
    assert tally.surprises == [], Counter((k, s) for k, s, _ in tally.surprises).most_common(10)
    assert stored == tally.expected_ids  # nothing queued unsigned, nothing lost, nothing doubled
    assert len(stored) > 1000
    assert "Traceback" not in log and '"level":"ERROR"' not in log, log[-3000:]
