"""What `relay watch` learns from one conversation's status socket, frame by frame, on a fake
clock (no sockets): scripted frames, and whole turns recorded from the real device
(tests/samples/letta_device)."""

from __future__ import annotations

import itertools
import json
from typing import Any

from hypothesis import given, settings as hypothesis_settings, strategies as st

from relay.messages import ApprovalRequest
from relay.status_frames import ANSWERED_ELSEWHERE, NO_LONGER_PENDING, runtime_of
from relay.status_session import LEAVE_GRACE, SEEN_KEYS, ApprovalClosed, ApprovalRequested, Session, Step, TurnEnded
from tests.test_status_frames import REAL_AGENT, REAL_REQUEST, REAL_TOOL_CALL, recorded

AGENT, CONVERSATION = "agent-1", "conv-1"
RUNTIME = runtime_of(AGENT, CONVERSATION)
OTHER = runtime_of(AGENT, "conv-other")


class Device:
    """Numbers events as a Letta Code device does: `event_seq` across all its conversations,
    and an `idempotency_key` of "{type}:{event_seq}:{uuid}"."""

    def __init__(self) -> None:
        self.event_seq = 0
        self._uuids = itertools.count(1)

    def event(self, frame: dict[str, Any], runtime: dict[str, str] = RUNTIME) -> dict[str, Any]:
        self.event_seq += 1
        return {**frame, "runtime": runtime, "event_seq": self.event_seq, "emitted_at": "2026-12-04T03:36:29.169Z",
                "idempotency_key": f"{frame['type']}:{self.event_seq}:uuid-{next(self._uuids)}"}


def control_request(tool_call_id: str = "toolu_1", request_id: str | None = None, tool: str = "Bash",
                    tool_input: dict[str, Any] | None = None, runtime: dict[str, str] = RUNTIME) -> dict[str, Any]:
    return {"type": "control_request", "request_id": request_id or f"perm-{tool_call_id}",
            "request": request_body(tool_call_id, tool, tool_input),
            "agent_id": runtime["agent_id"], "conversation_id": runtime["conversation_id"]}


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
    return delta("assistant_message", run_id, id=message_id, content=[{"type": "text", "text": text}]
                 if isinstance(text, str) else text)


def stop(reason: str = "end_turn", run_id: str = "run-1") -> dict[str, Any]:
    return delta("stop_reason", run_id, stop_reason=reason)


def finished(run_id: str | None = "run-1", stop_reason: str | None = "end_turn", error: str | None = None) -> dict[str, Any]:
    """turn_finished as 0.34.12 sends it: turn_id, stop_reason, run_id?, error? (no client_message_ids)."""
    frame: dict[str, Any] = {"type": "turn_finished", "turn_id": "turn-1"}
    if stop_reason is not None:
        frame["stop_reason"] = stop_reason
    if run_id is not None:
        frame["run_id"] = run_id
    if error is not None:
        frame["error"] = error
    return frame


class Feed:
    """A session behind a server that adds a transport `seq` to every frame, collecting every
    event and every frame the session sends."""

    def __init__(self, session: Session | None = None) -> None:
        self.session = session or Session(AGENT, CONVERSATION, hold_grace=0.0)
        self.device = Device()
        self.seq = 0
        self.now = 100.0
        self.events: list[Any] = []
        self.sent: list[dict[str, Any]] = []

    def _take(self, step: Step) -> Step:
        self.events += step.events
        self.sent += [json.loads(text) for text in step.send]
        return step

    def raw(self, text: str | bytes) -> Step:
        return self._take(self.session.receive(text, self.now))

    def frame(self, frame: dict[str, Any], *, sequenced: bool = True) -> Step:
        if sequenced:
            self.seq += 1
            frame = {**frame, "seq": self.seq}
        return self.raw(json.dumps(frame))

    def event(self, frame: dict[str, Any], runtime: dict[str, str] = RUNTIME) -> Step:
        return self.frame(self.device.event(frame, runtime))

    def replay(self, frames: list[dict[str, Any]]) -> None:
        for frame in frames:
            self.frame(frame)

    def connect(self) -> Step:
        return self._take(self.session.connected())

    def tick(self, seconds: float = 0.0) -> Step:
        self.now += seconds
        return self._take(self.session.tick(self.now))

    def of(self, kind: type) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind)]

    def syncs(self) -> list[dict[str, Any]]:
        return [f for f in self.sent if f["type"] != "ack"]


