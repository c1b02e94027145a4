"""Destinations, named routes, and choosing a live connection."""

from __future__ import annotations

from typing import Any

import pytest

from relay.errors import BadRequest, NoRoute
from relay.routing import DEFAULT_ASSOCIATIONS, Destination, GitHubRule, Route, Router, SlackRule, choose_connection

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


# --- Router: Slack ----------------------------------------------------------------------


def slack_route(name: str, teams: tuple[str, ...] = ("T0001",), channels: tuple[str, ...] = (),
                **rule: tuple[str, ...]) -> Route:
    return Route(name, Destination(agent_id=f"agent-{name}", device_id=f"dev-{name}"),
                 slack=SlackRule(teams=teams, channels=channels, **rule))


@pytest.mark.parametrize(("listed", "wide"), [("a-listed", "z-wide"), ("z-listed", "a-wide")])
def test_for_slack_prefers_the_route_listing_the_channel_over_a_workspace_wide_one(listed: str, wide: str) -> None:
    listing = slack_route(listed, channels=("C0001", "C0002"))
    workspace = slack_route(wide)
    for order in ([listing, workspace], [workspace, listing]):
        assert Router(order).for_slack("T0001", "C0002") is listing


def test_for_slack_uses_the_workspace_wide_route_for_an_unlisted_channel() -> None:
    listing = slack_route("incidents", channels=("C0001",))
    workspace = slack_route("general")
    assert Router([listing, workspace], slack_fallback="incidents").for_slack("T0001", "C0009") is workspace


def test_for_slack_workspace_wide_route_takes_dms_too() -> None:
    workspace = slack_route("general")
    assert Router([slack_route("incidents", channels=("C0001",)), workspace]).for_slack("T0001", "D0001") is workspace


def test_for_slack_uses_the_fallback_when_no_route_lists_the_channel_or_the_whole_workspace() -> None:
    listing = slack_route("incidents", channels=("C0001",))
    router = Router([listing, DEFAULT], slack_fallback="default")
    assert router.for_slack("T0001", "C0009") is DEFAULT
    assert router.for_slack("T0001", "C0001") is listing


def test_for_slack_refuses_an_unknown_workspace_even_with_a_fallback() -> None:
    router = Router([slack_route("incidents", channels=("C0001",)), DEFAULT], slack_fallback="default")
    with pytest.raises(NoRoute, match="T0002"):
        router.for_slack("T0002", "C0001")


def test_for_slack_refuses_an_unlisted_channel_without_a_fallback() -> None:
    router = Router([slack_route("incidents", channels=("C0001",)), DEFAULT])
    with pytest.raises(NoRoute, match="C0009"):
        router.for_slack("T0001", "C0009")


def test_for_slack_refuses_when_no_route_accepts_slack() -> None:
    with pytest.raises(NoRoute):
        Router([DEFAULT, OPS]).for_slack("T0001", "C0001")


def test_for_slack_ignores_a_channel_listed_for_another_workspace() -> None:
    elsewhere = slack_route("elsewhere", teams=("T0002",), channels=("C0001",))
    workspace = slack_route("general")
    assert Router([elsewhere, workspace]).for_slack("T0001", "C0001") is workspace
    assert Router([elsewhere, workspace]).for_slack("T0002", "C0001") is elsewhere


def test_for_slack_matches_any_of_a_routes_workspaces() -> None:
    shared = slack_route("shared", teams=("T0001", "T0002"))
    assert Router([shared]).for_slack("T0002", "C0001") is shared


def test_for_slack_picks_the_first_route_by_name_among_equals() -> None:
    b, a = slack_route("b", channels=("C0001",)), slack_route("a", channels=("C0001",))
    assert Router([b, a]).for_slack("T0001", "C0001") is a
    wide_b, wide_a = slack_route("b"), slack_route("a")
    assert Router([wide_b, wide_a]).for_slack("T0001", "C0001") is wide_a


def test_listing_slack_channel_finds_the_route_that_lists_it() -> None:
    listing = slack_route("incidents", channels=("C0001", "C0002"))
    router = Router([slack_route("general"), listing, DEFAULT])
    assert router.listing_slack_channel("C0002") is listing


