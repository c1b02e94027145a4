"""The Slack doors and POST /approvals: what is queued, what Slack is told, who may decide."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any, AsyncIterator
from urllib.parse import urlencode

import httpx
import pytest

from relay.messages import Envelope
from relay.queue import PARTITIONS, Queue
from relay.settings import Settings
from relay.slack_api import SlackApi
from relay.sources import slack as source
from relay.web import create_app
from tests.conftest import ADMIN_TOKEN, APPROVER, SLACK_CHANNEL, SLACK_SECRET, SLACK_TEAM
from tests.slack_standin import SlackStandIn
from tests.support import free_port

pytestmark = pytest.mark.anyio


@pytest.fixture
async def http(queue: Queue, slack_settings: Settings, slack_stand_in: SlackStandIn) -> AsyncIterator[httpx.AsyncClient]:
    slack = SlackApi(slack_settings.slack_bot_token, base_url=slack_stand_in.api_url)
    app = create_app(slack_settings, queue, slack_api=slack)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://relay") as client:
        yield client
    await slack.aclose()


def signed(body: bytes, content_type: str, timestamp: int | None = None,
           secret: bytes = SLACK_SECRET) -> dict[str, str]:
    return source.signed_headers(secret, int(time.time()) if timestamp is None else timestamp, body, content_type)


async def command(http: httpx.AsyncClient, standin: SlackStandIn, text: str = "summarize the incident", *,
                  team: str = SLACK_TEAM, channel: str = SLACK_CHANNEL, trigger: str = "111.222.aaa") -> httpx.Response:
    body = urlencode({"token": "x", "team_id": team, "channel_id": channel, "user_id": "U0ALICE", "user_name": "alice",
                      "command": "/agent", "text": text, "response_url": standin.response_url("cmd"),
                      "trigger_id": trigger}).encode()
    return await http.post("/slack/commands", content=body, headers=signed(body, "application/x-www-form-urlencoded"))


def event_body(*, kind: str = "app_mention", ts: str = "1700000001.000100", user: str = "U0ALICE",
               channel: str = SLACK_CHANNEL, team: str = SLACK_TEAM, **extra: Any) -> bytes:
    event = {"type": kind, "user": user, "text": "<@U0BOT> summarize the incident", "ts": ts, "channel": channel,
             "event_ts": ts, **extra}
    if kind == "message":
        event["channel_type"] = "im"
    return json.dumps({"type": "event_callback", "team_id": team, "api_app_id": "A0001", "event": event,
                       "event_id": f"Ev{ts}", "event_time": 1700000001,
                       "authorizations": [{"team_id": team, "user_id": "U0BOT", "is_bot": True}]}).encode()


async def event(http: httpx.AsyncClient, body: bytes, **headers: str) -> httpx.Response:
    return await http.post("/slack/events", content=body, headers={**signed(body, "application/json"), **headers})


async def queued(queue: Queue) -> list[Envelope]:
    """Everything waiting in the queue (heads of each conversation), without delivering it."""
    tokens = [t for p in range(PARTITIONS) for t in await queue.read(p, 100, 10)]
    heads = await queue.fetch(tokens)
    for head in heads:
        await queue.retry(head.token, None, time.time())  # put them back untouched
    for p in range(PARTITIONS):
        await queue.promote(p, time.time() + 1)
    return [h.envelope for h in heads if h.envelope]


# -- slash commands ------------------------------------------------------------------------------

async def test_command_is_queued_and_answered_at_once(http: httpx.AsyncClient, queue: Queue,
                                                      slack_stand_in: SlackStandIn) -> None:
    response = await command(http, slack_stand_in)
    assert response.status_code == 200
    assert response.json()["response_type"] == "ephemeral"
    assert "Sent to agent `agent-incidents` (route `incidents`)" in response.json()["text"]
    [envelope] = await queued(queue)
    assert envelope.route == "incidents" and envelope.kind == "user"
    assert "summarize the incident" in envelope.message["content"]
    assert envelope.reply == {"via": "response_url", "url": slack_stand_in.response_url("cmd")}


async def test_same_command_trigger_is_queued_once(http: httpx.AsyncClient, queue: Queue,
                                                   slack_stand_in: SlackStandIn) -> None:
    await command(http, slack_stand_in)
    again = await command(http, slack_stand_in)
    assert "Already sent" in again.json()["text"]
    assert len(await queued(queue)) == 1


async def test_command_from_an_unknown_workspace_is_refused(http: httpx.AsyncClient, queue: Queue,
                                                             slack_stand_in: SlackStandIn) -> None:
    response = await command(http, slack_stand_in, team="T0STRANGER")
    assert response.status_code == 200
    assert response.json()["text"].startswith("Not sent: Slack workspace T0STRANGER is not connected")
    assert await queued(queue) == []


async def test_command_in_another_channel_takes_the_workspace_route(http: httpx.AsyncClient, queue: Queue,
                                                                    slack_stand_in: SlackStandIn) -> None:
    await command(http, slack_stand_in, channel="C0OTHER")
    [envelope] = await queued(queue)
    assert envelope.route == "everywhere"


async def test_empty_command_gets_usage_and_queues_nothing(http: httpx.AsyncClient, queue: Queue,
                                                           slack_stand_in: SlackStandIn) -> None:
    response = await command(http, slack_stand_in, text="  ")
    assert "/agent summarize the incident" in response.json()["text"]
    assert await queued(queue) == []


@pytest.mark.parametrize("path", ["/slack/commands", "/slack/events", "/slack/interactions"])
@pytest.mark.parametrize("problem", ["no signature", "wrong secret", "stale"])
async def test_unsigned_or_stale_slack_requests_are_401(path: str, problem: str, http: httpx.AsyncClient,
                                                        queue: Queue) -> None:
    body = event_body() if path == "/slack/events" else b"team_id=T0001&text=hi"
    headers = signed(body, "application/json", timestamp=int(time.time()) - 301 if problem == "stale" else None,
                     secret=b"another-secret" if problem == "wrong secret" else SLACK_SECRET)
    if problem == "no signature":
        del headers["x-slack-signature"]
    response = await http.post(path, content=body, headers=headers)
    assert response.status_code == 401
    assert await queued(queue) == []


# -- events --------------------------------------------------------------------------------------

async def test_url_verification_echoes_the_challenge(http: httpx.AsyncClient) -> None:
    body = json.dumps({"token": "x", "challenge": "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P",
                       "type": "url_verification"}).encode()
    response = await event(http, body)
    assert response.json() == {"challenge": "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P"}


async def test_mention_is_queued_once_across_retries_and_its_dm_twin(http: httpx.AsyncClient, queue: Queue) -> None:
    first = await event(http, event_body())
    retry = await event(http, event_body(), **{"x-slack-retry-num": "1", "x-slack-retry-reason": "http_timeout"})
    twin = await event(http, event_body(kind="message"))  # the same ts delivered as message.im
    assert [r.status_code for r in (first, retry, twin)] == [200, 200, 200]
    [envelope] = await queued(queue)
    assert envelope.message["content"].endswith("summarize the incident")
    assert envelope.reply == {"via": "reaction", "channel": SLACK_CHANNEL, "ts": "1700000001.000100",
                              "team": SLACK_TEAM, "user": "U0ALICE"}


@pytest.mark.parametrize("extra", [{"bot_id": "B0OTHER"}, {"subtype": "message_changed"}, {"user": "U0BOT"}])
async def test_bots_edits_and_own_messages_are_ignored(extra: dict[str, str], http: httpx.AsyncClient,
                                                       queue: Queue) -> None:
    response = await event(http, event_body(**extra))
    assert response.status_code == 200
    assert await queued(queue) == []


async def test_event_from_an_unknown_workspace_is_acknowledged_and_dropped(http: httpx.AsyncClient,
                                                                            queue: Queue) -> None:
    response = await event(http, event_body(team="T0STRANGER"))
    assert response.status_code == 200
    assert await queued(queue) == []


async def test_event_while_redis_is_down_is_503_so_slack_retries(slack_settings: Settings) -> None:
    from relay.queue import connect

    client = connect(f"redis://127.0.0.1:{free_port()}/0", socket_timeout=1.0)
    app = create_app(slack_settings, Queue(client, prefix="relaytest-down"))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://relay") as http:
        response = await event(http, event_body())
    await client.aclose()
    assert response.status_code == 503


# -- approval cards ------------------------------------------------------------------------------

def card_request(**overrides: Any) -> dict[str, Any]:
    return {"tool_call_id": "toolu_01", "tool_name": "bash", "arguments": {"command": "rm -rf build/"},
            "route": "incidents", "channel": SLACK_CHANNEL, **overrides}


async def post_card(http: httpx.AsyncClient, token: str = ADMIN_TOKEN, **overrides: Any) -> httpx.Response:
    return await http.post("/approvals", json=card_request(**overrides), headers={"authorization": f"Bearer {token}"})


async def click(http: httpx.AsyncClient, standin: SlackStandIn, card_id: str, action: str = source.ACTION_APPROVE,
                user: str = APPROVER, team: str = SLACK_TEAM, key: str = "click") -> httpx.Response:
    payload = {"type": "block_actions", "user": {"id": user, "username": "bob", "team_id": team},
               "team": {"id": team, "domain": "example"}, "channel": {"id": SLACK_CHANNEL},
               "container": {"type": "message", "message_ts": "1700000000.000001", "channel_id": SLACK_CHANNEL},
               "trigger_id": "222.333.bbb", "response_url": standin.response_url(key),
               "actions": [{"action_id": action, "block_id": "relay_decision", "value": card_id, "type": "button",
                            "action_ts": "1700000002.000000"}]}
    body = urlencode({"payload": json.dumps(payload)}).encode()
    return await http.post("/slack/interactions", content=body, headers=signed(body, "application/x-www-form-urlencoded"))


async def submit_reason(http: httpx.AsyncClient, card_id: str, reason: str, user: str = APPROVER) -> httpx.Response:
    payload = {"type": "view_submission", "user": {"id": user, "username": "bob", "team_id": SLACK_TEAM},
               "team": {"id": SLACK_TEAM}, "view": {"callback_id": source.REASON_VIEW, "private_metadata": card_id,
                                                    "state": {"values": {"reason": {"reason_input": {
                                                        "type": "plain_text_input", "value": reason}}}}}}
    body = urlencode({"payload": json.dumps(payload)}).encode()
    return await http.post("/slack/interactions", content=body, headers=signed(body, "application/x-www-form-urlencoded"))


@pytest.mark.parametrize("token", ["", "wrong-token-wrong-token-wrong"])
async def test_approvals_refuse_missing_or_wrong_tokens(token: str, http: httpx.AsyncClient,
                                                        slack_stand_in: SlackStandIn) -> None:
    response = await post_card(http, token=token)
    assert response.status_code == 401
    assert slack_stand_in.of("chat.postMessage") == []


async def test_card_is_posted_once_per_tool_call(http: httpx.AsyncClient, slack_stand_in: SlackStandIn) -> None:
    first = await post_card(http)
    again = await post_card(http)
    assert first.status_code == 201 and again.status_code == 200
    assert first.json()["card_id"] == again.json()["card_id"] and again.json()["created"] is False
    [posted] = slack_stand_in.of("chat.postMessage")
    assert posted.body["channel"] == SLACK_CHANNEL
    actions = [b for b in posted.body["blocks"] if b["type"] == "actions"][0]["elements"]
    assert [a["action_id"] for a in actions] == [source.ACTION_APPROVE, source.ACTION_DENY,
                                                 source.ACTION_DENY_WITH_REASON]
    assert {a["value"] for a in actions} == {first.json()["card_id"]}


async def test_card_for_a_route_without_approvers_is_refused(http: httpx.AsyncClient) -> None:
    response = await post_card(http, route="everywhere")
    assert response.status_code == 400 and "no approvers" in response.json()["error"]


async def test_failed_slack_post_is_502_and_can_be_asked_again(http: httpx.AsyncClient,
                                                               slack_stand_in: SlackStandIn) -> None:
    slack_stand_in.fail("chat.postMessage", "channel_not_found")
    failed = await post_card(http)
    assert failed.status_code == 502 and "channel_not_found" in failed.json()["error"]
    assert (await post_card(http)).status_code == 201


async def test_approve_click_queues_the_decision_and_replaces_the_card(http: httpx.AsyncClient, queue: Queue,
                                                                       slack_stand_in: SlackStandIn) -> None:
    card_id = (await post_card(http)).json()["card_id"]
    response = await click(http, slack_stand_in, card_id)
    assert response.status_code == 200
    [envelope] = await queued(queue)
    assert envelope.kind == "approval" and envelope.route == "incidents"
    assert envelope.message == {"type": "approval", "approvals": [
        {"type": "approval", "tool_call_id": "toolu_01", "approve": True}]}
    [replacement] = slack_stand_in.responses("click")
    assert replacement["replace_original"] is True
    assert not [b for b in replacement["blocks"] if b["type"] == "actions"]  # no live buttons
    assert f"<@{APPROVER}>" in json.dumps(replacement["blocks"])


async def test_second_click_changes_nothing_and_says_so(http: httpx.AsyncClient, queue: Queue,
                                                        slack_stand_in: SlackStandIn) -> None:
    card_id = (await post_card(http)).json()["card_id"]
    await click(http, slack_stand_in, card_id, key="first")
    await click(http, slack_stand_in, card_id, action=source.ACTION_DENY, user="U0GROUPMEMBER", key="second")
    [envelope] = await queued(queue)
    assert envelope.message["approvals"][0]["approve"] is True
    notes = [r for r in slack_stand_in.responses("second") if r.get("response_type") == "ephemeral"]
    assert len(notes) == 1 and notes[0]["text"].startswith(f"Already approved by <@{APPROVER}>")


async def test_people_who_are_not_approvers_cannot_decide(http: httpx.AsyncClient, queue: Queue,
                                                          slack_stand_in: SlackStandIn) -> None:
    card_id = (await post_card(http)).json()["card_id"]
    await click(http, slack_stand_in, card_id, user="U0MALLORY", key="mallory")
    await click(http, slack_stand_in, card_id, team="T0OTHER", key="other-team")
    assert await queued(queue) == []
    for key in ("mallory", "other-team"):
        [note] = slack_stand_in.responses(key)
        assert note["response_type"] == "ephemeral" and note["text"].startswith("Not allowed")


async def test_members_of_an_approver_group_may_decide(http: httpx.AsyncClient, queue: Queue,
                                                       slack_stand_in: SlackStandIn) -> None:
    card_id = (await post_card(http)).json()["card_id"]
    await click(http, slack_stand_in, card_id, action=source.ACTION_DENY, user="U0GROUPMEMBER")
    [envelope] = await queued(queue)
    assert envelope.message["approvals"][0]["approve"] is False


async def test_click_on_an_unknown_card_sends_nothing(http: httpx.AsyncClient, queue: Queue,
                                                      slack_stand_in: SlackStandIn) -> None:
    await click(http, slack_stand_in, "no-such-card", key="stale")
    assert await queued(queue) == []
    [note] = slack_stand_in.responses("stale")
    assert "unknown or has expired" in note["text"]


async def test_deny_with_reason_opens_a_form_and_sends_the_reason(http: httpx.AsyncClient, queue: Queue,
                                                                  slack_stand_in: SlackStandIn) -> None:
    card_id = (await post_card(http)).json()["card_id"]
    await click(http, slack_stand_in, card_id, action=source.ACTION_DENY_WITH_REASON)
    [opened] = slack_stand_in.of("views.open")
    assert opened.body["trigger_id"] == "222.333.bbb"
    assert opened.body["view"]["private_metadata"] == card_id
    assert await queued(queue) == []  # opening the form decides nothing
    response = await submit_reason(http, card_id, "  not on a Friday  ")
    assert response.status_code == 200 and response.content == b""  # closes the modal
    [envelope] = await queued(queue)
    assert envelope.message["approvals"] == [
        {"type": "approval", "tool_call_id": "toolu_01", "approve": False, "reason": "not on a Friday"}]
    [update] = slack_stand_in.of("chat.update")
    assert "not on a Friday" in json.dumps(update.body["blocks"])


async def test_reason_from_someone_not_allowed_is_shown_in_the_form(http: httpx.AsyncClient, queue: Queue) -> None:
    card_id = (await post_card(http)).json()["card_id"]
    response = await submit_reason(http, card_id, "no", user="U0MALLORY")
    assert response.json()["response_action"] == "errors"
    assert response.json()["errors"]["reason"].startswith("Not allowed")
    assert await queued(queue) == []


async def test_racing_clicks_queue_exactly_one_decision(http: httpx.AsyncClient, queue: Queue,
                                                        slack_stand_in: SlackStandIn) -> None:
    card_id = (await post_card(http)).json()["card_id"]
    await asyncio.gather(*(click(http, slack_stand_in, card_id, action=action, user=user, key=f"race{i}")
                           for i, (action, user) in enumerate([(source.ACTION_APPROVE, APPROVER),
                                                               (source.ACTION_DENY, "U0GROUPMEMBER")] * 3)))
    assert len(await queued(queue)) == 1


# -- who asks comes first; response_url only under SLACK_HOOKS_URL -------------------------------------

@pytest.fixture
def elsewhere() -> Any:
    """Somewhere a signed payload's response_url could point that is not Slack (here: another stand-in)."""
    from tests.support import ServerThread

    sink = SlackStandIn()
    with ServerThread(sink.app) as server:
        sink.base_url = server.url
        yield sink


