"""No secret, token, signature or message body ever appears in the logs.

A run through every door and the worker, valid and invalid, with known secrets, logged exactly
as in production (relay.logs at DEBUG) in each format (JSON, the default, and text), then
searched; leaks planted after the run show that the search finds them in that format."""

from __future__ import annotations

import base64
import io
import json
import logging
import time
from dataclasses import replace
from typing import Any
from urllib.parse import urlencode

import fakeredis
import httpx
import pytest

from relay.github_api import GitHubApi
from relay.logs import FORMATS, configure, fields, formatter
from relay.replies import Replier
from relay.routing import Destination, GitHubRule, Route, SlackRule
from relay.settings import Settings
from relay.slack_api import SlackApi
from relay.door_rules import DiscordRule, GitLabRule, HmacScheme, LinearRule, MappedRule
from relay.sources import discord, generic, github, linear, mapped, slack
from relay.template import parse as template
from relay.web import create_app
from tests.conftest import DEVICE
from tests.support import running_worker

pytestmark = pytest.mark.anyio

HOOK_KEY = b"hook-key-0123456789abcdef-KNOWN"
SECRETS = {
    "hook secret": "whsec_" + base64.b64encode(HOOK_KEY).decode(),
    "slack signing secret": "slack-signing-secret-KNOWN-0123",
    "slack bot token": "xoxb-bot-token-KNOWN-0123",
    "github webhook secret": "github-webhook-secret-KNOWN-0123",
    "github token": "ghp_github-token-KNOWN-0123",
    "letta api key": "letta-api-key-KNOWN-0123",
    "admin token": "admin-token-KNOWN-0123456789",
    "response_url secret": "RESPONSE-URL-SECRET-KNOWN",
    "linear signing secret": "linear-signing-secret-KNOWN-0123",
    "linear api key": "lin_api_linear-api-key-KNOWN-0123",
    "gitlab webhook token": "gitlab-webhook-token-KNOWN-0123",
    "gitlab token": "glpat-gitlab-token-KNOWN-0123",
    "discord bot token": "discord-bot-token-KNOWN-0123",
    "discord interaction token": "discord-interaction-token-KNOWN-0123",
    "mapped webhook secret": "mapped-webhook-secret-KNOWN-0123",
}
DISCORD_SEED = b"discord-known-application-key-32"
#: Quoted, so that a body in a log line is escaped (both formats write a quote as \"): a search
#: for the marker as sent would miss it there.
BODY_MARKER = 'BODY-MARKER-"never"-logged'


def escaped(value: str) -> set[str]:
    """The ways a value can appear in a line of either format: as is, or escaped as a JSON
    string (the JSON formatter encodes every field so, the text one any value with a space,
    a quote or an equals sign), once or twice (a JSON body logged as a field)."""
    forms = {value}
    for _ in range(2):
        forms |= {json.dumps(form, ensure_ascii=ascii)[1:-1] for form in forms for ascii in (True, False)}
    return forms


def leaks_in(text: str, signatures: list[str]) -> list[str]:
    def found(value: str) -> bool:
        return any(form in text for form in escaped(value))

    leaks = [name for name, value in SECRETS.items() if found(value)]
    leaks += [f"signature {v[:12]}…" for v in signatures if found(v)]
    leaks += ["a message body"] if found(BODY_MARKER) else []
    leaks += ["an Authorization header"] if "Bearer " in text else []
    return leaks


def plant_leaks(signatures: list[str]) -> None:
    """Log every kind of leak the search looks for, the ways a careless call site would."""
    log = logging.getLogger("relay.planted")
    for name, value in SECRETS.items():
        log.warning("planted", extra=fields(what=name, value=value))
    log.info("planted", extra=fields(signatures=signatures))
    log.debug("planted", extra=fields(body=json.dumps({"text": BODY_MARKER, "note": 'a "quoted" word'})))
    try:
        raise ValueError(f"refused Authorization: Bearer {SECRETS['letta api key']}")
    except ValueError:
        log.exception("planted")


@pytest.mark.parametrize("log_format", FORMATS)
async def test_a_full_run_logs_no_secret_token_signature_or_body(log_format: str, stand_in, slack_stand_in,  # type: ignore[no-untyped-def]
                                                                 github_stand_in, settings: Settings,
                                                                 prefix: str) -> None:
    letta, letta_url = stand_in
    configure("DEBUG", log_format)  # production formatting and logger levels
    captured = io.StringIO()
    handler = logging.StreamHandler(captured)
    handler.setFormatter(formatter(log_format))  # the formatter production uses for this format
    logging.getLogger().addHandler(handler)
    sent_signatures: list[str] = []
    try:
        await run_everything(letta, letta_url, slack_stand_in, github_stand_in, settings, prefix, sent_signatures)
        text = captured.getvalue()
        values = [s.partition(",")[2] if s.startswith("v1,") else s.partition("=")[2] if "=" in s else s
                  for s in sent_signatures]
        plant_leaks(values)
        planted = captured.getvalue()[len(text):]
    finally:
        logging.getLogger().removeHandler(handler)
        logging.getLogger().handlers.clear()
    assert "delivered" in text and "rejected" in text and "dead-lettered" in text  # the run was logged
    if log_format == "json":
        assert all(json.loads(line)["event"] for line in text.splitlines())  # and in this format
    assert len(values) >= 8 and all(len(v) >= 40 for v in values)
    # The search finds each kind of leak as this format writes it, so finding none below means something.
    assert sorted(leaks_in(planted, values)) == sorted(
        [*SECRETS, *(f"signature {v[:12]}…" for v in values), "a message body", "an Authorization header"])
    assert leaks_in(text, values) == []


