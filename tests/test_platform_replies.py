"""What Linear, GitLab and Discord are told about a message, and how the agent's answer gets
there (platform_replies.py, through Replier), against their loopback stand-ins."""

from __future__ import annotations

import time
from typing import Any, AsyncIterator, Iterator

import pytest

from relay.discord_api import DiscordApi
from relay.gitlab_api import GitLabApi
from relay.linear_api import LinearApi
from relay.messages import Envelope, user_message
from relay.origins import Origin
from relay.platform_replies import (DISCORD_MESSAGE_MAX, DISCORD_MESSAGES_MAX, DiscordReplies, GitLabReplies,
                                    LinearReplies, discord_messages)
from relay.replies import Replier
from relay.routing import Destination
from tests.discord_standin import TOKEN_LIFETIME, DiscordStandIn
from tests.gitlab_standin import GitLabStandIn
from tests.linear_standin import LinearStandIn
from tests.support import ServerThread

pytestmark = pytest.mark.anyio
SESSION = "session-1"
TURN_ERROR = "The agent's turn ended with an error (stop reason: error): the model is unavailable"


def envelope(reply: dict[str, Any]) -> Envelope:
    return Envelope("id-1", "user", "x", "d-1", "r", Destination(agent_id="agent-1", device_id="dev"),
                    user_message("hi", "id-1"), 0.0, 0.0, reply=reply)


@pytest.fixture
def linear_stand_in() -> Iterator[LinearStandIn]:
    standin = LinearStandIn(sessions={SESSION})
    with ServerThread(standin.app) as server:
        standin.url = server.url + "/graphql"
        yield standin


@pytest.fixture
async def linear(linear_stand_in: LinearStandIn) -> AsyncIterator[Replier]:
    api = LinearApi(linear_stand_in.token, url=linear_stand_in.url)
    yield Replier(others={"linear": LinearReplies(api)})
    await api.aclose()


async def test_a_linear_session_is_told_delivered_and_failed(linear: Replier, linear_stand_in: LinearStandIn) -> None:
    await linear.delivered(envelope({"via": "linear", "session": SESSION}))
    await linear.failed(envelope({"via": "linear", "session": SESSION}), "http_400: refused")
    assert linear_stand_in.kinds() == ["thought", "error"]
    assert linear_stand_in.activities[0].ephemeral and "refused" in linear_stand_in.activities[1].body


async def test_a_failed_turn_is_a_response_then_an_error_activity(linear: Replier,
                                                                 linear_stand_in: LinearStandIn) -> None:
    origin = Origin("r", "linear", {"via": "linear", "session": SESSION}, "id-1")
    await linear.answer(origin, ["I looked at the logs.", TURN_ERROR])
    assert [(a.type, a.body) for a in linear_stand_in.activities] == [("response", "I looked at the logs."),
                                                                     ("error", TURN_ERROR)]


async def test_a_linear_comment_is_answered_in_its_thread_marked_as_relays(
        linear: Replier, linear_stand_in: LinearStandIn) -> None:
    reply = {"via": "linear", "issue": "issue-1", "comment": "comment-1"}
    await linear.delivered(envelope(reply))
    await linear.answer(Origin("r", "linear", reply, "id-1"), ["Done."])
    [comment] = linear_stand_in.comments
    assert (comment.issue, comment.parent, comment.body) == ("issue-1", "comment-1", "Done.\n\n<!-- relay -->")
    assert linear_stand_in.reactions == [("comment-1", "🚀")]


