"""The worker's deliverer against the strict stand-in of Letta's server and device on a loopback
port: user messages over REST, approval decisions over the conversation's status socket."""

from __future__ import annotations

import asyncio
import json
import random
import time
from dataclasses import replace
from typing import Any, AsyncIterator, Iterator

import pytest
import redis.asyncio as aioredis
from tenacity import wait_none

from relay.approval_delivery import REQUEST_KIND, Deliverer, decisions_of
from relay.letta import LettaClient
from relay.messages import (Envelope, Inbound, approval_decision, approval_message, client_message_id, envelope_for,
                            tool_call_key, user_message)
from relay.policy import Backoff, Decision, Delivered, Outcome, Retry, Settled, decide
from relay.queue import Queue
from relay.routing import Destination, Route
from relay.settings import Settings
from relay.standin import Device, LettaStandIn, SimulatedDevice
from relay.standin.device import Decision as DeviceDecision
from relay.status_frames import DEFAULT_DENY_MESSAGE
from tests.support import ServerThread, free_port

pytestmark = pytest.mark.anyio

AGENT, CONVERSATION, DEVICE, API_KEY = "agent-deliver", "conv-deliver", "device-deliver", "test-key"
SCOPE = (AGENT, CONVERSATION)
DESTINATION = Destination(agent_id=AGENT, conversation_id=CONVERSATION, device_id=DEVICE)
ANSWER_TIMEOUT = 10.0  # generous: the machine is shared; only the timeout test waits it out


@pytest.fixture
def letta() -> Iterator[tuple[LettaStandIn, str]]:
    standin = LettaStandIn([Device(DEVICE, "deliver-box", "conn-deliver")], api_key=API_KEY)
    with ServerThread(standin.app) as server:
        yield standin, server.url


@pytest.fixture
def standin(letta: tuple[LettaStandIn, str]) -> LettaStandIn:
    return letta[0]


@pytest.fixture
def device(standin: LettaStandIn) -> SimulatedDevice:
    return standin.simulated(DEVICE)


def routed(settings: Settings) -> Settings:
    return replace(settings, routes=(Route("socket", DESTINATION), Route("rest", DESTINATION, approvals="rest")))


class Rig:
    """A deliverer as `relay worker` builds it, against the stand-in."""

    def __init__(self, url: str, settings: Settings, *, records: Queue | None = None, api_key: str = API_KEY,
                 answer_timeout: float = ANSWER_TIMEOUT) -> None:
        self.letta = LettaClient(url, api_key, retry_wait=wait_none())
        self.deliverer = Deliverer(self.letta, routed(settings), records=records, answer_timeout=answer_timeout)

    async def deliver(self, envelope: Envelope) -> Outcome:
        return await self.deliverer.deliver(envelope)

    async def aclose(self) -> None:
        await self.deliverer.aclose()


@pytest.fixture
async def rig(letta: tuple[LettaStandIn, str], settings: Settings) -> AsyncIterator[Rig]:
    made = Rig(letta[1], settings)
    yield made
    await made.aclose()


def approval(route: str, *decisions: dict[str, Any]) -> Envelope:
    first = decisions[0]["tool_call_id"]
    inbound = Inbound("slack", f"card:{first}", client_message_id("slack", "card", first),
                      approval_message(list(decisions)), route=route)
    return envelope_for(inbound, Route(route, DESTINATION), time.time())


def allow(tool_call_id: str, route: str = "socket") -> Envelope:
    return approval(route, approval_decision(tool_call_id, True))


def judged(outcome: Outcome) -> Decision:
    return decide(outcome, attempt=1, age=0.0, max_age=3600.0, now=time.time(), backoff=Backoff(1, 2),
                  rng=random.Random(1))


def sent(standin: LettaStandIn) -> list[dict[str, Any]]:
    """The commands relay sent over status sockets (acks aside), in order."""
    with standin._changed:
        return [c.frame for c in standin.commands]