def test_listing_slack_channel_of_an_unlisted_channel_is_a_bad_request_naming_it() -> None:
    router = Router([slack_route("general"), slack_route("incidents", channels=("C0001",)), DEFAULT])
    with pytest.raises(BadRequest, match="C0009") as caught:
        router.listing_slack_channel("C0009")
    assert caught.value.status == 400


@pytest.mark.parametrize(("rule", "expected"), [
    (SlackRule(teams=("T0001",)), False),
    (SlackRule(teams=("T0001",), channels=("C0001",)), False),
    (SlackRule(teams=("T0001",), approvers=("U0002",)), True),
    (SlackRule(teams=("T0001",), approver_groups=("S0001",)), True),
    (SlackRule(teams=("T0001",), approvers=("U0002",), approver_groups=("S0001",)), True),
], ids=["none", "channels-only", "approvers", "groups", "both"])
def test_slack_rule_has_approvers_when_it_names_people_or_groups(rule: SlackRule, expected: bool) -> None:
    assert rule.has_approvers is expected


# --- Router: GitHub ---------------------------------------------------------------------


def github_route(name: str, *repositories: str) -> Route:
    return Route(name, Destination(agent_id=f"agent-{name}", device_id=f"dev-{name}"),
                 github=GitHubRule(repositories=repositories))


@pytest.mark.parametrize(("exact", "wildcard"), [("a-exact", "z-owner"), ("z-exact", "a-owner")])
def test_for_github_prefers_the_exact_repository_over_the_owner_wildcard(exact: str, wildcard: str) -> None:
    named = github_route(exact, "acme/widgets")
    owner = github_route(wildcard, "acme/*")
    for order in ([named, owner], [owner, named]):
        assert Router(order).for_github("acme/widgets") is named
        assert Router(order).for_github("acme/gadgets") is owner


def test_for_github_prefers_an_exact_listing_even_inside_a_route_that_also_has_the_wildcard() -> None:
    both = github_route("a-both", "acme/*", "other/thing")
    named = github_route("z-named", "acme/widgets")
    assert Router([both, named]).for_github("acme/widgets") is named
    assert Router([both, named]).for_github("other/thing") is both


@pytest.mark.parametrize("repository", ["acme/widgets", "ACME/WIDGETS", "Acme/Widgets", "aCmE/wIdGeTs"])
def test_for_github_matches_without_regard_to_case(repository: str) -> None:
    named = github_route("named", "Acme/Widgets")
    owner = github_route("owner", "ACME/*")
    router = Router([named, owner])
    assert router.for_github(repository) is named
    assert router.for_github(repository.split("/")[0] + "/Gadgets") is owner


@pytest.mark.parametrize("repository", ["acme-corp/widgets", "xacme/widgets", "acm/widgets", "other/acme",
                                        "widgets/acme"])
def test_for_github_owner_wildcard_matches_only_that_owner(repository: str) -> None:
    with pytest.raises(NoRoute):
        Router([github_route("acme", "acme/*")]).for_github(repository)


def test_for_github_does_not_match_a_prefix_of_a_repository_name() -> None:
    router = Router([github_route("widgets", "acme/widgets")])
    for repository in ("acme/widgets-2", "acme/widget", "acme/widgets.js"):
        with pytest.raises(NoRoute):
            router.for_github(repository)


def test_for_github_picks_the_first_route_by_name_among_equals() -> None:
    b, a = github_route("b", "acme/widgets"), github_route("a", "acme/widgets")
    assert Router([b, a]).for_github("acme/widgets") is a
    wide_b, wide_a = github_route("b", "acme/*"), github_route("a", "acme/*")
    assert Router([wide_b, wide_a]).for_github("acme/widgets") is wide_a


def test_for_github_uses_the_fallback_when_nothing_matches() -> None:
    named = github_route("named", "acme/widgets")
    router = Router([named, DEFAULT], github_fallback="default")
    assert router.for_github("someone/else") is DEFAULT
    assert router.for_github("acme/widgets") is named


