"""Telling the source what happened, against the loopback Slack stand-in."""

from __future__ import annotations

import logging
import time
from typing import Any

import pytest

from relay.messages import Envelope, Inbound, client_message_id, envelope_for, user_message
from relay.replies import Replier
from relay.routing import Destination, Route
from relay.slack_api import SlackApi
from tests.slack_standin import SlackStandIn

pytestmark = pytest.mark.anyio


def envelope(reply: dict[str, Any] | None) -> Envelope:
    message_id = client_message_id("slack", "x")
    inbound = Inbound("slack", "x", message_id, user_message("hi", message_id), reply=reply)
    return envelope_for(inbound, Route("r", Destination(agent_id="agent-7", device_id="d")), time.time())


@pytest.fixture
async def replier(slack_stand_in: SlackStandIn):  # type: ignore[no-untyped-def]
    slack = SlackApi("xoxb-t", base_url=slack_stand_in.api_url)
    yield Replier(slack)
    await slack.aclose()


async def test_command_hears_delivered_then_nothing_more(replier: Replier, slack_stand_in: SlackStandIn) -> None:
    await replier.delivered(envelope({"via": "response_url", "url": slack_stand_in.response_url("c")}))
    [note] = slack_stand_in.responses("c")
    assert note["response_type"] == "ephemeral" and note["replace_original"] is False
    assert "Delivered to agent `agent-7`" in note["text"]


async def test_command_hears_why_it_could_not_be_delivered(replier: Replier, slack_stand_in: SlackStandIn) -> None:
    failed = envelope({"via": "response_url", "url": slack_stand_in.response_url("c")})
    await replier.failed(failed, "HTTP 422: <content too long> " + "x" * 1000)
    [note] = slack_stand_in.responses("c")
    assert "Could not deliver to agent `agent-7`: HTTP 422: &lt;content too long&gt;" in note["text"]
    assert len(note["text"]) < 400


async def test_mention_gets_a_check_mark_when_delivered(replier: Replier, slack_stand_in: SlackStandIn) -> None:
    await replier.delivered(envelope({"via": "reaction", "channel": "C1", "ts": "1.2"}))
    [reaction] = slack_stand_in.of("reactions.add")
    assert reaction.body == {"channel": "C1", "timestamp": "1.2", "name": "white_check_mark"}
    assert slack_stand_in.of("chat.postMessage") == []


async def test_mention_gets_a_warning_and_a_thread_note_when_it_fails(replier: Replier,
                                                                      slack_stand_in: SlackStandIn) -> None:
    await replier.failed(envelope({"via": "reaction", "channel": "C1", "ts": "1.2"}), "gave up after 9 attempts")
    assert [r.body["name"] for r in slack_stand_in.of("reactions.add")] == ["warning"]
    [note] = slack_stand_in.of("chat.postMessage")
    assert note.body["thread_ts"] == "1.2" and "gave up after 9 attempts" in note.body["text"]


async def test_failed_decision_is_noted_under_its_card_with_the_replay_command(
        replier: Replier, slack_stand_in: SlackStandIn) -> None:
    decision = envelope({"via": "card", "channel": "C1", "ts": "9.9"})
    await replier.delivered(decision)
    assert slack_stand_in.calls == []  # the card already shows the decision
    await replier.failed(decision, "HTTP 400: no such tool call")
    [note] = slack_stand_in.of("chat.postMessage")
    assert note.body["thread_ts"] == "9.9"
    assert f"relay dlq replay {decision.client_message_id}" in note.body["text"]


async def test_slack_failures_are_logged_not_raised(replier: Replier, slack_stand_in: SlackStandIn,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    slack_stand_in.fail("reactions.add", "channel_not_found")
    with caplog.at_level(logging.WARNING):
        await replier.delivered(envelope({"via": "reaction", "channel": "C1", "ts": "1.2"}))
    assert "could not tell the source" in caplog.text


async def test_messages_without_a_reply_target_tell_nobody(replier: Replier, slack_stand_in: SlackStandIn) -> None:
    await replier.delivered(envelope(None))
    await replier.failed(envelope(None), "x")
    assert slack_stand_in.calls == []


async def test_github_comment_gets_a_rocket_when_delivered_and_confused_when_not(
        github_stand_in) -> None:  # type: ignore[no-untyped-def]
    from relay.github_api import GitHubApi

    github = GitHubApi("ghp_t", base_url=github_stand_in.base_url)
    replier = Replier(None, github)
    reply = {"via": "github", "repository": "octo/hello", "comment_id": 7, "api": "pulls"}
    await replier.delivered(envelope(reply))
    await replier.failed(envelope(reply), "gave up")
    await github.aclose()
    assert github_stand_in.contents() == ["rocket", "confused"]
    assert {(r.repository, r.api, r.comment_id) for r in github_stand_in.reactions} == {("octo/hello", "pulls", 7)}
    assert github_stand_in.reactions[0].authorization == "Bearer ghp_t"