def kinds(standin: LettaStandIn) -> list[str]:
    return [f["type"] for f in sent(standin)]


# -- what goes where ------------------------------------------------------------------------------


async def test_a_user_message_goes_over_rest_and_opens_no_socket(rig: Rig, standin: LettaStandIn,
                                                                  device: SimulatedDevice) -> None:
    message_id = client_message_id("test", "hello")
    envelope = envelope_for(Inbound("test", "hello", message_id, user_message("hello", message_id), route="socket"),
                            Route("socket", DESTINATION), time.time())
    outcome = await rig.deliver(envelope)
    assert outcome.status == 200 and isinstance(judged(outcome), Delivered)
    assert standin.delivered_ids() == [message_id]
    assert standin.sockets == [] and device.turns == [[message_id]]


async def test_an_approval_on_a_socket_route_is_one_accepted_decision(rig: Rig, standin: LettaStandIn,
                                                                       device: SimulatedDevice) -> None:
    request_id = device.request_approval(SCOPE, "toolu_1")
    outcome = await rig.deliver(allow("toolu_1"))
    assert outcome.accepted and isinstance(judged(outcome), Delivered)
    assert device.decisions == [DeviceDecision(SCOPE, request_id, "toolu_1", "allow", None)]
    assert device.pending(SCOPE) == []
    assert standin.attempts == []  # nothing went over REST
    sync, decision = sent(standin)
    assert sync["type"] == "sync" and sync["recover_approvals"] is False
    assert decision["payload"] == {"kind": "approval_response", "request_id": request_id,
                                   "decision": {"behavior": "allow"}}
    assert decision["runtime"] == {"agent_id": AGENT, "conversation_id": CONVERSATION}
    assert device.violations == [] and device.stale_denials == []


async def test_the_socket_is_the_conversation_s_own_and_acks_what_it_read(rig: Rig, standin: LettaStandIn,
                                                                           device: SimulatedDevice) -> None:
    device.request_approval(SCOPE, "toolu_1")
    assert (await rig.deliver(allow("toolu_1"))).accepted
    [sock] = standin.sockets
    assert (sock.connection_id, sock.scope, sock.authorization) == ("conn-deliver", SCOPE, f"Bearer {API_KEY}")
    answered = max(f["seq"] for f in sock.sent if f["type"] == "input_accepted")
    read = {f["seq"] for f in sock.sent if f["seq"] <= answered}
    # The server may see the close before its app reads the last ack off the socket: wait a moment.
    assert await asyncio.to_thread(standin.wait_for, lambda s: read <= sock.acked, 5.0), (read, sock.acked)


async def test_a_denial_carries_the_person_s_reason_or_the_default_message(rig: Rig, device: SimulatedDevice) -> None:
    device.request_approval(SCOPE, "toolu_1")
    device.request_approval(SCOPE, "toolu_2")
    assert (await rig.deliver(approval("socket", approval_decision("toolu_1", False, "not on a Friday")))).accepted
    assert (await rig.deliver(approval("socket", approval_decision("toolu_2", False)))).accepted
    assert [(d.tool_call_id, d.behavior, d.message) for d in device.decisions] == [
        ("toolu_1", "deny", "not on a Friday"), ("toolu_2", "deny", DEFAULT_DENY_MESSAGE)]


async def test_several_decisions_in_one_message_go_over_one_socket(rig: Rig, standin: LettaStandIn,
                                                                    device: SimulatedDevice) -> None:
    device.request_approval(SCOPE, "toolu_1")
    device.request_approval(SCOPE, "toolu_2")
    outcome = await rig.deliver(approval("socket", approval_decision("toolu_1", True),
                                         approval_decision("toolu_2", False, "no")))
    assert outcome.accepted
    assert [(d.tool_call_id, d.behavior) for d in device.decisions] == [("toolu_1", "allow"), ("toolu_2", "deny")]
    assert len(standin.sockets) == 1
    inputs = [f for f in sent(standin) if f["type"] == "input"]
    assert len({f["request_id"] for f in inputs}) == 2  # one command id per decision


