"""One approval decision told to the device, frame by frame (no sockets): find the request,
send one approval_response, read the device's answer. Scripted frames, and the real device's
recorded ones (tests/samples/letta_device)."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings as hypothesis_settings, strategies as st

from relay.approval_exchange import Exchange, Result
from relay.status_frames import DEFAULT_DENY_MESSAGE, NO_LONGER_PENDING_ERROR, RUNTIME_INACTIVE_ERROR, runtime_of
from tests.test_status_frames import REAL_AGENT, REAL_REQUEST, REAL_TOOL_CALL, recorded

AGENT, CONVERSATION = "agent-1", "conv-1"
RUNTIME = runtime_of(AGENT, CONVERSATION)
OTHER = runtime_of(AGENT, "conv-other")
COMMAND = "relay-cmid-0"
SYNC = f"{COMMAND}-sync"


def exchange(tool_call_id: str = "toolu_1", approve: bool = True, reason: str | None = None,
             known: str | None = None) -> Exchange:
    return Exchange(AGENT, CONVERSATION, tool_call_id, approve, reason, command_id=COMMAND, known_request_id=known)


def body(tool_call_id: str) -> dict[str, Any]:
    return {"subtype": "can_use_tool", "tool_name": "Bash", "input": {"command": "ls"}, "tool_call_id": tool_call_id,
            "permission_suggestions": [], "blocked_path": None}


def control_request(tool_call_id: str, request_id: str | None = None,
                    runtime: dict[str, str] = RUNTIME) -> dict[str, Any]:
    return {"type": "control_request", "request_id": request_id or f"perm-{tool_call_id}", "request": body(tool_call_id),
            "agent_id": runtime["agent_id"], "conversation_id": runtime["conversation_id"], "runtime": runtime}


def device_status(*requests: tuple[str, str], runtime: dict[str, str] = RUNTIME) -> dict[str, Any]:
    """`requests`: (request_id, tool_call_id) pairs the device lists as pending."""
    return {"type": "update_device_status", "runtime": runtime, "device_status": {
        "is_online": True, "pending_control_requests": [{"request_id": r, "request": body(t)} for r, t in requests]}}


def synced(success: bool = True, error: str | None = None, command_id: str = SYNC,
           runtime: dict[str, str] = RUNTIME) -> dict[str, Any]:
    frame: dict[str, Any] = {"type": "sync_response", "request_id": command_id, "runtime": runtime,
                             "success": success}
    return {**frame, "error": error} if error else frame


def accepted(ok: bool = True, error: str | None = None, command_id: str = COMMAND,
             runtime: dict[str, str] = RUNTIME) -> dict[str, Any]:
    frame: dict[str, Any] = {"type": "input_accepted", "request_id": command_id, "runtime": runtime, "accepted": ok}
    return {**frame, "error": error} if error else frame


class Talk:
    """An exchange and what it sends, frame by frame, behind a server that adds a transport seq."""

    def __init__(self, ex: Exchange) -> None:
        self.ex = ex
        self.seq = 0
        self.sent: list[dict[str, Any]] = [json.loads(f) for f in ex.start()]

    def hear(self, frame: dict[str, Any], *, sequenced: bool = False) -> list[dict[str, Any]]:
        if sequenced:
            self.seq += 1
            frame = {**frame, "seq": self.seq}
        said = [json.loads(f) for f in self.ex.receive(json.dumps(frame))]
        self.sent += said
        return said

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [f for f in self.sent if f["type"] == kind]

    @property
    def result(self) -> Result | None:
        return self.ex.result


def decision_of(frame: dict[str, Any]) -> tuple[str, str, dict[str, Any]]:
    """(command id, control request id, decision) of an approval_response input."""
    assert frame["type"] == "input" and frame["payload"]["kind"] == "approval_response"
    return frame["request_id"], frame["payload"]["request_id"], frame["payload"]["decision"]


# -- finding the request ----------------------------------------------------------------------------


def test_without_a_known_id_it_syncs_without_recovering_approvals() -> None:
    talk = Talk(exchange())
    [frame] = talk.sent
    assert frame == {"type": "sync", "request_id": SYNC, "runtime": RUNTIME, "recover_approvals": False,
                     "force_device_status": True}
    assert talk.result is None


def test_the_request_replayed_by_the_sync_gets_one_decision_and_its_acceptance_is_the_result() -> None:
    talk = Talk(exchange("toolu_2"))
    talk.hear(control_request("toolu_1"))
    talk.hear(control_request("toolu_2", "perm-the-id"))
    talk.hear(control_request("toolu_3"))
    assert talk.of("input") == []  # not before the sync is answered
    [frame] = talk.hear(synced())
    assert decision_of(frame) == (COMMAND, "perm-the-id", {"behavior": "allow"})
    assert frame["runtime"] == RUNTIME
    assert talk.result is None
    talk.hear(accepted())
    assert talk.result == Result("accepted", "the device accepted the decision", "perm-the-id")
    assert len(talk.of("input")) == 1 and len(talk.of("sync")) == 1


def test_the_request_is_found_in_the_device_status_too() -> None:
    talk = Talk(exchange("toolu_2", approve=False, reason="not today"))
    talk.hear(device_status(("perm-a", "toolu_1"), ("perm-b", "toolu_2")))
    [frame] = talk.hear(synced())
    assert decision_of(frame) == (COMMAND, "perm-b", {"behavior": "deny", "message": "not today"})


def test_a_denial_without_a_reason_still_carries_a_message() -> None:
    talk = Talk(exchange(approve=False, known="perm-toolu_1"))
    [frame] = talk.sent
    assert decision_of(frame)[2] == {"behavior": "deny", "message": DEFAULT_DENY_MESSAGE}


def test_a_later_status_without_the_request_does_not_unlearn_it() -> None:
    talk = Talk(exchange())
    talk.hear(control_request("toolu_1"))
    talk.hear(device_status(("perm-x", "toolu_9")))
    [frame] = talk.hear(synced())
    assert decision_of(frame)[1] == "perm-toolu_1"


def test_a_known_id_skips_the_sync() -> None:
    talk = Talk(exchange(known="perm-stored"))
    [frame] = talk.sent
    assert decision_of(frame) == (COMMAND, "perm-stored", {"behavior": "allow"})
    talk.hear(accepted())
    assert talk.result == Result("accepted", "the device accepted the decision", "perm-stored")
    assert talk.of("sync") == []


def test_a_tool_call_not_pending_after_the_sync_is_settled_and_nothing_is_sent() -> None:
    talk = Talk(exchange("toolu_1"))
    talk.hear(control_request("toolu_2"))
    talk.hear(device_status(("perm-toolu_2", "toolu_2")))
    assert talk.hear(synced()) == []
    assert talk.result is not None and talk.result.kind == "settled" and talk.result.request_id is None
    assert "toolu_1" in talk.result.detail
    assert talk.of("input") == []


# -- a stored id that is out of date --------------------------------------------------------------


def test_a_stored_id_no_longer_pending_is_checked_with_one_sync_then_resent_under_the_new_id() -> None:
    talk = Talk(exchange("toolu_1", known="perm-old"))
    [sync] = talk.hear(accepted(False, NO_LONGER_PENDING_ERROR))
    assert sync["type"] == "sync" and sync["recover_approvals"] is False
    assert talk.result is None
    talk.hear(control_request("toolu_1", "perm-new"))
    [frame] = talk.hear(synced())
    assert decision_of(frame) == (COMMAND, "perm-new", {"behavior": "allow"})
    talk.hear(accepted())
    assert talk.result is not None and (talk.result.kind, talk.result.request_id) == ("accepted", "perm-new")
    assert [f["type"] for f in talk.sent] == ["input", "sync", "input"]


def test_a_stored_id_no_longer_pending_and_nothing_pending_after_the_sync_is_settled() -> None:
    talk = Talk(exchange("toolu_1", known="perm-old"))
    talk.hear(accepted(False, NO_LONGER_PENDING_ERROR))
    talk.hear(device_status())
    assert talk.hear(synced()) == []
    assert talk.result is not None and talk.result.kind == "settled"
    assert [f["type"] for f in talk.sent] == ["input", "sync"]


def test_no_longer_pending_after_a_sync_is_final() -> None:
    talk = Talk(exchange("toolu_1"))
    talk.hear(control_request("toolu_1"))
    talk.hear(synced())
    assert talk.hear(accepted(False, NO_LONGER_PENDING_ERROR)) == []
    assert talk.result == Result("settled", f"the device says: {NO_LONGER_PENDING_ERROR}", "perm-toolu_1")
    assert [f["type"] for f in talk.sent] == ["sync", "input"]


def test_a_resent_decision_no_longer_pending_is_settled_without_another_sync() -> None:
    talk = Talk(exchange("toolu_1", known="perm-old"))
    talk.hear(accepted(False, NO_LONGER_PENDING_ERROR))
    talk.hear(control_request("toolu_1", "perm-new"))
    talk.hear(synced())
    talk.hear(accepted(False, NO_LONGER_PENDING_ERROR))
    assert talk.result is not None and talk.result.kind == "settled"
    assert [f["type"] for f in talk.sent] == ["input", "sync", "input"]


# -- refusals -------------------------------------------------------------------------------------


def test_a_device_replacing_its_listener_refusing_the_input_means_retry() -> None:
    talk = Talk(exchange(known="perm-toolu_1"))
    talk.hear(accepted(False, RUNTIME_INACTIVE_ERROR))
    assert talk.result is not None and talk.result.kind == "retry" and RUNTIME_INACTIVE_ERROR in talk.result.detail
    assert talk.of("sync") == []


def test_a_device_replacing_its_listener_failing_the_sync_means_retry() -> None:
    talk = Talk(exchange())
    talk.hear(control_request("toolu_1"))
    assert talk.hear(synced(False, RUNTIME_INACTIVE_ERROR)) == []
    assert talk.result is not None and talk.result.kind == "retry" and RUNTIME_INACTIVE_ERROR in talk.result.detail
    assert talk.of("input") == []


def test_a_sync_that_fails_without_a_reason_means_retry() -> None:
    talk = Talk(exchange())
    talk.hear(synced(False))
    assert talk.result is not None and talk.result.kind == "retry" and "no reason given" in talk.result.detail


def test_a_sync_that_fails_for_another_reason_is_refused() -> None:
    talk = Talk(exchange())
    talk.hear(synced(False, "Unknown runtime"))
    assert talk.result is not None and talk.result.kind == "refused" and "Unknown runtime" in talk.result.detail


def test_another_refusal_of_the_decision_is_refused_with_the_device_s_reason() -> None:
    talk = Talk(exchange(known="perm-toolu_1"))
    talk.hear(accepted(False, "Approval payloads require approval_response"))
    assert talk.result == Result("refused", "the device refused the decision: Approval payloads require "
                                            "approval_response", "perm-toolu_1")
    other = Talk(exchange(known="perm-toolu_1"))
    other.hear(accepted(False))
    assert other.result is not None and other.result.kind == "refused" and "no reason given" in other.result.detail


# -- what it reads and what it ignores ------------------------------------------------------------


def test_every_sequenced_frame_is_acked() -> None:
    talk = Talk(exchange())
    assert talk.hear(control_request("toolu_1"), sequenced=True) == [{"type": "ack", "seq": 1}]
    assert talk.hear(control_request("toolu_1", runtime=OTHER), sequenced=True) == [{"type": "ack", "seq": 2}]
    said = talk.hear(synced(), sequenced=True)
    assert said[0] == {"type": "ack", "seq": 3} and said[1]["type"] == "input"
    assert talk.hear({"type": "x", "seq": 0}) == [{"type": "ack", "seq": 0}]


def test_frames_of_other_conversations_are_ignored() -> None:
    talk = Talk(exchange("toolu_1"))
    talk.hear(control_request("toolu_1", "perm-theirs", runtime=OTHER))
    talk.hear(device_status(("perm-theirs-2", "toolu_1"), runtime=OTHER))
    talk.hear(synced(False, "nope", runtime=OTHER))  # another conversation's answer under our id
    assert talk.result is None
    talk.hear(synced())
    assert talk.result is not None and talk.result.kind == "settled"  # theirs was never ours


def test_answers_to_other_commands_are_ignored() -> None:
    talk = Talk(exchange(known="perm-toolu_1"))
    talk.hear(accepted(False, NO_LONGER_PENDING_ERROR, command_id="someone-else"))
    talk.hear(accepted(True, command_id="relay-other-0"))
    talk.hear(synced(True, command_id="relay-other-0-sync"))
    talk.hear({"type": "input_accepted", "accepted": True})  # no command id at all
    assert talk.result is None and [f["type"] for f in talk.sent] == ["input"]
    talk.hear(accepted())
    assert talk.result is not None and talk.result.kind == "accepted"


def test_nothing_is_read_once_the_result_is_known() -> None:
    talk = Talk(exchange(known="perm-toolu_1"))
    talk.hear(accepted())
    result = talk.result
    assert talk.hear(accepted(False, "late"), sequenced=True) == []
    assert talk.result == result


def test_frames_that_are_not_frames_are_ignored() -> None:
    ex = exchange()
    ex.start()
    for text in ["", "not json", "[1]", "{}", b"\xff", '{"type": "input_accepted", "request_id": 5}']:
        assert ex.receive(text) == []
    assert ex.result is None


# -- against the real device's recorded frames ----------------------------------------------------


def as_answer_to(frame: dict[str, Any], command_id: str) -> dict[str, Any]:
    """A recorded answer as the hosted server hands it to relay: under relay's own command id."""
    return {**frame, "request_id": command_id}


