"""Destinations, named routes, and choosing a live connection."""

from __future__ import annotations

from typing import Any

import pytest

from relay.errors import BadRequest
from relay.routing import Destination, Route, Router, choose_connection

NOW_MS = 1_700_000_000_000
BY_DEVICE = Destination(agent_id="agent-1", device_id="dev-1")
BY_NAME = Destination(agent_id="agent-1", connection_name="laptop")

DEFAULT = Route("default", Destination(agent_id="agent-default", device_id="dev-0"))
OPS = Route("ops", Destination(agent_id="agent-ops", connection_id="conn-ops"))


def connection(connection_id: Any = "conn-1", heartbeat: Any = NOW_MS - 1_000, *,
               device: str = "dev-1", name: str = "laptop") -> dict[str, Any]:
    return {"connectionId": connection_id, "lastHeartbeat": heartbeat, "deviceId": device,
            "connectionName": name}


# --- Router -----------------------------------------------------------------------------


def test_pick_by_name() -> None:
    assert Router([DEFAULT, OPS]).pick("ops") is OPS


def test_pick_none_gives_the_default_route() -> None:
    assert Router([OPS, DEFAULT]).pick(None) is DEFAULT


def test_pick_unknown_route_is_a_bad_request_naming_it() -> None:
    with pytest.raises(BadRequest, match="unknown route 'nope'") as caught:
        Router([DEFAULT, OPS]).pick("nope")
    assert caught.value.status == 400


def test_pick_none_without_a_default_is_a_bad_request() -> None:
    with pytest.raises(BadRequest, match="no default"):
        Router([OPS]).pick(None)


def test_default_is_not_picked_for_an_explicit_empty_name() -> None:
    with pytest.raises(BadRequest):
        Router([DEFAULT]).pick("")


def test_router_lists_its_names_sorted_and_answers_membership() -> None:
    router = Router([OPS, DEFAULT])
    assert router.names == ["default", "ops"]
    assert "ops" in router and "dev" not in router


# --- choose_connection ------------------------------------------------------------------


def test_connection_id_selector_is_returned_directly() -> None:
    destination = Destination(agent_id="agent-1", connection_id="conn-fixed")
    assert choose_connection([], destination, NOW_MS) == "conn-fixed"
    assert choose_connection([connection("conn-other", device="conn-fixed")], destination, NOW_MS) == "conn-fixed"


def test_device_id_selects_the_matching_online_connection() -> None:
    connections = [connection("conn-other", device="dev-2", name="other"), connection("conn-1")]
    assert choose_connection(connections, BY_DEVICE, NOW_MS) == "conn-1"


def test_connection_name_selects_the_matching_online_connection() -> None:
    connections = [connection("conn-other", device="dev-1", name="desktop"),
                   connection("conn-1", device="dev-9", name="laptop")]
    assert choose_connection(connections, BY_NAME, NOW_MS) == "conn-1"


def test_device_id_does_not_match_a_connection_name() -> None:
    connections = [connection("conn-1", device="dev-9", name="dev-1")]
    assert choose_connection(connections, BY_DEVICE, NOW_MS) is None


@pytest.mark.parametrize("bad", [
    connection(connection_id=None),
    connection(connection_id=""),
    {"deviceId": "dev-1", "lastHeartbeat": NOW_MS - 1_000},
    connection(heartbeat=None),
    connection(heartbeat="2024-01-01T00:00:00Z"),
    {"deviceId": "dev-1", "connectionId": "conn-1"},
    connection(heartbeat=NOW_MS - 120_001),
    connection(heartbeat=NOW_MS - 3_600_000),
], ids=["null-id", "empty-id", "no-id", "null-heartbeat", "string-heartbeat", "no-heartbeat",
        "heartbeat-just-over-120s", "heartbeat-an-hour-old"])
def test_offline_connections_are_skipped(bad: dict[str, Any]) -> None:
    assert choose_connection([bad], BY_DEVICE, NOW_MS) is None


def test_offline_connection_is_skipped_in_favour_of_an_online_one() -> None:
    connections = [connection("conn-stale", NOW_MS - 500_000), connection(None, NOW_MS),
                   connection("conn-live", NOW_MS - 60_000)]
    assert choose_connection(connections, BY_DEVICE, NOW_MS) == "conn-live"


def test_heartbeat_just_under_120s_is_online() -> None:
    assert choose_connection([connection("conn-1", NOW_MS - 119_999)], BY_DEVICE, NOW_MS) == "conn-1"


