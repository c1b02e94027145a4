"""relay watch against real parts: the strict Letta stand-in (server and simulated device) on a
loopback port, Redis (fakeredis and real), real Cards/Origins/Replier over the Slack stand-in."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from dataclasses import replace
from typing import Any, AsyncIterator, Iterator

import pytest
from tenacity import wait_none

from relay.cards import Cards
from relay.errors import ResolveFailed
from relay.intake import Intake
from relay.letta import LettaClient
from relay.approval_delivery import REQUEST_KIND
from relay.messages import Inbound, client_message_id, envelope_for, tool_call_key, user_message
from relay.origins import Origins
from relay.policy import Backoff, Outcome
from relay.progress import ProgressBoard
from relay.queue import Queue
from relay.replies import Replier
from relay.routing import Destination, Route, Router, SlackRule, WatchRule
from relay.settings import Settings
from relay.slack_api import SlackApi
from relay.standin import Device, LettaStandIn, SimulatedDevice
from relay.status_frames import ANSWERED_ELSEWHERE, NO_LONGER_PENDING
from relay.status_session import TurnEnded
from relay.watch import Watcher
from relay.watch_events import ANSWERED_KIND, reply_texts
from tests.conftest import APPROVER, SLACK_TEAM
from tests.slack_standin import SlackStandIn
from tests.support import ServerThread

pytestmark = pytest.mark.anyio

AGENT, CONVERSATION, DEVICE = "agent-watch", "conv-watch", "device-watch"
SCOPE = (AGENT, CONVERSATION)
CARD_CHANNEL = "C0CARDS"
API_KEY = "test-key"


@pytest.fixture
def letta_sockets() -> Iterator[tuple[LettaStandIn, str]]:
    """The strict stand-in, its device scripted by each test (no turns of its own)."""
    letta = LettaStandIn([Device(DEVICE, "watch-box", "conn-watch-1", simulated=SimulatedDevice(auto_turns=False))],
                         api_key=API_KEY)
    with ServerThread(letta.app) as server:
        yield letta, server.url


def commands_of(letta: LettaStandIn, kind: str) -> list[dict[str, Any]]:
    with letta._changed:
        return [c.frame for c in letta.commands if c.frame.get("type") == kind]


def watched_settings(settings: Settings, slack_url: str) -> Settings:
    route = Route("watched", Destination(agent_id=AGENT, conversation_id=CONVERSATION, device_id=DEVICE),
                  slack=SlackRule(teams=(SLACK_TEAM,), approvers=(APPROVER,)),
                  watch=WatchRule(slack_channel=CARD_CHANNEL))
    return replace(settings, routes=(*settings.routes, route), slack_bot_token="xoxb-test",
                   slack_api_base_url=slack_url, letta_api_key=API_KEY, resolve_ttl=0.3)


class World:
    """Everything one watcher needs, and ways to run one or several."""

    def __init__(self, settings: Settings, redis: Any, prefix: str, letta_url: str, slack_url: str) -> None:
        self.settings, self.redis, self.prefix = settings, redis, prefix
        self.letta_url, self.slack_url = letta_url, slack_url
        self.queue = Queue(redis, prefix=prefix)
        self.origins = Origins(redis, prefix)
        self.route = next(r for r in settings.routes if r.name == "watched")

    @contextlib.asynccontextmanager
    async def watcher(self, *, resolver: Any = None, progress: bool = False) -> AsyncIterator[Watcher]:
        letta = LettaClient(self.letta_url, API_KEY, retry_wait=wait_none(), resolve_ttl=0.2)
        slack = SlackApi("xoxb-test", base_url=self.slack_url)
        router = Router(self.settings.routes)
        cards = Cards(self.queue, slack, router, Intake(self.queue))
        resolving = resolver(letta) if resolver is not None else letta
        watcher = Watcher(self.settings, self.queue, resolving, cards, self.origins, Replier(slack),
                          progress=ProgressBoard(self.queue, slack, None) if progress else None,
                          rng=random.Random(7), backoff=Backoff(0.05, 0.2), recall_wait=0.5, check_every=0.3)
        stop = asyncio.Event()
        task = asyncio.create_task(watcher.run(stop))
        try:
            yield watcher
        finally:
            stop.set()
            await asyncio.wait_for(task, timeout=20)
            await letta.aclose()
            await slack.aclose()

    async def remember(self, text: str, reply: dict[str, Any]) -> str:
        """A message relay delivered for this route: its id, with its origin on record."""
        message_id = client_message_id("slack", text)
        inbound = Inbound("slack", text, message_id, user_message(text, message_id), route="watched", reply=reply)
        await self.origins.remember(envelope_for(inbound, self.route, time.time()))
        return message_id


@pytest.fixture
def world(settings: Settings, redis_client: Any, prefix: str, letta_sockets: tuple[LettaStandIn, str],
          slack_stand_in: SlackStandIn) -> World:
    _, url = letta_sockets
    return World(watched_settings(settings, slack_stand_in.api_url), redis_client, prefix, url,
                 slack_stand_in.api_url)


async def until(predicate: Any, timeout: float = 10.0) -> None:
    assert await asyncio.to_thread(predicate, timeout)


def cards_posted(slack: SlackStandIn) -> list[Any]:
    return [c for c in slack.of("chat.postMessage") if "Approval needed" in c.body.get("text", "")]


# -- connecting --------------------------------------------------------------------------


async def test_the_watcher_opens_one_socket_with_bearer_auth_and_asks_for_the_state(
        world: World, letta_sockets: tuple[LettaStandIn, str]) -> None:
    letta, _ = letta_sockets
    async with world.watcher():
        await until(lambda t: letta.wait_for_open(1, SCOPE, timeout=t))
        await until(lambda t: letta.wait_for(lambda s: len(commands_of(s, "sync")) >= 1, t))
        await asyncio.sleep(0.2)
    [opened] = letta.sockets
    assert (opened.connection_id, opened.authorization) == ("conn-watch-1", f"Bearer {API_KEY}")
    assert letta.refused == []  # no channel parameter: the stand-in refuses one, as Letta's clients send none
    [sync] = commands_of(letta, "sync")
    assert sync["recover_approvals"] is False and sync["force_device_status"] is True
    assert sync["runtime"] == {"agent_id": AGENT, "conversation_id": CONVERSATION}
    assert letta.simulated().stale_denials == []


async def test_every_sequenced_frame_is_acked_and_only_ack_and_sync_are_sent(
        world: World, letta_sockets: tuple[LettaStandIn, str]) -> None:
    letta, _ = letta_sockets
    device = letta.simulated()
    async with world.watcher():
        await until(lambda t: letta.wait_for_open(1, SCOPE, timeout=t))
        device.reply(SCOPE, "run-x", "Nobody asked, but here it is.", ["not-from-relay"])
        device.request_approval(SCOPE, "toolu_ack")
        await until(lambda t: letta.wait_for(
            lambda s: all(not x.unacked() for x in s.sockets) and sum(len(x.sent) for x in s.sockets) >= 10, t))
    assert {c.frame["type"] for c in letta.commands} == {"sync"}


async def test_another_conversation_on_the_device_causes_no_extra_sync(
        world: World, letta_sockets: tuple[LettaStandIn, str], slack_stand_in: SlackStandIn) -> None:
    """event_seq counts across all the device's conversations: the holes it leaves are not losses."""
    letta, _ = letta_sockets
    device = letta.simulated()
    elsewhere = (AGENT, "conv-someone-else")
    message_id = await world.remember("ours", {"via": "reaction", "channel": "C0TEAM", "ts": "1700.7"})
    async with world.watcher():
        await until(lambda t: letta.wait_for_open(1, SCOPE, timeout=t))
        await until(lambda t: letta.wait_for(lambda s: len(commands_of(s, "sync")) == 1, t))
        for n in range(5):  # their frames interleave with ours on the device: ours arrive with holes
            device.reply(elsewhere, f"run-other-{n}", "not for you", [f"other-{n}"])
            device.loop_status(SCOPE, "PROCESSING_API_RESPONSE", ["run-ours"], {"run-ours": [message_id]})
        device.reply(SCOPE, "run-ours", "Ours, after all that.", [message_id])
        await until(lambda t: slack_stand_in.wait_for(lambda s: len(s.of("chat.postMessage")) == 1, t))
        await asyncio.sleep(1.5)  # longer than any grace a gap detector would give
    assert len(commands_of(letta, "sync")) == 1
    assert [c.body["text"] for c in slack_stand_in.of("chat.postMessage")] == ["Ours, after all that."]