def test_the_real_device_s_sync_replay_finds_the_request_and_its_acceptance_settles_the_exchange() -> None:
    frames = recorded("approval_turn.jsonl")
    start = next(i for i, f in enumerate(frames) if f.get("event_seq") == 28)  # the sync's replay
    end = next(i for i, f in enumerate(frames) if f["type"] == "sync_response")
    ex = Exchange(REAL_AGENT, "default", REAL_TOOL_CALL, True, None, command_id=COMMAND)
    talk = Talk(ex)
    for frame in frames[start:end]:
        assert talk.hear(frame) == []
    [decision] = talk.hear(as_answer_to(frames[end], SYNC))
    real = next(f for f in recorded("commands.jsonl") if f.get("request_id") == "a1")
    assert decision == {**real, "request_id": COMMAND}
    accepted_a1 = next(f for f in frames if f["type"] == "input_accepted" and f["request_id"] == "a1")
    talk.hear(as_answer_to(accepted_a1, COMMAND))
    assert talk.result == Result("accepted", "the device accepted the decision", REAL_REQUEST)


def test_the_real_device_s_no_longer_pending_answer_settles_after_one_sync() -> None:
    frames = recorded("approval_turn.jsonl")
    refused = next(f for f in frames if f["type"] == "input_accepted" and f["request_id"] == "a0")
    ex = Exchange(REAL_AGENT, "default", REAL_TOOL_CALL, True, None, command_id=COMMAND, known_request_id="perm-nope")
    talk = Talk(ex)
    [sync] = talk.hear(as_answer_to(refused, COMMAND))
    assert sync["type"] == "sync"
    idle = [f for f in frames if f["type"] == "update_device_status" and f["event_seq"] == 52]
    for frame in idle:
        talk.hear(frame)
    talk.hear(as_answer_to(next(f for f in frames if f["type"] == "sync_response"), SYNC))
    assert talk.result is not None and talk.result.kind == "settled"


# -- robustness -----------------------------------------------------------------------------------

json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                        max_size=4), max_leaves=12)


@hypothesis_settings(max_examples=300, deadline=None)
@given(st.booleans(), st.lists(st.tuples(
    st.sampled_from(["control_request", "update_device_status", "input_accepted", "sync_response", "other"]),
    st.dictionaries(st.sampled_from(["seq", "runtime", "request_id", "request", "device_status", "accepted",
                                     "success", "error", "agent_id", "conversation_id"]),
                    json_values | st.sampled_from([COMMAND, SYNC, RUNTIME]), max_size=6)), max_size=12))
def test_no_sequence_of_frames_makes_the_exchange_raise(known: bool, frames: list[tuple[str, dict[str, Any]]]) -> None:
    ex = exchange(known="perm-toolu_1" if known else None)
    ex.start()
    for kind, fields in frames:
        for text in ex.receive(json.dumps({**fields, "type": kind})):
            assert json.loads(text)["type"] in ("ack", "sync", "input")