async def test_one_decision_answered_elsewhere_does_not_hide_the_other_s_acceptance(
        rig: Rig, device: SimulatedDevice) -> None:
    device.answer_elsewhere(SCOPE, device.request_approval(SCOPE, "toolu_1"))
    device.request_approval(SCOPE, "toolu_2")
    outcome = await rig.deliver(approval("socket", approval_decision("toolu_1", True), approval_decision("toolu_2", True)))
    assert outcome.accepted and [d.tool_call_id for d in device.decisions] == ["toolu_2"]


async def test_an_approval_on_a_rest_route_goes_over_rest_and_the_device_calls_it_a_violation(
        rig: Rig, standin: LettaStandIn, device: SimulatedDevice) -> None:
    request_id = device.request_approval(SCOPE, "toolu_1")
    outcome = await rig.deliver(allow("toolu_1", route="rest"))
    assert outcome.status == 200  # the REST call says 2xx whatever the device makes of it
    [attempt] = standin.delivered()
    assert attempt.body["messages"][0]["type"] == "approval"
    assert standin.sockets == []
    assert len(device.violations) == 1 and device.decisions == []
    assert device.pending(SCOPE) == [request_id]


def test_only_tool_call_decisions_have_a_socket_form() -> None:
    assert decisions_of(allow("toolu_1")) == [approval_decision("toolu_1", True)]
    message_id = client_message_id("test", "x")
    user = envelope_for(Inbound("test", "x", message_id, user_message("x", message_id)),
                        Route("socket", DESTINATION), time.time())
    assert decisions_of(user) is None
    tool_result = replace(allow("toolu_1"), message={"type": "approval", "approvals": [
        {"type": "tool", "tool_call_id": "toolu_1", "tool_return": "ok", "status": "success"}]})
    assert decisions_of(tool_result) is None
    assert decisions_of(replace(allow("toolu_1"), message={"type": "approval", "approvals": []})) is None


# -- what the device answers ----------------------------------------------------------------------


async def test_a_decision_answered_elsewhere_is_settled_and_sends_no_decision(rig: Rig, standin: LettaStandIn,
                                                                              device: SimulatedDevice) -> None:
    device.answer_elsewhere(SCOPE, device.request_approval(SCOPE, "toolu_1"))
    outcome = await rig.deliver(allow("toolu_1"))
    assert outcome.error == "settled" and isinstance(judged(outcome), Settled)
    assert kinds(standin) == ["sync"] and device.decisions == []


async def test_an_inactive_device_is_retried_and_the_retry_lands(rig: Rig, device: SimulatedDevice) -> None:
    device.request_approval(SCOPE, "toolu_1")
    device.inactive = 1  # replacing its listener: the next sync is refused
    outcome = await rig.deliver(allow("toolu_1"))
    assert outcome.error == "inactive" and isinstance(judged(outcome), Retry)
    assert device.decisions == []
    assert (await rig.deliver(allow("toolu_1"))).accepted
    assert len(device.decisions) == 1


async def test_a_device_that_never_answers_times_out_and_a_retry_is_settled_not_doubled(
        letta: tuple[LettaStandIn, str], settings: Settings, device: SimulatedDevice) -> None:
    device.request_approval(SCOPE, "toolu_1")
    device.answer_inputs = False  # takes the decision, never says so
    quick = Rig(letta[1], settings, answer_timeout=0.5)
    try:
        outcome = await asyncio.wait_for(quick.deliver(allow("toolu_1")), timeout=30.0)  # bounded, not timed
        assert outcome.error == "timeout" and "0.5 s" in outcome.detail
        assert isinstance(judged(outcome), Retry)
        device.answer_inputs = True
        again = await quick.deliver(allow("toolu_1"))
    finally:
        await quick.aclose()
    assert again.error == "settled"  # the device took it the first time: never decided twice
    assert len(device.decisions) == 1