async def test_a_bad_api_key_is_refused_and_retried_without_giving_up(
        world: World, letta_sockets: tuple[LettaStandIn, str]) -> None:
    letta, _ = letta_sockets
    letta.api_key = "another-key"
    async with world.watcher():
        await until(lambda t: letta.wait_for(lambda s: len(s.refused) >= 3, t))
        letta.api_key = API_KEY
        await until(lambda t: letta.wait_for_open(1, SCOPE, timeout=t))
    assert set(letta.refused) == {"bad credentials"}


async def test_the_api_key_stays_out_of_the_logs_even_at_debug(
        world: World, letta_sockets: tuple[LettaStandIn, str], slack_stand_in: SlackStandIn,
        caplog: pytest.LogCaptureFixture) -> None:
    letta, _ = letta_sockets
    caplog.set_level(logging.DEBUG)  # websockets logs each handshake header at DEBUG, Authorization too
    async with world.watcher():
        await until(lambda t: letta.wait_for_open(1, SCOPE, timeout=t))
        letta.simulated().request_approval(SCOPE, "toolu_quiet")
        await until(lambda t: slack_stand_in.wait_for(lambda s: len(cards_posted(s)) == 1, t))
    watch_records = [r for r in caplog.records if r.name.startswith("relay.watch")]
    assert any(r.getMessage() == "status socket open" for r in watch_records)
    ours = [r for r in caplog.records if not r.name.startswith("uvicorn")]  # uvicorn serves the stand-in
    assert [r.getMessage() for r in ours if API_KEY in r.getMessage()] == []


