"""Approvals over the status socket, against the socket stand-in, Redis and the Slack stand-in."""

from __future__ import annotations

import json
import random
import time
from dataclasses import replace
from typing import Any, Iterator

import pytest
from tenacity import wait_none

from relay.cards import Cards
from relay.intake import Intake
from relay.letta import LettaClient
from relay.messages import (ApprovalRequest, Envelope, Inbound, approval_decision, approval_message,
                            client_message_id, envelope_for, user_message)
from relay.policy import Backoff, DeadLetter, Delivered, Retry, decide
from relay.queue import Queue
from relay.routing import Destination, Route, Router, SlackRule, WatchRule
from relay.settings import Settings
from relay.slack_api import SlackApi
from relay.socket_approvals import SocketApprovals
from relay.standin import Device, LettaStandIn
from relay.status_socket import NO_LONGER_PENDING
from relay.watch import REQUEST_KIND, request_key
from tests.conftest import APPROVER, SLACK_TEAM
from tests.letta_socket_standin import CONTROL, StatusSocketStandIn
from tests.slack_standin import SlackStandIn
from tests.support import ServerThread, free_port

pytestmark = pytest.mark.anyio

AGENT, CONVERSATION, DEVICE, API_KEY = "agent-sock", "conv-sock", "device-sock", "test-key"
SCOPE = (AGENT, CONVERSATION)
DESTINATION = Destination(agent_id=AGENT, conversation_id=CONVERSATION, device_id=DEVICE)


@pytest.fixture
def letta_sockets() -> Iterator[tuple[StatusSocketStandIn, str]]:
    sockets = StatusSocketStandIn(LettaStandIn([Device(DEVICE, "sock-box", "conn-sock")]), API_KEY)
    with ServerThread(sockets.app) as server:
        yield sockets, server.url


def routes() -> tuple[Route, ...]:
    slack = SlackRule(teams=(SLACK_TEAM,), approvers=(APPROVER,))
    return (Route("socket", DESTINATION, slack=slack, watch=WatchRule(slack_channel="C0CARDS", approvals="socket")),
            Route("rest", DESTINATION, slack=slack, watch=WatchRule(slack_channel="C0CARDS")))


class Rig:
    def __init__(self, settings: Settings, redis: Any, prefix: str, url: str, slack_url: str) -> None:
        self.settings = replace(settings, routes=routes(), letta_api_key=API_KEY)
        self.queue = Queue(redis, prefix=prefix)
        self.letta = LettaClient(url, API_KEY, retry_wait=wait_none())
        self.slack = SlackApi("xoxb-test", base_url=slack_url)
        self.cards = Cards(self.queue, self.slack, Router(self.settings.routes), Intake(self.queue))
        self.deliverer = SocketApprovals(self.letta, self.queue, self.settings, cards=self.cards, base_url=url,
                                         answer_timeout=1.0)

    async def watched(self, request_id: str, tool_call_id: str) -> None:
        """What relay watch stores when it sees the control request."""
        await self.queue.create_record(REQUEST_KIND, request_key(AGENT, tool_call_id), json.dumps(
            {"request_id": request_id, "tool_call_id": tool_call_id, "route": "socket", "agent_id": AGENT,
             "conversation_id": CONVERSATION, "connection_id": "conn-sock"}), 60)

    async def aclose(self) -> None:
        await self.letta.aclose()
        await self.slack.aclose()


@pytest.fixture
async def rig(settings: Settings, redis_client: Any, prefix: str, letta_sockets: tuple[StatusSocketStandIn, str],
              slack_stand_in: SlackStandIn):  # type: ignore[no-untyped-def]
    made = Rig(settings, redis_client, prefix, letta_sockets[1], slack_stand_in.api_url)
    yield made
    await made.aclose()


def approval(route: str, tool_call_id: str, approve: bool, reason: str | None = None) -> Envelope:
    message = approval_message([approval_decision(tool_call_id, approve, reason)])
    inbound = Inbound("slack", f"card:{tool_call_id}", client_message_id("slack", "card", tool_call_id), message,
                      route=route)
    return envelope_for(inbound, Route(route, DESTINATION), time.time())


def judged(envelope: Envelope, outcome: Any) -> Any:
    return decide(outcome, attempt=1, age=0.0, max_age=3600.0, now=time.time(), backoff=Backoff(1, 2),
                  rng=random.Random(1))


async def test_an_approval_of_a_socket_route_is_an_approval_response_input(
        rig: Rig, letta_sockets: tuple[StatusSocketStandIn, str]) -> None:
    sockets, _ = letta_sockets
    request_id = sockets.request_approval(SCOPE, "toolu_1")
    await rig.watched(request_id, "toolu_1")
    envelope = approval("socket", "toolu_1", True)
    outcome = await rig.deliverer.deliver(envelope)
    assert isinstance(judged(envelope, outcome), Delivered)
    [frame] = sockets.inputs()
    assert frame["runtime"] == {"agent_id": AGENT, "conversation_id": CONVERSATION}
    assert frame["payload"] == {"kind": "approval_response", "request_id": request_id,
                                "decision": {"behavior": "allow"}}
    assert [c.channel for c in sockets.of("input")] == [CONTROL]
    assert sockets.letta.attempts == []  # nothing went over REST
    assert sockets.pending[SCOPE] == {}
    [sock] = sockets.sockets
    answered = next(f["seq"] for f in sock.sent if f["type"] == "input_accepted")
    # It acks what it reads. The stand-in's server may answer the close handshake before its app
    # has read the last ack off the socket, so give the app a moment to catch up.
    read = {f["seq"] for f in sock.sent if f["seq"] <= answered}
    assert sockets.wait_for(lambda s: read <= sock.acked, 5.0), (read, sock.acked)


