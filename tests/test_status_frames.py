"""The status socket's frames: the ones relay sends, checked against what the real device took,
and reading the ones it gets, checked against what the real device sent
(tests/samples/letta_device, recorded from Letta Code 0.34.12)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from relay.messages import ApprovalRequest
from relay.standin.device import SimulatedDevice
from relay.status_frames import (
    DEFAULT_DENY_MESSAGE,
    NO_LONGER_PENDING_ERROR,
    RUNTIME_INACTIVE_ERROR,
    Answer,
    ack,
    answer_in,
    approval_input,
    approval_request,
    decode,
    is_for,
    requests_in,
    runtime_of,
    sequence_number,
    status_url,
    sync,
)

SAMPLES = Path(__file__).parent / "samples" / "letta_device"
#: The agent of the recorded frames.
REAL_AGENT = "agent-local-3690b4c6-d4a6-4e13-a307-4410dd5a66b5"
REAL_RUNTIME = {"agent_id": REAL_AGENT, "conversation_id": "default"}
REAL_REQUEST = "perm-tool-call-reflection-read-1"
REAL_TOOL_CALL = "tool-call-reflection-read-1"


def recorded(name: str) -> list[dict[str, Any]]:
    """The frames of one recorded sample file, in the order the real device sent them."""
    return [json.loads(line) for line in (SAMPLES / name).read_text().splitlines() if line.strip()]


def first(frames: list[dict[str, Any]], kind: str, **match: Any) -> dict[str, Any]:
    return next(f for f in frames if f["type"] == kind and all(f.get(k) == v for k, v in match.items()))


# -- the socket's address ---------------------------------------------------------------------------


def test_status_url_names_the_agent_and_conversation_and_no_channel() -> None:
    url = status_url("https://api.letta.com", "conn-1", "agent-1", "conv-1")
    assert url == "wss://api.letta.com/v1/environments/conn-1/status/ws?agentId=agent-1&conversationId=conv-1"
    assert "channel" not in parse_qs(urlsplit(url).query)


def test_status_url_keeps_a_path_prefix_quotes_the_connection_and_defaults_the_conversation() -> None:
    url = status_url("http://127.0.0.1:8080/letta/", "c/1 x", "agent a&b", None)
    parts = urlsplit(url)
    assert (parts.scheme, parts.netloc) == ("ws", "127.0.0.1:8080")
    assert parts.path == "/letta/v1/environments/c%2F1%20x/status/ws"
    assert parse_qs(parts.query) == {"agentId": ["agent a&b"], "conversationId": ["default"]}


def test_the_runtime_of_no_conversation_is_the_default_one() -> None:
    assert runtime_of("agent-1", None) == {"agent_id": "agent-1", "conversation_id": "default"}
    assert runtime_of("agent-1", "conv-1") == {"agent_id": "agent-1", "conversation_id": "conv-1"}


# -- frames relay sends ---------------------------------------------------------------------------


def test_an_ack_names_the_transport_seq() -> None:
    assert json.loads(ack(7)) == {"type": "ack", "seq": 7}


def test_a_sync_never_recovers_approvals_and_asks_for_the_device_status() -> None:
    frame = json.loads(sync(REAL_RUNTIME, "relay-sync-1"))
    assert frame == {"type": "sync", "request_id": "relay-sync-1", "runtime": REAL_RUNTIME,
                     "recover_approvals": False, "force_device_status": True}


def test_a_sync_has_every_field_of_the_sync_the_real_device_answered() -> None:
    real = first(recorded("commands.jsonl"), "sync")
    ours = json.loads(sync(real["runtime"], real["request_id"]))
    assert {k: ours[k] for k in real} == real


def test_an_approval_is_the_input_the_real_device_accepted() -> None:
    real = first(recorded("commands.jsonl"), "input", request_id="a1")
    assert first(recorded("approval_turn.jsonl"), "input_accepted", request_id="a1")["accepted"] is True
    assert json.loads(approval_input(REAL_RUNTIME, "a1", REAL_REQUEST, True)) == real


def test_an_allow_carries_a_message_only_when_there_is_a_reason() -> None:
    def decision(reason: str | None) -> dict[str, Any]:
        return json.loads(approval_input(REAL_RUNTIME, "c", "r", True, reason))["payload"]["decision"]

    assert decision(None) == {"behavior": "allow"}
    assert decision("") == {"behavior": "allow"}
    assert decision("go ahead") == {"behavior": "allow", "message": "go ahead"}


def test_a_deny_always_carries_a_message() -> None:
    def decision(reason: str | None) -> dict[str, Any]:
        return json.loads(approval_input(REAL_RUNTIME, "c", "r", False, reason))["payload"]["decision"]

    assert decision(None) == {"behavior": "deny", "message": DEFAULT_DENY_MESSAGE}
    assert decision("") == {"behavior": "deny", "message": DEFAULT_DENY_MESSAGE}
    assert decision("not on prod") == {"behavior": "deny", "message": "not on prod"}


@pytest.mark.parametrize(("approve", "reason", "behavior", "message"), [
    (True, None, "allow", None), (True, "fine", "allow", "fine"),
    (False, None, "deny", DEFAULT_DENY_MESSAGE), (False, "no", "deny", "no")])
def test_every_decision_shape_passes_the_device_s_validator(approve: bool, reason: str | None, behavior: str,
                                                            message: str | None) -> None:
    """The strict stand-in device applies 0.34.12's isValidApprovalResponseBody; a decision it
    finds invalid is not even answered."""
    device = SimulatedDevice()
    answers: list[dict[str, Any]] = []
    device.emit = answers.append
    scope = ("agent-1", "default")
    request_id = device.request_approval(scope, "toolu_1")
    device.handle(json.loads(approval_input(runtime_of(*scope), "cmd-1", request_id, approve, reason)))
    [accepted] = [f for f in answers if f["type"] == "input_accepted"]
    assert accepted["accepted"] is True and accepted["request_id"] == "cmd-1"
    [taken] = device.decisions
    assert (taken.request_id, taken.behavior, taken.message) == (request_id, behavior, message)


def test_frames_are_compact_json_and_keep_non_ascii_text() -> None:
    text = approval_input(REAL_RUNTIME, "c", "r", False, "pas en prod — non")
    assert ", " not in text and ": " not in text
    assert "pas en prod — non" in text


# -- reading frames -------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["", "not json", "[1, 2]", "null", "3", "{}", '{"type": 5}', '{"type": null}',
                                  b"\xff\xfe", "[" * 100_000])
def test_anything_but_a_json_object_with_a_string_type_is_not_a_frame(text: str | bytes) -> None:
    assert decode(text) is None


def test_every_recorded_frame_decodes_as_itself() -> None:
    for name in ("user_turn.jsonl", "approval_turn.jsonl", "refused_input.jsonl", "commands.jsonl"):
        for frame in recorded(name):
            assert decode(json.dumps(frame)) == frame
            assert decode(json.dumps(frame).encode()) == frame


@pytest.mark.parametrize(("seq", "expected"), [(0, 0), (7, 7), (-1, None), (True, None), ("3", None),
                                               (2.0, None), (None, None)])
def test_only_a_non_negative_integer_seq_is_acked(seq: Any, expected: int | None) -> None:
    assert sequence_number({"type": "x", "seq": seq}) == expected


def test_the_real_device_s_events_carry_no_transport_seq() -> None:
    """event_seq is the device's count across its conversations; only the server's seq is acked."""
    frames = recorded("user_turn.jsonl")
    assert all(sequence_number(f) is None for f in frames)
    assert [f["event_seq"] for f in frames if "event_seq" in f] == list(range(1, 12))


def test_a_frame_is_for_the_runtime_it_names() -> None:
    ours = runtime_of("agent-1", "conv-1")
    assert is_for({"type": "x", "runtime": dict(ours)}, ours)
    assert is_for({"type": "x"}, ours)  # names none: nothing says it is someone else's
    assert not is_for({"type": "x", "runtime": {"agent_id": "agent-1", "conversation_id": "conv-2"}}, ours)
    assert not is_for({"type": "x", "runtime": {"agent_id": "agent-2", "conversation_id": "conv-1"}}, ours)
    assert not is_for({"type": "x", "agent_id": "agent-2"}, ours)  # a control request's own fields
    assert not is_for({"type": "x", "conversation_id": "conv-2"}, ours)


def test_a_recorded_frame_is_for_its_own_conversation_only() -> None:
    request = first(recorded("approval_turn.jsonl"), "control_request")
    assert is_for(request, REAL_RUNTIME)
    assert not is_for(request, runtime_of(REAL_AGENT, "conv-other"))
    assert not is_for(request, runtime_of("agent-other", "default"))


def test_a_recorded_control_request_is_an_approval_request() -> None:
    [request] = requests_in(first(recorded("approval_turn.jsonl"), "control_request"), REAL_RUNTIME) or []
    assert request == ApprovalRequest(
        request_id=REAL_REQUEST, tool_call_id=REAL_TOOL_CALL, tool_name="Bash",
        input={"command": "bun -e \"const fs=require('fs');const p=process.env.TRANSCRIPT_PATH;if(!p)throw new "
                          "Error('TRANSCRIPT_PATH missing');process.stdout.write(fs.readFileSync(p,'utf8'))\"",
               "description": "Read the reflection transcript payload", "login": False},
        agent_id=REAL_AGENT, conversation_id="default", turn_message_id=None)


def test_a_recorded_device_status_lists_the_pending_requests_or_none() -> None:
    statuses = [f for f in recorded("approval_turn.jsonl") if f["type"] == "update_device_status"]
    listed = [[r.request_id for r in requests_in(f, REAL_RUNTIME) or []] for f in statuses]
    assert [REAL_REQUEST] in listed and [] in listed
    assert all(requests_in(f, REAL_RUNTIME) is not None for f in statuses)


def test_frames_that_say_nothing_of_pending_requests_are_none() -> None:
    for frame in recorded("user_turn.jsonl"):
        if frame["type"] not in ("control_request", "update_device_status"):
            assert requests_in(frame, REAL_RUNTIME) is None
    assert requests_in({"type": "update_device_status", "device_status": {"is_online": True}}, REAL_RUNTIME) is None
    assert requests_in({"type": "update_device_status", "device_status": 3}, REAL_RUNTIME) is None


@pytest.mark.parametrize("body", [
    {"subtype": "interrupt"},
    {"subtype": "can_use_tool", "tool_name": "Bash"},
    {"subtype": "can_use_tool", "tool_call_id": "", "tool_name": "Bash"},
    {"subtype": "can_use_tool", "tool_call_id": "t", "tool_name": 3},
    "not a dict",
])
def test_other_control_requests_are_not_approvals(body: Any) -> None:
    assert requests_in({"type": "control_request", "request_id": "r-1", "request": body}, REAL_RUNTIME) == []


def test_a_control_request_without_an_id_is_not_an_approval() -> None:
    body = {"subtype": "can_use_tool", "tool_call_id": "t", "tool_name": "Bash"}
    assert approval_request("", body, REAL_RUNTIME) is None
    assert approval_request(None, body, REAL_RUNTIME) is None


def test_an_approval_request_without_an_input_object_has_an_empty_one() -> None:
    request = approval_request("r", {"subtype": "can_use_tool", "tool_call_id": "t", "tool_name": "Bash",
                                     "input": "ls"}, REAL_RUNTIME, "m-1")
    assert request is not None and request.input == {} and request.turn_message_id == "m-1"


def test_malformed_entries_of_a_pending_list_are_skipped() -> None:
    status = {"type": "update_device_status", "device_status": {"pending_control_requests": [
        1, None, {"request_id": "r-1"}, {"request_id": "r-2", "request": {"subtype": "can_use_tool",
                                                                          "tool_call_id": "t-2", "tool_name": "Bash"}}]}}
    assert [r.request_id for r in requests_in(status, REAL_RUNTIME) or []] == ["r-2"]


# -- the device's answers ---------------------------------------------------------------------------


def test_answer_in_reads_the_real_device_s_answers() -> None:
    frames = recorded("approval_turn.jsonl") + recorded("refused_input.jsonl")
    answers = {a.command_id: a for a in (answer_in(f) for f in frames) if a is not None}
    assert answers == {
        "r2": Answer("r2", True),
        "s1": Answer("s1", True),
        "a0": Answer("a0", False, NO_LONGER_PENDING_ERROR),
        "a1": Answer("a1", True),
        "r3": Answer("r3", False, "Approval payloads require approval_response"),
    }
    assert answers["a0"].no_longer_pending and not answers["a0"].runtime_inactive
    assert not answers["r3"].no_longer_pending and not answers["r3"].runtime_inactive
    assert not answers["a1"].no_longer_pending


def test_a_failed_sync_and_a_refused_input_while_the_listener_is_replaced_are_inactive() -> None:
    for frame in ({"type": "sync_response", "request_id": "s", "success": False, "error": RUNTIME_INACTIVE_ERROR},
                  {"type": "input_accepted", "request_id": "s", "accepted": False, "error": RUNTIME_INACTIVE_ERROR}):
        answer = answer_in(frame)
        assert answer == Answer("s", False, RUNTIME_INACTIVE_ERROR) and answer.runtime_inactive


def test_only_a_literal_true_is_an_acceptance() -> None:
    for flag in ("true", 1, None):
        assert answer_in({"type": "input_accepted", "request_id": "c", "accepted": flag}) == Answer("c", False)
        assert answer_in({"type": "sync_response", "request_id": "c", "success": flag}) == Answer("c", False)


def test_an_accepted_answer_is_never_no_longer_pending() -> None:
    assert not Answer("c", True, NO_LONGER_PENDING_ERROR).no_longer_pending
    assert not Answer("c", True, RUNTIME_INACTIVE_ERROR).runtime_inactive


def test_other_frames_and_answers_without_a_command_id_are_no_answer() -> None:
    for frame in recorded("user_turn.jsonl"):
        if frame["type"] != "input_accepted":
            assert answer_in(frame) is None
    assert answer_in({"type": "input_accepted", "accepted": True}) is None
    assert answer_in({"type": "input_accepted", "request_id": 5, "accepted": True}) is None
    assert answer_in({"type": "input_accepted", "request_id": "c", "accepted": False, "error": 5}) == Answer("c", False)