class FailingFirst:
    """LettaClient's resolution, refused by Letta the first `times` times."""

    def __init__(self, letta: LettaClient, times: int) -> None:
        self.letta, self.left = letta, times

    async def connection_for(self, destination: Destination) -> str | None:
        if self.left > 0:
            self.left -= 1
            raise ResolveFailed(Outcome(status=503, body="resolving the connection: try later"))
        return await self.letta.connection_for(destination)

    def forget(self, destination: Destination) -> None:
        self.letta.forget(destination)

    def status_socket(self, connection_id: str, agent_id: str, conversation_id: str | None) -> Any:
        return self.letta.status_socket(connection_id, agent_id, conversation_id)


async def test_a_failed_resolution_is_logged_with_letta_s_answer_and_tried_again(
        world: World, letta_sockets: tuple[LettaStandIn, str], caplog: pytest.LogCaptureFixture) -> None:
    letta, _ = letta_sockets
    caplog.set_level(logging.WARNING, logger="relay.watch")
    async with world.watcher(resolver=lambda client: FailingFirst(client, 2)):
        await until(lambda t: letta.wait_for_open(1, SCOPE, timeout=t))
    failures = [r for r in caplog.records if r.getMessage() == "could not resolve the connection"]
    assert [r.fields["error"] for r in failures] == ["HTTP 503: resolving the connection: try later"] * 2  # type: ignore[attr-defined]


async def test_a_dropped_socket_is_reopened_and_the_state_asked_for_again(
        world: World, letta_sockets: tuple[LettaStandIn, str], slack_stand_in: SlackStandIn) -> None:
    letta, _ = letta_sockets
    async with world.watcher():
        await until(lambda t: letta.wait_for_open(1, SCOPE, timeout=t))
        letta.simulated().request_approval(SCOPE, "toolu_drop")
        await until(lambda t: slack_stand_in.wait_for(lambda s: len(cards_posted(s)) == 1, t))
        first = max(s.id for s in letta.sockets)
        letta.drop()
        await until(lambda t: letta.wait_for(lambda s: any(x.open and x.id > first for x in s.sockets), t))
        await until(lambda t: letta.wait_for(lambda s: len(commands_of(s, "sync")) >= 2, t))
        await asyncio.sleep(0.3)  # the sync replays the request: still one card
    assert len(cards_posted(slack_stand_in)) == 1


