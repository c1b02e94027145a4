"""Settings: environment + routes file → one validated Settings, or a ConfigError naming the setting."""

from __future__ import annotations

import re
from typing import Callable

import pytest

from relay.errors import ConfigError
from relay.routing import Destination, GitHubRule, Route, SlackRule
from relay.settings import Settings, load
from tests.support import SPEC_SECRET

SPEC_KEY = bytes.fromhex("31f290f6bf06298aab4f08d43c3f082cf648a362da2da4b0")
API_KEY = "sk-let-NOT-A-REAL-KEY-4f1c9a"
REDIS_PASSWORD = "hunter2-redis-pw"

DURATION_VARIABLES = ["RELAY_DEDUP_WINDOW", "RELAY_RECLAIM_AFTER", "RELAY_MAX_AGE", "RELAY_APPROVAL_MAX_AGE",
                      "RELAY_RETRY_BASE", "RELAY_RETRY_CAP", "RELAY_LETTA_TIMEOUT", "RELAY_RESOLVE_TTL",
                      "RELAY_SHUTDOWN_GRACE"]
COUNT_VARIABLES = ["RELAY_CONCURRENCY", "RELAY_MAX_BODY_BYTES"]
#: Deliberately without "routes" in it, so a message naming a route cannot match on the path.
ROUTES_PATH = "/srv/relay/destinations.toml"
SELECTOR_VARIABLES = ["LETTA_CONNECTION_ID", "LETTA_DEVICE_ID", "LETTA_CONNECTION_NAME"]

TWO_ROUTES = """
[routes.ops]
agent_id = "agent-ops"
conversation_id = "conv-ops"
connection_name = "ops-box"

[routes.support]
agent_id = "agent-support"
device_id = "dev-support"
"""


def config_error(env: dict[str, str], read_text: Callable[[str], str] | None = None) -> str:
    with pytest.raises(ConfigError) as caught:
        load(env, read_text=read_text)
    return str(caught.value)


def routes_file(text: str) -> Callable[[str], str]:
    return lambda path: text


def routes_error(text: str) -> str:
    return config_error({"RELAY_ROUTES": ROUTES_PATH}, routes_file(text))


# --- minimal environments ---------------------------------------------------------------


def test_empty_environment_gives_the_defaults() -> None:
    assert load({}) == Settings()


def test_minimal_environment_is_loaded() -> None:
    settings = load({
        "REDIS_URL": "redis://localhost:6379/0",
        "LETTA_API_KEY": API_KEY,
        "RELAY_HOOK_SECRET": SPEC_SECRET,
        "LETTA_AGENT_ID": "agent-1",
        "LETTA_DEVICE_ID": "dev-1",
    })
    assert settings.redis_url == "redis://localhost:6379/0"
    assert settings.letta_api_key == API_KEY
    assert settings.hook_secret == SPEC_KEY
    assert settings.letta_base_url == "https://api.letta.com"
    assert settings.routes == (Route("default", Destination(agent_id="agent-1", device_id="dev-1")),)
    assert settings.max_age == 24 * 3600.0
    assert settings.concurrency == 32


def test_unrelated_environment_variables_are_ignored() -> None:
    assert load({"PATH": "/usr/bin", "HOME": "/root", "RELAYX": "1", "LETTA_UNUSED_THING": "x"}) == Settings()


# --- durations and counts ---------------------------------------------------------------


@pytest.mark.parametrize(("value", "seconds"), [
    ("60", 60.0), ("0.5", 0.5), ("500ms", 0.5), ("90s", 90.0), ("5m", 300.0), ("24h", 86400.0),
    ("4d", 345600.0), (" 5m ", 300.0), ("1.5h", 5400.0), ("1ms", 0.001),
])
def test_durations_in_every_format(value: str, seconds: float) -> None:
    assert load({"RELAY_MAX_AGE": value}).max_age == pytest.approx(seconds)


@pytest.mark.parametrize("name", DURATION_VARIABLES)
def test_every_duration_variable_is_read(name: str) -> None:
    # RELAY_RETRY_BASE must stay <= the cap (300 s), so use a value valid for all of them.
    settings = load({name: "2m"})
    changed = {attr: value for attr, value in vars(settings).items() if value != getattr(Settings(), attr)}
    assert list(changed.values()) == [120.0]


@pytest.mark.parametrize("value", ["abc", "5x", "-5", "0", "0ms", "0.0s", "1e3", "5 minutes", "5M",
                                   "1,5", ".5", "5.", "ms", "inf", "nan"])
@pytest.mark.parametrize("name", ["RELAY_MAX_AGE", "RELAY_RETRY_BASE", "RELAY_LETTA_TIMEOUT"])
def test_malformed_duration_is_a_config_error_naming_the_variable(name: str, value: str) -> None:
    assert name in config_error({name: value})


@pytest.mark.parametrize("name", COUNT_VARIABLES)
def test_counts_are_read_as_integers(name: str) -> None:
    settings = load({name: "8"})
    value = settings.concurrency if name == "RELAY_CONCURRENCY" else settings.max_body_bytes
    assert value == 8 and isinstance(value, int)


@pytest.mark.parametrize("value", [
    "0", "-1", "1.5", "ten", "3x", "1e3", "0x10", " ",
    "\u00b2",
])
@pytest.mark.parametrize("name", COUNT_VARIABLES)
def test_malformed_count_is_a_config_error_naming_the_variable(name: str, value: str) -> None:
    assert name in config_error({name: value})


def test_log_level_is_normalized_and_checked() -> None:
    assert load({"RELAY_LOG_LEVEL": "debug"}).log_level == "DEBUG"
    assert "RELAY_LOG_LEVEL" in config_error({"RELAY_LOG_LEVEL": "verbose"})


def test_key_prefix_is_checked() -> None:
    assert load({"RELAY_KEY_PREFIX": "relay-staging"}).key_prefix == "relay-staging"
    assert "RELAY_KEY_PREFIX" in config_error({"RELAY_KEY_PREFIX": "relay staging:"})


def test_retry_cap_below_retry_base_is_an_error() -> None:
    message = config_error({"RELAY_RETRY_BASE": "10s", "RELAY_RETRY_CAP": "5s"})
    assert "RELAY_RETRY_CAP" in message and "RELAY_RETRY_BASE" in message


def test_retry_cap_below_the_default_base_is_an_error() -> None:
    assert "RELAY_RETRY_CAP" in config_error({"RELAY_RETRY_CAP": "500ms"})


def test_retry_cap_equal_to_retry_base_is_accepted() -> None:
    settings = load({"RELAY_RETRY_BASE": "5s", "RELAY_RETRY_CAP": "5000ms"})
    assert settings.retry_base == settings.retry_cap == 5.0


def test_approvals_have_their_own_max_age() -> None:
    settings = load({"RELAY_MAX_AGE": "2h", "RELAY_APPROVAL_MAX_AGE": "10m"})
    assert settings.max_age_for("approval") == 600.0
    assert settings.max_age_for("user") == 7200.0