async def run_everything(letta: Any, letta_url: str, slack_stand_in: Any, github_stand_in: Any, settings: Settings,
                         prefix: str, signatures: list[str]) -> None:
    route = Route("all", Destination(agent_id="agent-all", device_id=DEVICE),
                  slack=SlackRule(teams=("T0001",), approvers=("U0001",)),
                  github=GitHubRule(repositories=("octo/*",)), linear=LinearRule(teams=("ENG",)),
                  gitlab=GitLabRule(projects=("octo/*",), access_level=0), discord=DiscordRule(guilds=("13",)))
    mapped_route = Route("pd", Destination(agent_id="agent-all", device_id=DEVICE), mapped=MappedRule(
        "hmac", template("{{ event.data.title }}"), ("event.id",), key=SECRETS["mapped webhook secret"].encode(),
        hmac=HmacScheme("x-pagerduty-signature", prefix="v1=")))
    s = replace(settings, routes=(*settings.routes, route, mapped_route), key_prefix=prefix,
                linear_webhook_secret=SECRETS["linear signing secret"].encode(),
                linear_api_key=SECRETS["linear api key"], gitlab_webhook_token=SECRETS["gitlab webhook token"].encode(),
                gitlab_token=SECRETS["gitlab token"], discord_public_key=discord.public_key_of(DISCORD_SEED),
                discord_bot_token=SECRETS["discord bot token"],
                hook_secret=HOOK_KEY, slack_signing_secret=SECRETS["slack signing secret"].encode(),
                slack_bot_token=SECRETS["slack bot token"], slack_api_base_url=slack_stand_in.api_url,
                github_webhook_secret=SECRETS["github webhook secret"].encode(), github_token=SECRETS["github token"],
                github_api_url=github_stand_in.base_url, admin_token=SECRETS["admin token"])
    redis = fakeredis.FakeAsyncRedis(decode_responses=True)
    slack_api = SlackApi(s.slack_bot_token, base_url=s.slack_api_base_url)
    github_api = GitHubApi(s.github_token or "", base_url=s.github_api_url)
    from relay.queue import Queue

    app = create_app(s, Queue(redis, prefix=prefix), slack_api=slack_api, github_api=github_api)
    letta.simulated().request_approval(("agent-all", "default"), "t1", "x", {"note": BODY_MARKER})
    letta.add_fault(400, body={"detail": f"rejected {BODY_MARKER}"}, match=lambda b: "poison" in json.dumps(b))
    letta.add_fault(500)
    now = int(time.time())
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://relay") as http:
        async def post(path: str, body: bytes, headers: dict[str, str]) -> httpx.Response:
            signatures.extend(v for k, v in headers.items() if "signature" in k and "timestamp" not in k)
            return await http.post(path, content=body, headers=headers)

        for text, secret, ts in ((BODY_MARKER, HOOK_KEY, now), ("poison " + BODY_MARKER, HOOK_KEY, now),
                                 (BODY_MARKER, b"w" * 24, now), (BODY_MARKER, HOOK_KEY, now - 999)):
            body = json.dumps({"text": text}).encode()
            await post("/hooks/generic", body, generic.signed_headers(secret, f"msg_{time.time_ns()}", ts, body))
        command = urlencode({"team_id": "T0001", "channel_id": "C1", "user_id": "U0002", "user_name": "u",
                             "command": "/agent", "text": BODY_MARKER, "trigger_id": "1.2.3",
                             "response_url": slack_stand_in.response_url(SECRETS["response_url secret"])}).encode()
        for secret in (s.slack_signing_secret, b"wrong"):
            await post("/slack/commands", command, {"x-slack-request-timestamp": str(now), "content-type":
                                                    "application/x-www-form-urlencoded",
                                                    "x-slack-signature": slack.sign(secret, now, command)})
        card = await http.post("/approvals", headers={"authorization": f"Bearer {SECRETS['admin token']}"},
                               json={"tool_call_id": "t1", "tool_name": "x", "arguments": {"note": BODY_MARKER},
                                     "route": "all", "channel": "C0001"})
        await http.post("/approvals", headers={"authorization": "Bearer guess"}, json={})
        for user in ("U0001", "U0BAD"):
            payload = urlencode({"payload": json.dumps({
                "type": "block_actions", "user": {"id": user}, "team": {"id": "T0001"}, "trigger_id": "1",
                "response_url": slack_stand_in.response_url(SECRETS["response_url secret"]),
                "actions": [{"action_id": "relay_approve", "value": card.json()["card_id"]}]})}).encode()
            await post("/slack/interactions", payload, {"x-slack-request-timestamp": str(now),
                                                        "content-type": "application/x-www-form-urlencoded",
                                                        "x-slack-signature": slack.sign(s.slack_signing_secret, now,
                                                                                        payload)})
        comment = json.dumps({"action": "created", "issue": {"number": 1, "title": BODY_MARKER},
                              "repository": {"full_name": "octo/repo"}, "sender": {"login": "octocat"},
                              "comment": {"id": 9, "user": {"login": "octocat", "type": "User"},
                                          "author_association": "OWNER", "body": f"@agent {BODY_MARKER}"}}).encode()
        for secret in (SECRETS["github webhook secret"].encode(), b"wrong"):
            await post("/github/webhook", comment, {"x-github-event": "issue_comment", "x-github-delivery": "d-1",
                                                    "content-type": "application/json",
                                                    "x-hub-signature-256": github.sign(secret, comment)})
        await run_new_doors(post, now)
        await http.get("/admin/dead-letters", headers={"authorization": f"Bearer {SECRETS['admin token']}"})
        await http.get("/admin/dead-letters", headers={"authorization": "Bearer guess"})
    worker_settings = replace(s, retry_base=0.01, retry_cap=0.05)
    letta_key = SECRETS["letta api key"]
    async with running_worker(redis, prefix, worker_settings, letta_url, replier=Replier(slack_api, github_api),
                              api_key=letta_key):  # the real key, as in production
        decisions = letta.simulated().decisions
        deadline = time.monotonic() + 15

        def refused() -> bool:  # the poison message's 400, whichever message took the one 500
            return any(a.status == 400 for a in letta.attempts)

        while (len(letta.delivered()) < 3 or not decisions or not refused()) and time.monotonic() < deadline:
            import asyncio
            await asyncio.sleep(0.05)
    assert len(letta.delivered()) >= 3 and len(decisions) == 1
    await slack_api.aclose()
    await github_api.aclose()
    await redis.aclose()


