"""The simulated Letta Code device holds relay to the real device's rules (0.34.12)."""

from __future__ import annotations

from typing import Any

from relay.standin.device import DEDUP_SECONDS, NO_LONGER_PENDING, RUNTIME_INACTIVE, SimulatedDevice

SCOPE = ("agent-a", "default")
OTHER = ("agent-a", "conv-b")


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def device(**options: Any) -> tuple[SimulatedDevice, list[dict[str, Any]]]:
    frames: list[dict[str, Any]] = []
    simulated = SimulatedDevice(**options)
    simulated.emit = frames.append
    return simulated, frames


def message(text: str, message_id: str, command_id: str | None = None, scope: tuple[str, str] = SCOPE) -> dict[str, Any]:
    frame: dict[str, Any] = {"type": "input", "runtime": {"agent_id": scope[0], "conversation_id": scope[1]},
                             "payload": {"kind": "create_message", "messages": [
                                 {"role": "user", "content": text, "client_message_id": message_id, "otid": message_id}]}}
    if command_id:
        frame["request_id"] = command_id
    return frame


def decision(request_id: str, behavior: str = "allow", command_id: str = "c-1", **extra: Any) -> dict[str, Any]:
    return {"type": "input", "request_id": command_id, "runtime": {"agent_id": SCOPE[0], "conversation_id": SCOPE[1]},
            "payload": {"kind": "approval_response", "request_id": request_id,
                        "decision": {"behavior": behavior, **extra}}}