# --- unknown and empty variables --------------------------------------------------------


@pytest.mark.parametrize(("typo", "meant"), [
    ("RELAY_CONCURENCY", "RELAY_CONCURRENCY"),
    ("RELAY_RETRY_BASEE", "RELAY_RETRY_BASE"),
    ("RELAY_HOOK_SECRETS", "RELAY_HOOK_SECRET"),
    ("RELAY_ROUTE", "RELAY_ROUTES"),
])
def test_unknown_relay_variable_suggests_the_known_one(typo: str, meant: str) -> None:
    message = config_error({typo: "1"})
    assert typo in message
    assert f"did you mean {meant}" in message


def test_unknown_relay_variable_without_a_close_match_is_still_an_error() -> None:
    message = config_error({"RELAY_ZZZZZZZZZZZZ": "1"})
    assert "RELAY_ZZZZZZZZZZZZ" in message
    assert "did you mean" not in message


def test_unknown_relay_variable_is_an_error_even_with_valid_settings() -> None:
    assert "RELAY_MAXAGE" in config_error({"RELAY_MAX_AGE": "1h", "RELAY_MAXAGE": "2h"})


@pytest.mark.parametrize("name", ["RELAY_CONCURRENCY", "RELAY_MAX_AGE", "RELAY_HOOK_SECRET", "REDIS_URL",
                                  "LETTA_API_KEY", "LETTA_BASE_URL", "LETTA_AGENT_ID", "LETTA_DEVICE_ID",
                                  "RELAY_ROUTES", "RELAY_CONCURENCY"])
def test_empty_variables_count_as_unset(name: str) -> None:
    assert load({name: ""}, read_text=routes_file("this is not toml")) == Settings()


# --- default destination from LETTA_* ---------------------------------------------------


@pytest.mark.parametrize(("name", "field"), [("LETTA_CONNECTION_ID", "connection_id"),
                                             ("LETTA_DEVICE_ID", "device_id"),
                                             ("LETTA_CONNECTION_NAME", "connection_name")])
def test_letta_variables_make_the_default_route(name: str, field: str) -> None:
    settings = load({"LETTA_AGENT_ID": "agent-1", "LETTA_CONVERSATION_ID": "conv-1", name: "sel-1"})
    expected = Destination(agent_id="agent-1", conversation_id="conv-1", **{field: "sel-1"})
    assert settings.routes == (Route("default", expected),)


def test_letta_destination_values_are_stripped() -> None:
    settings = load({"LETTA_AGENT_ID": " agent-1 ", "LETTA_DEVICE_ID": "dev-1\n"})
    assert settings.routes[0].destination == Destination(agent_id="agent-1", device_id="dev-1")


@pytest.mark.parametrize("env", [{"LETTA_DEVICE_ID": "dev-1"}, {"LETTA_CONVERSATION_ID": "conv-1"},
                                 {"LETTA_AGENT_ID": "  ", "LETTA_DEVICE_ID": "dev-1"}])
def test_destination_without_agent_id_names_letta_agent_id(env: dict[str, str]) -> None:
    assert "LETTA_AGENT_ID" in config_error(env)


@pytest.mark.parametrize("selectors", [
    {},
    {"LETTA_DEVICE_ID": "dev-1", "LETTA_CONNECTION_NAME": "box"},
    {"LETTA_CONNECTION_ID": "conn-1", "LETTA_DEVICE_ID": "dev-1"},
    {"LETTA_CONNECTION_ID": "conn-1", "LETTA_DEVICE_ID": "dev-1", "LETTA_CONNECTION_NAME": "box"},
], ids=["none", "device-and-name", "connection-and-device", "all-three"])
def test_destination_needs_exactly_one_selector(selectors: dict[str, str]) -> None:
    message = config_error({"LETTA_AGENT_ID": "agent-1", **selectors})
    assert all(name in message for name in SELECTOR_VARIABLES)


# --- secrets ----------------------------------------------------------------------------


@pytest.mark.parametrize("secret", [
    "whsec_not*base64!secretvalue",
    "whsec_c2hvcnRzZWNyZXQ=",        # base64 of "shortsecret" (11 bytes)
    "c2hvcnRzZWNyZXRzaG9ydA",        # 16 bytes, no prefix
])
def test_malformed_hook_secret_names_the_variable_but_not_the_value(secret: str) -> None:
    message = config_error({"RELAY_HOOK_SECRET": secret})
    assert "RELAY_HOOK_SECRET" in message
    assert secret.removeprefix("whsec_")[:8] not in message


def test_hook_secret_without_prefix_is_accepted() -> None:
    assert load({"RELAY_HOOK_SECRET": SPEC_SECRET.removeprefix("whsec_")}).hook_secret == SPEC_KEY


def test_repr_of_settings_carries_no_secrets() -> None:
    settings = load({
        "REDIS_URL": f"redis://relay:{REDIS_PASSWORD}@redis.internal:6379/0",
        "LETTA_API_KEY": API_KEY,
        "RELAY_HOOK_SECRET": SPEC_SECRET,
        "LETTA_AGENT_ID": "agent-1",
        "LETTA_DEVICE_ID": "dev-1",
    })
    text = repr(settings)
    assert "agent-1" in text  # the repr is still useful
    for secret in (API_KEY, REDIS_PASSWORD, SPEC_SECRET.removeprefix("whsec_"), repr(SPEC_KEY),
                   SPEC_KEY.hex(), str(list(SPEC_KEY))[1:-1]):
        assert secret not in text
    assert text == str(settings)


# --- URLs -------------------------------------------------------------------------------


@pytest.mark.parametrize("url", ["redis://localhost:6379/0", "rediss://user:pw@host:6380/1",
                                 "unix:///run/redis.sock"])
def test_redis_url_with_a_redis_scheme_is_accepted(url: str) -> None:
    assert load({"REDIS_URL": url}).redis_url == url


@pytest.mark.parametrize("url", [
    f"http://relay:{REDIS_PASSWORD}@host:6379/0",
    f"postgres://relay:{REDIS_PASSWORD}@host/0",
    f"relay:{REDIS_PASSWORD}@host:6379",
    f"redis:/relay:{REDIS_PASSWORD}@host:6379",
])
def test_redis_url_with_another_scheme_is_refused_without_echoing_the_password(url: str) -> None:
    message = config_error({"REDIS_URL": url})
    assert "REDIS_URL" in message
    assert REDIS_PASSWORD not in message


@pytest.mark.parametrize(("url", "stored"), [
    ("https://letta.example.com/", "https://letta.example.com"),
    ("http://127.0.0.1:8283//", "http://127.0.0.1:8283"),
    (" https://letta.example.com/api/ ", "https://letta.example.com/api"),
])
def test_letta_base_url_trailing_slash_is_stripped(url: str, stored: str) -> None:
    assert load({"LETTA_BASE_URL": url}).letta_base_url == stored