async def test_a_rotated_connection_is_followed(
        world: World, letta_sockets: tuple[LettaStandIn, str]) -> None:
    letta, _ = letta_sockets
    async with world.watcher():
        await until(lambda t: letta.wait_for_open(1, SCOPE, timeout=t))
        new_id = letta.rotate(DEVICE)
        await until(lambda t: letta.wait_for(
            lambda s: len([x for x in s.sockets if x.open and x.connection_id == new_id]) == 1, t))
        await until(lambda t: letta.wait_for(
            lambda s: not [x for x in s.sockets if x.open and x.connection_id != new_id], t))


# -- approvals ---------------------------------------------------------------------------


async def test_an_approval_request_becomes_a_card_in_the_route_channel(
        world: World, letta_sockets: tuple[LettaStandIn, str], slack_stand_in: SlackStandIn) -> None:
    letta, _ = letta_sockets
    async with world.watcher():
        await until(lambda t: letta.wait_for_open(1, SCOPE, timeout=t))
        request_id = letta.simulated().request_approval(SCOPE, "toolu_1", "Bash", {"command": "make deploy"})
        await until(lambda t: slack_stand_in.wait_for(lambda s: len(cards_posted(s)) == 1, t))
    [card] = cards_posted(slack_stand_in)
    assert card.body["channel"] == CARD_CHANNEL and "thread_ts" not in card.body
    assert "make deploy" in json.dumps(card.body["blocks"])
    stored = json.loads(await world.queue.record(REQUEST_KIND, tool_call_key(AGENT, CONVERSATION, "toolu_1")))
    assert stored["request_id"] == request_id and stored["route"] == "watched"
    assert stored["connection_id"] == "conn-watch-1"


async def test_a_request_during_relay_s_turn_goes_to_the_thread_of_its_message(
        world: World, letta_sockets: tuple[LettaStandIn, str], slack_stand_in: SlackStandIn) -> None:
    letta, _ = letta_sockets
    device = letta.simulated()
    message_id = await world.remember("deploy please", {"via": "reaction", "channel": "C0TEAM", "ts": "1700.1"})
    async with world.watcher():
        await until(lambda t: letta.wait_for_open(1, SCOPE, timeout=t))
        device.loop_status(SCOPE, "PROCESSING_API_RESPONSE", ["run-1"], {"run-1": [message_id]})
        device.chunks(SCOPE, "run-1", "msg-1", "I will deploy.")
        device.delta(SCOPE, {"message_type": "stop_reason", "stop_reason": "requires_approval", "run_id": "run-1"})
        device.request_approval(SCOPE, "toolu_2")
        await until(lambda t: slack_stand_in.wait_for(lambda s: len(cards_posted(s)) == 1, t))
    [card] = cards_posted(slack_stand_in)
    assert (card.body["channel"], card.body.get("thread_ts")) == ("C0TEAM", "1700.1")


async def test_a_request_missed_while_away_is_carded_from_the_pending_list(
        world: World, letta_sockets: tuple[LettaStandIn, str], slack_stand_in: SlackStandIn) -> None:
    letta, _ = letta_sockets
    letta.redeliver = False
    letta.simulated().request_approval(SCOPE, "toolu_early")  # before the watcher is there: only the sync shows it
    async with world.watcher():
        await until(lambda t: slack_stand_in.wait_for(lambda s: len(cards_posted(s)) == 1, t))


async def test_an_approval_answered_elsewhere_closes_its_card(
        world: World, letta_sockets: tuple[LettaStandIn, str], slack_stand_in: SlackStandIn) -> None:
    letta, _ = letta_sockets
    async with world.watcher():
        await until(lambda t: letta.wait_for_open(1, SCOPE, timeout=t))
        request_id = letta.simulated().request_approval(SCOPE, "toolu_3")
        await until(lambda t: slack_stand_in.wait_for(lambda s: len(cards_posted(s)) == 1, t))
        letta.simulated().answer_elsewhere(SCOPE, request_id)
        await until(lambda t: slack_stand_in.wait_for(lambda s: len(s.of("chat.update")) == 1, t))
    [update] = slack_stand_in.of("chat.update")
    assert update.body["ts"] == cards_posted(slack_stand_in)[0].body.get("ts", update.body["ts"])
    shown = json.dumps(update.body["blocks"])
    assert ANSWERED_ELSEWHERE in shown and '"type": "button"' not in shown and '"actions"' not in shown


