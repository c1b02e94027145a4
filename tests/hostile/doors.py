"""Every public endpoint, with everything switched on, and how to sign a request for each."""

from __future__ import annotations

import base64
import json
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable
from urllib.parse import urlencode

import fakeredis
import httpx
from starlette.applications import Starlette

from relay.queue import Queue
from relay.routing import Destination, GitHubRule, Route, SlackRule
from relay.settings import Settings
from relay.slack_api import SlackApi
from relay.sources import generic, github, slack
from relay.web import create_app

HOOK_SECRET = base64.b64decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
SLACK_SECRET = b"8f742231b10e8888abcd99yyyzzz85a5"
GITHUB_SECRET = b"It's a Secret to Everybody"
ADMIN_TOKEN = "hostile-admin-token-0123456789abcdef"
BOT_TOKEN = "xoxb-hostile-bot-token"
PREFIX = "hostile"


def settings(max_body_bytes: int = 64 * 1024, prefix: str = PREFIX) -> Settings:
    everything = Route("everything", Destination(agent_id="agent-h", device_id="device-h"),
                       slack=SlackRule(teams=("T0001",), approvers=("U0001",)),
                       github=GitHubRule(repositories=("octo/*",), approvers=("octocat",)))
    return Settings(hook_secret=HOOK_SECRET, slack_signing_secret=SLACK_SECRET, slack_bot_token=BOT_TOKEN,
                    slack_api_base_url="http://127.0.0.1:9/api", github_webhook_secret=GITHUB_SECRET,
                    admin_token=ADMIN_TOKEN, key_prefix=prefix, max_body_bytes=max_body_bytes,
                    routes=(Route("default", Destination(agent_id="agent-d", device_id="device-h")), everything))


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
]
SIGNED_SOURCES = [d for d in DOORS if d.name in ("generic", "slack-commands", "slack-events", "github")]