@pytest.mark.parametrize("url", ["letta.example.com", "ftp://letta.example.com", "https://", "https:///x"])
def test_letta_base_url_must_be_http(url: str) -> None:
    assert "LETTA_BASE_URL" in config_error({"LETTA_BASE_URL": url})


def test_letta_api_key_is_stripped() -> None:
    assert load({"LETTA_API_KEY": f" {API_KEY}\n"}).letta_api_key == API_KEY


# --- routes file ------------------------------------------------------------------------


def test_routes_file_with_two_routes() -> None:
    paths: list[str] = []

    def read_text(path: str) -> str:
        paths.append(path)
        return TWO_ROUTES

    settings = load({"RELAY_ROUTES": ROUTES_PATH}, read_text=read_text)
    assert paths == [ROUTES_PATH]
    assert {route.name: route.destination for route in settings.routes} == {
        "ops": Destination(agent_id="agent-ops", conversation_id="conv-ops", connection_name="ops-box"),
        "support": Destination(agent_id="agent-support", device_id="dev-support"),
    }


def test_routes_file_and_letta_variables_combine() -> None:
    settings = load({"RELAY_ROUTES": "r.toml", "LETTA_AGENT_ID": "agent-1", "LETTA_DEVICE_ID": "dev-1"},
                    read_text=routes_file(TWO_ROUTES))
    assert sorted(route.name for route in settings.routes) == ["default", "ops", "support"]


def test_routes_file_may_define_the_default_route() -> None:
    settings = load({"RELAY_ROUTES": "r.toml"},
                    read_text=routes_file('[routes.default]\nagent_id = "a"\ndevice_id = "d"\n'))
    assert settings.routes == (Route("default", Destination(agent_id="a", device_id="d")),)


def test_empty_routes_file_gives_no_routes() -> None:
    assert load({"RELAY_ROUTES": "r.toml"}, read_text=routes_file("")).routes == ()


def test_routes_file_defining_default_together_with_letta_agent_id_is_an_error() -> None:
    message = config_error(
        {"RELAY_ROUTES": "r.toml", "LETTA_AGENT_ID": "agent-1", "LETTA_DEVICE_ID": "dev-1"},
        routes_file('[routes.default]\nagent_id = "a"\ndevice_id = "d"\n'),
    )
    assert "LETTA_AGENT_ID" in message and "default" in message


def test_unknown_top_level_key_names_it() -> None:
    message = routes_error('version = 2\n' + TWO_ROUTES)
    assert "'version'" in message and "RELAY_ROUTES" in message


def test_misspelled_routes_table_names_it() -> None:
    assert "'route'" in routes_error('[route.ops]\nagent_id = "a"\ndevice_id = "d"\n')


def test_unknown_route_key_names_the_route_and_the_key() -> None:
    message = routes_error('[routes.ops]\nagent_id = "a"\ndevice_id = "d"\ndevcie_id = "x"\n')
    assert "routes.ops" in message and "devcie_id" in message


@pytest.mark.parametrize(("key", "value"), [("device_id", "5"), ("agent_id", "true"),
                                            ("device_id", '["d"]'), ("device_id", '""'),
                                            ("agent_id", '"  "'), ("device_id", "{ id = \"d\" }")])
def test_route_value_that_is_not_a_non_empty_string_names_route_and_key(key: str, value: str) -> None:
    fields = {"agent_id": '"a"', "device_id": '"d"', key: value}
    text = "[routes.ops]\n" + "".join(f"{k} = {v}\n" for k, v in fields.items())
    message = routes_error(text)
    assert "routes.ops" in message and key in message


@pytest.mark.parametrize("name", [
    "bad name", "ops/prod", "", "x" * 65, "caf\u00e9",
    "ops\n",
])
def test_bad_route_name_names_the_route(name: str) -> None:
    escaped = name.replace("\n", "\\n")
    message = routes_error(f'[routes."{escaped}"]\nagent_id = "a"\ndevice_id = "d"\n')
    assert f"routes.{name}" in message


def test_route_that_is_not_a_table_names_it() -> None:
    assert "routes.ops" in routes_error('[routes]\nops = "agent-1"\n')


def test_routes_that_is_not_a_table_is_an_error() -> None:
    assert "'routes' must be a table" in routes_error('routes = "ops"\n')


def test_route_without_agent_id_names_the_route_and_agent_id() -> None:
    message = routes_error('[routes.ops]\ndevice_id = "d"\n')
    assert "routes.ops" in message and "agent_id" in message


def test_route_with_two_selectors_names_the_route_and_the_selectors() -> None:
    message = routes_error('[routes.ops]\nagent_id = "a"\ndevice_id = "d"\nconnection_id = "c"\n')
    assert "routes.ops" in message
    assert all(name in message for name in ("connection_id", "device_id", "connection_name"))


@pytest.mark.parametrize("error", [FileNotFoundError(2, "No such file or directory"),
                                   PermissionError(13, "Permission denied"),
                                   IsADirectoryError(21, "Is a directory"),
                                   FileNotFoundError("gone")])
def test_unreadable_routes_file_is_a_config_error(error: OSError) -> None:
    def read_text(path: str) -> str:
        raise error

    message = config_error({"RELAY_ROUTES": ROUTES_PATH}, read_text)
    assert "RELAY_ROUTES" in message and ROUTES_PATH in message


def test_routes_file_that_is_not_utf8_is_a_config_error() -> None:
    def read_text(path: str) -> str:
        return b"[routes.ops]\nagent_id = \"caf\xe9\"\n".decode("utf-8")

    assert "RELAY_ROUTES" in config_error({"RELAY_ROUTES": ROUTES_PATH}, read_text)


@pytest.mark.parametrize("text", ["[routes.ops\n", "[routes.ops]\nagent_id = a\n",
                                  '[routes.ops]\nagent_id = "a"\nagent_id = "b"\n', "= 1"])
def test_invalid_toml_is_a_config_error(text: str) -> None:
    message = routes_error(text)
    assert "RELAY_ROUTES" in message and "TOML" in message


def test_shipped_example_routes_file_is_valid() -> None:
    from pathlib import Path

    example = Path(__file__).parent.parent / "deploy" / "routes.example.toml"
    settings = load({"RELAY_ROUTES": str(example)})
    assert sorted(route.name for route in settings.routes) == ["ci", "incidents"]
    assert {route.destination.selector[0] for route in settings.routes} == {"device_id", "connection_name"}


# --- Slack ------------------------------------------------------------------------------

SLACK_SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
BOT_TOKEN = "xoxb-0000000001-0000000002-NotARealBotTokenAtAll"
ADMIN_TOKEN = "adm-NOT-A-REAL-admin-token-7c1e"