async def test_a_request_that_leaves_the_pending_list_closes_its_card(
        world: World, letta_sockets: tuple[LettaStandIn, str], slack_stand_in: SlackStandIn) -> None:
    letta, _ = letta_sockets
    async with world.watcher():
        await until(lambda t: letta.wait_for_open(1, SCOPE, timeout=t))
        request_id = letta.simulated().request_approval(SCOPE, "toolu_4")
        await until(lambda t: slack_stand_in.wait_for(lambda s: len(cards_posted(s)) == 1, t))
        letta.simulated().forget_request(SCOPE, request_id)
        await until(lambda t: slack_stand_in.wait_for(lambda s: len(s.of("chat.update")) == 1, t))
    assert NO_LONGER_PENDING in json.dumps(slack_stand_in.of("chat.update")[0].body["blocks"])


async def test_two_watchers_at_once_post_one_card_and_one_reply(
        world: World, letta_sockets: tuple[LettaStandIn, str], slack_stand_in: SlackStandIn) -> None:
    letta, _ = letta_sockets
    message_id = await world.remember("status?", {"via": "reaction", "channel": "C0TEAM", "ts": "1700.2"})
    async with world.watcher(), world.watcher():
        await until(lambda t: letta.wait_for_open(2, SCOPE, timeout=t))
        letta.simulated().request_approval(SCOPE, "toolu_5")
        letta.simulated().reply(SCOPE, "run-2", "All green.", [message_id])
        await until(lambda t: slack_stand_in.wait_for(
            lambda s: len(cards_posted(s)) == 1 and any(c.body.get("text") == "All green."
                                                        for c in s.of("chat.postMessage")), t))
        await asyncio.sleep(0.5)  # room for a second post, were there one
    posts = slack_stand_in.of("chat.postMessage")
    assert len(cards_posted(slack_stand_in)) == 1
    assert [c.body["thread_ts"] for c in posts if c.body.get("text") == "All green."] == ["1700.2"]


async def test_a_restarted_watcher_closes_cards_of_requests_that_ended_meanwhile(
        world: World, letta_sockets: tuple[LettaStandIn, str], slack_stand_in: SlackStandIn) -> None:
    letta, _ = letta_sockets
    letta.redeliver = False
    async with world.watcher():
        await until(lambda t: letta.wait_for_open(1, SCOPE, timeout=t))
        request_id = letta.simulated().request_approval(SCOPE, "toolu_6")
        await until(lambda t: slack_stand_in.wait_for(lambda s: len(cards_posted(s)) == 1, t))
    letta.simulated().forget_request(SCOPE, request_id)  # while nobody watches
    async with world.watcher():
        await until(lambda t: slack_stand_in.wait_for(lambda s: len(s.of("chat.update")) == 1, t))
    assert NO_LONGER_PENDING in json.dumps(slack_stand_in.of("chat.update")[0].body["blocks"])
    assert len(cards_posted(slack_stand_in)) == 1


# -- replies -----------------------------------------------------------------------------


async def test_a_turn_relay_started_is_answered_in_its_thread_without_subagent_output(
        world: World, letta_sockets: tuple[LettaStandIn, str], slack_stand_in: SlackStandIn) -> None:
    letta, _ = letta_sockets
    device = letta.simulated()
    message_id = await world.remember("what broke?", {"via": "reaction", "channel": "C0TEAM", "ts": "1700.3"})
    async with world.watcher():
        await until(lambda t: letta.wait_for_open(1, SCOPE, timeout=t))
        device.loop_status(SCOPE, "PROCESSING_API_RESPONSE", ["run-3"], {"run-3": [message_id]})
        device.chunks(SCOPE, "run-3", "msg-a", "The cache expired.")
        device.delta(SCOPE, {"message_type": "assistant_message", "id": "sub-1", "run_id": "run-sub",
                             "content": "subagent notes"}, subagent_id="subagent-1")
        device.delta(SCOPE, {"message_type": "stop_reason", "stop_reason": "end_turn", "run_id": "run-3"})
        await asyncio.sleep(0.3)
        assert slack_stand_in.of("chat.postMessage") == []  # a stop reason is not the end: turn_finished is
        device.turn_finished(SCOPE, "run-3")
        await until(lambda t: slack_stand_in.wait_for(lambda s: len(s.of("chat.postMessage")) == 1, t))
        await asyncio.sleep(0.3)
    [post] = slack_stand_in.of("chat.postMessage")
    assert (post.body["channel"], post.body["thread_ts"], post.body["text"]) == ("C0TEAM", "1700.3",
                                                                                 "The cache expired.")


