"""The status socket session, frame by frame, on a fake clock (no sockets)."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings as hypothesis_settings, strategies as st

from relay.messages import ApprovalRequest
from relay.status_socket import (
    ANSWERED_ELSEWHERE,
    CONTROL,
    DEFAULT_DENY_MESSAGE,
    NO_LONGER_PENDING,
    STREAM,
    ApprovalClosed,
    ApprovalRequested,
    InputAnswered,
    Session,
    Step,
    TurnEnded,
    approval_input,
    status_url,
)

AGENT, CONVERSATION = "agent-1", "conv-1"
RUNTIME = {"agent_id": AGENT, "conversation_id": CONVERSATION}


class Device:
    """Builds frames the way a Letta Code device does: event_seq and idempotency_key on
    device events, a transport seq per socket."""

    def __init__(self, runtime: dict[str, str] = RUNTIME) -> None:
        self.runtime = runtime
        self.event_seq = 0
        self.seq = {CONTROL: 0, STREAM: 0}

    def event(self, frame: dict[str, Any], *, event_seq: int | None = None) -> dict[str, Any]:
        if event_seq is None:
            self.event_seq += 1
            event_seq = self.event_seq
        return {**frame, "runtime": self.runtime, "event_seq": event_seq, "emitted_at": "2026-01-01T00:00:00Z",
                "idempotency_key": f"k:{event_seq}"}

    def wire(self, channel: str, frame: dict[str, Any]) -> str:
        self.seq[channel] += 1
        return json.dumps({**frame, "seq": self.seq[channel]})


def control_request(tool_call_id: str = "toolu_1", request_id: str | None = None, tool: str = "Bash",
                    tool_input: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"type": "control_request", "request_id": request_id or f"perm-{tool_call_id}",
            "request": request_body(tool_call_id, tool, tool_input),
            "agent_id": AGENT, "conversation_id": CONVERSATION}


def request_body(tool_call_id: str, tool: str = "Bash", tool_input: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"subtype": "can_use_tool", "tool_name": tool, "input": tool_input or {"command": "ls"},
            "tool_call_id": tool_call_id, "permission_suggestions": [], "blocked_path": None}


def device_status(*tool_call_ids: str) -> dict[str, Any]:
    return {"type": "update_device_status", "device_status": {
        "is_online": True, "is_processing": bool(tool_call_ids),
        "pending_control_requests": [{"request_id": f"perm-{t}", "request": request_body(t)} for t in tool_call_ids]}}


def loop_status(status: str, runs: list[str] | None = None,
                by_run: dict[str, list[str]] | None = None) -> dict[str, Any]:
    loop: dict[str, Any] = {"status": status, "active_run_ids": runs or [], "executing_tool_call_ids": []}
    if by_run is not None:
        loop["client_message_ids_by_run_id"] = by_run
    return {"type": "update_loop_status", "loop_status": loop}


def delta(message_type: str, run_id: str | None = "run-1", **fields: Any) -> dict[str, Any]:
    body = {"message_type": message_type, "type": "message", **fields}
    if run_id is not None:
        body["run_id"] = run_id
    return {"type": "stream_delta", "delta": body}


def chunk(text: Any, message_id: str = "msg-1", run_id: str = "run-1") -> dict[str, Any]:
    return delta("assistant_message", run_id, id=message_id, content=text)


def stop(reason: str = "end_turn", run_id: str = "run-1") -> dict[str, Any]:
    return delta("stop_reason", run_id, stop_reason=reason)


class Feed:
    """A session plus a device, collecting every event and outgoing frame."""

    def __init__(self, session: Session | None = None) -> None:
        self.session = session or Session(AGENT, CONVERSATION, hold_grace=0.0)
        self.device = Device()
        self.now = 100.0
        self.events: list[Any] = []
        self.sent: list[tuple[str, dict[str, Any]]] = []

    def _take(self, step: Step) -> Step:
        self.events += step.events
        self.sent += [(channel, json.loads(text)) for channel, text in step.send]
        return step

    def raw(self, channel: str, text: str | bytes) -> Step:
        return self._take(self.session.receive(channel, text, self.now))

    def frame(self, frame: dict[str, Any], channel: str = STREAM, *, sequenced: bool = True) -> Step:
        text = self.device.wire(channel, frame) if sequenced else json.dumps(frame)
        return self.raw(channel, text)

    def device_event(self, frame: dict[str, Any], channel: str = STREAM, **options: Any) -> Step:
        return self.frame(self.device.event(frame, **options), channel)

    def tick(self, seconds: float = 0.0) -> Step:
        self.now += seconds
        return self._take(self.session.tick(self.now))

    def of(self, kind: type) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind)]


# -- outgoing frames --------------------------------------------------------------------


def test_status_url_uses_websocket_schemes_and_names_the_conversation() -> None:
    assert status_url("https://api.letta.com", "conn-1", "agent-1", "conv-1", "stream") == (
        "wss://api.letta.com/v1/environments/conn-1/status/ws?agentId=agent-1&conversationId=conv-1&channel=stream")
    assert status_url("http://127.0.0.1:8080/letta/", "c/1", "a", None, "control") == (
        "ws://127.0.0.1:8080/letta/v1/environments/c%2F1/status/ws?agentId=a&conversationId=default&channel=control")


def test_an_approval_is_an_input_frame_answering_the_control_request() -> None:
    frame = json.loads(approval_input(RUNTIME, "cmd-1", "perm-toolu_1", True))
    assert frame == {"type": "input", "request_id": "cmd-1", "runtime": RUNTIME,
                     "payload": {"kind": "approval_response", "request_id": "perm-toolu_1",
                                 "decision": {"behavior": "allow"}}}
    allow = json.loads(approval_input(RUNTIME, "c", "r", True, "go ahead", {"command": "ls -a"}))
    assert allow["payload"]["decision"] == {"behavior": "allow", "message": "go ahead",
                                            "updated_input": {"command": "ls -a"}}


def test_a_denial_always_carries_a_message() -> None:
    deny = json.loads(approval_input(RUNTIME, "c", "r", False))
    assert deny["payload"]["decision"] == {"behavior": "deny", "message": DEFAULT_DENY_MESSAGE}
    reasoned = json.loads(approval_input(RUNTIME, "c", "r", False, "not on prod"))
    assert reasoned["payload"]["decision"] == {"behavior": "deny", "message": "not on prod"}


# -- transport: acks, pings, sync -------------------------------------------------------


def test_every_sequenced_frame_is_acked_on_its_own_socket() -> None:
    feed = Feed()
    feed.device_event(device_status(), CONTROL)
    feed.device_event(chunk("hi"), STREAM)
    feed.frame({"type": "something_new", "seq": 0}, CONTROL, sequenced=False)
    feed.frame({"type": "pong"}, STREAM, sequenced=False)
    feed.frame({"type": "pong", "seq": True}, STREAM, sequenced=False)
    assert feed.sent == [(CONTROL, {"type": "ack", "seq": 1}), (STREAM, {"type": "ack", "seq": 1}),
                         (CONTROL, {"type": "ack", "seq": 0})]


def test_frames_that_are_not_frames_are_ignored() -> None:
    feed = Feed()
    for text in ["", "not json", "[1, 2]", "{}", '{"type": 5}', b"\xff\xfe", '{"type": "stream_delta", "delta": 3}',
                 '{"type": "control_request", "request_id": "r", "request": {"subtype": "can_use_tool"}}',
                 '{"type": "update_device_status", "device_status": {"pending_control_requests": [1, null]}}',
                 '{"type": "update_loop_status", "loop_status": {"active_run_ids": 7}}']:
        feed.raw(STREAM, text)
    assert feed.events == [] and feed.sent == []


def test_connecting_asks_for_the_state_without_recovering_approvals() -> None:
    feed = Feed()
    feed._take(feed.session.connected(feed.now))
    [(channel, frame)] = feed.sent
    assert channel == CONTROL
    assert frame["type"] == "sync" and frame["runtime"] == RUNTIME
    assert frame["recover_approvals"] is False and frame["force_device_status"] is True
    assert frame["request_id"]


def test_each_socket_is_pinged_on_the_interval() -> None:
    session = Session(AGENT, CONVERSATION, ping_interval=20.0)
    feed = Feed(session)
    feed._take(session.connected(feed.now))
    feed.sent.clear()
    assert session.next_deadline() == feed.now + 20.0
    feed.tick(19.0)
    assert feed.sent == []
    feed.tick(1.0)
    assert sorted(feed.sent) == [(CONTROL, {"type": "ping"}), (STREAM, {"type": "ping"})]
    assert session.next_deadline() == feed.now + 20.0
    session.disconnected()
    assert session.next_deadline() == float("inf")


def test_a_hole_in_event_seq_that_stays_open_asks_for_a_sync() -> None:
    feed = Feed(Session(AGENT, CONVERSATION, gap_grace=1.0, sync_spacing=5.0))
    feed.device_event(loop_status("WAITING_ON_INPUT"), event_seq=1)
    feed.device_event(loop_status("WAITING_ON_INPUT"), event_seq=3)
    feed.sent.clear()
    assert feed.session.next_deadline() == feed.now + 1.0
    feed.tick(0.9)
    assert feed.sent == []
    feed.tick(0.1)
    [(channel, frame)] = feed.sent
    assert channel == CONTROL and frame["type"] == "sync" and frame["recover_approvals"] is False


def test_a_hole_filled_in_time_asks_for_nothing() -> None:
    feed = Feed(Session(AGENT, CONVERSATION, gap_grace=1.0))
    for event_seq in (1, 3, 4, 2, 5):  # out of order across two sockets
        feed.device_event(loop_status("WAITING_ON_INPUT"), event_seq=event_seq)
    feed.sent.clear()
    feed.tick(5.0)
    assert [f for _, f in feed.sent if f["type"] == "sync"] == []


def test_syncs_for_holes_are_spaced_out() -> None:
    feed = Feed(Session(AGENT, CONVERSATION, gap_grace=1.0, sync_spacing=30.0))
    feed.device_event(loop_status("WAITING_ON_INPUT"), event_seq=1)
    syncs = 0
    for start in (3, 6, 9, 12):
        feed.device_event(loop_status("WAITING_ON_INPUT"), event_seq=start)
        feed.tick(2.0)
        syncs = len([f for _, f in feed.sent if f["type"] == "sync"])
    assert syncs == 1


def test_a_frame_seen_on_both_sockets_counts_once_but_is_acked_on_both() -> None:
    feed = Feed()
    frame = feed.device.event(device_status("toolu_1"))
    feed.frame(frame, CONTROL)
    feed.frame(frame, STREAM)
    assert len(feed.of(ApprovalRequested)) == 1
    assert [(c, f["type"]) for c, f in feed.sent] == [(CONTROL, "ack"), (STREAM, "ack")]


def test_stream_deltas_on_the_control_socket_are_left_to_the_stream_socket() -> None:
    feed = Feed()
    feed.device_event(loop_status("PROCESSING_API_RESPONSE", ["run-1"], {"run-1": ["m-1"]}))
    frame = feed.device.event(chunk("Hello"))
    feed.frame({**frame, "idempotency_key": None}, CONTROL)
    feed.frame({**frame, "idempotency_key": None}, STREAM)
    feed.device_event(stop())
    [turn] = feed.of(TurnEnded)
    assert turn.texts == ("Hello",)


def test_frames_of_another_conversation_are_ignored() -> None:
    feed = Feed()
    other = Device({"agent_id": AGENT, "conversation_id": "conv-other"})
    feed.frame(other.event(device_status("toolu_1")), CONTROL)
    feed.frame({**control_request("toolu_2"), "conversation_id": "conv-other"}, CONTROL)
    feed.frame({**control_request("toolu_3"), "agent_id": "agent-other"}, CONTROL)
    assert feed.events == []


# -- approvals --------------------------------------------------------------------------


def test_a_control_request_becomes_one_approval_request() -> None:
    feed = Feed()
    feed.frame(control_request("toolu_1", tool_input={"command": "rm -rf build"}), CONTROL)
    feed.frame(control_request("toolu_1", tool_input={"command": "rm -rf build"}), CONTROL)
    feed.device_event(device_status("toolu_1"), CONTROL)
    [event] = feed.events
    assert event == ApprovalRequested(ApprovalRequest(
        request_id="perm-toolu_1", tool_call_id="toolu_1", tool_name="Bash", input={"command": "rm -rf build"},
        agent_id=AGENT, conversation_id=CONVERSATION, turn_message_id=None))
    assert set(feed.session.pending) == {"perm-toolu_1"}


def test_a_request_ahead_of_its_turn_s_loop_status_waits_for_it_to_learn_its_thread() -> None:
    feed = Feed(Session(AGENT, CONVERSATION, hold_grace=0.5))
    feed.frame(control_request("toolu_1"), CONTROL)  # the control socket was quicker
    assert feed.events == [] and feed.session.next_deadline() == feed.now + 0.5
    feed.device_event(loop_status("WAITING_ON_APPROVAL", ["run-1"], {"run-1": ["m-1"]}))
    [asked] = feed.of(ApprovalRequested)
    assert asked.request.turn_message_id == "m-1"


def test_a_request_whose_turn_stays_unknown_is_announced_after_the_grace() -> None:
    feed = Feed(Session(AGENT, CONVERSATION, hold_grace=0.5))
    feed.frame(control_request("toolu_1"), CONTROL)
    feed.tick(0.4)
    assert feed.events == []
    feed.tick(0.1)
    [asked] = feed.of(ApprovalRequested)
    assert asked.request.turn_message_id is None


def test_a_held_request_that_ends_first_is_never_announced() -> None:
    feed = Feed(Session(AGENT, CONVERSATION, hold_grace=0.5))
    feed.frame(control_request("toolu_1"), CONTROL)
    feed.device_event(delta("tool_return_message", tool_call_id="toolu_1"))
    feed.tick(1.0)
    assert feed.of(ApprovalRequested) == [] and feed.of(ApprovalClosed) == []


def test_a_request_missed_on_the_wire_is_learned_from_the_pending_list() -> None:
    feed = Feed()
    feed.device_event(device_status("toolu_1", "toolu_2"), CONTROL)
    assert [e.request.tool_call_id for e in feed.of(ApprovalRequested)] == ["toolu_1", "toolu_2"]


def test_other_control_requests_are_not_approvals() -> None:
    feed = Feed()
    feed.frame({"type": "control_request", "request_id": "r-1", "request": {"subtype": "interrupt"}}, CONTROL)
    assert feed.events == []


def test_a_request_that_leaves_the_pending_list_is_closed() -> None:
    feed = Feed(Session(AGENT, CONVERSATION, pending_grace=2.0, hold_grace=0.0))
    feed.frame(control_request("toolu_1"), CONTROL)
    feed.now += 2.0
    feed.device_event(device_status(), CONTROL)
    assert feed.of(ApprovalClosed) == [ApprovalClosed("toolu_1", "perm-toolu_1", NO_LONGER_PENDING)]
    assert feed.session.pending == {}
    feed.device_event(device_status("toolu_1"), CONTROL)  # a stale status cannot bring it back
    assert len(feed.of(ApprovalRequested)) == 1


def test_a_status_that_may_predate_the_request_does_not_close_it() -> None:
    feed = Feed(Session(AGENT, CONVERSATION, pending_grace=2.0, hold_grace=0.0))
    feed.frame(control_request("toolu_1"), CONTROL)
    feed.now += 1.0
    feed.device_event(device_status(), CONTROL)
    assert feed.of(ApprovalClosed) == [] and set(feed.session.pending) == {"perm-toolu_1"}


def test_a_tool_call_that_went_ahead_was_answered_elsewhere() -> None:
    feed = Feed()
    feed.frame(control_request("toolu_1"), CONTROL)
    feed.frame(control_request("toolu_2"), CONTROL)
    feed.device_event(delta("tool_return_message", tool_call_id="toolu_1", status="success", tool_return="ok"))
    feed.device_event(delta("client_tool_start", tool_call_id="toolu_2"))
    assert feed.of(ApprovalClosed) == [ApprovalClosed("toolu_1", "perm-toolu_1", ANSWERED_ELSEWHERE),
                                       ApprovalClosed("toolu_2", "perm-toolu_2", ANSWERED_ELSEWHERE)]


def test_requests_remembered_from_before_a_restart_are_closed_by_the_first_status() -> None:
    remembered = [ApprovalRequest("perm-toolu_1", "toolu_1", "Bash", {}, AGENT, CONVERSATION),
                  ApprovalRequest("perm-toolu_2", "toolu_2", "Bash", {}, AGENT, CONVERSATION)]
    feed = Feed(Session(AGENT, CONVERSATION, known_pending=remembered, hold_grace=0.0))
    feed.device_event(device_status("toolu_2"), CONTROL)
    assert feed.events == [ApprovalClosed("toolu_1", "perm-toolu_1", NO_LONGER_PENDING)]


# -- turns ------------------------------------------------------------------------------


def test_a_turn_is_its_assistant_messages_assembled_from_chunks() -> None:
    feed = Feed()
    feed.device_event(loop_status("SENDING_API_REQUEST", ["run-1"], {"run-1": ["m-1"]}))
    for text in ("Hel", "lo", " there."):
        feed.device_event(chunk(text, "msg-1"))
    feed.device_event(delta("reasoning_message", reasoning="thinking"))
    feed.device_event(chunk([{"type": "text", "text": "Second "}, {"text": "message"}], "msg-2"))
    feed.device_event(stop("end_turn"))
    assert feed.of(TurnEnded) == [TurnEnded(("m-1",), ("Hello there.", "Second message"), "end_turn", ("run-1",))]


def test_a_subagent_s_output_is_not_part_of_the_reply() -> None:
    feed = Feed()
    feed.device_event(loop_status("PROCESSING_API_RESPONSE", ["run-1"], {"run-1": ["m-1"]}))
    feed.device_event(chunk("Main answer."))
    feed.device_event({**chunk("subagent chatter", "sub-msg", "run-sub"), "subagent_id": "sub-1"})
    feed.device_event(stop())
    [turn] = feed.of(TurnEnded)
    assert turn.texts == ("Main answer.",)


def test_an_approval_continues_the_turn_and_knows_the_message_that_started_it() -> None:
    feed = Feed()
    feed.device_event(loop_status("PROCESSING_API_RESPONSE", ["run-1"], {"run-1": ["m-1"]}))
    feed.device_event(chunk("I will list the files."))
    feed.device_event(stop("requires_approval"))
    feed.frame(control_request("toolu_1"), CONTROL)
    feed.device_event(loop_status("WAITING_ON_APPROVAL"))
    assert feed.of(TurnEnded) == []
    [asked] = feed.of(ApprovalRequested)
    assert asked.request.turn_message_id == "m-1"
    feed.device_event(delta("tool_return_message", "run-2", tool_call_id="toolu_1", status="success"))
    feed.device_event(chunk("There are 3 files.", "msg-2", "run-2"))
    feed.device_event(stop("end_turn", "run-2"))
    assert feed.of(TurnEnded) == [TurnEnded(("m-1",), ("I will list the files.", "There are 3 files."), "end_turn",
                                            ("run-1", "run-2"))]


def test_a_turn_that_ends_before_its_messages_are_named_waits_for_the_loop_status() -> None:
    feed = Feed()
    feed.device_event(chunk("Done."))
    feed.device_event(stop())
    assert feed.of(TurnEnded) == []
    assert feed.session.next_deadline() == feed.now + 0.5
    feed.device_event(loop_status("WAITING_ON_INPUT", [], {"run-1": ["m-1"]}))
    assert feed.of(TurnEnded) == [TurnEnded(("m-1",), ("Done.",), "end_turn", ("run-1",))]


def test_a_turn_nobody_names_is_reported_without_ids_after_the_grace() -> None:
    feed = Feed(Session(AGENT, CONVERSATION, end_grace=0.5))
    feed.device_event(chunk("Done."))
    feed.device_event(stop())
    feed.tick(0.4)
    assert feed.of(TurnEnded) == []
    feed.tick(0.1)
    assert feed.of(TurnEnded) == [TurnEnded((), ("Done.",), "end_turn", ("run-1",))]


def test_waiting_on_input_ends_a_turn_and_late_frames_of_it_start_nothing() -> None:
    feed = Feed()
    feed.device_event(loop_status("PROCESSING_API_RESPONSE", ["run-1"], {"run-1": ["m-1"]}))
    feed.device_event(chunk("Answer."))
    feed.device_event(loop_status("WAITING_ON_INPUT"))
    feed.device_event(stop())
    feed.device_event(chunk("late", "msg-9"))
    feed.tick(5.0)
    assert feed.of(TurnEnded) == [TurnEnded(("m-1",), ("Answer.",), None, ("run-1",))]


def test_waiting_on_input_before_any_activity_is_not_a_turn() -> None:
    feed = Feed()
    feed.device_event(loop_status("SENDING_API_REQUEST"))
    feed.device_event(loop_status("WAITING_ON_INPUT"))
    assert feed.of(TurnEnded) == []


def test_turn_finished_names_the_messages_it_consumed() -> None:
    feed = Feed()
    feed.device_event(chunk("Answer.", run_id="run-7"))
    feed.device_event({"type": "turn_finished", "turn_id": "t-1", "stop_reason": "end_turn", "run_id": "run-7",
                       "client_message_ids": ["m-1", "m-2"]})
    assert feed.of(TurnEnded) == [TurnEnded(("m-1", "m-2"), ("Answer.",), "end_turn", ("run-7",))]


def test_a_terminal_loop_error_ends_the_turn_with_its_stop_reason() -> None:
    feed = Feed()
    feed.device_event(delta("loop_error", None, message="provider down", stop_reason="llm_api_error",
                            is_terminal=True, client_message_ids=["m-1"]))
    assert feed.of(TurnEnded) == [TurnEnded(("m-1",), (), "llm_api_error", ())]


def test_consecutive_turns_are_reported_separately() -> None:
    feed = Feed()
    for run, message, text in (("run-1", "m-1", "First."), ("run-2", "m-2", "Second.")):
        feed.device_event(loop_status("PROCESSING_API_RESPONSE", [run], {run: [message]}))
        feed.device_event(chunk(text, f"msg-{run}", run))
        feed.device_event(stop(run_id=run))
    assert [(t.client_message_ids, t.texts) for t in feed.of(TurnEnded)] == [(("m-1",), ("First.",)),
                                                                             (("m-2",), ("Second.",))]


# -- input answers ----------------------------------------------------------------------


def test_input_accepted_answers_the_command() -> None:
    feed = Feed()
    feed.frame({"type": "input_accepted", "request_id": "cmd-1", "runtime": RUNTIME, "accepted": True}, CONTROL)
    feed.frame({"type": "input_accepted", "request_id": "cmd-2", "runtime": RUNTIME, "accepted": False,
                "error": "Approval is no longer pending"}, CONTROL)
    assert feed.events == [InputAnswered("cmd-1", True), InputAnswered("cmd-2", False, "Approval is no longer pending")]


# -- robustness -------------------------------------------------------------------------

json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                        max_size=4), max_leaves=12)
frame_types = st.sampled_from(["control_request", "update_device_status", "update_loop_status", "turn_finished",
                               "stream_delta", "input_accepted", "sync_response", "other"])


@hypothesis_settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([CONTROL, STREAM]), frame_types,
                          st.dictionaries(st.sampled_from(["seq", "event_seq", "runtime", "request_id", "request",
                                                           "device_status", "loop_status", "delta", "subagent_id",
                                                           "accepted", "client_message_ids", "idempotency_key",
                                                           "stop_reason", "run_id"]), json_values, max_size=6)),
                max_size=12))
def test_no_sequence_of_frames_makes_the_session_raise(frames: list[tuple[str, str, dict[str, Any]]]) -> None:
    session = Session(AGENT, CONVERSATION)
    now = 0.0
    for channel, kind, body in frames:
        now += 0.3
        session.receive(channel, json.dumps({**body, "type": kind}), now)
        session.tick(now)