SLACK_ROUTES = """
[routes.incidents]
agent_id = "agent-incidents"
device_id = "ops-laptop"

[routes.incidents.slack]
teams = ["T0001"]
channels = ["C0001", "G0002"]
approvers = ["U0002", "W0003"]
approver_groups = ["S0001"]

[routes.general]
agent_id = "agent-general"
connection_name = "build-box"

[routes.general.slack]
teams = ["T0001", "T0002"]
"""


def slack_env(**extra: str) -> dict[str, str]:
    return {"RELAY_ROUTES": ROUTES_PATH, "SLACK_SIGNING_SECRET": SLACK_SECRET, **extra}


def slack_error(text: str, **extra: str) -> str:
    return config_error(slack_env(**extra), routes_file(text))


def slack_route(body: str) -> str:
    return '[routes.ops]\nagent_id = "a"\ndevice_id = "d"\n\n[routes.ops.slack]\n' + body


def test_slack_tables_parse_into_slack_rules() -> None:
    settings = load(slack_env(), routes_file(SLACK_ROUTES))
    routes = {route.name: route for route in settings.routes}
    assert routes["incidents"].slack == SlackRule(teams=("T0001",), channels=("C0001", "G0002"),
                                                  approvers=("U0002", "W0003"), approver_groups=("S0001",))
    assert routes["general"].slack == SlackRule(teams=("T0001", "T0002"))
    assert routes["incidents"].destination == Destination(agent_id="agent-incidents", device_id="ops-laptop")
    assert settings.slack_signing_secret == SLACK_SECRET.encode()
    assert settings.slack_fallback is None
    assert settings.uses_slack


def test_a_route_without_a_slack_table_has_no_slack_rule() -> None:
    settings = load(slack_env(), routes_file(SLACK_ROUTES + '\n[routes.quiet]\nagent_id = "q"\ndevice_id = "d"\n'))
    assert {route.name: route.slack for route in settings.routes}["quiet"] is None


def test_slack_signing_secret_is_stripped_and_kept_as_bytes() -> None:
    settings = load(slack_env(SLACK_SIGNING_SECRET=f"  {SLACK_SECRET}\n"), routes_file(SLACK_ROUTES))
    assert settings.slack_signing_secret == SLACK_SECRET.encode()


def test_slack_fallback_naming_a_route_is_kept() -> None:
    settings = load(slack_env(), routes_file(SLACK_ROUTES + '\n[slack]\nfallback = "general"\n'))
    assert settings.slack_fallback == "general"


def test_slack_fallback_may_name_the_default_route_from_letta_variables() -> None:
    env = slack_env(LETTA_AGENT_ID="agent-1", LETTA_DEVICE_ID="dev-1")
    settings = load(env, routes_file(SLACK_ROUTES + '\n[slack]\nfallback = "default"\n'))
    assert settings.slack_fallback == "default"
    assert "default" in {route.name for route in settings.routes}


@pytest.mark.parametrize("fallback", ['"nope"', '"default"', '""', "5", '["general"]'])
def test_slack_fallback_naming_no_route_is_an_error(fallback: str) -> None:
    message = slack_error(SLACK_ROUTES + f"\n[slack]\nfallback = {fallback}\n")
    assert "fallback" in message and "[slack]" in message


def test_slack_table_that_is_not_a_table_is_an_error() -> None:
    assert "[slack]" in slack_error('slack = "general"\n' + SLACK_ROUTES)


def test_unknown_key_in_the_slack_table_names_it() -> None:
    message = slack_error(SLACK_ROUTES + '\n[slack]\nfallback = "general"\nfalback = "general"\n')
    assert "'falback'" in message and "[slack]" in message


@pytest.mark.parametrize("key", ["team", "channel", "approver", "admins", "fallback"])
def test_unknown_key_in_a_routes_slack_table_names_the_route_and_the_key(key: str) -> None:
    message = slack_error(slack_route(f'teams = ["T0001"]\n{key} = ["X0001"]\n'))
    assert "routes.ops.slack" in message and repr(key) in message


@pytest.mark.parametrize("body", ['channels = ["C0001"]\n', 'teams = []\napprovers = ["U0002"]\n'],
                         ids=["missing", "empty"])
def test_slack_rule_without_teams_is_an_error(body: str) -> None:
    message = slack_error(slack_route(body))
    assert "routes.ops.slack" in message and "teams" in message


def test_routes_slack_that_is_not_a_table_is_an_error() -> None:
    text = '[routes.ops]\nagent_id = "a"\ndevice_id = "d"\nslack = "T0001"\n'
    assert "routes.ops.slack" in slack_error(text)


@pytest.mark.parametrize("value", ['["t123"]', "[5]", '[""]', '["T"]', '["T0001 "]', '["T-0001"]',
                                   '"T0001"', '["T' + "0" * 32 + '"]', '["T\u00c90001"]'])
@pytest.mark.parametrize("key", ["teams", "channels", "approvers", "approver_groups"])
def test_ids_that_are_not_slack_ids_are_an_error_naming_the_key(key: str, value: str) -> None:
    fields = {"teams": '["T0001"]', key: value}
    message = slack_error(slack_route("".join(f"{k} = {v}\n" for k, v in fields.items())))
    assert "routes.ops.slack" in message and key in message


def test_slack_routes_without_a_signing_secret_are_an_error() -> None:
    message = config_error({"RELAY_ROUTES": ROUTES_PATH}, routes_file(SLACK_ROUTES))
    assert "SLACK_SIGNING_SECRET" in message


def test_slack_fallback_without_a_signing_secret_is_an_error() -> None:
    env = {"RELAY_ROUTES": ROUTES_PATH, "LETTA_AGENT_ID": "agent-1", "LETTA_DEVICE_ID": "dev-1"}
    assert "SLACK_SIGNING_SECRET" in config_error(env, routes_file('[slack]\nfallback = "default"\n'))


@pytest.mark.parametrize("env", [
    {"SLACK_SIGNING_SECRET": SLACK_SECRET},
    {"SLACK_SIGNING_SECRET": SLACK_SECRET, "LETTA_AGENT_ID": "agent-1", "LETTA_DEVICE_ID": "dev-1"},
], ids=["alone", "with-a-default-route"])
def test_slack_signing_secret_without_any_slack_route_is_an_error(env: dict[str, str]) -> None:
    message = config_error(env)
    assert "SLACK_SIGNING_SECRET" in message and "[routes.NAME.slack]" in message


def test_slack_signing_secret_with_routes_none_of_which_use_slack_is_an_error() -> None:
    assert "SLACK_SIGNING_SECRET" in config_error(slack_env(), routes_file(TWO_ROUTES))


def test_slack_fallback_without_any_route_naming_a_workspace_is_an_error() -> None:
    text = '[routes.ops]\nagent_id = "a"\ndevice_id = "d"\n\n[slack]\nfallback = "ops"\n'
    assert "teams" in slack_error(text)