async def test_a_turn_answering_two_messages_of_one_thread_posts_there_once(
        world: World, letta_sockets: tuple[LettaStandIn, str], slack_stand_in: SlackStandIn) -> None:
    letta, _ = letta_sockets
    where = {"via": "reaction", "channel": "C0TEAM", "ts": "1700.4"}
    first, second = await world.remember("is it up?", where), await world.remember("and the db?", where)
    async with world.watcher():
        await until(lambda t: letta.wait_for_open(1, SCOPE, timeout=t))
        letta.simulated().reply(SCOPE, "run-5", "Both are up.", [first, second])
        await until(lambda t: slack_stand_in.wait_for(lambda s: len(s.of("chat.postMessage")) == 1, t))
        await asyncio.sleep(0.5)  # room for a second post, were there one
    assert [(c.body["thread_ts"], c.body["text"]) for c in slack_stand_in.of("chat.postMessage")] == [
        ("1700.4", "Both are up.")]


async def test_a_turn_relay_did_not_start_is_not_answered(
        world: World, letta_sockets: tuple[LettaStandIn, str], slack_stand_in: SlackStandIn) -> None:
    letta, _ = letta_sockets
    async with world.watcher():
        await until(lambda t: letta.wait_for_open(1, SCOPE, timeout=t))
        letta.simulated().reply(SCOPE, "run-4", "Hello desktop user.", ["typed-in-the-desktop-app"])
        letta.simulated().request_approval(SCOPE, "toolu_marker")  # something that does get posted, after it
        await until(lambda t: slack_stand_in.wait_for(lambda s: len(cards_posted(s)) == 1, t))
        await asyncio.sleep(0.8)  # longer than the watcher waits for an origin
    assert [c for c in slack_stand_in.of("chat.postMessage") if "desktop" in c.body.get("text", "")] == []
    assert await world.redis.keys(f"{world.prefix}:rec:{ANSWERED_KIND}:*") == []


async def test_a_running_turn_shows_what_the_agent_does_and_its_progress_message_becomes_the_answer(
        world: World, letta_sockets: tuple[LettaStandIn, str], slack_stand_in: SlackStandIn) -> None:
    letta, _ = letta_sockets
    device = letta.simulated()
    message_id = await world.remember("tidy up", {"via": "reaction", "channel": "C0TEAM", "ts": "1700.6"})
    async with world.watcher(progress=True):
        await until(lambda t: letta.wait_for_open(1, SCOPE, timeout=t))
        device.loop_status(SCOPE, "PROCESSING_API_RESPONSE", ["run-p"], {"run-p": [message_id]})
        device.chunks(SCOPE, "run-p", "msg-p", "Looking into it.")
        await until(lambda t: slack_stand_in.wait_for(lambda s: len(s.thread("C0TEAM", "1700.6")) == 1, t))
        device.delta(SCOPE, {"message_type": "client_tool_start", "tool_name": "Bash", "tool_call_id": "toolu_p",
                             "run_id": "run-p"})
        await until(lambda t: slack_stand_in.wait_for(
            lambda s: any("running Bash" in c.body.get("text", "") for c in s.of("chat.update")), t))
        device.chunks(SCOPE, "run-p", "msg-p2", "Done: 3 files removed.")
        device.turn_finished(SCOPE, "run-p")
        await until(lambda t: slack_stand_in.wait_for(
            lambda s: s.thread("C0TEAM", "1700.6")[0].text.endswith("3 files removed."), t))
        await asyncio.sleep(0.5)  # room for a late progress edit, were there one
    [message] = slack_stand_in.thread("C0TEAM", "1700.6")  # one message: progress, then the answer
    assert message.text == "Looking into it.\n\nDone: 3 files removed."
    shown = [c.body["text"] for c in slack_stand_in.calls if c.method in ("chat.postMessage", "chat.update")
             and (c.body.get("thread_ts") == "1700.6" or c.body.get("ts") == message.ts)]
    assert "hourglass" in shown[0]  # at once: the agent is working
    assert any("Looking into it." in text and "running Bash" in text for text in shown)