def relabelled(frames: list[dict[str, Any]], conversation: str) -> list[dict[str, Any]]:
    """Recorded frames as if another conversation of the same device had sent them."""
    moved = []
    for frame in frames:
        frame = {**frame, "runtime": {**frame["runtime"], "conversation_id": conversation}}
        if "conversation_id" in frame:
            frame["conversation_id"] = conversation
        moved.append(frame)
    return moved


def events_only(frames: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The device's events (what every status socket of the conversation gets), without the
    answers to another client's commands."""
    return [f for f in frames if "event_seq" in f]


# -- transport: acks, one sync, de-duplication ------------------------------------------------------


def test_every_sequenced_frame_is_acked_whatever_it_is() -> None:
    feed = Feed()
    feed.event(device_status())
    feed.event(chunk("hi"))
    feed.event(device_status(), OTHER)  # another conversation's
    feed.frame({"type": "something_new"})
    feed.frame({"type": "input_accepted", "request_id": "c", "accepted": True})
    feed.frame({"type": "x", "seq": 0}, sequenced=False)
    feed.frame({"type": "pong"}, sequenced=False)
    feed.frame({"type": "pong", "seq": True}, sequenced=False)
    assert feed.sent == [{"type": "ack", "seq": n} for n in (1, 2, 3, 4, 5, 0)]


def test_frames_that_are_not_frames_are_ignored() -> None:
    feed = Feed()
    for text in ["", "not json", "[1, 2]", "{}", '{"type": 5}', b"\xff\xfe", '{"type": "stream_delta", "delta": 3}',
                 '{"type": "control_request", "request_id": "r", "request": {"subtype": "can_use_tool"}}',
                 '{"type": "update_device_status", "device_status": {"pending_control_requests": [1, null]}}',
                 '{"type": "update_loop_status", "loop_status": {"active_run_ids": 7}}',
                 '{"type": "update_loop_status", "loop_status": {"client_message_ids_by_run_id": [1]}}',
                 '{"type": "turn_finished", "run_id": 7}']:
        feed.raw(text)
    assert feed.of(ApprovalRequested) == [] and feed.of(ApprovalClosed) == [] and feed.sent == []


def test_connecting_sends_one_sync_that_never_recovers_approvals() -> None:
    feed = Feed()
    feed.connect()
    [frame] = feed.sent
    assert frame["type"] == "sync" and frame["runtime"] == RUNTIME
    assert frame["recover_approvals"] is False and frame["force_device_status"] is True
    feed.connect()  # a reconnect asks again, under a new id
    assert len(feed.syncs()) == 2 and feed.syncs()[0]["request_id"] != feed.syncs()[1]["request_id"]


def test_holes_in_event_seq_cause_no_sync_and_lose_nothing() -> None:
    feed = Feed()
    feed.connect()
    for _ in range(5):
        feed.device.event_seq += 3  # three events of other conversations, never seen here
        feed.event(loop_status("PROCESSING_API_RESPONSE", ["run-1"], {"run-1": ["m-1"]}))
        feed.tick(60.0)
    feed.event(chunk("Still here."))
    feed.device.event_seq += 100
    feed.event(finished())
    feed.tick(3600.0)
    assert len(feed.syncs()) == 1  # the one of connecting
    assert feed.of(TurnEnded) == [TurnEnded(("m-1",), ("Still here.",), "end_turn", ("run-1",))]


def test_frames_of_another_conversation_interleaved_with_ours_cause_no_sync() -> None:
    """The device numbers events across its conversations; a busy neighbour is no reason to sync."""
    feed = Feed(Session(REAL_AGENT, "default"))
    feed.connect()
    ours = events_only(recorded("approval_turn.jsonl"))
    theirs = relabelled(events_only(recorded("user_turn.jsonl")), "conv-other") * 3
    event_seq = itertools.count(1)
    for frame in itertools.chain.from_iterable(itertools.zip_longest(theirs, ours)):
        if frame is not None:  # renumbered as one device numbers them: every other one is a hole here
            feed.frame({**frame, "event_seq": next(event_seq)})
            feed.tick(0.3)
    assert len(feed.syncs()) == 1
    assert [type(e) for e in feed.events] == [ApprovalRequested, ApprovalClosed, TurnEnded]
    assert feed.of(TurnEnded)[0].client_message_ids == ("cm-2",)  # not the neighbour's cm-1


def test_a_frame_delivered_twice_counts_once_but_is_acked_each_time() -> None:
    feed = Feed()
    frame = feed.device.event(control_request("toolu_1"))
    feed.frame(frame)
    feed.frame(frame)  # redelivered after a reconnect, under a new seq
    assert len(feed.of(ApprovalRequested)) == 1
    assert feed.sent == [{"type": "ack", "seq": 1}, {"type": "ack", "seq": 2}]


def test_a_chunk_delivered_twice_is_not_said_twice() -> None:
    feed = Feed()
    feed.event(loop_status("PROCESSING_API_RESPONSE", ["run-1"], {"run-1": ["m-1"]}))
    frame = feed.device.event(chunk("Hello."))
    feed.frame(frame)
    feed.frame(frame)
    feed.event(finished())
    assert feed.of(TurnEnded)[0].texts == ("Hello.",)


def test_the_keys_remembered_for_de_duplication_are_bounded() -> None:
    feed = Feed()
    oldest = feed.device.event(chunk("First.", "msg-1"))
    again = {**oldest, "delta": {**oldest["delta"], "id": "msg-2", "content": "Again."}}  # same key
    feed.frame(oldest)
    feed.frame(again)  # remembered: dropped
    for _ in range(SEEN_KEYS):
        feed.event(loop_status("PROCESSING_API_RESPONSE", ["run-1"], {"run-1": ["m-1"]}))
    feed.frame(again)  # the oldest key is forgotten by now: read again
    feed.event(finished())
    assert feed.of(TurnEnded)[0].texts == ("First.", "Again.")


def test_frames_of_another_conversation_or_agent_are_ignored() -> None:
    feed = Feed()
    feed.event(device_status("toolu_1"), OTHER)
    feed.event(control_request("toolu_2", runtime=OTHER), OTHER)
    feed.frame({**control_request("toolu_3"), "agent_id": "agent-other"})  # named by its own fields only
    feed.frame({**control_request("toolu_4"), "conversation_id": "conv-other"})
    feed.event(loop_status("PROCESSING_API_RESPONSE", ["run-x"], {"run-x": ["m-x"]}), OTHER)
    feed.event(chunk("not ours", run_id="run-x"), OTHER)
    feed.event(finished("run-x"), OTHER)
    assert feed.events == [] and feed.session.pending == {}


# -- approvals ------------------------------------------------------------------------------------


def test_a_control_request_becomes_one_approval_request() -> None:
    feed = Feed()
    feed.event(control_request("toolu_1", tool_input={"command": "rm -rf build"}))
    feed.event(control_request("toolu_1", tool_input={"command": "rm -rf build"}))  # replayed by a sync
    feed.event(device_status("toolu_1"))
    [event] = feed.events
    assert event == ApprovalRequested(ApprovalRequest(
        request_id="perm-toolu_1", tool_call_id="toolu_1", tool_name="Bash", input={"command": "rm -rf build"},
        agent_id=AGENT, conversation_id=CONVERSATION, turn_message_id=None))
    assert set(feed.session.pending) == {"perm-toolu_1"}


def test_an_approval_request_knows_the_message_that_started_its_turn() -> None:
    feed = Feed()
    feed.event(loop_status("PROCESSING_API_RESPONSE", ["run-1"], {"run-1": ["m-1"]}))
    feed.event(stop("requires_approval"))
    feed.event(control_request("toolu_1"))
    [asked] = feed.of(ApprovalRequested)
    assert asked.request.turn_message_id == "m-1"


def test_a_request_ahead_of_its_turn_s_loop_status_waits_for_it_to_learn_its_thread() -> None:
    feed = Feed(Session(AGENT, CONVERSATION, hold_grace=0.5))
    feed.event(control_request("toolu_1"))  # a sync replays requests before the loop status
    assert feed.events == [] and feed.session.next_deadline() == feed.now + 0.5
    feed.event(loop_status("WAITING_ON_APPROVAL", ["run-1"], {"run-1": ["m-1"]}))
    [asked] = feed.of(ApprovalRequested)
    assert asked.request.turn_message_id == "m-1"
    assert feed.session.next_deadline() == float("inf")
    feed.tick(5.0)
    assert len(feed.of(ApprovalRequested)) == 1


def test_a_request_whose_turn_stays_unknown_is_announced_after_the_grace() -> None:
    feed = Feed(Session(AGENT, CONVERSATION, hold_grace=0.5))
    feed.event(control_request("toolu_1"))
    feed.tick(0.4)
    assert feed.events == []
    feed.tick(0.1)
    [asked] = feed.of(ApprovalRequested)
    assert asked.request.turn_message_id is None
    assert feed.session.next_deadline() == float("inf")


def test_a_held_request_that_went_ahead_first_is_never_announced_nor_closed() -> None:
    feed = Feed(Session(AGENT, CONVERSATION, hold_grace=0.5))
    feed.event(control_request("toolu_1"))
    feed.event(delta("tool_return_message", tool_call_id="toolu_1"))
    feed.tick(1.0)
    assert feed.events == [] and feed.session.pending == {}


def test_a_held_request_that_left_the_pending_list_first_is_never_announced_nor_closed() -> None:
    feed = Feed(Session(AGENT, CONVERSATION, hold_grace=0.5))
    feed.event(control_request("toolu_1"))
    feed.event(device_status())
    feed.tick(1.0)
    assert feed.events == [] and feed.session.pending == {}


def test_a_request_missed_on_the_wire_is_learned_from_the_pending_list() -> None:
    feed = Feed()
    feed.event(device_status("toolu_1", "toolu_2"))
    assert [e.request.tool_call_id for e in feed.of(ApprovalRequested)] == ["toolu_1", "toolu_2"]


def test_other_control_requests_are_not_approvals() -> None:
    feed = Feed()
    feed.event({"type": "control_request", "request_id": "r-1", "request": {"subtype": "interrupt"}})
    assert feed.events == [] and feed.session.pending == {}


def test_a_request_that_leaves_the_pending_list_is_closed_for_good() -> None:
    feed = Feed()
    feed.event(control_request("toolu_1"))
    feed.event(control_request("toolu_2"))
    feed.event(device_status("toolu_2"))
    assert feed.of(ApprovalClosed) == []  # not yet: a tool event may follow (then it went ahead)
    feed.tick(LEAVE_GRACE)
    assert feed.of(ApprovalClosed) == [ApprovalClosed("toolu_1", "perm-toolu_1", NO_LONGER_PENDING)]
    assert set(feed.session.pending) == {"perm-toolu_2"}
    feed.event(device_status("toolu_1", "toolu_2"))  # a stale status cannot bring it back
    feed.event(control_request("toolu_1"))
    assert len(feed.of(ApprovalRequested)) == 2 and len(feed.of(ApprovalClosed)) == 1


def test_a_request_that_left_the_list_just_before_its_tool_started_was_answered_elsewhere() -> None:
    """The real device drops a decided request from its pending list, then runs the tool."""
    feed = Feed()
    feed.event(control_request("toolu_1"))
    feed.event(device_status())
    feed.tick(LEAVE_GRACE / 2)
    feed.event(delta("client_tool_start", tool_call_id="toolu_1"))
    feed.tick(LEAVE_GRACE)
    assert feed.of(ApprovalClosed) == [ApprovalClosed("toolu_1", "perm-toolu_1", ANSWERED_ELSEWHERE)]


def test_a_status_of_another_conversation_closes_nothing() -> None:
    feed = Feed()
    feed.event(control_request("toolu_1"))
    feed.event(device_status(), OTHER)
    assert feed.of(ApprovalClosed) == [] and set(feed.session.pending) == {"perm-toolu_1"}


def test_a_tool_call_that_went_ahead_was_answered_elsewhere() -> None:
    feed = Feed()
    for tool_call_id in ("toolu_1", "toolu_2", "toolu_3", "toolu_4"):
        feed.event(control_request(tool_call_id))
    feed.event(delta("tool_return_message", tool_call_id="toolu_1", status="success", tool_return="ok"))
    feed.event(delta("client_tool_start", tool_call_id="toolu_2"))
    feed.event(delta("client_tool_end", tool_call_id="toolu_3", status="error"))
    feed.event(delta("tool_return_message", tool_returns=[{"tool_call_id": "toolu_4", "status": "success"}]))
    feed.event(delta("tool_return_message", tool_call_id="toolu_unknown"))
    assert feed.of(ApprovalClosed) == [ApprovalClosed(f"toolu_{n}", f"perm-toolu_{n}", ANSWERED_ELSEWHERE)
                                       for n in (1, 2, 3, 4)]
    assert feed.session.pending == {}


def test_requests_remembered_from_before_a_restart_are_closed_by_the_first_status() -> None:
    remembered = [ApprovalRequest("perm-toolu_1", "toolu_1", "Bash", {}, AGENT, CONVERSATION),
                  ApprovalRequest("perm-toolu_2", "toolu_2", "Bash", {}, AGENT, CONVERSATION)]
    feed = Feed(Session(AGENT, CONVERSATION, known_pending=remembered, hold_grace=0.0))
    assert set(feed.session.pending) == {"perm-toolu_1", "perm-toolu_2"}
    feed.connect()
    feed.event(control_request("toolu_2"))  # the sync's replay: still pending, already announced
    feed.event(device_status("toolu_2"))
    feed.tick(LEAVE_GRACE)
    assert feed.events == [ApprovalClosed("toolu_1", "perm-toolu_1", NO_LONGER_PENDING)]


def test_a_remembered_request_that_went_ahead_is_closed_as_answered_elsewhere() -> None:
    remembered = [ApprovalRequest("perm-toolu_1", "toolu_1", "Bash", {}, AGENT, CONVERSATION)]
    feed = Feed(Session(AGENT, CONVERSATION, known_pending=remembered))
    feed.event(delta("client_tool_start", tool_call_id="toolu_1"))
    assert feed.events == [ApprovalClosed("toolu_1", "perm-toolu_1", ANSWERED_ELSEWHERE)]


# -- turns ----------------------------------------------------------------------------------------


def test_a_turn_is_its_assistant_messages_assembled_from_chunks() -> None:
    feed = Feed()
    feed.event(loop_status("SENDING_API_REQUEST", ["run-1"], {"run-1": ["m-1"]}))
    for text in ("Hel", "lo", " there."):
        feed.event(chunk(text, "msg-1"))
    feed.event(delta("reasoning_message", reasoning="thinking"))
    feed.event(chunk([{"type": "text", "text": "Second "}, {"text": "message"}, "!", 7], "msg-2"))
    feed.event(delta("assistant_message", id="msg-3", content="  "))  # nothing said
    feed.event(delta("assistant_message", id="msg-4", content="A plain string."))
    feed.event(stop("end_turn"))
    feed.event(finished())
    assert feed.of(TurnEnded) == [TurnEnded(("m-1",), ("Hello there.", "Second message!", "A plain string."),
                                            "end_turn", ("run-1",))]


def test_a_subagent_s_output_is_not_part_of_the_reply() -> None:
    feed = Feed()
    feed.event(loop_status("PROCESSING_API_RESPONSE", ["run-1"], {"run-1": ["m-1"]}))
    feed.event(chunk("Main answer."))
    feed.event({**chunk("subagent chatter", "sub-msg", "run-sub"), "subagent_id": "sub-1"})
    feed.event(stop())
    feed.event(finished())
    [turn] = feed.of(TurnEnded)
    assert turn.texts == ("Main answer.",) and turn.run_ids == ("run-1",)


def test_a_stop_reason_alone_ends_no_turn() -> None:
    feed = Feed()
    feed.event(loop_status("PROCESSING_API_RESPONSE", ["run-1"], {"run-1": ["m-1"]}))
    feed.event(chunk("Answer."))
    for reason in ("end_turn", "error", "cancelled", "max_steps"):
        feed.event(stop(reason))
    feed.tick(3600.0)
    assert feed.of(TurnEnded) == []


def test_waiting_on_input_alone_ends_no_turn() -> None:
    feed = Feed()
    feed.event(loop_status("PROCESSING_API_RESPONSE", ["run-1"], {"run-1": ["m-1"]}))
    feed.event(chunk("Answer."))
    feed.event(loop_status("WAITING_ON_INPUT", [], {"run-1": ["m-1"]}))
    feed.tick(3600.0)
    assert feed.of(TurnEnded) == []
    feed.event(chunk(" More.", "msg-1"))  # the same turn goes on
    feed.event(finished())
    assert feed.of(TurnEnded) == [TurnEnded(("m-1",), ("Answer. More.",), "end_turn", ("run-1",))]


def test_turn_finished_ends_the_turn_with_its_own_stop_reason() -> None:
    feed = Feed()
    feed.event(loop_status("PROCESSING_API_RESPONSE", ["run-1"], {"run-1": ["m-1"]}))
    feed.event(stop("end_turn"))
    feed.event(finished(stop_reason="max_steps"))
    assert feed.of(TurnEnded)[0].stop_reason == "max_steps"


def test_turn_finished_without_a_stop_reason_keeps_the_last_one_streamed() -> None:
    feed = Feed()
    feed.event(loop_status("PROCESSING_API_RESPONSE", ["run-1"], {"run-1": ["m-1"]}))
    feed.event(stop("end_turn"))
    feed.event(finished(stop_reason=None))
    assert feed.of(TurnEnded)[0].stop_reason == "end_turn"


def test_turn_finished_s_error_is_reported_with_the_turn() -> None:
    feed = Feed()
    feed.event(loop_status("PROCESSING_API_RESPONSE", ["run-1"], {"run-1": ["m-1"]}))
    feed.event(chunk("Let me look."))
    feed.event(finished(stop_reason="error", error="Agent agent-1 not found"))
    assert feed.of(TurnEnded) == [TurnEnded(("m-1",), ("Let me look.",), "error", ("run-1",),
                                            "Agent agent-1 not found")]


def test_an_empty_error_is_no_error() -> None:
    feed = Feed()
    feed.event(loop_status("PROCESSING_API_RESPONSE", ["run-1"], {"run-1": ["m-1"]}))
    feed.event(finished(error=""))
    assert feed.of(TurnEnded)[0].error is None


def test_a_terminal_loop_error_s_message_and_messages_are_the_turn_s_and_it_ends_on_turn_finished() -> None:
    feed = Feed()
    feed.event(delta("loop_error", None, message="provider down", stop_reason="llm_api_error",
                     is_terminal=True, client_message_ids=["m-1"]))
    assert feed.of(TurnEnded) == []
    feed.event(finished(None, "llm_api_error"))
    assert feed.of(TurnEnded) == [TurnEnded(("m-1",), (), "llm_api_error", (), "provider down")]


def test_turn_finished_s_own_error_wins_over_a_loop_error_s_message() -> None:
    feed = Feed()
    feed.event(loop_status("PROCESSING_API_RESPONSE", ["run-1"], {"run-1": ["m-1"]}))
    feed.event(delta("loop_error", message="first words", is_terminal=True))
    feed.event(finished(stop_reason="error", error="the final word"))
    assert feed.of(TurnEnded)[0].error == "the final word"


def test_a_non_terminal_loop_error_changes_nothing() -> None:
    """A refused command (e.g. an approval sent as a message) is about that input, not the turn."""
    feed = Feed()
    refusal = delta("loop_error", None, message="Protocol violation: …", stop_reason="error", is_terminal=False,
                    client_message_ids=["m-9"])
    feed.event(refusal)
    assert feed.events == []
    feed.event(loop_status("PROCESSING_API_RESPONSE", ["run-1"], {"run-1": ["m-1"]}))
    feed.event(chunk("Working."))
    feed.event(refusal)
    feed.event(finished())
    assert feed.of(TurnEnded) == [TurnEnded(("m-1",), ("Working.",), "end_turn", ("run-1",))]


def test_the_recorded_refusals_of_an_approval_sent_as_a_message_change_nothing() -> None:
    feed = Feed(Session(REAL_AGENT, "default"))
    feed.replay(recorded("refused_input.jsonl"))
    assert feed.events == [] and feed.syncs() == []


def test_messages_named_after_the_run_spoke_are_still_the_turn_s() -> None:
    feed = Feed()
    feed.event(chunk("Done."))
    feed.event(loop_status("WAITING_ON_INPUT", [], {"run-1": ["m-1"]}))
    feed.event(finished())
    assert feed.of(TurnEnded) == [TurnEnded(("m-1",), ("Done.",), "end_turn", ("run-1",))]


def test_a_run_that_consumed_several_messages_names_them_all_once() -> None:
    feed = Feed()
    feed.event(loop_status("PROCESSING_API_RESPONSE", ["run-1"], {"run-1": ["m-1", "m-2"]}))
    feed.event(loop_status("PROCESSING_API_RESPONSE", ["run-1"], {"run-1": ["m-1", "m-2"]}))
    feed.event(chunk("Both answered."))
    feed.event(finished())
    assert feed.of(TurnEnded)[0].client_message_ids == ("m-1", "m-2")


def test_an_approval_continues_the_turn_across_its_two_runs() -> None:
    feed = Feed()
    feed.event(loop_status("PROCESSING_API_RESPONSE", ["run-1"], {"run-1": ["m-1"]}))
    feed.event(chunk("I will list the files."))
    feed.event(stop("requires_approval"))
    feed.event(control_request("toolu_1"))
    feed.event(loop_status("WAITING_ON_APPROVAL", ["run-1"], {"run-1": ["m-1"]}))
    assert feed.of(TurnEnded) == []
    [asked] = feed.of(ApprovalRequested)
    assert asked.request.turn_message_id == "m-1"
    feed.event(delta("tool_return_message", "run-1", tool_call_id="toolu_1", status="success"))
    feed.event(loop_status("PROCESSING_API_RESPONSE", ["run-2"], {"run-1": ["m-1"], "run-2": ["m-1"]}))
    feed.event(chunk("There are 3 files.", "msg-2", "run-2"))
    feed.event(stop("end_turn", "run-2"))
    feed.event(finished("run-2"))
    assert feed.of(TurnEnded) == [TurnEnded(("m-1",), ("I will list the files.", "There are 3 files."), "end_turn",
                                            ("run-1", "run-2"))]


def test_a_run_already_reported_is_ignored() -> None:
    feed = Feed()
    feed.event(loop_status("PROCESSING_API_RESPONSE", ["run-1"], {"run-1": ["m-1"]}))
    feed.event(chunk("Answer."))
    feed.event(finished())
    feed.event(loop_status("WAITING_ON_INPUT", ["run-1"], {"run-1": ["m-1"]}))  # a sync's replay
    feed.event(chunk("late", "msg-9"))
    feed.event(stop())
    feed.event(finished())  # the same turn's end, under another key
    assert feed.of(TurnEnded) == [TurnEnded(("m-1",), ("Answer.",), "end_turn", ("run-1",))]


def test_turn_finished_without_a_run_ends_the_turn_in_progress() -> None:
    feed = Feed()
    feed.event(loop_status("PROCESSING_API_RESPONSE", ["run-1"], {"run-1": ["m-1"]}))
    feed.event(chunk("Partial."))
    feed.event(finished(None, "cancelled"))
    assert feed.of(TurnEnded) == [TurnEnded(("m-1",), ("Partial.",), "cancelled", ("run-1",))]


def test_consecutive_turns_are_reported_separately() -> None:
    feed = Feed()
    for run, message, text in (("run-1", "m-1", "First."), ("run-2", "m-2", "Second.")):
        feed.event(loop_status("PROCESSING_API_RESPONSE", [run], {run: [message]}))
        feed.event(chunk(text, f"msg-{run}", run))
        feed.event(stop(run_id=run))
        feed.event(loop_status("WAITING_ON_INPUT"))
        feed.event(finished(run))
    assert [(t.client_message_ids, t.texts, t.run_ids) for t in feed.of(TurnEnded)] == [
        (("m-1",), ("First.",), ("run-1",)), (("m-2",), ("Second.",), ("run-2",))]


# -- whole turns recorded from the real device ------------------------------------------------------


def test_a_recorded_user_message_turn_ends_once_with_what_the_agent_said() -> None:
    feed = Feed(Session(REAL_AGENT, "default"))
    frames = recorded("user_turn.jsonl")
    feed.replay(frames)
    assert feed.events == [TurnEnded(("cm-1",), ("pong",), "end_turn", ("local-run-1",))]
    assert feed.sent == [{"type": "ack", "seq": n} for n in range(1, len(frames) + 1)]


def test_a_recorded_approval_turn_spanning_two_runs_yields_its_request_and_one_end() -> None:
    feed = Feed(Session(REAL_AGENT, "default"))
    feed.replay(recorded("approval_turn.jsonl"))
    [asked] = feed.of(ApprovalRequested)
    assert (asked.request.request_id, asked.request.tool_call_id, asked.request.tool_name) == (
        REAL_REQUEST, REAL_TOOL_CALL, "Bash")
    assert asked.request.turn_message_id == "cm-2"
    # The device drops the request from its pending list as it takes the decision, just before
    # the tool starts: the short wait sees the tool start, so it went ahead (answered elsewhere;
    # a card relay decided stays as it is).
    assert feed.of(ApprovalClosed) == [ApprovalClosed(REAL_TOOL_CALL, REAL_REQUEST, ANSWERED_ELSEWHERE)]
    assert feed.of(TurnEnded) == [TurnEnded(("cm-2",), ("reflection transcript inspected",), "end_turn",
                                            ("local-run-2", "local-run-3"))]
    assert [type(e) for e in feed.events] == [ApprovalRequested, ApprovalClosed, TurnEnded]
    assert feed.syncs() == []


def test_the_whole_recording_in_one_session_yields_each_thing_once() -> None:
    feed = Feed(Session(REAL_AGENT, "default"))
    feed.connect()
    feed.replay(recorded("user_turn.jsonl") + recorded("approval_turn.jsonl") + recorded("refused_input.jsonl"))
    assert [(type(e).__name__, getattr(e, "client_message_ids", None)) for e in feed.events] == [
        ("TurnEnded", ("cm-1",)), ("ApprovalRequested", None), ("ApprovalClosed", None), ("TurnEnded", ("cm-2",))]
    assert len(feed.syncs()) == 1


def test_a_watcher_connecting_mid_turn_learns_the_request_s_thread_from_the_sync_replay() -> None:
    """A sync replays the pending control request before the loop status that names its turn."""
    frames = recorded("approval_turn.jsonl")
    reply_start = next(i for i, f in enumerate(frames) if f["type"] == "control_request" and f["event_seq"] == 28)
    feed = Feed(Session(REAL_AGENT, "default", hold_grace=0.5))
    feed.connect()
    feed.frame(frames[reply_start])  # the replayed control request
    assert feed.events == []
    feed.replay(frames[reply_start + 1:])
    [asked] = feed.of(ApprovalRequested)
    assert asked.request.turn_message_id == "cm-2"
    assert [type(e) for e in feed.events] == [ApprovalRequested, ApprovalClosed, TurnEnded]
    assert feed.of(TurnEnded)[0].client_message_ids == ("cm-2",)


def test_a_recorded_request_remembered_across_a_restart_is_not_announced_again() -> None:
    frames = recorded("approval_turn.jsonl")
    request = ApprovalRequest(REAL_REQUEST, REAL_TOOL_CALL, "Bash", {}, REAL_AGENT, "default", "cm-2")
    feed = Feed(Session(REAL_AGENT, "default", known_pending=[request]))
    feed.connect()
    feed.replay([f for f in frames if f.get("event_seq", 0) >= 28])
    assert feed.of(ApprovalRequested) == []
    assert feed.of(ApprovalClosed) == [ApprovalClosed(REAL_TOOL_CALL, REAL_REQUEST, ANSWERED_ELSEWHERE)]


# -- robustness -----------------------------------------------------------------------------------

json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                        max_size=4), max_leaves=12)
frame_types = st.sampled_from(["control_request", "update_device_status", "update_loop_status", "turn_finished",
                               "stream_delta", "input_accepted", "sync_response", "other"])


@hypothesis_settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(frame_types,
                          st.dictionaries(st.sampled_from(["seq", "event_seq", "runtime", "request_id", "request",
                                                           "device_status", "loop_status", "delta", "subagent_id",
                                                           "accepted", "error", "idempotency_key", "stop_reason",
                                                           "run_id", "agent_id", "conversation_id"]),
                                          json_values, max_size=6)),
                max_size=12))
def test_no_sequence_of_frames_makes_the_session_raise(frames: list[tuple[str, dict[str, Any]]]) -> None:
    session = Session(AGENT, CONVERSATION)
    now = 0.0
    for kind, body in frames:
        now += 0.3
        session.receive(json.dumps({**body, "type": kind}), now)
        session.tick(now)