def test_slack_bot_token_is_kept_stripped() -> None:
    settings = load(slack_env(SLACK_BOT_TOKEN=f" {BOT_TOKEN}\n"), routes_file(SLACK_ROUTES))
    assert settings.slack_bot_token == BOT_TOKEN


@pytest.mark.parametrize("token", ["xoxp-0000-0000-user-token", "xapp-1-A0001-app-level", "XOXB-0000-0000-x",
                                   "bot-token", "xoxb_0000-0000-underscore"])
def test_slack_bot_token_that_is_not_a_bot_token_is_an_error(token: str) -> None:
    message = slack_error(SLACK_ROUTES, SLACK_BOT_TOKEN=token)
    assert "SLACK_BOT_TOKEN" in message and "xoxb-" in message
    assert token not in message


APP_TOKEN = "xapp-1-A0001-1234567890-abcdef0123456789"


def test_slack_routes_with_only_an_app_token_load_for_socket_mode() -> None:
    settings = load({"RELAY_ROUTES": ROUTES_PATH, "SLACK_APP_TOKEN": f" {APP_TOKEN}\n"}, routes_file(SLACK_ROUTES))
    assert settings.slack_app_token == APP_TOKEN and settings.slack_signing_secret is None
    assert settings.receives_slack and settings.uses_slack


def test_slack_routes_without_a_signing_secret_or_app_token_name_both() -> None:
    message = config_error({"RELAY_ROUTES": ROUTES_PATH}, routes_file(SLACK_ROUTES))
    assert "SLACK_SIGNING_SECRET" in message and "SLACK_APP_TOKEN" in message


@pytest.mark.parametrize("token", ["xoxb-0000-0000-bot-token", "xoxp-0000-user", "XAPP-1-A0001-x", "app-token",
                                   "xapp-1-A0001 with-space", "xapp-1-A0001-\u00e9"])
def test_slack_app_token_that_is_not_an_app_level_token_is_an_error(token: str) -> None:
    message = slack_error(SLACK_ROUTES, SLACK_APP_TOKEN=token)
    assert "SLACK_APP_TOKEN" in message and "xapp-" in message and "connections:write" in message
    assert token not in message


def test_a_bot_token_in_slack_app_token_is_told_where_it_goes() -> None:
    assert "it goes in SLACK_BOT_TOKEN" in slack_error(SLACK_ROUTES, SLACK_APP_TOKEN="xoxb-0000-0000-bot-token")


def test_slack_app_token_without_any_slack_route_is_an_error() -> None:
    message = config_error({"SLACK_APP_TOKEN": APP_TOKEN, "LETTA_AGENT_ID": "agent-1", "LETTA_DEVICE_ID": "dev-1"})
    assert "SLACK_APP_TOKEN" in message and "[routes.NAME.slack]" in message


def test_the_app_token_is_not_in_the_settings_repr() -> None:
    settings = load({"RELAY_ROUTES": ROUTES_PATH, "SLACK_APP_TOKEN": APP_TOKEN}, routes_file(SLACK_ROUTES))
    assert APP_TOKEN not in repr(settings)


@pytest.mark.parametrize(("url", "stored"), [("https://slack.example.com/api/", "https://slack.example.com/api"),
                                             ("http://127.0.0.1:9000", "http://127.0.0.1:9000")])
def test_slack_api_base_url_is_read_and_trimmed(url: str, stored: str) -> None:
    assert load(slack_env(SLACK_API_BASE_URL=url), routes_file(SLACK_ROUTES)).slack_api_base_url == stored


def test_slack_api_base_url_defaults_to_slack() -> None:
    assert load(slack_env(), routes_file(SLACK_ROUTES)).slack_api_base_url == "https://slack.com/api"


@pytest.mark.parametrize("url", ["slack.com/api", "ftp://slack.com/api", "https://"])
def test_slack_api_base_url_must_be_http(url: str) -> None:
    assert "SLACK_API_BASE_URL" in slack_error(SLACK_ROUTES, SLACK_API_BASE_URL=url)


def test_admin_token_of_sixteen_characters_is_kept_stripped() -> None:
    assert load({"RELAY_ADMIN_TOKEN": "  0123456789abcdef\n"}).admin_token == "0123456789abcdef"


@pytest.mark.parametrize("token", ["x", "0123456789abcde", "  0123456789abcde  "])
def test_admin_token_shorter_than_sixteen_characters_is_an_error(token: str) -> None:
    message = config_error({"RELAY_ADMIN_TOKEN": token})
    assert "RELAY_ADMIN_TOKEN" in message and "16" in message
    assert "0123456789abcde" not in message


def test_repr_of_settings_never_shows_slack_secrets_or_the_admin_token() -> None:
    settings = load(slack_env(SLACK_BOT_TOKEN=BOT_TOKEN, RELAY_ADMIN_TOKEN=ADMIN_TOKEN), routes_file(SLACK_ROUTES))
    assert settings.slack_bot_token == BOT_TOKEN and settings.admin_token == ADMIN_TOKEN
    text = repr(settings)
    assert "agent-incidents" in text and "T0001" in text  # the repr is still useful
    for secret in (SLACK_SECRET, repr(SLACK_SECRET.encode()), SLACK_SECRET.encode().hex(), BOT_TOKEN,
                   BOT_TOKEN.removeprefix("xoxb-"), ADMIN_TOKEN):
        assert secret not in text
    assert text == str(settings)


# --- GitHub -----------------------------------------------------------------------------

GITHUB_SECRET = "It's a Secret to Everybody"
GITHUB_TOKEN = "ghp_NotARealGitHubToken0000000000000000"

GITHUB_ROUTES = """
[routes.hello]
agent_id = "agent-hello"
device_id = "ops-laptop"

[routes.hello.github]
repositories = ["Codertocat/Hello-World", "octo-org/*"]
trigger = "@relay-bot"
associations = ["OWNER", "MEMBER", "CONTRIBUTOR"]
approvers = ["Codertocat", "octo-cat"]
actions = ["created", "edited"]

[routes.plain]
agent_id = "agent-plain"
connection_name = "build-box"

[routes.plain.github]
repositories = ["acme/widgets"]
"""


def github_env(**extra: str) -> dict[str, str]:
    return {"RELAY_ROUTES": ROUTES_PATH, "GITHUB_WEBHOOK_SECRET": GITHUB_SECRET, **extra}


def github_error(text: str, **extra: str) -> str:
    return config_error(github_env(**extra), routes_file(text))


def github_route(body: str) -> str:
    return '[routes.ops]\nagent_id = "a"\ndevice_id = "d"\n\n[routes.ops.github]\n' + body


def github_rule_of(body: str) -> GitHubRule | None:
    settings = load(github_env(), routes_file(github_route(body)))
    return {route.name: route for route in settings.routes}["ops"].github