async def test_where_slack_streams_the_answer_streams_into_the_thread_as_the_agent_writes_it(
        world: World, letta_sockets: tuple[LettaStandIn, str], slack_stand_in: SlackStandIn) -> None:
    letta, _ = letta_sockets
    device = letta.simulated()
    slack_stand_in.streaming = True
    message_id = await world.remember("explain", {"via": "reaction", "channel": "C0TEAM", "ts": "1700.7",
                                                  "team": "T0001", "user": "U0ALICE"})
    async with world.watcher(progress=True):
        await until(lambda t: letta.wait_for_open(1, SCOPE, timeout=t))
        device.loop_status(SCOPE, "PROCESSING_API_RESPONSE", ["run-s"], {"run-s": [message_id]})
        device.chunks(SCOPE, "run-s", "msg-s", "First, *the cache* ")
        await until(lambda t: slack_stand_in.wait_for(lambda s: "the cache" in s.thread("C0TEAM", "1700.7")[0].text
                                                      if s.thread("C0TEAM", "1700.7") else False, t))
        await asyncio.sleep(1.6)
        device.delta(SCOPE, {"message_type": "client_tool_start", "tool_name": "Bash", "tool_call_id": "toolu_s",
                             "run_id": "run-s"})
        await until(lambda t: slack_stand_in.wait_for(
            lambda s: any(task["title"] == "Running Bash" for task in s.thread("C0TEAM", "1700.7")[0].tasks), t))
        await asyncio.sleep(1.6)
        device.chunks(SCOPE, "run-s", "msg-s", "expired; then the <db> failed over.")
        await until(lambda t: slack_stand_in.wait_for(lambda s: len(s.of("chat.appendStream")) >= 2, t))
        device.turn_finished(SCOPE, "run-s")
        await until(lambda t: slack_stand_in.wait_for(lambda s: not s.thread("C0TEAM", "1700.7")[0].streaming, t))
    [message] = slack_stand_in.thread("C0TEAM", "1700.7")
    assert message.text == "First, *the cache* expired; then the <db> failed over."  # markdown, as written
    assert message.tasks[0] == {"id": "relay-task-1", "title": "Thinking", "status": "in_progress"}
    assert message.tasks[-1]["status"] == "complete"  # what the agent was doing, done when the turn ends
    [start] = slack_stand_in.of("chat.startStream")
    assert (start.body["recipient_team_id"], start.body["recipient_user_id"]) == ("T0001", "U0ALICE")
    assert slack_stand_in.of("chat.postMessage") == [] and slack_stand_in.of("chat.update") == []


async def test_a_restarted_watcher_goes_on_editing_the_same_progress_message(
        world: World, letta_sockets: tuple[LettaStandIn, str], slack_stand_in: SlackStandIn) -> None:
    letta, _ = letta_sockets
    device = letta.simulated()
    message_id = await world.remember("long job", {"via": "reaction", "channel": "C0TEAM", "ts": "1700.8"})
    async with world.watcher(progress=True):
        await until(lambda t: letta.wait_for_open(1, SCOPE, timeout=t))
        device.loop_status(SCOPE, "PROCESSING_API_RESPONSE", ["run-r"], {"run-r": [message_id]})
        device.chunks(SCOPE, "run-r", "msg-r", "Step one done.")
        await until(lambda t: slack_stand_in.wait_for(lambda s: len(s.thread("C0TEAM", "1700.8")) == 1, t))
    async with world.watcher(progress=True):  # a new process: it knows the turn only from the device
        await until(lambda t: letta.wait_for(lambda s: sum(1 for x in s.sockets if x.open) == 1, t))
        await asyncio.sleep(1.1)  # past the edit interval the first watcher's last edit holds
        device.chunks(SCOPE, "run-r", "msg-r2", "Step two done.")
        await until(lambda t: slack_stand_in.wait_for(
            lambda s: "Step two" in s.thread("C0TEAM", "1700.8")[0].text, t))
        device.turn_finished(SCOPE, "run-r")
        await until(lambda t: slack_stand_in.wait_for(
            lambda s: "hourglass" not in s.thread("C0TEAM", "1700.8")[0].text, t))
    [message] = slack_stand_in.thread("C0TEAM", "1700.8")
    assert message.text == "Step two done."  # what this watcher saw of the turn, in the same message


