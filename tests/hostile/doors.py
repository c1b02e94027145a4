"""Every public endpoint, with everything switched on, and how to sign a request for each."""

from __future__ import annotations

import base64
import hashlib
import json
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable
from urllib.parse import urlencode

import fakeredis
import httpx
from starlette.applications import Starlette

from relay.door_rules import DiscordRule, GitLabRule, HmacScheme, LinearRule, MappedRule
from relay.queue import Queue
from relay.routing import Destination, GitHubRule, Route, SlackRule
from relay.settings import Settings
from relay.slack_api import SlackApi
from relay.sources import discord, generic, github, linear, mapped, slack
from relay.template import parse as template
from relay.web import create_app

HOOK_SECRET = base64.b64decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
SLACK_SECRET = b"8f742231b10e8888abcd99yyyzzz85a5"
GITHUB_SECRET = b"It's a Secret to Everybody"
ADMIN_TOKEN = "hostile-admin-token-0123456789abcdef"
BOT_TOKEN = "xoxb-hostile-bot-token"
PREFIX = "hostile"
LINEAR_SECRET = b"linear-hostile-signing-secret"
GITLAB_TOKEN = b"gitlab-hostile-webhook-token"
DISCORD_SEED = b"discord-hostile-application-key!"  # 32 bytes: the application's Ed25519 key
MAPPED_SECRET = b"mapped-hostile-hmac-secret"
MAPPED_SCHEME = HmacScheme("x-pagerduty-signature", prefix="v1=", separator=",")
GUILD = "1300000000000000001"


def settings(max_body_bytes: int = 64 * 1024, prefix: str = PREFIX) -> Settings:
    everything = Route("everything", Destination(agent_id="agent-h", device_id="device-h"),
                       slack=SlackRule(teams=("T0001",), approvers=("U0001",)),
                       github=GitHubRule(repositories=("octo/*",), approvers=("octocat",)),
                       linear=LinearRule(teams=("ENG",)),
                       gitlab=GitLabRule(projects=("octo/*",), access_level=0, approvers=("octocat",)),
                       discord=DiscordRule(guilds=(GUILD,), approvers=("1800000000000000006",)))
    mapped_route = Route("pd", Destination(agent_id="agent-pd", device_id="device-h"), mapped=MappedRule(
        "hmac", template("PagerDuty {{ event.event_type }}: {{ event.data.title }}"), ("event.id",),
        key=MAPPED_SECRET, hmac=MAPPED_SCHEME))
    return Settings(hook_secret=HOOK_SECRET, slack_signing_secret=SLACK_SECRET, slack_bot_token=BOT_TOKEN,
                    slack_api_base_url="http://127.0.0.1:9/api", github_webhook_secret=GITHUB_SECRET,
                    admin_token=ADMIN_TOKEN, key_prefix=prefix, max_body_bytes=max_body_bytes,
                    linear_webhook_secret=LINEAR_SECRET, gitlab_webhook_token=GITLAB_TOKEN,
                    discord_public_key=discord.public_key_of(DISCORD_SEED),
                    routes=(Route("default", Destination(agent_id="agent-d", device_id="device-h")), everything,
                            mapped_route))


def app(redis: Any, max_body_bytes: int = 64 * 1024, prefix: str = PREFIX) -> tuple[Starlette, Queue]:
    """relay's web app on `redis`, every door open. Slack API calls go nowhere (port 9)."""
    s = settings(max_body_bytes, prefix)
    queue = Queue(redis, prefix=prefix)
    return create_app(s, queue, slack_api=SlackApi(BOT_TOKEN, base_url=s.slack_api_base_url, timeout=0.5)), queue


def client(application: Starlette) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=application), base_url="http://relay")


def fresh() -> tuple[Starlette, Queue, Any]:
    redis = fakeredis.FakeAsyncRedis(decode_responses=True)
    application, queue = app(redis)
    return application, queue, redis


async def keys(redis: Any, prefix: str = PREFIX) -> list[str]:
    return sorted([k async for k in redis.scan_iter(match=f"{prefix}:*")])