async def test_an_offline_device_is_unresolved_and_retried(rig: Rig, standin: LettaStandIn) -> None:
    standin.devices[0].online = False
    outcome = await rig.deliver(allow("toolu_1"))
    assert outcome.error == "unresolved" and DEVICE in outcome.detail
    assert isinstance(judged(outcome), Retry)
    assert standin.sockets == []


async def test_an_environments_api_out_of_reach_is_retried(settings: Settings) -> None:
    unreachable = Rig(f"http://127.0.0.1:{free_port()}", settings)
    try:
        outcome = await unreachable.deliver(allow("toolu_1"))
    finally:
        await unreachable.aclose()
    assert outcome.error == "connect" and isinstance(judged(outcome), Retry)


async def test_a_refused_socket_is_retried_and_the_connection_resolved_again(
        letta: tuple[LettaStandIn, str], settings: Settings, standin: LettaStandIn, device: SimulatedDevice) -> None:
    device.request_approval(SCOPE, "toolu_1")
    wrong = Rig(letta[1], settings, api_key="another-key")
    try:
        outcome = await wrong.deliver(allow("toolu_1"))
        assert outcome.error == "connect" and "HTTP 403" in outcome.detail
        assert isinstance(judged(outcome), Retry)
        assert standin.refused == ["bad credentials"] and standin.list_requests == 1
        await wrong.deliver(allow("toolu_1"))
        assert standin.list_requests == 2  # the cached connection was forgotten
    finally:
        await wrong.aclose()
    assert device.decisions == []


async def test_a_device_that_re_registered_is_found_again_after_one_refused_attempt(
        rig: Rig, standin: LettaStandIn, device: SimulatedDevice) -> None:
    device.request_approval(SCOPE, "toolu_1")
    assert (await rig.deliver(allow("toolu_1"))).accepted  # caches conn-deliver
    fresh = standin.rotate(DEVICE)
    device.request_approval(SCOPE, "toolu_2")
    refused = await rig.deliver(allow("toolu_2"))
    assert refused.error == "connect" and isinstance(judged(refused), Retry)
    assert standin.refused == ["unknown connection conn-deliver"]
    assert (await rig.deliver(allow("toolu_2"))).accepted
    assert standin.sockets[-1].connection_id == fresh
    assert [d.tool_call_id for d in device.decisions] == ["toolu_1", "toolu_2"]


async def test_a_socket_dropped_mid_exchange_is_retried(rig: Rig, standin: LettaStandIn,
                                                        device: SimulatedDevice) -> None:
    device.request_approval(SCOPE, "toolu_1")
    device.answer_inputs = False
    delivery = asyncio.create_task(rig.deliver(allow("toolu_1")))
    assert await asyncio.to_thread(standin.wait_for, lambda s: "input" in kinds(s), 10.0)
    standin.drop()
    outcome = await asyncio.wait_for(delivery, timeout=30.0)
    assert outcome.error == "transport" and isinstance(judged(outcome), Retry)


# -- the watcher's record of the request ----------------------------------------------------------


async def watched(queue: Queue, tool_call_id: str, request_id: str, conversation: str = CONVERSATION) -> None:
    """What `relay watch` stores when it sees the control request (watch.py)."""
    await queue.put_record(REQUEST_KIND, tool_call_key(AGENT, conversation, tool_call_id), json.dumps(
        {"request_id": request_id, "tool_call_id": tool_call_id, "route": "socket", "agent_id": AGENT,
         "conversation_id": conversation, "connection_id": "conn-deliver"}), 60)