def test_a_silent_failed_turn_gets_a_note_and_a_quiet_one_nothing() -> None:
    assert reply_texts(TurnEnded(("m",), ("a", "b"), "end_turn")) == ["a", "b"]
    assert reply_texts(TurnEnded(("m",), (), "end_turn")) == []
    assert reply_texts(TurnEnded(("m",), (), None)) == []
    assert reply_texts(TurnEnded(("m",), (), "llm_api_error")) == [
        "The agent stopped without answering (stop reason: llm_api_error)."]


def test_a_turn_s_error_follows_what_the_agent_said_with_its_stop_reason() -> None:
    assert reply_texts(TurnEnded(("m",), ("Working on it",), "llm_api_error", error="rate limited by the model")) == [
        "Working on it", "The agent's turn ended with an error (stop reason: llm_api_error): rate limited by the model"]
    assert reply_texts(TurnEnded(("m",), (), None, error="boom")) == [
        "The agent's turn ended with an error (stop reason: error): boom"]


async def test_a_failed_turn_s_error_reaches_the_thread_with_its_stop_reason(
        world: World, letta_sockets: tuple[LettaStandIn, str], slack_stand_in: SlackStandIn) -> None:
    letta, _ = letta_sockets
    message_id = await world.remember("do it", {"via": "reaction", "channel": "C0TEAM", "ts": "1700.5"})
    async with world.watcher():
        await until(lambda t: letta.wait_for_open(1, SCOPE, timeout=t))
        letta.simulated().reply(SCOPE, "run-6", "Starting.", [message_id], stop_reason="llm_api_error",
                                error="upstream model unavailable")
        await until(lambda t: slack_stand_in.wait_for(lambda s: len(s.of("chat.postMessage")) == 1, t))
    [post] = slack_stand_in.of("chat.postMessage")
    assert post.body["thread_ts"] == "1700.5"
    assert post.body["text"].startswith("Starting.") and "llm_api_error" in post.body["text"] \
        and "upstream model unavailable" in post.body["text"]


async def test_a_route_that_does_not_opt_in_is_not_watched(
        settings: Settings, redis_client: Any, prefix: str, letta_sockets: tuple[LettaStandIn, str],
        slack_stand_in: SlackStandIn) -> None:
    letta, url = letta_sockets
    quiet = World(watched_settings(settings, slack_stand_in.api_url), redis_client, prefix, url,
                  slack_stand_in.api_url)
    quiet.settings = replace(quiet.settings, routes=tuple(replace(r, watch=None) for r in quiet.settings.routes))
    async with quiet.watcher() as watcher:
        assert watcher.routes == []
        await asyncio.sleep(0.3)
    assert letta.sockets == []


async def test_the_built_in_stand_in_answers_relay_s_messages_over_its_status_socket(
        settings: Settings, redis_client: Any, prefix: str, slack_stand_in: SlackStandIn) -> None:
    import httpx

    from relay.standin.device import ANSWER

    letta = LettaStandIn([Device(DEVICE, "watch-box", "conn-plain")])  # a device that runs its own turns
    with ServerThread(letta.app) as server:
        world = World(watched_settings(settings, slack_stand_in.api_url), redis_client, prefix, server.url,
                      slack_stand_in.api_url)
        message_id = await world.remember("hi stand-in", {"via": "reaction", "channel": "C0TEAM", "ts": "1700.9"})
        async with world.watcher():
            await until(lambda t: letta.wait_for_open(1, SCOPE, timeout=t))
            body = {"agentId": AGENT, "conversationId": CONVERSATION,
                    "messages": [user_message("hi stand-in", message_id)]}
            async with httpx.AsyncClient() as http:
                sent = await http.post(f"{server.url}/v1/environments/conn-plain/messages", json=body)
            assert sent.status_code == 200
            await until(lambda t: slack_stand_in.wait_for(lambda s: len(s.of("chat.postMessage")) == 1, t))
    [post] = slack_stand_in.of("chat.postMessage")
    assert (post.body["thread_ts"], post.body["text"]) == ("1700.9", ANSWER)