def test_for_github_fallback_may_be_the_only_route() -> None:
    assert Router([DEFAULT, OPS], github_fallback="ops").for_github("acme/widgets") is OPS


def test_for_github_without_a_match_or_fallback_is_no_route_naming_the_repository() -> None:
    router = Router([github_route("named", "acme/widgets"), DEFAULT], slack_fallback="default")
    with pytest.raises(NoRoute, match="someone/else"):
        router.for_github("someone/else")


def test_for_github_ignores_routes_without_github_rules() -> None:
    slack_only = slack_route("a-slack")
    with pytest.raises(NoRoute):
        Router([DEFAULT, OPS, slack_only]).for_github("acme/widgets")


@pytest.mark.parametrize(("repositories", "repository", "score"), [
    (("acme/widgets",), "acme/widgets", 2),
    (("Acme/Widgets",), "ACME/widgets", 2),
    (("acme/*",), "acme/widgets", 1),
    (("ACME/*",), "acme/Widgets", 1),
    (("acme/*", "acme/widgets"), "acme/widgets", 2),
    (("acme/*", "acme/widgets"), "acme/gadgets", 1),
    (("acme/widgets",), "acme/gadgets", 0),
    (("acme/*",), "acme-corp/widgets", 0),
    (("acme/widgets",), "other/widgets", 0),
    ((), "acme/widgets", 0),
], ids=["exact", "exact-case", "wildcard", "wildcard-case", "exact-beats-wildcard", "wildcard-of-both",
        "other-name", "other-owner-prefix", "other-owner", "empty"])
def test_github_rule_matches_scores_exact_two_wildcard_one_else_zero(
        repositories: tuple[str, ...], repository: str, score: int) -> None:
    assert GitHubRule(repositories=repositories).matches(repository) == score


def test_github_rule_defaults() -> None:
    rule = GitHubRule(repositories=("acme/*",))
    assert (rule.trigger, rule.associations, rule.approvers, rule.actions) == (
        "@agent", DEFAULT_ASSOCIATIONS, (), ("created",))
    assert DEFAULT_ASSOCIATIONS == ("OWNER", "MEMBER", "COLLABORATOR")


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


# --- which secret verifies a GitHub delivery ---------------------------------------------------


def tenant(name: str, repositories: tuple[str, ...], secret: bytes | None) -> Route:
    return Route(name, Destination(agent_id=f"agent-{name}", device_id="d"),
                 github=GitHubRule(repositories=repositories, secret=secret))


TENANT_ROUTER = Router((tenant("acme", ("acme/*",), b"A"), tenant("acme-web", ("acme/web",), b"A"),
                        tenant("globex", ("globex/*",), b"G"), tenant("globex-ops", ("globex/ops",), b"G2"),
                        tenant("shared", ("initech/*",), None)), None, None)


@pytest.mark.parametrize(("repository", "secret"), [("acme/x", b"A"), ("ACME/web", b"A"), ("globex/x", b"G"),
                                                     ("globex/ops", b"G2"), ("initech/x", None), ("hooli/x", None)])
def test_a_deliverys_secret_is_the_one_of_the_route_its_repository_goes_to(repository: str,
                                                                            secret: bytes | None) -> None:
    assert TENANT_ROUTER.github_secret(repository, repository.split("/")[0]) == secret


@pytest.mark.parametrize(("owner", "secret"), [("acme", b"A"), ("Acme", b"A"), ("globex", None), ("initech", None),
                                                ("hooli", None), (None, None)])
def test_without_a_repository_the_owners_routes_must_agree_on_one_secret(owner: str | None,
                                                                          secret: bytes | None) -> None:
    assert TENANT_ROUTER.github_secret(None, owner) == secret


def test_a_fallback_route_without_a_github_rule_has_no_secret_of_its_own() -> None:
    router = Router((tenant("acme", ("acme/*",), b"A"), Route("rest", Destination(agent_id="r", device_id="d"))),
                    None, "rest")
    assert router.github_secret("hooli/x", "hooli") is None