def test_github_tables_parse_into_github_rules() -> None:
    settings = load(github_env(), routes_file(GITHUB_ROUTES))
    routes = {route.name: route for route in settings.routes}
    assert routes["hello"].github == GitHubRule(
        repositories=("Codertocat/Hello-World", "octo-org/*"), trigger="@relay-bot",
        associations=("OWNER", "MEMBER", "CONTRIBUTOR"), approvers=("Codertocat", "octo-cat"),
        actions=("created", "edited"))
    assert routes["hello"].destination == Destination(agent_id="agent-hello", device_id="ops-laptop")
    assert routes["hello"].slack is None
    assert settings.github_webhook_secret == GITHUB_SECRET.encode()
    assert settings.github_fallback is None
    assert settings.uses_github and not settings.uses_slack


def test_a_github_rule_without_optional_keys_gets_the_defaults() -> None:
    settings = load(github_env(), routes_file(GITHUB_ROUTES))
    rule = {route.name: route for route in settings.routes}["plain"].github
    assert rule == GitHubRule(repositories=("acme/widgets",), trigger="@agent",
                              associations=("OWNER", "MEMBER", "COLLABORATOR"), approvers=(), actions=("created",))


def test_a_route_without_a_github_table_has_no_github_rule() -> None:
    text = GITHUB_ROUTES + '\n[routes.quiet]\nagent_id = "q"\ndevice_id = "d"\n'
    settings = load(github_env(), routes_file(text))
    assert {route.name: route.github for route in settings.routes}["quiet"] is None


def test_associations_are_upper_cased() -> None:
    rule = github_rule_of('repositories = ["o/n"]\nassociations = ["owner", "Member", "first_time_contributor"]\n')
    assert rule is not None and rule.associations == ("OWNER", "MEMBER", "FIRST_TIME_CONTRIBUTOR")


@pytest.mark.parametrize("association", ["ADMIN", "maintainer", "EVERYONE", "OWNERS"])
def test_an_unknown_association_is_refused_naming_it(association: str) -> None:
    message = github_error(github_route(f'repositories = ["o/n"]\nassociations = ["OWNER", "{association}"]\n'))
    assert "routes.ops.github" in message and association.upper() in message


@pytest.mark.parametrize("value", ['"OWNER"', "[5]", '["OWN ER"]', '["OWNER-1"]', '[""]'])
def test_associations_that_are_not_a_list_of_names_are_refused(value: str) -> None:
    message = github_error(github_route(f'repositories = ["o/n"]\nassociations = {value}\n'))
    assert "routes.ops.github" in message and "associations" in message


@pytest.mark.parametrize("actions", [["created", "edited", "deleted"], ["deleted"], ["edited"]])
def test_actions_may_be_any_of_created_edited_deleted(actions: list[str]) -> None:
    rule = github_rule_of(f'repositories = ["o/n"]\nactions = {actions!r}\n'.replace("'", '"'))
    assert rule is not None and rule.actions == tuple(actions)


@pytest.mark.parametrize("value", ['["created", "closed"]', '["opened"]', '["Created"]', "[]", '"created"', "[1]",
                                  '["submitted"]'])
def test_actions_outside_created_edited_deleted_are_refused(value: str) -> None:
    message = github_error(github_route(f'repositories = ["o/n"]\nactions = {value}\n'))
    assert "routes.ops.github" in message and "actions" in message


@pytest.mark.parametrize("repository", ['"owner"', '"owner/"', '"a/b/c"', "5", '"/name"', '"*/*"', '"owner/na me"',
                                        '"owner/name "', '""', '"owner/*x"', '"https://github.com/o/n"'])
def test_malformed_repositories_are_refused(repository: str) -> None:
    message = github_error(github_route(f"repositories = [{repository}]\n"))
    assert "routes.ops.github" in message and "repositories" in message


@pytest.mark.parametrize("body", ["", "repositories = []\n", 'repositories = "owner/name"\n',
                                  'trigger = "@agent"\n'],
                         ids=["empty-table", "empty-list", "not-a-list", "only-a-trigger"])
def test_a_github_rule_needs_a_list_of_repositories(body: str) -> None:
    message = github_error(github_route(body))
    assert "routes.ops.github" in message and "repositories" in message


@pytest.mark.parametrize("repositories", [["Codertocat/Hello-World"], ["octo-org/*"], ["a_b.c-d/e.f_g-h"],
                                          ["o/n", "O/N", "o/*"]])
def test_well_formed_repositories_are_kept_as_written(repositories: list[str]) -> None:
    rule = github_rule_of(f"repositories = {repositories!r}\n".replace("'", '"'))
    assert rule is not None and rule.repositories == tuple(repositories)


@pytest.mark.parametrize("trigger", ['"@relay bot"', '"@agent please"', '" @agent"', '"@agent\\t"', '"@agent\\n"',
                                     '""', '"@"', "5", '["@agent"]'])
def test_a_trigger_that_is_not_one_word_is_refused(trigger: str) -> None:
    message = github_error(github_route(f'repositories = ["o/n"]\ntrigger = {trigger}\n'))
    assert "routes.ops.github" in message and "trigger" in message


@pytest.mark.parametrize("trigger", ["@relay-bot", "/agent", "@a"])
def test_a_one_word_trigger_is_kept(trigger: str) -> None:
    rule = github_rule_of(f'repositories = ["o/n"]\ntrigger = "{trigger}"\n')
    assert rule is not None and rule.trigger == trigger


@pytest.mark.parametrize("approvers", ['"-octocat"', '"octo cat"', '"octo_cat"', '"octocat@example.com"',
                                       '"@octocat"', '""', "5", '"' + "a" * 40 + '"',
                                       '"Codertocat", "not a login"'])
def test_approvers_that_are_not_github_logins_are_refused(approvers: str) -> None:
    message = github_error(github_route(f'repositories = ["o/n"]\napprovers = [{approvers}]\n'))
    assert "routes.ops.github" in message and "approvers" in message


def test_approvers_that_are_not_a_list_are_refused() -> None:
    message = github_error(github_route('repositories = ["o/n"]\napprovers = "Codertocat"\n'))
    assert "routes.ops.github" in message and "approvers" in message


@pytest.mark.parametrize("login", ["Codertocat", "octo-cat", "a", "x" * 39, "0x1"])
def test_github_logins_are_accepted_as_approvers(login: str) -> None:
    rule = github_rule_of(f'repositories = ["o/n"]\napprovers = ["{login}"]\n')
    assert rule is not None and rule.approvers == (login,)


@pytest.mark.parametrize("key", ["repository", "triggers", "approver", "association", "action", "fallback",
                                 "teams"])
def test_unknown_key_in_a_routes_github_table_names_the_route_and_the_key(key: str) -> None:
    message = github_error(github_route(f'repositories = ["o/n"]\n{key} = ["x"]\n'))
    assert "routes.ops.github" in message and repr(key) in message


def test_routes_github_that_is_not_a_table_is_an_error() -> None:
    text = '[routes.ops]\nagent_id = "a"\ndevice_id = "d"\ngithub = "o/n"\n'
    assert "routes.ops.github" in github_error(text)