def test_float_heartbeat_is_accepted() -> None:
    assert choose_connection([connection("conn-1", float(NOW_MS - 5))], BY_DEVICE, NOW_MS) == "conn-1"


@pytest.mark.parametrize("order", [[0, 1, 2], [2, 1, 0], [1, 0, 2]])
def test_freshest_heartbeat_wins_among_several(order: list[int]) -> None:
    candidates = [connection("conn-old", NOW_MS - 90_000), connection("conn-newest", NOW_MS - 1_000),
                  connection("conn-mid", NOW_MS - 30_000)]
    assert choose_connection([candidates[i] for i in order], BY_DEVICE, NOW_MS) == "conn-newest"


def test_no_matching_connection_gives_none() -> None:
    connections = [connection("conn-2", device="dev-2", name="other")]
    assert choose_connection(connections, BY_DEVICE, NOW_MS) is None
    assert choose_connection(connections, BY_NAME, NOW_MS) is None
    assert choose_connection([], BY_DEVICE, NOW_MS) is None


def test_connections_can_be_any_iterable() -> None:
    assert choose_connection(iter([connection("conn-1")]), BY_DEVICE, NOW_MS) == "conn-1"


# --- Destination ------------------------------------------------------------------------


def test_conversation_key_is_the_same_for_the_same_agent_and_conversation() -> None:
    a = Destination(agent_id="agent-1", conversation_id="conv-1", device_id="dev-1")
    b = Destination(agent_id="agent-1", conversation_id="conv-1", connection_name="other-box")
    assert a.conversation_key == b.conversation_key


@pytest.mark.parametrize("other", [
    Destination(agent_id="agent-1", conversation_id="conv-2", device_id="dev-1"),
    Destination(agent_id="agent-2", conversation_id="conv-1", device_id="dev-1"),
    Destination(agent_id="agent-1", device_id="dev-1"),
], ids=["other-conversation", "other-agent", "no-conversation"])
def test_conversation_key_differs_for_another_agent_or_conversation(other: Destination) -> None:
    one = Destination(agent_id="agent-1", conversation_id="conv-1", device_id="dev-1")
    assert one.conversation_key != other.conversation_key


def test_conversation_key_does_not_mix_up_agent_and_conversation_boundaries() -> None:
    a = Destination(agent_id="agent-1c", conversation_id="onv", device_id="d")
    b = Destination(agent_id="agent-1", conversation_id="conv", device_id="d")
    assert a.conversation_key != b.conversation_key


def test_no_conversation_is_the_default_conversation() -> None:
    none = Destination(agent_id="agent-1", device_id="dev-1")
    named_default = Destination(agent_id="agent-1", conversation_id="default", device_id="dev-1")
    assert none.conversation_key == named_default.conversation_key


def test_conversation_key_is_short_hex() -> None:
    key = BY_DEVICE.conversation_key
    assert 0 < len(key) <= 32
    assert set(key) <= set("0123456789abcdef")


@pytest.mark.parametrize("destination", [
    Destination(agent_id="agent-1", device_id="dev-1"),
    Destination(agent_id="agent-1", conversation_id="conv-1", connection_name="laptop"),
    Destination(agent_id="agent-1", conversation_id="conv-1", connection_id="conn-1"),
])
def test_destination_round_trips_through_dict(destination: Destination) -> None:
    assert Destination.from_dict(destination.to_dict()) == destination


def test_to_dict_omits_unset_fields() -> None:
    assert BY_DEVICE.to_dict() == {"agent_id": "agent-1", "device_id": "dev-1"}


def test_from_dict_ignores_unknown_keys() -> None:
    assert Destination.from_dict({"agent_id": "agent-1", "device_id": "dev-1", "extra": "x"}) == BY_DEVICE


@pytest.mark.parametrize(("destination", "selector"), [
    (Destination(agent_id="a", connection_id="c"), ("connection_id", "c")),
    (Destination(agent_id="a", device_id="d"), ("device_id", "d")),
    (Destination(agent_id="a", connection_name="n"), ("connection_name", "n")),
])
def test_selector_names_the_field_that_is_set(destination: Destination, selector: tuple[str, str]) -> None:
    assert destination.selector == selector


def test_describe_names_agent_and_selector() -> None:
    assert BY_NAME.describe() == "agent agent-1 via connection_name=laptop"