def of(frames: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [f for f in frames if f["type"] == kind]


def test_an_approval_sent_as_a_message_is_a_protocol_violation_and_nothing_else() -> None:
    simulated, frames = device()
    request_id = simulated.request_approval(SCOPE, "toolu_1")
    simulated.handle({"type": "input", "request_id": "c-1", "runtime": {"agent_id": "agent-a", "conversation_id": "default"},
                      "payload": {"kind": "create_message", "messages": [{"type": "approval", "approvals": [
                          {"type": "approval", "tool_call_id": "toolu_1", "approve": True}]}]}})
    assert len(simulated.violations) == 1 and "approval_response" in simulated.violations[0]
    [error] = [f for f in of(frames, "stream_delta") if f["delta"]["message_type"] == "loop_error"]
    assert error["delta"]["is_terminal"] is False
    [answer] = of(frames, "input_accepted")
    assert answer["accepted"] is False
    assert simulated.pending(SCOPE) == [request_id] and simulated.decisions == []


def test_the_legacy_rest_form_is_refused_the_same_way() -> None:
    simulated, _ = device()
    simulated.handle({"type": "message", "agentId": "agent-a", "messages": [{"type": "approval", "approvals": []}]})
    assert len(simulated.violations) == 1


def test_a_decision_is_taken_only_for_a_pending_request_and_answered() -> None:
    simulated, frames = device()
    request_id = simulated.request_approval(SCOPE, "toolu_2")
    simulated.handle(decision("perm-nope", command_id="c-1"))
    simulated.handle(decision(request_id, command_id="c-2"))
    simulated.handle(decision(request_id, command_id="c-3"))
    answers = {f["request_id"]: (f["accepted"], f.get("error")) for f in of(frames, "input_accepted")}
    assert answers == {"c-1": (False, NO_LONGER_PENDING), "c-2": (True, None), "c-3": (False, NO_LONGER_PENDING)}
    assert [(d.request_id, d.behavior) for d in simulated.decisions] == [(request_id, "allow")]


def test_a_deny_without_a_message_is_invalid_and_not_answered() -> None:
    simulated, frames = device()
    request_id = simulated.request_approval(SCOPE, "toolu_3")
    simulated.handle(decision(request_id, "deny"))
    assert of(frames, "input_accepted") == [] and simulated.pending(SCOPE) == [request_id]
    simulated.handle(decision(request_id, "deny", command_id="c-2", message="no"))
    assert [d.message for d in simulated.decisions] == ["no"]


def test_event_seq_counts_across_every_conversation_of_the_device() -> None:
    simulated, frames = device()
    simulated.handle(message("one", "m-1"))
    simulated.handle(message("two", "m-2", scope=OTHER))
    simulated.handle(message("three", "m-3"))
    numbered = [f for f in frames if "event_seq" in f]
    assert [f["event_seq"] for f in numbered] == list(range(1, len(numbered) + 1))
    ours = [f["event_seq"] for f in numbered if f["runtime"]["conversation_id"] == "default"]
    assert any(b - a > 1 for a, b in zip(ours, ours[1:]))  # seen from one conversation: holes
    assert all(f["idempotency_key"].startswith(f"{f['type']}:{f['event_seq']}:") for f in numbered)


def test_a_turn_ends_with_turn_finished_carrying_the_real_fields() -> None:
    simulated, frames = device()
    simulated.handle(message("hi", "m-1"))
    [finished] = of(frames, "turn_finished")
    assert set(finished) == {"type", "turn_id", "stop_reason", "run_id", "runtime", "event_seq", "emitted_at",
                             "idempotency_key"}
    loop = of(frames, "update_loop_status")[-1]["loop_status"]
    assert loop["client_message_ids_by_run_id"][finished["run_id"]] == ["m-1"]
    assert simulated.turns == [["m-1"]]


def test_an_id_is_a_duplicate_for_an_hour_of_the_device_s_clock_then_runs_again() -> None:
    clock = Clock()
    simulated, frames = device(clock=clock)
    simulated.handle(message("hi", "m-1", "c-1"))
    clock.now += DEDUP_SECONDS - 1
    simulated.handle(message("hi", "m-1", "c-2"))
    assert simulated.turns == [["m-1"]]  # accepted again, and nothing ran
    assert all(f["accepted"] for f in of(frames, "input_accepted"))
    clock.now += 2
    simulated.handle(message("hi", "m-1", "c-3"))
    assert simulated.turns == [["m-1"], ["m-1"]]


def test_a_message_with_a_trigger_asks_for_approval_and_goes_on_once_decided() -> None:
    simulated, frames = device()
    simulated.handle(message("run $TRANSCRIPT_PATH", "m-1"))
    [request_id] = simulated.pending(SCOPE)
    assert of(frames, "turn_finished") == [] and len(of(frames, "control_request")) == 1
    simulated.handle(message("and then this", "m-2", "c-queued"))
    [queued] = [f for f in of(frames, "input_accepted") if f["request_id"] == "c-queued"]
    assert queued["disposition"] == "queued"
    simulated.handle(decision(request_id, "deny", message="not now"))
    assert simulated.turns == [["m-1"], ["m-2"]]
    assert any("not now" in str(f["delta"].get("content")) for f in of(frames, "stream_delta"))


def test_a_sync_replays_the_pending_requests_and_answers() -> None:
    simulated, frames = device()
    request_id = simulated.request_approval(SCOPE, "toolu_4")
    frames.clear()
    simulated.handle({"type": "sync", "request_id": "s-1", "runtime": {"agent_id": "agent-a", "conversation_id": "default"},
                      "recover_approvals": False})
    assert [f["request_id"] for f in of(frames, "control_request")] == [request_id]
    assert frames[-1] == {"type": "sync_response", "request_id": "s-1", "success": True,
                          "runtime": {"agent_id": "agent-a", "conversation_id": "default"}}
    assert simulated.stale_denials == []


def test_a_sync_that_does_not_refuse_recovery_denies_pending_approvals_as_stale() -> None:
    simulated, _ = device()
    request_id = simulated.request_approval(SCOPE, "toolu_5")
    simulated.handle({"type": "sync", "runtime": {"agent_id": "agent-a", "conversation_id": "default"}})
    assert simulated.stale_denials == [request_id] and simulated.pending(SCOPE) == []


def test_a_device_replacing_its_listener_refuses_inputs_and_syncs_for_now() -> None:
    simulated, frames = device()
    request_id = simulated.request_approval(SCOPE, "toolu_6")
    simulated.inactive = 2
    simulated.handle(decision(request_id, command_id="c-1"))
    simulated.handle({"type": "sync", "request_id": "s-1", "runtime": {"agent_id": "agent-a", "conversation_id": "default"},
                      "recover_approvals": False})
    simulated.handle(decision(request_id, command_id="c-2"))
    assert [(f["request_id"], f.get("accepted", f.get("success")), f.get("error"))
            for f in frames if f["type"] in ("input_accepted", "sync_response")] == [
        ("c-1", False, RUNTIME_INACTIVE), ("s-1", False, RUNTIME_INACTIVE), ("c-2", True, None)]