def test_github_fallback_naming_a_route_is_kept() -> None:
    settings = load(github_env(), routes_file(GITHUB_ROUTES + '\n[github]\nfallback = "plain"\n'))
    assert settings.github_fallback == "plain"


def test_github_fallback_may_name_a_route_without_a_github_table() -> None:
    text = GITHUB_ROUTES + '\n[routes.quiet]\nagent_id = "q"\ndevice_id = "d"\n\n[github]\nfallback = "quiet"\n'
    assert load(github_env(), routes_file(text)).github_fallback == "quiet"


def test_github_fallback_may_name_the_default_route_from_letta_variables() -> None:
    env = github_env(LETTA_AGENT_ID="agent-1", LETTA_DEVICE_ID="dev-1")
    settings = load(env, routes_file(GITHUB_ROUTES + '\n[github]\nfallback = "default"\n'))
    assert settings.github_fallback == "default"


@pytest.mark.parametrize("fallback", ['"nope"', '"default"', '""', "5", '["plain"]', '"Plain"'])
def test_github_fallback_naming_no_route_is_an_error(fallback: str) -> None:
    message = github_error(GITHUB_ROUTES + f"\n[github]\nfallback = {fallback}\n")
    assert "fallback" in message and "[github]" in message


# --- one GitHub secret per tenant ---------------------------------------------------------

TENANTS = """
[routes.acme]
agent_id = "agent-acme"
device_id = "d"
[routes.acme.github]
repositories = ["acme/*"]
secret_env = "GITHUB_SECRET_ACME"

[routes.globex]
agent_id = "agent-globex"
device_id = "d"
[routes.globex.github]
repositories = ["globex/*"]
secret_env = "GITHUB_SECRET_GLOBEX"
"""


def tenants_env(**extra: str) -> dict[str, str]:
    return {"RELAY_ROUTES": ROUTES_PATH, "GITHUB_SECRET_ACME": "acme-secret", "GITHUB_SECRET_GLOBEX": " globex-secret\n",
            **extra}


def test_a_route_may_take_its_own_github_secret_from_the_variable_it_names() -> None:
    settings = load(tenants_env(), routes_file(TENANTS))
    secrets = {route.name: route.github.secret for route in settings.routes if route.github}
    assert secrets == {"acme": b"acme-secret", "globex": b"globex-secret"}
    assert settings.serves_github and settings.github_webhook_secret is None
    assert settings.github_routes_on_the_shared_secret == []
    assert "acme-secret" not in repr(settings)


def test_routes_on_the_shared_secret_still_need_github_webhook_secret() -> None:
    text = TENANTS + '\n[routes.plain]\nagent_id = "p"\ndevice_id = "d"\n[routes.plain.github]\nrepositories = ["o/*"]\n'
    message = config_error(tenants_env(), routes_file(text))
    assert "plain" in message and "GITHUB_WEBHOOK_SECRET" in message and "acme" not in message
    settings = load(tenants_env(GITHUB_WEBHOOK_SECRET="shared"), routes_file(text))
    assert [r.name for r in settings.github_routes_on_the_shared_secret] == ["plain"]


def test_a_github_fallback_without_its_own_secret_needs_the_shared_one() -> None:
    text = TENANTS + '\n[routes.quiet]\nagent_id = "q"\ndevice_id = "d"\n\n[github]\nfallback = "quiet"\n'
    assert "quiet" in config_error(tenants_env(), routes_file(text))
    assert load(tenants_env(GITHUB_WEBHOOK_SECRET="shared"), routes_file(text)).github_fallback == "quiet"


@pytest.mark.parametrize("value", ["", "   "])
def test_secret_env_naming_an_unset_or_blank_variable_is_an_error_naming_both(value: str) -> None:
    message = config_error(tenants_env(GITHUB_SECRET_ACME=value), routes_file(TENANTS))
    assert "routes.acme.github" in message and "GITHUB_SECRET_ACME" in message and "not set" in message


@pytest.mark.parametrize("name", ['"github_secret"', '"RELAY_GITHUB_SECRET"', '""', "5", '"A B"', '"A-B"',
                                  '"' + "A" * 65 + '"', '["A"]'])
def test_secret_env_that_is_not_a_variable_name_is_an_error(name: str) -> None:
    text = github_route(f'repositories = ["o/n"]\nsecret_env = {name}\n')
    assert "secret_env" in config_error(tenants_env(GITHUB_WEBHOOK_SECRET="shared"), routes_file(text))


def test_github_table_that_is_not_a_table_is_an_error() -> None:
    assert "[github]" in github_error('github = "plain"\n' + GITHUB_ROUTES)


def test_unknown_key_in_the_github_table_names_it() -> None:
    message = github_error(GITHUB_ROUTES + '\n[github]\nfallback = "plain"\nrepositories = ["o/n"]\n')
    assert "'repositories'" in message and "[github]" in message


def test_github_routes_without_a_webhook_secret_are_an_error() -> None:
    message = config_error({"RELAY_ROUTES": ROUTES_PATH}, routes_file(GITHUB_ROUTES))
    assert "GITHUB_WEBHOOK_SECRET" in message


def test_a_github_fallback_without_a_webhook_secret_is_an_error() -> None:
    env = {"RELAY_ROUTES": ROUTES_PATH, "LETTA_AGENT_ID": "agent-1", "LETTA_DEVICE_ID": "dev-1"}
    assert "GITHUB_WEBHOOK_SECRET" in config_error(env, routes_file('[github]\nfallback = "default"\n'))


@pytest.mark.parametrize("secret", ["   ", "\n", " \t "])
def test_a_blank_github_webhook_secret_is_an_error(secret: str) -> None:
    message = config_error(github_env(GITHUB_WEBHOOK_SECRET=secret), routes_file(GITHUB_ROUTES))
    assert "GITHUB_WEBHOOK_SECRET" in message


@pytest.mark.parametrize("env", [
    {"GITHUB_WEBHOOK_SECRET": GITHUB_SECRET},
    {"GITHUB_WEBHOOK_SECRET": GITHUB_SECRET, "LETTA_AGENT_ID": "agent-1", "LETTA_DEVICE_ID": "dev-1"},
], ids=["alone", "with-a-default-route"])
def test_github_webhook_secret_without_any_github_route_is_an_error(env: dict[str, str]) -> None:
    message = config_error(env)
    assert "GITHUB_WEBHOOK_SECRET" in message and "[routes.NAME.github]" in message


def test_github_webhook_secret_with_routes_none_of_which_use_github_is_an_error() -> None:
    assert "GITHUB_WEBHOOK_SECRET" in config_error(github_env(), routes_file(TWO_ROUTES))


def test_github_webhook_secret_with_only_slack_routes_is_an_error() -> None:
    env = {**github_env(), "SLACK_SIGNING_SECRET": SLACK_SECRET}
    assert "GITHUB_WEBHOOK_SECRET" in config_error(env, routes_file(SLACK_ROUTES))


