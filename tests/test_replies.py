"""Telling the source what happened, against the loopback Slack stand-in."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import pytest

from relay import answers
from relay.cards import Cards
from relay.intake import Intake
from relay.messages import (ApprovalRequest, Envelope, Inbound, approval_decision, approval_message, client_message_id,
                            envelope_for, user_message)
from relay.origins import Origin
from relay.replies import Replier
from relay.routing import Destination, Route, Router
from relay.slack_api import SlackApi
from relay.sources import slack as source
from relay.sources.github import OWN_MARKER
from relay.status_frames import NO_LONGER_PENDING
from tests.conftest import APPROVER, SLACK_CHANNEL
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


# -- answers: the agent's reply, posted where the message came from ---------------------------------


def logged(caplog: pytest.LogCaptureFixture) -> str:
    """Every captured line with its structured fields."""
    return "\n".join(f"{r.getMessage()} {getattr(r, 'fields', {})}" for r in caplog.records)


def origin(reply: dict[str, Any], source: str = "slack") -> Origin:
    return Origin("r", source, reply, client_message_id("slack", "answered"))


async def test_an_answer_to_a_mention_is_posted_in_its_thread_escaped(replier: Replier,
                                                                      slack_stand_in: SlackStandIn) -> None:
    await replier.answer(origin({"via": "reaction", "channel": "C1", "ts": "1.2"}),
                         ["Checking <logs> & metrics…", "", "Done: <!channel> it was DNS."])
    [posted] = slack_stand_in.of("chat.postMessage")
    assert posted.body["channel"] == "C1" and posted.body["thread_ts"] == "1.2"
    assert posted.body["text"] == "Checking &lt;logs&gt; &amp; metrics…\n\nDone: &lt;!channel&gt; it was DNS."


async def test_an_answer_to_a_mention_inside_a_thread_goes_to_that_thread(replier: Replier,
                                                                          slack_stand_in: SlackStandIn) -> None:
    await replier.answer(origin({"via": "reaction", "channel": "C1", "ts": "1.2", "thread_ts": "1.0"}), ["ok"])
    [posted] = slack_stand_in.of("chat.postMessage")
    assert posted.body["thread_ts"] == "1.0"


async def test_a_long_answer_is_several_messages_in_order_then_truncated_with_a_note(
        replier: Replier, slack_stand_in: SlackStandIn) -> None:
    paragraphs = [f"Part {i}. " + "word " * 600 for i in range(6)]  # one fits a message, two do not
    await replier.answer(origin({"via": "reaction", "channel": "C1", "ts": "1.2"}), paragraphs)
    posted = [c.body["text"] for c in slack_stand_in.of("chat.postMessage")]
    assert len(posted) == answers.SLACK_MESSAGES_MAX
    assert [p.split(".")[0] for p in posted] == ["Part 0", "Part 1", "Part 2", "Part 3"]
    assert all(len(p) <= answers.SLACK_MESSAGE_MAX for p in posted)
    assert "(reply truncated: " in posted[-1] and "more characters)" in posted[-1]


async def test_an_answer_to_a_slash_command_goes_to_its_response_url_for_the_person_only(
        replier: Replier, slack_stand_in: SlackStandIn) -> None:
    await replier.answer(origin({"via": "response_url", "url": slack_stand_in.response_url("cmd")}), ["It was DNS."])
    assert slack_stand_in.of("chat.postMessage") == []
    [note] = slack_stand_in.responses("cmd")
    assert note == {"response_type": "ephemeral", "replace_original": False, "text": "It was DNS."}


async def test_a_slash_command_answer_never_uses_more_than_the_posts_left_on_its_response_url(
        replier: Replier, slack_stand_in: SlackStandIn) -> None:
    url = slack_stand_in.response_url("cmd")
    await replier.delivered(envelope({"via": "response_url", "url": url}))
    await replier.answer(origin({"via": "response_url", "url": url}), ["word " * 50_000])
    assert len(slack_stand_in.responses("cmd")) == 5  # Slack's limit per response_url


async def test_an_expired_response_url_is_logged_and_nothing_else_is_tried(
        replier: Replier, slack_stand_in: SlackStandIn, caplog: pytest.LogCaptureFixture) -> None:
    slack_stand_in.fail("response:cmd", "expired_url")
    with caplog.at_level(logging.WARNING):
        await replier.answer(origin({"via": "response_url", "url": slack_stand_in.response_url("cmd")}),
                             ["word " * 5000])
    assert len(slack_stand_in.responses("cmd")) == 1  # the first post failed; the rest were not sent
    assert slack_stand_in.of("chat.postMessage") == []
    assert "could not post the answer" in logged(caplog) and "word" not in logged(caplog)


async def test_a_slack_failure_while_answering_is_logged_not_raised(
        replier: Replier, slack_stand_in: SlackStandIn, caplog: pytest.LogCaptureFixture) -> None:
    slack_stand_in.fail("chat.postMessage", "not_in_channel")
    with caplog.at_level(logging.WARNING):
        await replier.answer(origin({"via": "reaction", "channel": "C1", "ts": "1.2"}), ["secret plan"])
    assert "not_in_channel" in logged(caplog) and "secret plan" not in logged(caplog)


@pytest.mark.parametrize("reply", [{}, {"via": "card", "channel": "C1", "ts": "9.9"},
                                   {"via": "github", "repository": "o/r", "comment_id": 1, "api": "issues",
                                    "number": 2}])
async def test_answers_without_a_place_to_go_post_nothing(replier: Replier, slack_stand_in: SlackStandIn,
                                                          reply: dict[str, Any]) -> None:
    await replier.answer(origin(reply), ["hello"])  # this replier has no GitHub client
    assert slack_stand_in.calls == []


async def test_an_empty_answer_posts_nothing(replier: Replier, slack_stand_in: SlackStandIn) -> None:
    await replier.answer(origin({"via": "reaction", "channel": "C1", "ts": "1.2"}), ["", "  \n"])
    assert slack_stand_in.calls == []


@pytest.fixture
async def github_replier(github_stand_in):  # type: ignore[no-untyped-def]
    from relay.github_api import GitHubApi

    github = GitHubApi("ghp_t", base_url=github_stand_in.base_url)
    yield Replier(None, github)
    await github.aclose()


async def test_an_answer_to_an_issue_comment_is_a_new_comment_marked_as_relays(
        github_replier: Replier, github_stand_in) -> None:  # type: ignore[no-untyped-def]
    reply = {"via": "github", "repository": "octo/hello", "comment_id": 7, "api": "issues", "number": 42}
    await github_replier.answer(origin(reply, "github"), ["Fixed in #43.", "Anything else?"])
    [comment] = github_stand_in.comments
    assert (comment.repository, comment.number, comment.in_reply_to) == ("octo/hello", 42, None)
    assert comment.body == "Fixed in #43.\n\nAnything else?\n\n" + OWN_MARKER


async def test_an_answer_to_a_review_comment_is_a_reply_in_its_review_thread(
        github_replier: Replier, github_stand_in) -> None:  # type: ignore[no-untyped-def]
    reply = {"via": "github", "repository": "octo/hello", "comment_id": 7, "api": "pulls", "number": 5}
    await github_replier.answer(origin(reply, "github"), ["Good catch; renamed."])
    [comment] = github_stand_in.comments
    assert (comment.number, comment.in_reply_to) == (5, 7)


async def test_a_huge_github_answer_is_one_truncated_comment(github_replier: Replier,
                                                            github_stand_in) -> None:  # type: ignore[no-untyped-def]
    reply = {"via": "github", "repository": "octo/hello", "comment_id": 7, "api": "issues", "number": 42}
    await github_replier.answer(origin(reply, "github"), ["x" * 100_000])
    [comment] = github_stand_in.comments
    assert len(comment.body) <= answers.GITHUB_COMMENT_MAX and "(reply truncated: " in comment.body


async def test_github_failures_and_old_reply_targets_are_logged_not_raised(
        github_replier: Replier, github_stand_in, caplog: pytest.LogCaptureFixture) -> None:  # type: ignore[no-untyped-def]
    github_stand_in.failures.append(403)
    reply = {"via": "github", "repository": "octo/hello", "comment_id": 7, "api": "issues", "number": 42}
    with caplog.at_level(logging.WARNING):
        await github_replier.answer(origin(reply, "github"), ["hello"])
        await github_replier.answer(origin({k: v for k, v in reply.items() if k != "number"}, "github"), ["hi"])
    assert github_stand_in.comments == []
    assert "HTTP 403" in logged(caplog) and "lacks what an answer needs" in logged(caplog)


# -- settled: a decision the device no longer waited for ----------------------------------------------


async def test_a_settled_card_decision_closes_its_card_as_no_longer_pending_and_notes_it_in_the_thread(
        queue, slack_settings, slack_stand_in: SlackStandIn) -> None:  # type: ignore[no-untyped-def]
    slack = SlackApi(slack_settings.slack_bot_token, base_url=slack_stand_in.api_url)
    cards = Cards(queue, slack, Router(slack_settings.routes), Intake(queue))
    [route] = [r for r in slack_settings.routes if r.name == "incidents"]
    request = ApprovalRequest("perm-toolu_1", "toolu_1", "Bash", {"command": "ls"}, route.destination.agent_id)
    card, _ = await cards.ask(route, request, SLACK_CHANNEL, "1700000000.000100")
    decision = source.Decision(approve=True, user=APPROVER, user_name="bob", at=1700000001.0)
    await cards.decide(card, decision)  # the click: decided, and its approval message queued
    decided = envelope_for(card.decision_inbound(decision), Route(card.route, card.destination), time.time())
    try:
        await Replier(slack, cards=cards).settled(decided, "settled: the device says: no longer pending")
    finally:
        await slack.aclose()
    closed = await cards.load(card.card_id)
    assert closed is not None and closed.closed == NO_LONGER_PENDING and closed.decision == decision
    [update] = slack_stand_in.of("chat.update")
    assert update.body["ts"] == card.ts and NO_LONGER_PENDING in json.dumps(update.body["blocks"])
    assert not [b for b in update.body["blocks"] if b["type"] == "actions"]  # no live buttons
    [note] = [c for c in slack_stand_in.of("chat.postMessage") if c.body.get("thread_ts") == card.ts]
    assert "no longer waiting on this decision" in note.body["text"] and "nothing was sent" in note.body["text"]


async def test_a_settled_github_decision_gets_a_comment_saying_nothing_was_sent(
        github_replier: Replier, github_stand_in) -> None:  # type: ignore[no-untyped-def]
    reply = {"via": "github", "repository": "octo/hello", "comment_id": 7, "api": "issues", "number": 42}
    inbound = Inbound("github", "c-7", client_message_id("github", "c-7"),
                      approval_message([approval_decision("toolu_1", True)]), reply=reply)
    decided = envelope_for(inbound, Route("r", Destination(agent_id="agent-7", device_id="d")), time.time())
    await github_replier.settled(decided, "settled")
    [comment] = github_stand_in.comments
    assert (comment.repository, comment.number) == ("octo/hello", 42)
    assert "no longer waiting on this decision" in comment.body and "nothing was sent" in comment.body
    assert comment.body.endswith(OWN_MARKER)  # relay's own: never read as a request
    assert github_stand_in.reactions == []  # not a failure: no confused reaction


async def test_a_settled_decision_without_cards_or_a_place_to_say_so_tells_nobody(
        replier: Replier, slack_stand_in: SlackStandIn) -> None:
    await replier.settled(envelope(None), "settled")
    await replier.settled(envelope({"via": "reaction", "channel": "C1", "ts": "1.2"}), "settled")
    assert slack_stand_in.calls == []