async def test_a_denial_carries_the_reason(rig: Rig, letta_sockets: tuple[StatusSocketStandIn, str]) -> None:
    sockets, _ = letta_sockets
    request_id = sockets.request_approval(SCOPE, "toolu_2")
    await rig.watched(request_id, "toolu_2")
    envelope = approval("socket", "toolu_2", False, "not on a Friday")
    assert isinstance(judged(envelope, await rig.deliverer.deliver(envelope)), Delivered)
    [frame] = sockets.inputs()
    assert frame["payload"]["decision"] == {"behavior": "deny", "message": "not on a Friday"}


async def test_a_decision_no_longer_pending_is_settled_and_its_card_says_so(
        rig: Rig, letta_sockets: tuple[StatusSocketStandIn, str], slack_stand_in: SlackStandIn) -> None:
    sockets, _ = letta_sockets
    route = rig.settings.routes[0]
    request = ApprovalRequest("perm-toolu_3", "toolu_3", "Bash", {"command": "ls"}, AGENT, CONVERSATION)
    await rig.cards.ask(route, request, "C0CARDS", None)
    await rig.watched("perm-toolu_3", "toolu_3")  # the device has since forgotten it
    envelope = approval("socket", "toolu_3", True)
    outcome = await rig.deliverer.deliver(envelope)
    assert isinstance(judged(envelope, outcome), Delivered)
    assert len(sockets.inputs()) == 1
    [update] = slack_stand_in.of("chat.update")
    assert NO_LONGER_PENDING in json.dumps(update.body["blocks"])


async def test_without_a_known_request_id_the_approval_waits_for_the_watcher(rig: Rig) -> None:
    envelope = approval("socket", "toolu_unknown", True)
    outcome = await rig.deliverer.deliver(envelope)
    assert outcome.error == "unresolved" and "relay watch" in outcome.detail
    assert isinstance(judged(envelope, outcome), Retry)


async def test_a_device_that_never_answers_is_retried(rig: Rig, letta_sockets: tuple[StatusSocketStandIn, str]) -> None:
    sockets, _ = letta_sockets
    sockets.answer_inputs = False
    request_id = sockets.request_approval(SCOPE, "toolu_4")
    await rig.watched(request_id, "toolu_4")
    envelope = approval("socket", "toolu_4", True)
    outcome = await rig.deliverer.deliver(envelope)
    assert outcome.error == "timeout"
    assert isinstance(judged(envelope, outcome), Retry)


async def test_an_offline_device_is_retried(rig: Rig, letta_sockets: tuple[StatusSocketStandIn, str]) -> None:
    sockets, _ = letta_sockets
    await rig.watched("perm-toolu_5", "toolu_5")
    sockets.letta.devices[0].online = False
    envelope = approval("socket", "toolu_5", True)
    outcome = await rig.deliverer.deliver(envelope)
    assert outcome.error == "unresolved"
    assert isinstance(judged(envelope, outcome), Retry)


async def test_an_environments_api_out_of_reach_is_retried(rig: Rig) -> None:
    await rig.watched("perm-toolu_9", "toolu_9")
    letta = LettaClient(f"http://127.0.0.1:{free_port()}", API_KEY, retry_wait=wait_none())
    deliverer = SocketApprovals(letta, rig.queue, rig.settings, cards=rig.cards, answer_timeout=1.0)
    envelope = approval("socket", "toolu_9", True)
    try:
        outcome = await deliverer.deliver(envelope)
    finally:
        await letta.aclose()
    assert outcome.error == "connect" and "resolving the connection" in outcome.detail
    assert isinstance(judged(envelope, outcome), Retry)


async def test_a_refused_key_is_dead_lettered_like_a_refused_rest_call(
        rig: Rig, letta_sockets: tuple[StatusSocketStandIn, str]) -> None:
    sockets, _ = letta_sockets
    await rig.watched("perm-toolu_6", "toolu_6")
    sockets.api_key = "another-key"
    envelope = approval("socket", "toolu_6", True)
    outcome = await rig.deliverer.deliver(envelope)
    assert outcome.status == 403
    assert isinstance(judged(envelope, outcome), DeadLetter)


async def test_rest_routes_and_user_messages_go_over_rest(
        rig: Rig, letta_sockets: tuple[StatusSocketStandIn, str]) -> None:
    sockets, _ = letta_sockets
    rest = approval("rest", "toolu_7", True)
    message_id = client_message_id("test", "hello")
    user = envelope_for(Inbound("test", "hello", message_id, user_message("hello", message_id), route="socket"),
                        Route("socket", DESTINATION), time.time())
    for envelope in (rest, user):
        assert isinstance(judged(envelope, await rig.deliverer.deliver(envelope)), Delivered)
    assert [m.get("type", m.get("role")) for a in sockets.letta.delivered() for m in a.body["messages"]] == [
        "approval", "user"]
    assert sockets.inputs() == []