def test_github_and_slack_routes_live_side_by_side() -> None:
    env = {**github_env(), "SLACK_SIGNING_SECRET": SLACK_SECRET}
    settings = load(env, routes_file(GITHUB_ROUTES + SLACK_ROUTES))
    assert settings.uses_github and settings.uses_slack
    assert sorted(route.name for route in settings.routes) == ["general", "hello", "incidents", "plain"]


def test_github_webhook_secret_and_token_are_stripped() -> None:
    settings = load(github_env(GITHUB_WEBHOOK_SECRET=f"  {GITHUB_SECRET}\n", GITHUB_TOKEN=f" {GITHUB_TOKEN}\n"),
                    routes_file(GITHUB_ROUTES))
    assert settings.github_webhook_secret == GITHUB_SECRET.encode()
    assert settings.github_token == GITHUB_TOKEN


def test_github_token_is_optional() -> None:
    assert load(github_env(), routes_file(GITHUB_ROUTES)).github_token is None


@pytest.mark.parametrize(("url", "stored"), [
    ("https://github.example.com/api/v3/", "https://github.example.com/api/v3"),
    ("http://127.0.0.1:9000//", "http://127.0.0.1:9000"),
    (" https://api.github.com ", "https://api.github.com"),
])
def test_github_api_url_is_read_and_trimmed(url: str, stored: str) -> None:
    assert load(github_env(GITHUB_API_URL=url), routes_file(GITHUB_ROUTES)).github_api_url == stored


def test_github_api_url_defaults_to_github() -> None:
    assert load(github_env(), routes_file(GITHUB_ROUTES)).github_api_url == "https://api.github.com"


@pytest.mark.parametrize("url", ["api.github.com", "ftp://api.github.com", "https://", "https:///x", "github"])
def test_github_api_url_must_be_http(url: str) -> None:
    assert "GITHUB_API_URL" in github_error(GITHUB_ROUTES, GITHUB_API_URL=url)


def test_repr_of_settings_never_shows_the_github_secret_or_token() -> None:
    settings = load(github_env(GITHUB_TOKEN=GITHUB_TOKEN), routes_file(GITHUB_ROUTES))
    assert settings.github_token == GITHUB_TOKEN
    text = repr(settings)
    assert "agent-hello" in text and "Codertocat/Hello-World" in text  # the repr is still useful
    for secret in (GITHUB_SECRET, repr(GITHUB_SECRET.encode()), GITHUB_SECRET.encode().hex(), "Secret to Everybody",
                   GITHUB_TOKEN, GITHUB_TOKEN.removeprefix("ghp_")):
        assert secret not in text
    assert text == str(settings)


@pytest.mark.parametrize("name", ["SLACK_SIGNING_SECRET", "GITHUB_WEBHOOK_SECRET"])
@pytest.mark.parametrize("blank", ["   ", "\t", " \n "])
def test_a_blank_signing_secret_is_refused_not_used_as_an_empty_key(name: str, blank: str) -> None:
    # An empty HMAC key is one anyone can sign with: loading it would fail open.
    with pytest.raises(ConfigError, match=f"{name} is blank"):
        load({name: blank})


# --- [routes.NAME.watch]: the opt-in to relay watch -------------------------------------------


def watch_route(body: str) -> str:
    return '[routes.ops]\nagent_id = "a"\ndevice_id = "d"\n\n[routes.ops.watch]\n' + body


def watched(body: str) -> Route:
    return load({"RELAY_ROUTES": ROUTES_PATH}, routes_file(watch_route(body))).routes[0]


def test_a_watch_table_opts_the_route_in() -> None:
    from relay.routing import WatchRule

    route = watched("")
    assert route.watch == WatchRule(enabled=True, slack_channel=None)
    assert route.watched


def test_a_watch_table_reads_its_channel() -> None:
    route = watched('slack_channel = "C0123ABC"\n')
    assert route.watch is not None and route.watch.slack_channel == "C0123ABC"
    assert route.watched


def test_a_route_without_a_watch_table_is_not_watched() -> None:
    route = load({"RELAY_ROUTES": ROUTES_PATH}, routes_file(TWO_ROUTES)).routes[0]
    assert route.watch is None and not route.watched


def test_approvals_go_over_the_status_socket_unless_a_route_chooses_rest() -> None:
    routes = load({"RELAY_ROUTES": ROUTES_PATH}, routes_file(
        TWO_ROUTES + '\n[routes.legacy]\nagent_id = "a"\ndevice_id = "d"\napprovals = "rest"\n')).routes
    assert {route.name: route.approvals for route in routes} == {"ops": "socket", "support": "socket",
                                                               "legacy": "rest"}


def test_approvals_in_the_watch_table_point_to_the_route_setting() -> None:
    message = routes_error(watch_route('approvals = "socket"\n'))
    assert "[routes.ops.watch]" in message and "moved to the route" in message


def test_an_unknown_approval_path_is_refused() -> None:
    message = routes_error('[routes.ops]\nagent_id = "a"\ndevice_id = "d"\napprovals = "webhook"\n')
    assert "[routes.ops]" in message and '"socket"' in message and '"rest"' in message


def test_a_disabled_watch_table_is_not_watched() -> None:
    route = watched("enabled = false\n")
    assert route.watch is not None and not route.watched


@pytest.mark.parametrize(("body", "words"), [
    ('chanel = "C0123ABC"\n', ["[routes.ops.watch]", "'chanel'", "slack_channel"]),
    ('enabled = "yes"\n', ["[routes.ops.watch]", "enabled", "true or false"]),
    ('slack_channel = "#general"\n', ["[routes.ops.watch]", "slack_channel", "channel id"]),
])
def test_a_bad_watch_table_names_the_route_and_the_key(body: str, words: list[str]) -> None:
    message = routes_error(watch_route(body))
    for word in words:
        assert word in message


def test_a_watch_value_that_is_not_a_table_is_an_error() -> None:
    message = routes_error('[routes.ops]\nagent_id = "a"\ndevice_id = "d"\nwatch = true\n')
    assert "[routes.ops.watch] must be a table" in message


def test_the_unknown_route_key_message_lists_watch() -> None:
    assert "watch" in routes_error('[routes.ops]\nagent_id = "a"\ndevice_id = "d"\nwatcher = 1\n')


# --- the README's configuration reference -------------------------------------------------------


def test_the_readme_configuration_reference_lists_every_variable_settings_reads() -> None:
    from pathlib import Path

    from tests.deploy.test_manifests import names_settings_reads

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    reference = readme[readme.index("## Configuration"):]
    reference = reference[:reference.index("\n## ", 3)]
    listed = set(re.findall(r"`([A-Z][A-Z0-9_]+)`", reference))
    assert sorted(names_settings_reads() - listed) == []