@dataclass(frozen=True)
class Door:
    """One public endpoint: where it is and how a legitimate sender signs for it."""

    name: str
    path: str
    content_type: str
    sign: Callable[[bytes, int, bytes | None], dict[str, str]]  # body, timestamp, another secret → headers
    sample: bytes  # a body the door accepts
    vocabulary: tuple[str, ...] = ()  # the field names its parser looks at
    form: str | None = None  # "fields": a flat form; "payload": a form whose payload is JSON

    def headers(self, body: bytes, timestamp: int | None = None, secret: bytes | None = None) -> dict[str, str]:
        """A legitimate sender's headers (or, with `secret`, those of someone holding another key)."""
        ts = int(time.time()) if timestamp is None else timestamp
        return {"content-type": self.content_type, **self.sign(body, ts, secret)}


def _generic(body: bytes, ts: int, secret: bytes | None) -> dict[str, str]:
    return generic.signed_headers(secret or HOOK_SECRET, f"msg_{uuid.uuid4().hex}", ts, body)


def _slack(body: bytes, ts: int, secret: bytes | None) -> dict[str, str]:
    return {"x-slack-request-timestamp": str(ts), "x-slack-signature": slack.sign(secret or SLACK_SECRET, ts, body)}


def _github(body: bytes, ts: int, secret: bytes | None) -> dict[str, str]:
    return {"x-github-event": "issue_comment", "x-github-delivery": str(uuid.uuid4()), "x-github-hook-id": "1",
            "x-hub-signature-256": github.sign(secret or GITHUB_SECRET, body)}


def _linear(body: bytes, ts: int, secret: bytes | None) -> dict[str, str]:
    return {"linear-signature": linear.sign(secret or LINEAR_SECRET, body), "linear-delivery": str(uuid.uuid4()),
            "linear-event": "AgentSessionEvent"}


def _gitlab(body: bytes, ts: int, secret: bytes | None) -> dict[str, str]:
    return {"x-gitlab-token": (secret or GITLAB_TOKEN).decode(), "x-gitlab-event": "Note Hook",
            "x-gitlab-event-uuid": str(uuid.uuid4())}


def _discord(body: bytes, ts: int, secret: bytes | None) -> dict[str, str]:
    seed = hashlib.sha256(secret).digest() if secret else DISCORD_SEED
    return {"x-signature-ed25519": discord.sign(seed, ts, body), "x-signature-timestamp": str(ts)}


def _mapped(body: bytes, ts: int, secret: bytes | None) -> dict[str, str]:
    return {"x-pagerduty-signature": mapped.sign_hmac(MAPPED_SCHEME, secret or MAPPED_SECRET, body)}


def _bearer(body: bytes, ts: int, secret: bytes | None) -> dict[str, str]:
    return {"authorization": f"Bearer {secret.decode() if secret else ADMIN_TOKEN}"}


COMMENT = {"action": "created", "issue": {"number": 1, "title": "t"}, "repository": {"full_name": "octo/repo"},
           "sender": {"login": "octocat", "type": "User"},
           "comment": {"id": 7, "user": {"login": "octocat", "type": "User"}, "author_association": "OWNER",
                       "body": "@agent hello", "html_url": "https://github.com/octo/repo/issues/1#c7"}}
MENTION = {"type": "event_callback", "team_id": "T0001", "event_id": "Ev1",
           "event": {"type": "app_mention", "user": "U0002", "text": "<@U0BOT> hi", "ts": "1.000001", "channel": "C1"}}
COMMAND = {"team_id": "T0001", "channel_id": "C1", "user_id": "U0002", "user_name": "u", "command": "/agent",
           "text": "hello", "response_url": "http://127.0.0.1:9/r", "trigger_id": "1.2.3"}

class FreshDoor(Door):
    """A door whose sample carries a signed time in its body (Linear's webhookTimestamp): made
    anew every 20 s (the same bytes in between, so a test can replay it), so that it is well
    within Linear's 60 s whenever a test sends it."""

    _made: list[tuple[float, bytes]] = []

    @property  # type: ignore[override]
    def sample(self) -> bytes:
        now = time.time()
        if not self._made or now - self._made[-1][0] > 20:
            self._made[:] = [(now, json.dumps({**LINEAR_SESSION, "webhookTimestamp": int(now * 1000)}).encode())]
        return self._made[-1][1]

    @sample.setter
    def sample(self, value: bytes) -> None:
        pass


LINEAR_SESSION = {"type": "AgentSessionEvent", "action": "created", "organizationId": "org-1",
                  "agentSession": {"id": "session-1", "issue": {"id": "i-1", "identifier": "ENG-1", "title": "t",
                                                                "team": {"id": "team-1", "key": "ENG"}}},
                  "promptContext": "hello"}