async def close_card(queue: Queue, slack_settings: Settings, slack_stand_in: SlackStandIn, tool_call_id: str) -> None:
    from relay.cards import Cards
    from relay.intake import Intake
    from relay.routing import Router

    slack = SlackApi(slack_settings.slack_bot_token, base_url=slack_stand_in.api_url)
    router = Router(slack_settings.routes)
    cards = Cards(queue, slack, router, Intake(queue))
    assert await cards.close(router.pick("incidents").destination, tool_call_id, "answered in the terminal")
    await slack.aclose()


@pytest.mark.parametrize("state", ["decided", "closed"])
@pytest.mark.parametrize("who", [{"user": "U0MALLORY"}, {"team": "T0OTHER"}], ids=["not-an-approver", "other-team"])
async def test_a_click_on_a_decided_or_closed_card_by_someone_not_allowed_shows_nothing_of_it(
        state: str, who: dict[str, str], http: httpx.AsyncClient, queue: Queue, slack_settings: Settings,
        slack_stand_in: SlackStandIn) -> None:
    card_id = (await post_card(http, arguments={"command": "cat /etc/secret-plan"})).json()["card_id"]
    if state == "decided":
        await click(http, slack_stand_in, card_id, key="approver")
    else:
        await close_card(queue, slack_settings, slack_stand_in, "toolu_01")
    response = await click(http, slack_stand_in, card_id, action=source.ACTION_DENY, key="outsider", **who)
    assert response.status_code == 200
    [note] = slack_stand_in.responses("outsider")
    assert note["response_type"] == "ephemeral" and note["text"].startswith("Not allowed")
    assert "secret-plan" not in json.dumps(note) and "blocks" not in note
    assert len(await queued(queue)) == (1 if state == "decided" else 0)


