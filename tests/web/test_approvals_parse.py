"""POST /approvals: the request body → a Card (parse_card_request, pure)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from relay.errors import BadRequest
from relay.routing import Destination, Route, Router, SlackRule
from relay.sources.slack import Card, card_id_for
from relay.web.approvals import parse_card_request

INCIDENTS = Route("incidents", Destination(agent_id="agent-incidents", device_id="ops-laptop"),
                  slack=SlackRule(teams=("T0001",), channels=("C0001",), approvers=("U0002",)))
OPS = Route("ops", Destination(agent_id="agent-ops", conversation_id="conv-ops", connection_name="build-box"),
            slack=SlackRule(teams=("T0001",), channels=("C0002", "G0003"), approver_groups=("S0001",)))
OBSERVERS = Route("observers", Destination(agent_id="agent-observers", device_id="dev-obs"),
                  slack=SlackRule(teams=("T0001",), channels=("C0004",)))
PLAIN = Route("plain", Destination(agent_id="agent-plain", connection_id="conn-plain"))
ROUTER = Router([INCIDENTS, OPS, OBSERVERS, PLAIN])

ARGUMENTS = {"command": "kubectl rollout restart deploy/api", "namespace": "prod", "dry_run": False}


def request(**fields: Any) -> dict[str, Any]:
    """A valid request by route, with fields replaced (Ellipsis removes one)."""
    data: dict[str, Any] = {"tool_call_id": "toolu_0001", "tool_name": "run_shell", "arguments": ARGUMENTS,
                            "route": "incidents", "channel": "C0001", "thread_ts": "1715000000.000100"}
    for key, value in fields.items():
        if value is ...:
            data.pop(key, None)
        else:
            data[key] = value
    return data


def parse(data: Any) -> Card:
    return parse_card_request(json.dumps(data).encode(), ROUTER)


def refused(data: Any) -> str:
    with pytest.raises(BadRequest) as caught:
        parse(data)
    assert caught.value.status == 400
    return caught.value.reason


def test_a_request_by_route_becomes_a_card_for_that_route() -> None:
    assert parse(request()) == Card(
        card_id=card_id_for(INCIDENTS.destination, "toolu_0001"), tool_call_id="toolu_0001", tool_name="run_shell",
        arguments=ARGUMENTS, route="incidents", destination=INCIDENTS.destination, channel="C0001",
        thread_ts="1715000000.000100", ts=None, decision=None)


def test_a_request_may_post_to_a_channel_the_route_does_not_list() -> None:
    card = parse(request(channel="C0009"))
    assert (card.route, card.channel, card.destination) == ("incidents", "C0009", INCIDENTS.destination)


def test_a_route_with_approver_groups_only_is_accepted() -> None:
    card = parse(request(route="ops", channel="G0003"))
    assert (card.route, card.destination) == ("ops", OPS.destination)


def test_a_request_by_destination_takes_the_route_listing_the_channel() -> None:
    destination = {"agent_id": "agent-elsewhere", "conversation_id": "conv-9", "device_id": "dev-9"}
    card = parse(request(route=..., destination=destination, channel="C0002"))
    assert card.route == "ops"
    assert card.destination == Destination(agent_id="agent-elsewhere", conversation_id="conv-9", device_id="dev-9")
    assert card.card_id == card_id_for(card.destination, "toolu_0001")


def test_the_card_id_is_the_card_id_for_destination_and_tool_call() -> None:
    by_route = parse(request())
    assert by_route.card_id == card_id_for(INCIDENTS.destination, "toolu_0001")
    assert parse(request(tool_call_id="toolu_0002")).card_id != by_route.card_id
    # Asking twice for the same tool call shows the same card.
    assert parse(request(arguments={"other": 1}, channel="C0009")).card_id == by_route.card_id


def test_arguments_and_thread_ts_are_optional() -> None:
    card = parse(request(arguments=..., thread_ts=...))
    assert (card.arguments, card.thread_ts) == ({}, None)


def test_thread_ts_null_is_no_thread() -> None:
    assert parse(request(thread_ts=None)).thread_ts is None


@pytest.mark.parametrize("field", ["priority", "approvers", "ts", "card_id"])
def test_unknown_field_is_rejected_naming_it(field: str) -> None:
    assert repr(field) in refused(request(**{field: "x"}))


def test_a_long_unknown_field_is_quoted_briefly() -> None:
    assert len(refused(request(**{"x" * 5000: 1}))) < 200


@pytest.mark.parametrize("field", ["tool_call_id", "tool_name", "channel"])
@pytest.mark.parametrize("value", [..., "", "   ", None, 5, ["toolu_0001"], "x" * 257],
                         ids=["missing", "empty", "blank", "null", "number", "list", "too-long"])
def test_tool_call_id_tool_name_and_channel_must_be_short_non_empty_strings(field: str, value: Any) -> None:
    assert field in refused(request(**{field: value}))


@pytest.mark.parametrize("field", ["tool_call_id", "tool_name"])
def test_tool_call_id_and_tool_name_of_256_characters_are_accepted(field: str) -> None:
    assert getattr(parse(request(**{field: "x" * 256})), field) == "x" * 256


@pytest.mark.parametrize("channel", ["#incidents", "incidents", "c0001", "U0002", "T0001", "C0", "C0001 ",
                                     "C-0001", "C" + "0" * 32, "<#C0001|incidents>", "C\u00c90001"])
def test_a_channel_that_is_not_a_slack_channel_id_is_rejected(channel: str) -> None:
    assert "channel" in refused(request(channel=channel))


@pytest.mark.parametrize("channel", ["C0001", "G0003", "D0001", "C" + "0" * 31])
def test_public_private_and_dm_channel_ids_are_accepted(channel: str) -> None:
    assert parse(request(channel=channel)).channel == channel


@pytest.mark.parametrize("arguments", [[], "a=1", 5, None, True])
def test_arguments_must_be_an_object(arguments: Any) -> None:
    assert "arguments" in refused(request(arguments=arguments))


@pytest.mark.parametrize("fields", [
    {"route": ...},
    {"destination": {"agent_id": "agent-x", "device_id": "dev-x"}},
], ids=["neither", "both"])
def test_exactly_one_of_route_or_destination(fields: dict[str, Any]) -> None:
    reason = refused(request(**fields))
    assert "route" in reason and "destination" in reason


@pytest.mark.parametrize("route", ["nope", "", "INCIDENTS"])
def test_an_unknown_route_is_rejected_naming_it(route: str) -> None:
    assert f"unknown route {route!r}" in refused(request(route=route))


@pytest.mark.parametrize("route", [None, 5, ["incidents"], {"name": "incidents"}])
def test_a_route_that_is_not_a_string_is_rejected(route: Any) -> None:
    assert "route" in refused(request(route=route))


@pytest.mark.parametrize("destination", ["agent-x", ["agent-x"], None, 5])
def test_a_destination_that_is_not_an_object_is_rejected(destination: Any) -> None:
    assert "destination" in refused(request(route=..., destination=destination))


@pytest.mark.parametrize("destination", [
    {"device_id": "dev-x"},
    {"agent_id": "", "device_id": "dev-x"},
    {"conversation_id": "conv-x", "connection_name": "box"},
], ids=["absent", "empty", "conversation-only"])
def test_a_destination_without_agent_id_is_rejected_naming_it(destination: dict[str, Any]) -> None:
    reason = refused(request(route=..., destination=destination, channel="C0002"))
    assert "agent_id" in reason and "destination" in reason


@pytest.mark.parametrize("destination", [
    {"agent_id": "agent-x", "device_id": "dev-x", "connection_name": "box"},
    {"agent_id": "agent-x", "connection_id": "conn-x", "device_id": "dev-x"},
    {"agent_id": "agent-x"},
], ids=["device-and-name", "connection-and-device", "none"])
def test_a_destination_without_exactly_one_selector_is_rejected_naming_them(destination: dict[str, Any]) -> None:
    reason = refused(request(route=..., destination=destination, channel="C0002"))
    assert all(name in reason for name in ("connection_id", "device_id", "connection_name"))


@pytest.mark.parametrize(("destination", "key"), [
    ({"agent_id": "agent-x", "device_id": "dev-x", "channel": "C0002"}, "'channel'"),
    ({"agent_id": 5, "device_id": "dev-x"}, "agent_id"),
    ({"agent_id": "agent-x", "device_id": ""}, "device_id"),
], ids=["unknown-key", "non-string", "empty-selector"])
def test_a_malformed_destination_is_rejected_naming_the_key(destination: dict[str, Any], key: str) -> None:
    reason = refused(request(route=..., destination=destination, channel="C0002"))
    assert "destination" in reason and key in reason


def test_a_destination_for_a_channel_no_route_lists_is_rejected_naming_the_channel() -> None:
    reason = refused(request(route=..., destination={"agent_id": "agent-x", "device_id": "dev-x"}, channel="C0009"))
    assert "C0009" in reason and "route" in reason


@pytest.mark.parametrize(("fields", "name"), [
    ({"route": "plain"}, "plain"),
    ({"route": "observers"}, "observers"),
    ({"route": ..., "destination": {"agent_id": "agent-x", "device_id": "dev-x"}, "channel": "C0004"}, "observers"),
], ids=["route-without-slack", "route-without-approvers", "channel-of-a-route-without-approvers"])
def test_a_route_without_approvers_is_rejected_saying_how_to_fix_it(fields: dict[str, Any], name: str) -> None:
    reason = refused(request(**fields))
    assert repr(name) in reason
    assert "approvers" in reason and "approver_groups" in reason
    assert f"[routes.{name}.slack]" in reason


@pytest.mark.parametrize("thread_ts", ["1715000000", "abc", "1715000000.", ".000100", "1715000000.000100 ",
                                       "1715000000,000100", 1715000000.0001, 5, ["1715000000.000100"], ""])
def test_a_thread_ts_that_is_not_a_slack_ts_is_rejected(thread_ts: Any) -> None:
    assert "thread_ts" in refused(request(thread_ts=thread_ts))


def test_a_thread_ts_with_non_ascii_digits_is_rejected() -> None:
    arabic = "\u0661\u0667\u0661\u0665\u0660\u0660\u0660\u0660\u0660\u0660.\u0660\u0660\u0660\u0661\u0660\u0660"
    assert "thread_ts" in refused(request(thread_ts=arabic))


@pytest.mark.parametrize("body", [b"", b"{", b"not json", b"{'tool_call_id': 'x'}", b"\xff\xfe", b"[" * 100_000])
def test_invalid_json_is_rejected(body: bytes) -> None:
    with pytest.raises(BadRequest, match="not valid JSON"):
        parse_card_request(body, ROUTER)


@pytest.mark.parametrize("body", [b"[]", b'"x"', b"42", b"null"])
def test_a_body_that_is_not_an_object_is_rejected(body: bytes) -> None:
    with pytest.raises(BadRequest, match="object"):
        parse_card_request(body, ROUTER)