NOTE = {"object_kind": "note", "user": {"id": 1, "username": "octocat"},
        "project": {"id": 5, "path_with_namespace": "octo/repo"}, "issue": {"iid": 1, "title": "t"},
        "object_attributes": {"id": 9, "note": "@agent hello", "noteable_type": "Issue", "action": "create"}}
INTERACTION = {"type": 2, "id": "1600000000000000004", "application_id": "1100000000000000001", "token": "tok-1",
               "guild_id": GUILD, "channel_id": "1400000000000000002",
               "member": {"user": {"id": "1800000000000000006", "username": "u"}, "roles": []},
               "data": {"name": "agent", "options": [{"name": "message", "type": 3, "value": "hello"}]}}
PAGERDUTY = {"event": {"id": "01DEN3Y8UL8QZ7TRPMWDWVYTBE", "event_type": "incident.triggered",
                       "data": {"title": "hello"}}}

DOORS = [
    Door("generic", "/hooks/generic", "application/json", _generic, b'{"text": "hello"}',
         ("text", "approval", "route", "tool_call_id", "approve", "reason")),
    Door("slack-commands", "/slack/commands", "application/x-www-form-urlencoded", _slack, urlencode(COMMAND).encode(),
         tuple(COMMAND), form="fields"),
    Door("slack-events", "/slack/events", "application/json", _slack, json.dumps(MENTION).encode(),
         ("type", "challenge", "team_id", "event", "event_id", "authorizations", "user_id", "is_bot", "user", "text",
          "ts", "channel", "channel_type", "subtype", "bot_id", "bot_profile", "team")),
    Door("slack-interactions", "/slack/interactions", "application/x-www-form-urlencoded", _slack,
         urlencode({"payload": json.dumps({"type": "block_actions", "user": {"id": "U0001"}, "team": {"id": "T0001"},
                                           "actions": [{"action_id": "relay_approve", "value": "nope"}],
                                           "response_url": "http://127.0.0.1:9/r"})}).encode(),
         ("type", "user", "id", "team", "team_id", "username", "actions", "action_id", "value", "response_url",
          "trigger_id", "view", "callback_id", "private_metadata", "state", "values", "reason", "reason_input"),
         form="payload"),
    Door("github", "/github/webhook", "application/json", _github, json.dumps(COMMENT).encode(),
         ("action", "issue", "comment", "repository", "pull_request", "number", "title", "user", "login", "type",
          "author_association", "body", "id", "html_url", "full_name", "performed_via_github_app", "path", "line",
          "zen", "sender", "updated_at", "organization")),
    Door("approvals", "/approvals", "application/json", _bearer,
         json.dumps({"tool_call_id": "t1", "tool_name": "x", "route": "everything", "channel": "C0001"}).encode(),
         ("tool_call_id", "tool_name", "arguments", "route", "destination", "channel", "thread_ts", "agent_id",
          "device_id", "connection_id", "connection_name", "conversation_id")),
    Door("admin-replay", "/admin/dead-letters/replay", "application/json", _bearer, b'{"all": true}', ("ids", "all")),
    FreshDoor("linear", "/linear/webhook", "application/json", _linear, b"",
              ("type", "action", "organizationId", "agentSession", "agentActivity", "id", "issue", "identifier",
               "title", "url", "team", "key", "teamId", "comment", "body", "creator", "name", "promptContext",
               "content", "signal", "user", "data", "issueId", "updatedAt", "actor", "webhookTimestamp")),
    Door("gitlab", "/gitlab/webhook", "application/json", _gitlab, json.dumps(NOTE).encode(),
         ("object_kind", "user", "id", "username", "project", "path_with_namespace", "issue", "merge_request",
          "iid", "title", "object_attributes", "note", "noteable_type", "action", "system", "updated_at",
          "discussion_id", "url", "author_id")),
    Door("discord", "/discord/interactions", "application/json", _discord, json.dumps(INTERACTION).encode(),
         ("type", "id", "application_id", "token", "guild_id", "channel_id", "channel", "member", "user", "roles",
          "username", "data", "name", "options", "value", "custom_id", "components")),
    Door("mapped", "/hooks/mapped/pd", "application/json", _mapped, json.dumps(PAGERDUTY).encode(),
         ("event", "id", "event_type", "data", "title")),
]
SIGNED_SOURCES = [d for d in DOORS if d.name in ("generic", "slack-commands", "slack-events", "github", "linear",
                                                 "gitlab", "discord", "mapped")]