async def run_new_doors(post: Any, now: int) -> None:
    """Linear, GitLab, Discord and a mapped webhook: each once validly signed and once not."""
    json_type = {"content-type": "application/json"}
    session = json.dumps({"type": "AgentSessionEvent", "action": "created", "organizationId": "org-1",
                          "webhookTimestamp": int(time.time() * 1000), "promptContext": BODY_MARKER,
                          "agentSession": {"id": "s-1", "issue": {"identifier": "ENG-1", "title": BODY_MARKER,
                                                                  "team": {"key": "ENG"}}}}).encode()
    for secret in (SECRETS["linear signing secret"].encode(), b"wrong"):
        await post("/linear/webhook", session, {**json_type, "linear-signature": linear.sign(secret, session)})
    note = json.dumps({"object_kind": "note", "user": {"id": 1, "username": "octocat"},
                       "project": {"id": 5, "path_with_namespace": "octo/repo"}, "issue": {"iid": 1, "title": "t"},
                       "object_attributes": {"id": 9, "note": f"@agent {BODY_MARKER}", "noteable_type": "Issue",
                                             "action": "create"}}).encode()
    for token in (SECRETS["gitlab webhook token"], "wrong"):
        await post("/gitlab/webhook", note, {**json_type, "x-gitlab-token": token})
    interaction = json.dumps({"type": 2, "id": "16", "application_id": "11", "guild_id": "13", "channel_id": "14",
                              "token": SECRETS["discord interaction token"],
                              "member": {"user": {"id": "18", "username": "u"}, "roles": []},
                              "data": {"name": "agent", "options": [{"type": 3, "value": BODY_MARKER}]}}).encode()
    for seed in (DISCORD_SEED, b"\x09" * 32):
        await post("/discord/interactions", interaction, {**json_type, "x-signature-timestamp": str(now),
                                                          "x-signature-ed25519": discord.sign(seed, now, interaction)})
    incident = json.dumps({"event": {"id": "e-1", "data": {"title": BODY_MARKER}}}).encode()
    scheme = HmacScheme("x-pagerduty-signature", prefix="v1=")
    for secret in (SECRETS["mapped webhook secret"].encode(), b"wrong"):
        await post("/hooks/mapped/pd", incident, {**json_type,
                                                  "x-pagerduty-signature": mapped.sign_hmac(scheme, secret, incident)})