@pytest.mark.parametrize("state", ["decided", "closed"])
async def test_a_reason_on_a_decided_or_closed_card_from_someone_not_allowed_is_told_only_that(
        state: str, http: httpx.AsyncClient, queue: Queue, slack_settings: Settings,
        slack_stand_in: SlackStandIn) -> None:
    card_id = (await post_card(http)).json()["card_id"]
    if state == "decided":
        await click(http, slack_stand_in, card_id)
    else:
        await close_card(queue, slack_settings, slack_stand_in, "toolu_01")
    response = await submit_reason(http, card_id, "no", user="U0MALLORY")
    assert response.json()["errors"]["reason"].startswith("Not allowed")


async def test_an_approver_clicking_a_decided_card_is_still_shown_the_decision(
        http: httpx.AsyncClient, slack_stand_in: SlackStandIn) -> None:
    card_id = (await post_card(http)).json()["card_id"]
    await click(http, slack_stand_in, card_id, key="first")
    await click(http, slack_stand_in, card_id, user="U0GROUPMEMBER", key="second")
    texts = [r.get("text", "") for r in slack_stand_in.responses("second")]
    assert any(t.startswith(f"Already approved by <@{APPROVER}>") for t in texts)


async def test_a_command_whose_response_url_is_not_slacks_is_queued_but_nothing_is_posted_there(
        http: httpx.AsyncClient, queue: Queue, elsewhere: SlackStandIn, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING", logger="relay.web.slack"):
        response = await command(http, elsewhere)
    assert response.status_code == 200 and "Sent to" in response.json()["text"]
    [envelope] = await queued(queue)
    assert envelope.reply is None  # the worker has nowhere to say "Delivered"
    assert elsewhere.calls == []
    assert any("SLACK_HOOKS_URL" in r.getMessage() for r in caplog.records)
    assert all(elsewhere.base_url not in r.getMessage() + json.dumps(getattr(r, "fields", {}))
               for r in caplog.records)


async def test_a_click_whose_response_url_is_not_slacks_decides_but_posts_nothing_there(
        http: httpx.AsyncClient, queue: Queue, elsewhere: SlackStandIn) -> None:
    card_id = (await post_card(http)).json()["card_id"]
    response = await click(http, elsewhere, card_id)
    assert response.status_code == 200
    assert [e.kind for e in await queued(queue)] == ["approval"]
    outsider = await click(http, elsewhere, card_id, user="U0MALLORY", key="mallory")
    unknown = await click(http, elsewhere, "no-such-card", key="stale")
    assert outsider.status_code == unknown.status_code == 200
    assert elsewhere.calls == []
