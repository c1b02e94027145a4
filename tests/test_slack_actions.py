"""relay/slack_actions.py, door-neutral: the Answer each Slack request gets (whether to
acknowledge, what to say at once, what to do after), on fakeredis and real Redis."""

from __future__ import annotations

import time
from typing import AsyncIterator

import pytest

from relay.cards import Cards
from relay.intake import Intake
from relay.metrics import Metrics
from relay.queue import Queue, connect
from relay.routing import Router
from relay.settings import Settings
from relay.slack_actions import NOT_STORED, Answer, SlackActions
from relay.slack_api import SlackApi
from relay.sources.slack import Challenge, Click, Command, Ignored, Mention
from tests.conftest import SLACK_CHANNEL, SLACK_TEAM
from tests.slack_standin import SlackStandIn
from tests.support import free_port

pytestmark = pytest.mark.anyio


@pytest.fixture
async def slack(slack_settings: Settings, slack_stand_in: SlackStandIn) -> AsyncIterator[SlackApi]:
    client = SlackApi(slack_settings.slack_bot_token, base_url=slack_stand_in.api_url)
    yield client
    await client.aclose()


def actions_for(settings: Settings, queue: Queue, slack: SlackApi) -> SlackActions:
    router, intake = Router(settings.routes, settings.slack_fallback), Intake(queue)
    return SlackActions(settings, intake, router, slack, Cards(queue, slack, router, intake), time.time, Metrics())


def mention(ts: str = "1700000001.000100") -> Mention:
    return Mention(team=SLACK_TEAM, channel=SLACK_CHANNEL, user="U0ALICE", text="summarize", ts=ts,
                   event_id=f"Ev{ts}", kind="mention")


def command(standin: SlackStandIn, text: str = "summarize the incident") -> Command:
    return Command(team=SLACK_TEAM, channel=SLACK_CHANNEL, user="U0ALICE", user_name="alice", command="/agent",
                   text=text, response_url=standin.response_url("cmd"), trigger_id="1.2.3")


async def test_a_mention_is_stored_once_and_acknowledged_each_time(queue: Queue, slack_settings: Settings,
                                                                  slack: SlackApi) -> None:
    actions = actions_for(slack_settings, queue, slack)
    assert await actions.answer(mention()) == Answer()
    assert await actions.answer(mention()) == Answer()  # a resend: acknowledged, not stored again
    assert (await queue.stats()).ready == 1


async def test_an_event_that_could_not_be_stored_is_not_acknowledged(slack_settings: Settings,
                                                                    slack: SlackApi) -> None:
    redis = connect(f"redis://127.0.0.1:{free_port()}/0", socket_timeout=1.0)
    try:
        answer = await actions_for(slack_settings, Queue(redis), slack).answer(mention())
    finally:
        await redis.aclose()
    assert answer == NOT_STORED and answer.acknowledge is False


async def test_a_mention_no_route_takes_is_acknowledged_and_dropped(queue: Queue, slack_settings: Settings,
                                                                    slack: SlackApi) -> None:
    stranger = Mention(team="T0STRANGER", channel=SLACK_CHANNEL, user="U0ALICE", text="hi", ts="1.2",
                       event_id="Ev1", kind="mention")
    assert await actions_for(slack_settings, queue, slack).answer(stranger) == Answer()
    assert (await queue.stats()).ready == 0


async def test_a_command_relay_could_not_queue_is_answered_so_not_resent(slack_settings: Settings, slack: SlackApi,
                                                                        slack_stand_in: SlackStandIn) -> None:
    redis = connect(f"redis://127.0.0.1:{free_port()}/0", socket_timeout=1.0)
    try:
        answer = await actions_for(slack_settings, Queue(redis), slack).answer(command(slack_stand_in))
    finally:
        await redis.aclose()
    assert answer.acknowledge and answer.body is not None  # Slack never resends a command: say so instead
    assert answer.body["text"] == "Not sent: relay could not queue the message just now. Please try again."


async def test_challenges_and_ignored_events_are_answered_without_storing(queue: Queue, slack_settings: Settings,
                                                                         slack: SlackApi) -> None:
    actions = actions_for(slack_settings, queue, slack)
    assert await actions.answer(Challenge("abc")) == Answer(body={"challenge": "abc"})
    assert await actions.answer(Ignored("a bot's message")) == Answer()
    assert (await queue.stats()).ready == 0


async def test_a_command_is_answered_at_once_with_an_ephemeral_note(queue: Queue, slack_settings: Settings,
                                                                   slack: SlackApi,
                                                                   slack_stand_in: SlackStandIn) -> None:
    actions = actions_for(slack_settings, queue, slack)
    answer = await actions.answer(command(slack_stand_in))
    assert answer.acknowledge and answer.then is None
    assert answer.body == {"response_type": "ephemeral",
                           "text": "Sent to agent `agent-incidents` (route `incidents`). "
                                   "I'll confirm here when it is delivered."}
    usage = await actions.answer(command(slack_stand_in, text=""))
    assert usage.body is not None and "for example `/agent summarize the incident`" in usage.body["text"]


async def test_a_click_on_an_unknown_card_says_so_only_when_the_door_runs_then(
        queue: Queue, slack_settings: Settings, slack: SlackApi, slack_stand_in: SlackStandIn) -> None:
    click = Click(action="approve", card_id="no-such-card", team=SLACK_TEAM, user="U0ALICE", user_name="alice",
                  response_url=slack_stand_in.response_url("click"), trigger_id="9.9.9")
    answer = await actions_for(slack_settings, queue, slack).answer(click)
    assert answer.acknowledge and answer.body is None and answer.then is not None
    assert slack_stand_in.responses("click") == []  # nothing before the answer is sent
    await answer.then()
    [note] = slack_stand_in.responses("click")
    assert note["response_type"] == "ephemeral" and "unknown or has expired" in note["text"]


async def test_what_runs_after_the_answer_never_raises(queue: Queue, slack_settings: Settings, slack: SlackApi,
                                                       slack_stand_in: SlackStandIn) -> None:
    slack_stand_in.fail("response:click", "expired_url")
    click = Click(action="approve", card_id="no-such-card", team=SLACK_TEAM, user="U0ALICE", user_name="alice",
                  response_url=slack_stand_in.response_url("click"), trigger_id="9.9.9")
    answer = await actions_for(slack_settings, queue, slack).answer(click)
    assert answer.then is not None
    await answer.then()  # Slack refused the note: logged, not raised
    assert len(slack_stand_in.of("response:click")) == 1


def test_the_module_needs_no_web_framework() -> None:
    import ast
    from pathlib import Path

    import relay.slack_actions

    tree = ast.parse(Path(relay.slack_actions.__file__).read_text())
    imported = {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)} | \
        {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert not {m for m in imported if m.split(".")[0] in ("starlette", "slack_sdk") or m.startswith("relay.web")}