@pytest.fixture
async def recorded_rig(letta: tuple[LettaStandIn, str], settings: Settings, redis_client: Any,
                       prefix: str) -> AsyncIterator[tuple[Rig, Queue]]:
    queue = Queue(redis_client, prefix=prefix)
    made = Rig(letta[1], settings, records=queue)
    yield made, queue
    await made.aclose()


async def test_the_watcher_s_stored_request_id_is_used_without_a_sync(
        recorded_rig: tuple[Rig, Queue], standin: LettaStandIn, device: SimulatedDevice) -> None:
    rig, queue = recorded_rig
    request_id = device.request_approval(SCOPE, "toolu_1")
    await watched(queue, "toolu_1", request_id)
    assert (await rig.deliver(allow("toolu_1"))).accepted
    [decision] = sent(standin)
    assert decision["type"] == "input" and decision["payload"]["request_id"] == request_id
    assert [d.request_id for d in device.decisions] == [request_id]


async def test_a_stored_id_out_of_date_is_checked_with_one_sync_and_sent_again(
        recorded_rig: tuple[Rig, Queue], standin: LettaStandIn, device: SimulatedDevice) -> None:
    rig, queue = recorded_rig
    request_id = device.request_approval(SCOPE, "toolu_1")
    await watched(queue, "toolu_1", "perm-an-older-ask")
    assert (await rig.deliver(allow("toolu_1"))).accepted
    assert kinds(standin) == ["input", "sync", "input"]
    assert [d.request_id for d in device.decisions] == [request_id]


async def test_a_stored_id_answered_elsewhere_is_settled_after_one_sync(
        recorded_rig: tuple[Rig, Queue], standin: LettaStandIn, device: SimulatedDevice) -> None:
    rig, queue = recorded_rig
    request_id = device.request_approval(SCOPE, "toolu_1")
    await watched(queue, "toolu_1", request_id)
    device.answer_elsewhere(SCOPE, request_id)
    outcome = await rig.deliver(allow("toolu_1"))
    assert outcome.error == "settled" and isinstance(judged(outcome), Settled)
    assert kinds(standin) == ["input", "sync"] and device.decisions == []


@pytest.mark.parametrize("stored", ["not json", "[1, 2]", "null", '{"request_id": 5}', '{"request_id": ""}'])
async def test_an_unreadable_record_falls_back_to_a_sync(recorded_rig: tuple[Rig, Queue], standin: LettaStandIn,
                                                         device: SimulatedDevice, stored: str) -> None:
    rig, queue = recorded_rig
    device.request_approval(SCOPE, "toolu_1")
    await queue.put_record(REQUEST_KIND, tool_call_key(AGENT, CONVERSATION, "toolu_1"), stored, 60)
    assert (await rig.deliver(allow("toolu_1"))).accepted
    assert kinds(standin) == ["sync", "input"]


async def test_another_conversation_s_record_of_the_same_tool_call_id_is_not_used(
        recorded_rig: tuple[Rig, Queue], standin: LettaStandIn, device: SimulatedDevice) -> None:
    rig, queue = recorded_rig
    request_id = device.request_approval(SCOPE, "toolu_1")
    await watched(queue, "toolu_1", "perm-of-another-conversation", conversation="conv-other")
    assert (await rig.deliver(allow("toolu_1"))).accepted
    assert kinds(standin) == ["sync", "input"]
    assert [d.request_id for d in device.decisions] == [request_id]


async def test_redis_out_of_reach_falls_back_to_a_sync(letta: tuple[LettaStandIn, str], settings: Settings,
                                                       standin: LettaStandIn, device: SimulatedDevice,
                                                       prefix: str) -> None:
    dead = aioredis.Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=1)
    rig = Rig(letta[1], settings, records=Queue(dead, prefix=prefix))
    device.request_approval(SCOPE, "toolu_1")
    try:
        assert (await rig.deliver(allow("toolu_1"))).accepted
    finally:
        await rig.aclose()
        await dead.aclose()
    assert kinds(standin) == ["sync", "input"]