async def test_linear_refusing_an_activity_is_logged_not_raised(linear: Replier, linear_stand_in: LinearStandIn,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    await linear.delivered(envelope({"via": "linear", "session": "a-session-linear-never-made"}))
    assert linear_stand_in.refused == ["Entity not found: AgentSession"]
    assert "could not tell the source" in caplog.text


@pytest.fixture
def gitlab_stand_in() -> Iterator[GitLabStandIn]:
    standin = GitLabStandIn()
    with ServerThread(standin.app) as server:
        standin.url = server.url
        yield standin


async def test_a_gitlab_note_gets_rocket_or_confused_and_a_settled_decision_a_note(
        gitlab_stand_in: GitLabStandIn) -> None:
    api = GitLabApi(gitlab_stand_in.token, url=gitlab_stand_in.url)
    replier = Replier(others={"gitlab": GitLabReplies(api)})
    reply = {"via": "gitlab", "project": 5, "noteable": "merge_requests", "iid": 1, "note": 9, "discussion": "ab12"}
    await replier.delivered(envelope(reply))
    await replier.failed(envelope(reply), "expired")
    await replier.settled(envelope(reply), "no longer pending")
    await replier.answer(Origin("r", "gitlab", reply, "id-1"), ["Looks fine.", ""])
    await api.aclose()
    assert gitlab_stand_in.names() == ["rocket", "confused"]
    assert [(n.discussion, n.body) for n in gitlab_stand_in.notes] == [
        ("ab12", "The agent is no longer waiting on this decision (no longer pending: answered elsewhere, or the "
                 "request ended); nothing was sent.\n\n<!-- relay -->"),
        ("ab12", "Looks fine.\n\n<!-- relay -->")]


@pytest.fixture
def discord_stand_in() -> Iterator[DiscordStandIn]:
    now = [time.time()]
    standin = DiscordStandIn(clock=lambda: now[0])
    standin.now = now  # type: ignore[attr-defined]
    with ServerThread(standin.app) as server:
        standin.base_url = server.url
        yield standin


DISCORD = {"via": "discord", "application": "11", "token": "tok-1", "channel": "22"}


async def test_a_discord_command_s_answer_is_edited_then_followed_up(discord_stand_in: DiscordStandIn) -> None:
    discord_stand_in.interaction("11", "tok-1")
    api = DiscordApi(discord_stand_in.bot_token, base_url=discord_stand_in.base_url)
    replier = Replier(others={"discord": DiscordReplies(api)})
    await replier.delivered(envelope(DISCORD))
    await replier.answer(Origin("r", "discord", DISCORD, "id-1"), ["x" * 5000])
    await api.aclose()
    assert discord_stand_in.kinds() == ["edit_original", "follow_up", "follow_up", "follow_up"]
    assert all(len(c.data["content"]) <= 2000 and c.data["allowed_mentions"] == {"parse": []}
               for c in discord_stand_in.calls)


async def test_an_answer_after_the_interaction_token_expired_comes_from_the_bot(
        discord_stand_in: DiscordStandIn) -> None:
    discord_stand_in.interaction("11", "tok-1")
    discord_stand_in.now[0] += TOKEN_LIFETIME + 1  # type: ignore[attr-defined]
    api = DiscordApi(discord_stand_in.bot_token, base_url=discord_stand_in.base_url)
    await Replier(others={"discord": DiscordReplies(api)}).answer(Origin("r", "discord", DISCORD, "id-1"),
                                                                         ["late, but here"])
    await api.aclose()
    assert discord_stand_in.refused == ["Invalid Webhook Token"]
    [post] = discord_stand_in.calls
    assert (post.kind, post.where, post.data["content"]) == ("post_message", "22", "late, but here")


async def test_without_the_bot_a_late_answer_is_dropped_and_logged(discord_stand_in: DiscordStandIn,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    api = DiscordApi(None, base_url=discord_stand_in.base_url)
    await Replier(others={"discord": DiscordReplies(api)}).answer(Origin("r", "discord", DISCORD, "id-1"),
                                                                            ["never seen"])
    await api.aclose()
    assert "could not post the answer" in caplog.text and discord_stand_in.calls == []


def test_discord_answers_are_cut_into_at_most_four_messages_with_a_note() -> None:
    text = ("word " * 3000).strip()
    messages = discord_messages(text)
    assert len(messages) == DISCORD_MESSAGES_MAX and all(len(m) <= DISCORD_MESSAGE_MAX for m in messages)
    assert messages[-1].endswith("more characters)")
    assert discord_messages("short") == ["short"]


async def test_a_running_linear_session_shows_each_change_of_what_the_agent_does(
        linear_stand_in: LinearStandIn) -> None:
    import fakeredis

    from relay.progress import ProgressBoard
    from relay.queue import Queue

    api = LinearApi(linear_stand_in.token, url=linear_stand_in.url)
    redis = fakeredis.FakeAsyncRedis(decode_responses=True)
    board = ProgressBoard(Queue(redis, prefix="progress-test"), None, None, linear=LinearReplies(api))
    origin = Origin("r", "linear", {"via": "linear", "session": SESSION}, "id-1")
    assert board.shows(origin) and not board.shows(Origin("r", "linear", {"via": "linear", "comment": "c"}, "id-2"))
    for activity in ("thinking", "thinking", "running Bash", "waiting for an approval to run Bash"):
        await board.show(origin, "key-1", (), activity)
        await redis.delete("progress-test:rec:progress-lease:key-1")  # as if LINEAR_EVERY had passed
    await api.aclose()
    await redis.aclose()
    assert [(a.type, a.body or a.content.get("parameter")) for a in linear_stand_in.activities] == [
        ("thought", "Thinking…"), ("action", "Bash"), ("thought", "Waiting for an approval to run Bash…")]
    assert linear_stand_in.activities[1].content["action"] == "Running"


async def test_a_decision_the_device_no_longer_waits_for_closes_its_discord_card(
        discord_stand_in: DiscordStandIn) -> None:
    import fakeredis

    from relay.discord_cards import DiscordCards
    from relay.intake import Intake
    from relay.messages import ApprovalRequest, approval_decision, approval_message
    from relay.queue import Queue
    from relay.routing import Route, Router

    api = DiscordApi(discord_stand_in.bot_token, base_url=discord_stand_in.base_url)
    redis = fakeredis.FakeAsyncRedis(decode_responses=True)
    queue = Queue(redis, prefix="discord-settle")
    route = Route("r", Destination(agent_id="agent-1", device_id="dev"))
    cards = DiscordCards(queue, api, Router([route]), Intake(queue))
    card, _ = await cards.ask(route, ApprovalRequest("req", "toolu_1", "Bash", {}, "agent-1"), "22")
    decision = replace_message(envelope({"via": "discord-card", "channel": "22", "message": card.message_id}),
                               approval_message([approval_decision("toolu_1", True)]))
    await Replier(others={"discord-card": DiscordReplies(api, cards)}).settled(decision, "gone")
    await api.aclose()
    await redis.aclose()
    edit = discord_stand_in.calls[-1]
    assert edit.kind == "edit_message" and edit.data["components"] == []
    assert "no longer pending" in edit.data["content"]


def replace_message(e: Envelope, message: dict[str, Any]) -> Envelope:
    from dataclasses import replace

    return replace(e, kind="approval", message=message)
